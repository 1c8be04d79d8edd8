"""Embedding rank k and the width conditions (structinit/rank.py), and the rank command on digits."""
import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from structinit.cli import main
from structinit.models import create, vit
from structinit.rank import conditions, embeddings, measure, numerical_rank, stable_rank

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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

