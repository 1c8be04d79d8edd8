"""The papers' footings: base init, position embedding, pooling and the impulse fields, fixed together.

A footing names everything that made a paper's number besides the attention init itself, so a
study compares inits on one named footing instead of on a mix of defaults (method.md §1.2-1.4):

- `v1` (Zheng, Li, Lucey 2024; its official code): fixed 2-D sin-cos PE x1, global average
  pooling, PyTorch-default base, v1's gradient solver with its raw map (sharpness set by the norm
  constraint, no calibration), one Q/K solve shared by every block, random offsets, V and the
  output projection untouched.
- `followup` (2025): learned PE x18, class token, PyTorch-default base, closed form per block,
  mimetic V/proj (0.4 Z - 0.4 I), and the official sharpness: each head's factors normalised to
  Frobenius norm 7 (`factor_norm`).

`baseline` is the init that plays "default" on the footing: the same base with no structure
(the official codes' `skip`), so impulse - baseline differs only in the attention (Q/K, and V/proj
where value_proj is mimetic) and PE scale. `pe_scaled` writes all of impulse's but the Q/K solve, so
impulse - pe_scaled is the Q/K alone and pe_scaled - baseline the PE scale plus, on `followup`, the
mimetic V/proj. On a fixed PE with value_proj default (`v1`), `pe_scaled` equals the baseline's base
init bit for bit: no PE-scale control exists there.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Footing:
    model: dict  # ModelConfig fields
    init: dict = field(default_factory=dict)  # InitConfig fields every init of a study shares
    baseline: str = "default"  # the unstructured init on this footing's base


FOOTINGS = {
    "v1": Footing(model=dict(pos_embed="sincos", global_pool="avg"),
                  init=dict(base="torch", solver="gradient", target_mass=None, qk="shared", offsets="random",
                            value_proj="default", pe_scale=1.0),
                  baseline="torch_default"),
    "followup": Footing(model=dict(pos_embed="learn", global_pool="token"),
                        init=dict(base="torch", solver="closed_form", target_mass=None, factor_norm=7.0,
                                  qk="per_block", offsets="cover", value_proj="mimetic", pe_scale=18.0),
                        baseline="torch_default"),
}
