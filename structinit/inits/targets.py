"""Impulse targets on the patch grid: offsets, target indices, shift matrices, multi-tap target
maps, and the two fidelity measures (mass on the intended keys, argmax hit). Pure tensor math.

An impulse filter of size f with its one tap at (dy, dx), dy, dx in {-f//2, ..., f//2}, maps
token (r, c) to token (r + dy, c + dx) (row-major index r * W + c). With zero padding a query
whose target falls outside the grid has none (index -1): its row of the shift matrix is zero.
"""
from __future__ import annotations

import math

import torch

# The follow-up's order of the 3x3 taps (flat index dy*3 + dx + 4): centre, up, right, left,
# down, then the diagonals. ViT-T's 3 heads get centre, up, right.
FOLLOWUP_3X3_ORDER = (4, 1, 5, 3, 7, 0, 2, 6, 8)


def all_offsets(f: int) -> list[tuple[int, int]]:
    """Every tap of an f x f window once, in `cover` order: the centre, then the rings from the
    outermost (radius f//2) inwards; within a ring of radius r, the follow-up's compass order
    scaled to r (up, right, left, down, then the diagonals), then its other taps row-major.
    For f = 3 this is exactly the follow-up's order. For f > 3 the first heads spread over the
    whole window, so with fewer heads than taps (h < f^2, e.g. ViT-T's 3) a larger f still means
    a larger receptive field: starting from the 3x3 core instead would give f = 3, 5, 7 the same
    taps for h <= 9 and make a filter-size study compare identical inits."""
    compass = [(k // 3 - 1, k % 3 - 1) for k in FOLLOWUP_3X3_ORDER[1:]]
    taps = [(0, 0)]
    for r in range(f // 2, 0, -1):
        ring = [(r * dy, r * dx) for dy, dx in compass]
        ring += [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                 if max(abs(dy), abs(dx)) == r and (dy, dx) not in ring]
        taps += ring
    return taps


def cover_offsets(f: int, heads: int) -> list[tuple[int, int]]:
    """Deterministic: head i takes tap i mod f^2, so all f^2 taps are used before any repeats."""
    taps = all_offsets(f)
    return [taps[i % len(taps)] for i in range(heads)]


def random_offsets(f: int, heads: int) -> list[tuple[int, int]]:
    """v1: each head draws its tap uniformly from the f^2 (with replacement), from torch's RNG."""
    r = f // 2
    idx = torch.randint(f * f, (heads,)).tolist()
    return [(k // f - r, k % f - r) for k in idx]


def impulse_targets(grid: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
    """(N,) index of each query's target key, -1 where the shift leaves the grid."""
    h, w = grid
    rows = torch.arange(h * w) // w + offset[0]
    cols = torch.arange(h * w) % w + offset[1]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return torch.where(inside, rows * w + cols, -1)


def shift_matrix(grid: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
    """H (N x N): H[i, target(i)] = 1; (H X) is X convolved with the one-hot kernel, zero padded."""
    t = impulse_targets(grid, offset)
    n = t.numel()
    h = torch.zeros(n, n)
    valid = t >= 0
    h[valid.nonzero().squeeze(1), t[valid]] = 1.0
    return h


def target_maps(grid: tuple[int, int], offsets, shape: str = "impulse", blob: int = 3,
                sigma: float = 1.0) -> torch.Tensor:
    """(heads, N, N) target attention maps, rows summing to 1 (0 where no tap is inside the grid).
    `impulse`: the shift matrix of the head's offset. `box` / `gaussian`: a multi-tap blob, the
    blob x blob window centred on the head's tap, uniform or weighted exp(-|t|^2 / 2 sigma^2),
    clipped to the grid and renormalised (with the tap at the centre and blob = f: the whole
    f x f window, i.e. a box or Gaussian filter)."""
    r = blob // 2 if shape != "impulse" else 0
    maps = []
    for oy, ox in offsets:
        m = torch.zeros(grid[0] * grid[1], grid[0] * grid[1], dtype=torch.float64)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                weight = 1.0 if shape != "gaussian" else math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
                m += weight * shift_matrix(grid, (oy + dy, ox + dx)).double()
        maps.append(m / m.sum(-1, keepdim=True).clamp(min=1e-12))
    return torch.stack(maps)


def mass_and_hit(probs: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """probs (..., heads, Nq, Nk) attention rows; support (heads, Nq, Nk), or with the same leading
    dims as probs, the intended keys of each query (a row without any: no target). Per head, over
    queries with a target (and any leading batch dims): the mean attention mass on the intended
    keys, and the share of queries whose most-attended key is one of them."""
    probs = probs.reshape(-1, *probs.shape[-3:])
    support = support.reshape(-1, *support.shape[-3:]).expand_as(probs)
    has = support.any(-1)  # (B, heads, Nq)
    count = has.sum((0, 2)).clamp(min=1)
    mass = ((probs * support).sum(-1) * has).sum((0, 2)) / count
    hit = support.gather(-1, probs.argmax(-1, keepdim=True)).squeeze(-1)
    return mass, (hit & has).sum((0, 2)) / count
