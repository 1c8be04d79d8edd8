"""Impulse targets (inits/targets.py): the shift matrix is a one-hot convolution with zero
padding; multi-tap and hybrid targets reach the requested mass; a mimetic mix beyond the
solvable rank warns."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from structinit import fidelity
from structinit.inits import InitConfig, apply_init
from structinit.inits.targets import (
    all_offsets,
    cover_offsets,
    impulse_targets,
    mass_and_hit,
    random_offsets,
    shift_matrix,
    target_maps,
)
from structinit.models import vit


@pytest.mark.parametrize("grid,f", [((5, 5), 3), ((5, 5), 5), ((4, 7), 3), ((16, 16), 5)])
def test_shift_matrix_equals_conv2d_with_one_hot_kernel(grid, f):
    h, w = grid
    x = torch.randn(6, h, w)  # 6 channels on the grid
    tokens = x.reshape(6, h * w).T  # (N, C), row-major
    for dy, dx in all_offsets(f):
        kernel = torch.zeros(f, f)
        kernel[dy + f // 2, dx + f // 2] = 1.0
        conv = F.conv2d(x[:, None], kernel[None, None], padding=f // 2)[:, 0]  # depthwise, same kernel
        shifted = shift_matrix(grid, (dy, dx)) @ tokens
        torch.testing.assert_close(shifted.T.reshape(6, h, w), conv)


def test_targets_outside_the_grid_are_minus_one():
    t = impulse_targets((3, 3), (-1, 1)).reshape(3, 3)
    assert t[0].tolist() == [-1, -1, -1]  # top row has nothing above it
    assert t[:, 2].tolist() == [-1, -1, -1]  # right column has nothing to its right
    assert t[1, 0] == 0 * 3 + 1 and t[2, 1] == 1 * 3 + 2


@pytest.mark.parametrize("f", [3, 5, 7])
def test_cover_uses_every_tap_before_repeating(f):
    offsets = cover_offsets(f, 2 * f * f + 1)
    assert sorted(offsets[:f * f]) == sorted((dy, dx) for dy in range(-(f // 2), f // 2 + 1)
                                             for dx in range(-(f // 2), f // 2 + 1))
    assert offsets[f * f:2 * f * f] == offsets[:f * f] and offsets[-1] == offsets[0]


def test_cover_starts_with_the_followup_order():
    assert cover_offsets(3, 9) == [(0, 0), (-1, 0), (0, 1), (0, -1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)]


@pytest.mark.parametrize("heads", [3, 4, 8])
def test_cover_gives_each_filter_size_its_own_taps(heads):
    """Larger filters reach further with the same heads: the outer ring comes right after the centre."""
    taps = {f: cover_offsets(f, heads) for f in (3, 5, 7)}
    assert taps[3] != taps[5] != taps[7] != taps[3]
    for f, offsets in taps.items():
        assert offsets[0] == (0, 0) and max(max(abs(dy), abs(dx)) for dy, dx in offsets) == f // 2


def test_random_offsets_follow_torch_seed():
    torch.manual_seed(3)
    a = random_offsets(5, 12)
    torch.manual_seed(3)
    assert random_offsets(5, 12) == a and all(-2 <= o <= 2 for off in a for o in off)


def test_mass_and_hit_on_hand_built_attention():
    # one head; query 0 intends key 1, query 1 key 2, query 2 has no target
    support = torch.tensor([[[False, True, False], [False, False, True], [False, False, False]]])
    probs = torch.tensor([[[0.1, 0.8, 0.1], [0.5, 0.2, 0.3], [1.0, 0.0, 0.0]]])
    mass, hit = mass_and_hit(probs, support)
    assert mass.item() == pytest.approx((0.8 + 0.3) / 2)
    assert hit.item() == pytest.approx(0.5)
    mass_b, hit_b = mass_and_hit(torch.stack([probs, probs]), support)  # a batch dim averages the same
    assert mass_b.item() == pytest.approx(mass.item()) and hit_b.item() == pytest.approx(hit.item())


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
