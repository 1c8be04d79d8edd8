"""The attention-init baselines of issue 29 (conditioned, dct, mimetic_vo): each init's defining
property on plain tensors and in timm's fused qkv, the base init everywhere else, seeding, fit."""
import numpy as np
import pytest
import scipy.fft  # scikit-learn's dependency: an independent DCT to check ours against
import torch
from timm.layers import Attention

from structinit import fidelity
from structinit.inits import InitConfig, apply_init
from structinit.inits.attention_baselines import dct_matrix, orthogonal
from structinit.models import create, vit

NEW = ("conditioned", "dct", "mimetic_vo")
BASE_OF = {"timm": "default", "torch": "torch_default"}


def small(**kw):
    geometry = dict(img_size=16, patch_size=2, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    return vit(**{**geometry, **kw})


def blocks(attn):
    """(W_Q, W_K, W_V) as timm's fused qkv stores them: D x D each, head h in rows h*d..(h+1)*d."""
    return attn.qkv.weight.detach().chunk(3)


def head_rows(w, attn, h):
    d = attn.head_dim
    return w[h * d:(h + 1) * d]


def kappa(w):
    s = torch.linalg.svdvals(w.double())
    return (s.max() / s.min()).item()


def initialised(name, seed=0, base="timm", **kw):
    model = small(**kw)
    apply_init(model, InitConfig(name=name, base=base), seed=seed)
    return model


def params(model):
    return dict(model.named_parameters())


# ---- plain tensors -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 48, 64, 192])
def test_dct_basis_rows_are_orthonormal(n):
    c = dct_matrix(n)
    torch.testing.assert_close(c @ c.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(c.T @ c, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [8, 48, 64])
def test_dct_basis_is_the_papers_orthonormal_dct_ii(n):
    """The authors build their weight as scipy's dct(eye(D), axis=-1, norm="ortho").T: the same
    matrix, and applied to a vector it is scipy's DCT-II of that vector."""
    paper = scipy.fft.dct(np.eye(n), axis=-1, norm="ortho").T
    np.testing.assert_allclose(dct_matrix(n).numpy(), paper, atol=1e-12, rtol=0)
    x = np.random.default_rng(0).standard_normal((5, n))
    np.testing.assert_allclose((torch.from_numpy(x) @ dct_matrix(n).T).numpy(),
                               scipy.fft.dct(x, axis=-1, norm="ortho"), atol=1e-10, rtol=0)
    assert torch.allclose(dct_matrix(n)[0], torch.full((n,), n ** -0.5, dtype=torch.float64))  # k = 0: the mean


@pytest.mark.parametrize("n", [16, 48, 192])
def test_orthogonal_draw_has_condition_number_one_whole_and_per_head(n):
    torch.manual_seed(0)
    o = orthogonal(n).float()
    assert kappa(o) == pytest.approx(1, abs=1e-5)
    for heads in (1, 2, 4):
        d = n // heads
        for h in range(heads):
            rows = o[h * d:(h + 1) * d]  # head h's W^T (d x D)
            torch.testing.assert_close(rows @ rows.T, torch.eye(d), atol=1e-5, rtol=0)  # semi-orthogonal
            assert kappa(rows) == pytest.approx(1, abs=1e-5)


# ---- conditioned ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(num_heads=1), dict(num_heads=3), dict(num_heads=4, pos_embed="learn"),
                                dict(embed_dim=64, num_heads=8, global_pool="token")])
def test_conditioned_condition_number_one_per_head_and_per_matrix(kw):
    """kappa(W) = s_max / s_min = 1 within float32 rounding, for each head's d x D slice of W_Q,
    W_K, W_V and for each whole D x D matrix; each head's V is a rectangular identity."""
    model = initialised("conditioned", **kw)
    for block in model.blocks:
        attn = block.attn
        dim, d = model.embed_dim, attn.head_dim
        for w in blocks(attn):
            assert kappa(w) == pytest.approx(1, abs=1e-5)
            for h in range(attn.num_heads):
                assert kappa(head_rows(w, attn, h)) == pytest.approx(1, abs=1e-5)
        wv = blocks(attn)[2]
        for h in range(attn.num_heads):
            v = head_rows(wv, attn, h).T  # head h's value map x -> x v (D x d)
            assert torch.equal(v, torch.eye(dim)[:, h * d:(h + 1) * d])
        assert torch.equal(head_rows(wv, attn, 0).T[:d], torch.eye(d))  # head 0's: [I_d; 0]
        assert not head_rows(wv, attn, 0).T[d:].any()
        wq, wk, _ = blocks(attn)
        assert not torch.allclose(wq, wk)  # independent draws


def test_conditioned_value_path_passes_each_heads_coordinates():
    """With the value map I_D, timm's attention output before the projection is each head's
    attention-weighted average of its own d coordinates of the input (biases 0 under timm)."""
    model = initialised("conditioned", num_heads=3)
    attn = model.blocks[0].attn
    x = torch.randn(1, 5, 48)
    v = torch.nn.functional.linear(x, attn.qkv.weight[96:], attn.qkv.bias[96:])
    torch.testing.assert_close(v, x)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("base", ["timm", "torch"])
