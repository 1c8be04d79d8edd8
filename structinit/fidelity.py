"""How well a model's attention realises its impulse targets, per block and head.

`target_mass`: mean attention probability on the target key, over queries whose target is
inside the grid; `argmax_hit`: the share of those queries whose most-attended key is the target.
Both are measured as the model computes them: in a forward pass, on the tokens each block's
attention sees when the pseudo input enters block 0, or when a batch of real images does
(prefix tokens such as the class token are keys there, never targets).
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from structinit.inits import InitResult
from structinit.inits.targets import mass_and_hit, target_maps
from structinit.models import attention_inputs, attention_probs, grid_size, pseudo_tokens


def support(result: InitResult, index: int, grid) -> torch.Tensor:
    """(heads, N, N) intended keys of block `index`: what the init solved for, else the impulses
    at its reference offsets."""
    return result.supports[index] if result.supports else target_maps(grid, result.offsets[index]) > 0


def _block_entry(index: int, probs: torch.Tensor, result: InitResult, grid, prefix: int) -> dict:
    keys = torch.nn.functional.pad(support(result, index, grid), (prefix, 0))  # prefix tokens: never intended
    mass, hit = mass_and_hit(probs[..., prefix:, :], keys)
    offsets = result.offsets[index]
    return {"block": index, "heads": [
        {"head": h, "offset": list(o), "target_mass": round(float(m), 4), "argmax_hit": round(float(a), 4)}
        for h, (o, m, a) in enumerate(zip(offsets, mass, hit))]}


def _fidelity(model: VisionTransformer, result: InitResult, inputs: list[torch.Tensor]) -> list[dict]:
    grid, prefix = grid_size(model), model.num_prefix_tokens
    return [_block_entry(i, attention_probs(blk.attn, x), result, grid, prefix)
            for i, (blk, x) in enumerate(zip(model.blocks, inputs))]


def pseudo_input_fidelity(model: VisionTransformer, result: InitResult) -> list[dict]:
    """Per block, fidelity in a forward pass whose patch tokens enter block 0 as its pseudo input:
    block 0 sees LayerNorm(pseudo input) (what it was solved on), block b > 0 what blocks 0..b-1
    make of it (not what block b was solved on: the MLPs, V and the projections transform it).
    A data-aware init's pseudo input is its batch of images: there, block b saw exactly this."""
    if result.images is not None:
        return data_fidelity(model, result, result.images)
    tokens = pseudo_tokens(model, result.pseudo_inputs[0])
    return _fidelity(model, result, attention_inputs(model, lambda: model.blocks(tokens)))


def data_fidelity(model: VisionTransformer, result: InitResult, images: torch.Tensor) -> list[dict]:
    """Per block, fidelity on the real inputs its attention sees in a forward pass of `images`."""
    return _fidelity(model, result, attention_inputs(model, lambda: model(images)))


def qk_norms(model: VisionTransformer) -> list[dict]:
    """Per block, each head's ||W_q||_F and ||W_k||_F as stored in timm's fused qkv (any init)."""
    out = []
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        w = attn.qkv.weight.detach().reshape(3, attn.num_heads, attn.head_dim, -1)
        out.append({"block": i, "wq_norm": w[0].flatten(1).norm(dim=1).tolist(),
                    "wk_norm": w[1].flatten(1).norm(dim=1).tolist()})
    return out


def chance(model: VisionTransformer) -> float:
    """The argmax hit of attention that ignores the targets: one key in T."""
    return 1.0 / (grid_size(model)[0] * grid_size(model)[1] + model.num_prefix_tokens)


def near_chance(hit, chance):
    """Whether an argmax hit (a number, or a column of them) is below twice chance: the structure
    the init wrote does not reach these inputs."""
    return hit < 2 * chance


def measure(model: VisionTransformer, result: InitResult, images: torch.Tensor | None = None) -> dict:
    """{"pseudo": per-block forward-pass fidelity on the pseudo input, "data": the same on `images`
    or None, "weights": per-block per-head W_q, W_k norms, "chance": the hit of a blind map}."""
    return {"pseudo": pseudo_input_fidelity(model, result),
            "data": None if images is None else data_fidelity(model, result, images),
            "weights": qk_norms(model), "chance": chance(model)}


def summary(blocks: list[dict]) -> dict:
    """Mean, min and max of both measures over every block and head."""
    heads = [h for b in blocks for h in b["heads"]]
    out = {}
    for key in ("target_mass", "argmax_hit"):
        values = [h[key] for h in heads]
        out[key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    return out


@torch.no_grad()
def plot_attention(model: VisionTransformer, result: InitResult, path: str, block: int = 0, queries: int = 4) -> None:
    """PNG of block `block`'s initial attention on its pseudo input: one row per head, one column
    per query position (spread over the grid), each the query's attention over the patch grid
    with the query (circle) and its impulse target (square) marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blk = model.blocks[block]
    probs = attention_probs(blk.attn, blk.norm1(result.pseudo_inputs[block])[None])[0]
    gh, gw = grid_size(model)
    cells = [(gh * (i + 1) // (queries + 1), gw * (j + 1) // (queries + 1)) for i, j in
             zip(range(queries), reversed(range(queries)))]
    heads = probs.shape[0]
    fig, axes = plt.subplots(heads, queries, figsize=(2.2 * queries, 2.2 * heads), squeeze=False)
    for h in range(heads):
        dy, dx = result.offsets[block][h]
        for j, (r, c) in enumerate(cells):
            ax = axes[h][j]
            ax.imshow(probs[h, r * gw + c].reshape(gh, gw).numpy(), cmap="viridis")
            ax.scatter([c], [r], s=30, facecolors="none", edgecolors="white")
            if 0 <= r + dy < gh and 0 <= c + dx < gw:
                ax.scatter([c + dx], [r + dy], s=60, marker="s", facecolors="none", edgecolors="red")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"head {h} ({dy:+d},{dx:+d})")
            if h == 0:
                ax.set_title(f"query ({r},{c})", fontsize=9)
    fig.suptitle(f"block {block}: initial attention on the pseudo input")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")  # a PNG whatever the name ends in
    plt.close(fig)
