"""The paper's theory as measurable parts: embedding rank k, ConvMixer spatial filters, multi-tap
and hybrid impulse targets, and the ConvMixer filter study end to end."""
import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from structinit import fidelity
from structinit.cli import main
from structinit.inits import InitConfig, apply_init
from structinit.inits.targets import shift_matrix, target_maps
from structinit.models import create, spatial_filters, vit
from structinit.rank import conditions, embeddings, measure, numerical_rank, stable_rank

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ---- rank ------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 3, 7])
def test_numerical_rank_of_a_product_of_known_rank(r):
    g = torch.Generator().manual_seed(r)
    x = torch.randn(40, r, generator=g) @ torch.randn(r, 30, generator=g)
    assert numerical_rank(x) == r
    noisy = x + 1e-6 * torch.randn(40, 30, generator=g)  # far below rtol * largest
    assert numerical_rank(noisy) == r and numerical_rank(noisy, rtol=1e-9) == 30


def test_stable_rank_from_known_singular_values():
    u, _ = torch.linalg.qr(torch.randn(20, 3, generator=torch.Generator().manual_seed(0)))
    v, _ = torch.linalg.qr(torch.randn(10, 3, generator=torch.Generator().manual_seed(1)))
    x = u @ torch.diag(torch.tensor([3.0, 2.0, 1.0])) @ v.T
    assert stable_rank(x) == pytest.approx((9 + 4 + 1) / 9)
    assert numerical_rank(x, rtol=0.4) == 2  # 1 < 0.4 * 3
    assert stable_rank(torch.zeros(4, 4)) == 0 and numerical_rank(torch.zeros(4, 4)) == 0


def test_measure_reads_the_conditions_off_known_embeddings():
    """A ViT whose patch embeddings are exactly rank 1 (no PE, a linear patch embedding of a
    constant-direction input): k = 1, and the conditions follow from h, D and f."""
    model = vit(img_size=8, patch_size=2, embed_dim=36, depth=1, num_heads=9, in_chans=1, num_classes=2,
                pos_embed="learn")
    torch.nn.init.zeros_(model.pos_embed)
    torch.nn.init.zeros_(model.patch_embed.proj.bias)
    images = torch.rand(5, 1, 1, 1).expand(5, 1, 8, 8).contiguous()  # every patch the same: X = 1 v^T
    assert embeddings(model, images).shape == (5, 16, 36)
    m = measure(model, images, filter_size=3)
    assert m["k"] == 1 and m["N"] == 16 and m["D"] == 36 and m["min_N_D"] == 16
    assert m["width_needed"] == 9 and m["D_ge_k_f2"] and m["h_ge_f2"] and m["head_dim_ge_k"]
    assert not measure(model, images, filter_size=5)["h_ge_f2"]  # 9 heads < 25 taps


def test_the_width_conditions_by_hand():
    """D >= k f^2 alone for a ConvMixer; h >= f^2 and D/h >= k (D/h rounded down) for a ViT."""
    assert conditions(D=36, k=4, f=3) == {"D_ge_k_f2": True}
    assert conditions(D=35, k=4, f=3) == {"D_ge_k_f2": False}
    assert conditions(D=36, k=4, f=3, h=9) == {"D_ge_k_f2": True, "h_ge_f2": True, "head_dim_ge_k": True}
    assert conditions(D=64, k=8, f=3, h=8) == {"D_ge_k_f2": False, "h_ge_f2": False, "head_dim_ge_k": True}
    assert conditions(D=70, k=8, f=3, h=9)["head_dim_ge_k"] is False  # 70 // 9 = 7 channels per head

def test_convmixer_embeddings_are_its_stem_output():
    model = create("convmixer_64_4_p1", embed_dim=16, in_chans=1, num_classes=10)
    x = torch.rand(2, 1, 8, 8)
    got = embeddings(model, x)
    assert model.training  # left in the mode it was found in
    torch.testing.assert_close(got, model.eval().stem(x).flatten(2).transpose(1, 2))  # BatchNorm's running stats
    assert "heads" not in measure(model, x, filter_size=3)


