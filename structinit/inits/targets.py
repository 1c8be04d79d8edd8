"""Impulse targets on the patch grid: offsets, target indices, shift matrices, and the two
fidelity measures (mass on the target key, argmax hit). Pure tensor math.

An impulse filter of size f with its one tap at (dy, dx), dy, dx in {-f//2, ..., f//2}, maps
token (r, c) to token (r + dy, c + dx) (row-major index r * W + c). With zero padding a query
whose target falls outside the grid has none (index -1): its row of the shift matrix is zero.
"""
from __future__ import annotations

import torch

# The follow-up's order of the 3x3 taps (flat index dy*3 + dx + 4): centre, up, right, left,
# down, then the diagonals. ViT-T's 3 heads get centre, up, right.
FOLLOWUP_3X3_ORDER = (4, 1, 5, 3, 7, 0, 2, 6, 8)


def all_offsets(f: int) -> list[tuple[int, int]]:
    """Every tap of an f x f window in `cover` order: the follow-up's 3x3 order first, then the
    outer taps by distance from the centre (row-major among equals)."""
    r = f // 2
    core = [(k // 3 - 1, k % 3 - 1) for k in FOLLOWUP_3X3_ORDER]
    outer = sorted(((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if max(abs(dy), abs(dx)) > 1),
                   key=lambda o: (o[0] ** 2 + o[1] ** 2, o))
    return core + outer


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


def mass_on_target(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """probs (..., heads, Nq, Nk) attention rows, targets (heads, Nq) key indices (-1: none).
    Per head, the mean probability on the target key over queries with a target (and over any
    leading batch dims)."""
    probs = probs.reshape(-1, *probs.shape[-3:])
    valid = targets >= 0
    idx = targets.clamp(min=0).expand(probs.shape[0], -1, -1).unsqueeze(-1)
    on_target = probs.gather(-1, idx).squeeze(-1)
    return (on_target * valid).sum((0, 2)) / (valid.sum(-1).clamp(min=1) * probs.shape[0])


def mass_and_hit(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`mass_on_target`, and per head the share of those queries whose argmax is the target."""
    valid = targets >= 0
    hit = ((probs.argmax(-1) == targets) & valid).reshape(-1, *targets.shape).sum((0, 2))
    count = valid.sum(-1).clamp(min=1) * (probs.numel() // (probs.shape[-1] * targets.numel()))
    return mass_on_target(probs, targets), hit / count