def test_every_weight_the_init_does_not_set_is_the_base(name, base):
    """Bit-identical to the base init at the same seed outside the rows an init names: conditioned
    and dct write only qkv rows (Q, K, V and K), mimetic_vo only V and the projection."""
    model, ref = initialised(name, seed=3, base=base), initialised(BASE_OF[base], seed=3)
    mine, theirs = params(model), params(ref)
    dim = model.embed_dim
    written = {"conditioned": slice(0, 3 * dim), "dct": slice(dim, 2 * dim),
               "mimetic_vo": slice(2 * dim, 3 * dim)}[name]
    for key, value in mine.items():
        if key.endswith("attn.qkv.weight"):
            keep = torch.ones(3 * dim, dtype=torch.bool)
            keep[written] = False
            assert torch.equal(value[keep], theirs[key][keep]), key
            assert not torch.equal(value[written], theirs[key][written]), key
        elif key.endswith("attn.proj.weight") and name == "mimetic_vo":
            assert not torch.equal(value, theirs[key]), key
        else:
            assert torch.equal(value, theirs[key]), key  # biases included


# ---- dct -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(embed_dim=64, num_heads=4, pos_embed="learn", global_pool="token")])
def test_dct_keys_are_the_dct_of_the_token(kw):
    model = initialised("dct", **kw)
    dim = model.embed_dim
    paper = torch.from_numpy(scipy.fft.dct(np.eye(dim), axis=-1, norm="ortho").T).float()
    x = torch.randn(7, dim)
    for block in model.blocks:
        attn = block.attn
        wk = blocks(attn)[1]
        torch.testing.assert_close(wk, paper, atol=1e-6, rtol=0)
        keys = torch.nn.functional.linear(x, wk, attn.qkv.bias[dim:2 * dim])  # biases 0 under timm
        torch.testing.assert_close(keys, torch.from_numpy(scipy.fft.dct(x.double().numpy(), norm="ortho")).float(),
                                   atol=1e-5, rtol=0)
        for h in range(attn.num_heads):  # head h: an orthonormal band of frequencies h*d..(h+1)*d-1
            rows = head_rows(wk, attn, h)
            torch.testing.assert_close(rows @ rows.T, torch.eye(attn.head_dim), atol=1e-5, rtol=0)


# ---- mimetic_vo ----------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["timm", "torch"])
@pytest.mark.parametrize("seed", [0, 5])
def test_mimetic_vo_is_mimetics_v_proj_with_the_bases_q_k(base, seed):
    vo, mim, ref = (initialised(n, seed=seed, base=base) for n in ("mimetic_vo", "mimetic", BASE_OF[base]))
    dim = vo.embed_dim
    for a, b, c in zip(vo.blocks, mim.blocks, ref.blocks):
        assert torch.equal(a.attn.qkv.weight[2 * dim:], b.attn.qkv.weight[2 * dim:])  # V: mimetic's
        assert torch.equal(a.attn.proj.weight, b.attn.proj.weight)  # proj: mimetic's
        assert torch.equal(a.attn.qkv.weight[:2 * dim], c.attn.qkv.weight[:2 * dim])  # Q, K: the base's
        assert not torch.equal(a.attn.qkv.weight[:2 * dim], b.attn.qkv.weight[:2 * dim])


def test_mimetic_vo_realises_alpha_z_minus_beta_i():
    model = initialised("mimetic_vo")
    for block in model.blocks:
        vo = block.attn.qkv.weight[96:].T @ block.attn.proj.weight.T  # x -> x W_v^T W_o^T
        assert torch.diagonal(vo).mean().item() == pytest.approx(-0.4, abs=0.03)
        assert (vo + 0.4 * torch.eye(48)).abs().max() <= 0.4 * (3 / 48) ** 0.5 + 1e-5  # the rest: alpha Z


# ---- seeding, models, bad geometry ---------------------------------------------------------

@pytest.mark.parametrize("name", NEW)
def test_same_seed_bit_identical_other_seed_differs(name):
    a, b, c = (small(pos_embed="learn") for _ in range(3))  # built from different RNG states
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for model, seed in ((a, 7), (b, 7), (c, 8)):
        apply_init(model, InitConfig(name=name), seed=seed)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG untouched
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("pos_embed", ["sincos", "learn"])
def test_project_models_take_the_new_inits(name, pos_embed):
    model = create("vit_nano_patch2_8", pos_embed=pos_embed)
    pe = model.pos_embed.clone()
    result = apply_init(model, InitConfig(name=name), seed=0)
    if pos_embed == "sincos":
        assert torch.equal(model.pos_embed, pe)  # a fixed PE is no init's to change
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert fidelity.measure(model, result)["pseudo"]  # the epoch-0 fidelity reads the reference


@pytest.mark.parametrize("name", NEW)
def test_attention_outside_the_fused_layout_is_refused(name):
    model = small()
    model.blocks[1].attn = Attention(48, num_heads=3, attn_head_dim=8, qkv_bias=True)  # 3 x 8 = 24 != 48
    with pytest.raises(ValueError, match=r"blocks\[1\]\.attn\.qkv=\(72, 48\) is not allowed: expected a fused qkv"):
        apply_init(model, InitConfig(name=name), seed=0)
