"""Attention through training: per block and head, on a fixed batch of held-out images, how far
each head looks, how spread its attention is, and how much of it stays on the tap its init aimed at.

    rows = measure(model, init, images)   # [{"block", "head", "distance", "entropy", "mass", "hit"}]
    block_metrics(rows)                   # {"attn_distance/b0": ..., ...}: head means, MLflow keys

`head_measures` is the math, on plain tensors (an attention map in, one number per head out):

- distance: the mean attention distance in patches (the ViT paper's Fig. 7; Raghu et al. 2021,
  "Do Vision Transformers See Like Convolutional Neural Networks?"): for a query at grid cell q,
  sum over keys k of a(q, k) * |pos(q) - pos(k)| (Euclidean, in patches on the grid), averaged
  over the patch queries. A class token (any prefix token) has no place on the grid: it is no
  query here, and as a key its weight is left out and the query's weights on the patches are
  renormalised, so the distance is where on the grid a query's attention lands on average. (Some
  reproductions count the class token's weight at distance 0 instead; then a head that moves its
  attention to the class token would read as more local.)
- entropy: of each patch query's whole attention row (prefix keys included), in nats, averaged
  over the patch queries; log(T) for uniform attention over T keys, 0 for one key.
- mass, hit: the mass on the init's intended keys and the share of queries whose most-attended key
  is one (targets.mass_and_hit, as fidelity.py measures the init): for every init, the tap its
  impulse head would have had (`fidelity.support`: impulse's solved targets, else the `cover`
  offsets of its reference), so every arm is measured against the same taps.

A run measures at epoch 0 (the init), every `checkpoint_every` epochs and at its last epoch
(train.train_loop), on `data.held_out`; each row's `epoch` is the epochs trained (0: the init).
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from structinit import fidelity
from structinit.inits import InitResult
from structinit.inits.targets import mass_and_hit
from structinit.models import attention_inputs, attention_probs, grid_size

MEASURES = ("distance", "entropy", "mass", "hit")


def grid_distances(grid: tuple[int, int]) -> torch.Tensor:
    """(N, N) Euclidean distance in patches between the grid cells of tokens i and j (row-major)."""
    h, w = grid
    pos = torch.stack([torch.arange(h * w) // w, torch.arange(h * w) % w], -1).double()
    return torch.cdist(pos, pos)


def head_measures(probs: torch.Tensor, support: torch.Tensor, grid: tuple[int, int],
                  prefix: int = 0) -> dict[str, torch.Tensor]:
    """probs (..., heads, T, T): softmax attention rows over T = prefix + N keys (prefix tokens
    first, then the N = H * W patches row-major); support (heads, N, N): each patch query's
    intended patch keys. Per head (averaged over the patch queries and any leading batch dims):
    {"distance", "entropy", "mass", "hit"} as the module docstring defines them."""
    queries = probs[..., prefix:, :].double()
    on_grid = queries[..., prefix:]
    share = on_grid.sum(-1)
    reach = (on_grid * grid_distances(grid).to(on_grid.device)).sum(-1) / share.clamp(min=1e-12)
    entropy = -torch.special.xlogy(queries, queries).sum(-1)  # 0 log 0 = 0
    keys = torch.nn.functional.pad(support.to(probs.device), (prefix, 0))  # prefix keys: never intended
    mass, hit = mass_and_hit(queries, keys)
    leading = tuple(range(reach.dim() - 2)) + (reach.dim() - 1,)  # every dim but the heads
    return {"distance": reach.mean(leading), "entropy": entropy.mean(leading), "mass": mass, "hit": hit.double()}


@torch.no_grad()
def measure(model: VisionTransformer, init: InitResult, images: torch.Tensor) -> list[dict]:
    """Per block and head, the measures of the model's attention in a forward pass of `images`
    (eval mode; the model's mode is left as found): rows {"block", "head", "distance", "entropy",
    "mass", "hit"}, the taps those of `init` (fidelity.support)."""
    grid, prefix = grid_size(model), model.num_prefix_tokens
    inputs = attention_inputs(model, lambda: model(images))
    rows = []
    for index, (block, x) in enumerate(zip(model.blocks, inputs)):
        got = head_measures(attention_probs(block.attn, x), fidelity.support(init, index, grid), grid, prefix)
        rows += [{"block": index, "head": h, **{k: float(got[k][h]) for k in MEASURES}}
                 for h in range(len(got["distance"]))]
    return rows


def block_metrics(rows: list[dict]) -> dict[str, float]:
    """Each block's head mean of every measure, keyed as MLflow shows them: `attn_distance/b0`,
    `attn_entropy/b0`, `attn_mass/b0`, `attn_hit/b0`, ..."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        for k in MEASURES:
            sums.setdefault(f"attn_{k}/b{r['block']}", []).append(r[k])
    return {k: sum(v) / len(v) for k, v in sums.items()}
