"""Embedding rank: the k in the paper's conditions.

ConvMixer (Proposition 1): fixed filters suffice when D >= k f^2, k the rank of the patch
embeddings X (N x D). ViT (its heuristic transfer): every head is one "filter", so h >= f^2 heads
and D/h >= k channels per head. k is measured per image: the numerical rank (singular values at
least `rtol` times the largest) and the stable rank ||X||_F^2 / ||X||_2^2 (a smooth lower bound).
"""
from __future__ import annotations

import statistics

import torch
from timm.models.convmixer import ConvMixer

from structinit.models import image_tokens, spatial_filters


def numerical_rank(x: torch.Tensor, rtol: float = 1e-2) -> int:
    """#singular values >= rtol * the largest (0 for a zero matrix)."""
    s = torch.linalg.svdvals(x.double())
    return int((s >= rtol * s[0]).sum()) if s[0] > 0 else 0


def stable_rank(x: torch.Tensor) -> float:
    """||X||_F^2 / ||X||_2^2, in [1, rank]."""
    s = torch.linalg.svdvals(x.double())
    return float((s ** 2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def conditions(D: int, k: int, f: int, h: int | None = None) -> dict:
    """The paper's width conditions for embedding width D, embedding rank k and filter size f:
    D >= k f^2 (ConvMixer, Proposition 1) and, for a ViT with h heads, h >= f^2 and D/h >= k."""
    out = {"D_ge_k_f2": bool(D >= k * f * f)}
    if h is not None:
        out.update(h_ge_f2=bool(h >= f * f), head_dim_ge_k=bool(D // h >= k))
    return out


@torch.no_grad()
def embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patch embeddings the first block sees: a ViT's patch tokens with their position
    embedding (`models.image_tokens`, prefix tokens dropped), a ConvMixer's stem output."""
    was_training = model.training
    model.eval()  # a ConvMixer's stem ends in BatchNorm: its running statistics, not the batch's
    try:
        if isinstance(model, ConvMixer):
            return model.stem(images).flatten(2).transpose(1, 2)
        return image_tokens(model, images)[:, model.num_prefix_tokens:]
    finally:
        model.train(was_training)


def measure(model, images: torch.Tensor, filter_size: int, rtol: float = 1e-2) -> dict:
    """k (median numerical rank over the images), the stable rank, min(N, D), and the conditions.
    `filter_size` is the ViT's f (the init's); a ConvMixer's is its kernel size."""
    if isinstance(model, ConvMixer):
        filter_size = spatial_filters(model)[0].kernel_size[0]
    x = embeddings(model, images)
    n, d = x.shape[1], x.shape[2]
    ranks = [numerical_rank(xi, rtol) for xi in x]
    k = int(statistics.median_low(ranks))
    out = {"k": k, "k_min": min(ranks), "k_max": max(ranks), "stable_rank": statistics.fmean(stable_rank(xi) for xi in x),
           "rtol": rtol, "images": len(x), "N": n, "D": d, "min_N_D": min(n, d), "filter_size": filter_size,
           "width_needed": k * filter_size * filter_size}
    heads = getattr(getattr(model, "blocks", [None])[0], "attn", None)
    h = heads.num_heads if heads is not None else None
    if h is not None:
        out.update({"heads": h, "head_dim": d // h})
    out.update(conditions(d, k, filter_size, h))
    out["conditions_met"] = all(v for key, v in out.items() if key in ("D_ge_k_f2", "h_ge_f2", "head_dim_ge_k"))
    return out


def text(m: dict) -> str:
    lines = [f"k = {m['k']} (numerical rank at rtol {m['rtol']:g}, median of {m['images']} images; "
             f"range {m['k_min']}-{m['k_max']}), stable rank {m['stable_rank']:.2f}, min(N, D) = {m['min_N_D']} "
             f"(N = {m['N']}, D = {m['D']})",
             f"width the theory asks for: k f^2 = {m['k']} x {m['filter_size']}^2 = {m['width_needed']}: "
             f"D = {m['D']} {'>=' if m['D_ge_k_f2'] else '<'} {m['width_needed']}"]
    if "heads" in m:
        f2 = m["filter_size"] ** 2
        lines.append(f"heads h = {m['heads']} {'>=' if m['h_ge_f2'] else '<'} f^2 = {f2}; head dim D/h = "
                     f"{m['head_dim']} {'>=' if m['head_dim_ge_k'] else '<'} k = {m['k']}")
    return "\n".join(lines)