@pytest.mark.parametrize("args,expect", [
    (["--model", "vit_tiny_patch2_32", "--img-size", "32", "--init", "impulse"], {"N": 256, "D": 192, "heads": 3}),
    (["--model", "vit_nano_patch2_8", "--init", "impulse"], {"N": 16, "D": 64, "heads": 4}),
    (["--model", "convmixer_64_4_p1", "--init", "learned", "--kernel-size", "5"], {"N": 64, "D": 64,
                                                                                   "filter_size": 5}),
])
@pytest.mark.slow
def test_rank_cli_on_digits(args, expect):
    """`structinit rank` in this process (its entry point runs as a subprocess in test_cli.py)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["rank", "--dataset", "digits", "--json", *args]) == 0
    m = json.loads(out.getvalue())
    assert {k: m[k] for k in expect} == expect
    assert 1 <= m["k"] <= m["min_N_D"] and 1 <= m["stable_rank"] <= m["k"] + 1e-6
    assert m["width_needed"] == m["k"] * m["filter_size"] ** 2


# ---- ConvMixer filters -------------------------------------------------------------------------

def convmixer(**kw):
    return create("convmixer_64_4_p1", **{"embed_dim": 32, "depth": 2, "in_chans": 1, "num_classes": 10, **kw})


def test_frozen_impulse_filters_cover_every_tap_and_are_frozen():
    model = convmixer(kernel_size=5)
    apply_init(model, InitConfig(name="frozen_impulse"), seed=0)
    for conv in spatial_filters(model):
        w = conv.weight.squeeze(1).flatten(1)  # (channels, 25)
        assert not conv.weight.requires_grad and conv.bias.requires_grad
        assert torch.equal(w.sum(1), torch.ones(32)) and torch.equal(w.max(1).values, torch.ones(32))  # one-hot
        assert set(w.argmax(1).tolist()) == set(range(25))  # 32 channels >= 25 taps: all covered


def test_distinct_filters_are_shared_across_channels():
    model = convmixer()
    apply_init(model, InitConfig(name="frozen_random", distinct_filters=4), seed=0)
    w = spatial_filters(model)[0].weight
    assert len({tuple(f.flatten().tolist()) for f in w}) == 4
    torch.testing.assert_close(w[1], w[5])
    assert w.abs().max() <= 1 / 3  # U(+-1/f)


def test_box_filters_are_one_direction_and_learned_filters_train():
    model = convmixer()
    apply_init(model, InitConfig(name="frozen_box"), seed=0)
    assert torch.allclose(spatial_filters(model)[0].weight, torch.full((32, 1, 3, 3), 1 / 9))
    apply_init(model, InitConfig(name="learned"), seed=0)  # the same model: filters trainable again
    assert all(conv.weight.requires_grad for conv in spatial_filters(model))
    from timm.optim import create_optimizer_v2

    apply_init(model, InitConfig(name="frozen_box"), seed=0)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(conv.weight) not in trained for conv in spatial_filters(model))  # frozen: not optimised


def test_filter_inits_refuse_a_vit_and_bad_sharing():
    with pytest.raises(ValueError, match=r"model='VisionTransformer' is not allowed: expected a timm ConvMixer"):
        apply_init(vit(img_size=8, patch_size=2, embed_dim=16, depth=1, num_heads=2), InitConfig(name="learned"))
    with pytest.raises(ValueError, match=r"distinct_filters=40 is not allowed: expected None or an integer in "
                                         r"\[1, embed_dim=32\]"):
        apply_init(convmixer(), InitConfig(name="frozen_random", distinct_filters=40))


# ---- multi-tap and hybrid targets ---------------------------------------------------------------

def test_target_maps():
    grid = (5, 5)
    impulse = target_maps(grid, [(0, 1)])
    torch.testing.assert_close(impulse[0], shift_matrix(grid, (0, 1)).double())
    box = target_maps(grid, [(0, 0)], "box", blob=3)[0]
    centre = 2 * 5 + 2
    assert (box[centre] > 0).sum() == 9 and torch.allclose(box[centre][box[centre] > 0], torch.full((9,), 1 / 9,
                                                                                                  dtype=torch.float64))
    assert (box[0] > 0).sum() == 4  # a corner query: the blob clipped to the grid, renormalised
    gauss = target_maps(grid, [(1, 0)], "gaussian", blob=3, sigma=0.8)[0]
    assert gauss[centre].argmax() == centre + 5 and gauss[centre, centre + 5] > gauss[centre, centre + 6] > 0
    torch.testing.assert_close(gauss.sum(-1)[gauss.sum(-1) > 0], torch.ones(int((gauss.sum(-1) > 0).sum()),
                                                                               dtype=torch.float64))


@pytest.mark.parametrize("kw", [dict(target_shape="box"), dict(target_shape="gaussian", blob_sigma=0.7),
                                dict(target_shape="box", blob=5), dict(mix="noise", mix_ratio=0.5),
                                dict(mix="noise", mix_ratio=0.8, target_shape="gaussian"),
                                dict(mix="mimetic", mix_ratio=0.3)], ids=str)
@pytest.mark.parametrize("mass", [0.6, 0.9])
@pytest.mark.parametrize("damping,hit", [(0.0, 0.98), (0.1, 0.92)])
def test_multi_tap_and_hybrid_targets_reach_the_requested_mass(kw, mass, damping, hit):
    """On each block's pseudo input (the solve's notes): the undamped solve is exact; the damped
    default (which fades the PE's weak directions so real inputs are not amplified) still reaches
    the mass, with a few queries of the mimetic blend on their own key instead of the tap."""
    model = vit(img_size=16, patch_size=2, embed_dim=96, depth=2, num_heads=4, num_classes=10)  # sin-cos PE
    result = apply_init(model, InitConfig(target_mass=mass, damping=damping, **kw), seed=0)
    masses = [m for note in result.notes["blocks"] for m in note["mass"]]  # mass on the intended taps
    assert abs(min(masses) - mass) <= 0.05 and abs(max(masses) - mass) <= 0.05
    assert min(h for note in result.notes["blocks"] for h in note["argmax_hit"]) >= hit
    block0 = fidelity.measure(model, result)["pseudo"][0]["heads"]  # the forward pass agrees where they meet
    assert [h["target_mass"] for h in block0] == pytest.approx(result.notes["blocks"][0]["mass"], abs=1e-3)


def test_mimetic_mix_beyond_the_solvable_rank_warns():
    """A random pseudo input of rank 64 > d = 24: the rank-d solve of impulse + identity-like
    mimetic map favours the query itself; the init says so instead of failing silently."""
    model = vit(img_size=16, patch_size=2, embed_dim=96, depth=1, num_heads=4, num_classes=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_init(model, InitConfig(pseudo_input="uniform", mix="mimetic", mix_ratio=0.3), seed=0)
    assert any("not reached on the pseudo input" in str(w.message) for w in caught)


# ---- the ConvMixer filter study ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.cluster
def test_convmixer_filter_study_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "studies" / "convmixer_filters.py"), "--preset", "smoke"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    trials = pd.read_parquet(summary["trials"])
    assert sorted(trials.init) == ["frozen_box", "frozen_impulse", "frozen_random", "learned"]
    assert set(trials.status) == {"TERMINATED"} and (trials.kernel_size == 3).all() and (trials.embed_dim == 16).all()
    assert (trials.init_rank_k >= 1).all() and (trials.init_width_ratio > 0).all()
    rep = subprocess.run([str(BIN / "structinit"), "report", "convmixer_filters"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "frozen_impulse - learned" in rep.stdout and "D/(k f²)=" in rep.stdout
    assert (tmp_path / "runs" / "convmixer_filters" / "report" / "filter_gap.png").exists()
