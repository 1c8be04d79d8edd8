"""Mimetic init (Trockman & Kolter 2023): Q/K and V/proj drawn near a scaled identity."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from structinit.inits import InitConfig, InitResult, register
from structinit.inits.default import base_init, reference
from structinit.inits.qkv import set_qk, set_vo


def mimetic_factors(dim: int, rank: int, alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A = alpha Z + beta I with Z_ij ~ U(+-sqrt(3/dim)) (variance 1/dim); SVD A = U S V^T.
    Returns (L, R, A) with L = U_r S_r^1/2, R = V_r S_r^1/2 (dim x rank), so L R^T is the best
    rank-`rank` approximation of A, split symmetrically. Pass beta < 0 for alpha Z - |beta| I."""
    bound = (3.0 / dim) ** 0.5
    z = torch.empty(dim, dim).uniform_(-bound, bound)
    a = alpha * z + beta * torch.eye(dim)
    u, s, vh = torch.linalg.svd(a)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root, a


def mimetic_vo(model: VisionTransformer, cfg: InitConfig) -> None:
    """Per block, W_v W_o = alpha_vo Z - beta_vo I at full rank."""
    for block in model.blocks:
        left, right, _ = mimetic_factors(model.embed_dim, model.embed_dim, cfg.alpha_vo, -cfg.beta_vo)
        set_vo(block.attn, left, right)


@register("mimetic", reads=("base", "alpha_qk", "beta_qk", "alpha_vo", "beta_vo"))
def mimetic(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """Mimetic init. Per head: W_q W_k^T = rank-d truncation of alpha_qk Z + beta_qk I (0.7, 0.7);
    per block: W_v W_o = alpha_vo Z - beta_vo I (0.4, 0.4); Z_ij ~ U(+-sqrt(3/D)), fresh each time.
    Everything else keeps the base init; a fixed sin-cos PE is untouched."""
    base_init(model, cfg.base)
    for block in model.blocks:
        attn = block.attn
        pairs = [mimetic_factors(model.embed_dim, attn.head_dim, cfg.alpha_qk, cfg.beta_qk)
                 for _ in range(attn.num_heads)]
        set_qk(attn, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))
    mimetic_vo(model, cfg)
    return reference(model, cfg)
