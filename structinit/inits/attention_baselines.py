"""Attention-init baselines from other papers (issue 29): conditioned, DCT, and mimetic's V/proj alone.

Each writes into timm's fused qkv Linear, whose weight stacks W_Q, W_K, W_V (each D x D, rows
h*d..(h+1)*d for head h, d = D / heads) and computes x W^T; the per-head maps below are written in
that row layout. Every weight an init does not name keeps the `base` init (biases included).
"""
from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer

from structinit.inits import InitConfig, InitResult, register
from structinit.inits.default import base_init, reference
from structinit.inits.mimetic import mimetic
from structinit.validate import check


def fused_attention(model: VisionTransformer, init: str) -> tuple[int, int, int]:
    """(D, heads, d) of the model's attention, after checking that every block has timm's fused
    qkv of 3 D rows (heads * d = D) and a D x D projection: the layout these inits write into."""
    dim = model.embed_dim
    for index, block in enumerate(model.blocks):
        attn = block.attn
        qkv = getattr(attn, "qkv", None)
        rows = None if qkv is None else tuple(qkv.weight.shape)
        check(f"blocks[{index}].attn.qkv", rows, f"a fused qkv Linear of shape (3 * embed_dim, embed_dim) = "
              f"{(3 * dim, dim)} for init={init!r} (heads * head_dim = embed_dim)", rows == (3 * dim, dim))
        proj = tuple(attn.proj.weight.shape)
        check(f"blocks[{index}].attn.proj", proj, f"a ({dim}, {dim}) projection for init={init!r}", proj == (dim, dim))
    attn = model.blocks[0].attn
    return dim, attn.num_heads, attn.head_dim


def orthogonal(dim: int) -> torch.Tensor:
    """A Haar-random D x D orthogonal matrix (PyTorch's QR-based `orthogonal_`, in float64 so that
    its singular values are 1 to float32 rounding once it is written into the weights)."""
    return torch.nn.init.orthogonal_(torch.empty(dim, dim, dtype=torch.float64))


@register("conditioned", reads=("base",))
def conditioned(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """Conditioned init (Saratchandran, Lucey et al., "Conditioned Initialization for Attention",
    ICLR 2026 submission, openreview.net/forum?id=cKNOCYPo2W; no arXiv id or code found): the
    value map a rectangular identity and the query/key maps semi-orthogonal, so each has condition
    number kappa = s_max / s_min = 1, which tightens the paper's bound on the condition number of
    the attention Jacobian at init (reported 20-30 % faster convergence).
    Per block: W_Q = O_q, W_K = O_k with O_q, O_k independent Haar-random D x D orthogonal
    matrices, W_V = I_D. Head h's maps (x -> x M, D x d) are then W_q^h = O_q[hd:(h+1)d]^T and
    W_k^h = O_k[hd:(h+1)d]^T, orthonormal columns (W^T W = I_d: semi-orthogonal, kappa = 1), and
    W_v^h = I_D[:, hd:(h+1)d], the rectangular identity [I_d; 0] with its block moved down to
    rows hd..(h+1)d (head 0's is [I_d; 0] itself): each head passes on its own d coordinates.
    The whole W_Q, W_K (orthogonal) and W_V (= I_D) also have kappa = 1. The projection, all
    biases, and everything outside attention keep the base init.
    Open choices: (1) scale: unit singular values, the paper's semi-orthogonal (kappa does not fix
    a scale); a LayerNorm'd token (norm sqrt(D)) gets queries and keys of norm ~sqrt(d), so
    timm's d^-1/2 leaves logits of order 1; ||W_q^h||_F = sqrt(d), 8 on ViT-T/2 (timm's base:
    2.2). (2) V's layout when d < D: the shifted blocks (W_V = I_D), the one layout where every
    head's V and the block's whole V both have kappa = 1 (the same [I_d; 0] for every head would
    make the heads copy the same d coordinates and the whole V singular). (3) Q/K: one orthogonal
    matrix split across the heads, not an independent draw per head, so the whole matrix is
    conditioned too and the heads look at orthogonal subspaces. (4) proj: the base init; the paper
    names only Q, K, V."""
    base_init(model, cfg.base)
    dim, _, _ = fused_attention(model, "conditioned")
    for block in model.blocks:
        weight = block.attn.qkv.weight
        weight[:dim] = orthogonal(dim)
        weight[dim:2 * dim] = orthogonal(dim)
        weight[2 * dim:] = torch.eye(dim)
    return reference(model, cfg)


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix C (n x n): C[k, j] = s_k cos(pi (2j + 1) k / (2n)) with
    s_0 = sqrt(1/n), s_k = sqrt(2/n); row k is the k-th cosine basis vector, C C^T = I, and C x is
    the DCT-II of x (scipy.fft.dct(x, norm="ortho"))."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None]
    c = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


@register("dct", reads=("base",))
def dct(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """DCT init (Pan, Hamdan, Zhu, Cetin, Bagci, "Discrete Cosine Transform Based Decorrelated
    Attention for Vision Transformers", arXiv 2405.13901, IJCAI 2026): one of W_Q, W_K, W_V set
    to the orthonormal D x D DCT-II matrix C (`dct_matrix`), trainable, the rest as usual.
    Here W_K = C in every block: the key of a token x is its DCT, k = C x, and head h's keys are
    its coefficients at frequencies hd..(h+1)d-1 (d rows of C: orthonormal, a band of the
    spectrum per head). Q, V, the projection, all biases and everything else keep the base init.
    Open choices: (1) which matrix: K, the paper's best in every table (Swin-T on ImageNet-1K
    81.474 -> 81.728 % top-1 is its "DCT-K"; Q gives 81.568, V 81.528; ViT-B/32 and CIFAR-10 also
    best with K). (2) DCT type and scale: type II, orthonormal, unscaled, as the authors' code builds
    it (scipy's dct of the identity with norm="ortho"); its rows have norm 1, far above the timm
    base's (0.02 sqrt(D)), as in the paper (its Swin's Linear init is also TN(0, 0.02)).
    (3) heads: the whole D x D matrix in the fused qkv, split across heads as the authors' code does
    (not a d x d DCT per head, which would not map D to d).
    Caveat on the source: in the released Swin code of the trainable variant
    (NUBagciLab/DCT-Transformer, */swin_t_dct*_trainable), SwinTransformer.__init__ re-draws every
    nn.Linear with TN(0, 0.02) after the attention has written the DCT rows into its qkv Linear,
    so as released that Swin starts from the plain init; the ViT-B/32 code and the fixed-DCT Swin
    variants keep the DCT."""
    base_init(model, cfg.base)
    dim, _, _ = fused_attention(model, "dct")
    c = dct_matrix(dim)
    for block in model.blocks:
        block.attn.qkv.weight[dim:2 * dim] = c
    return reference(model, cfg)


@register("mimetic_vo", reads=("base", "alpha_vo", "beta_vo"))
def mimetic_vo_alone(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """Mimetic V/proj alone: per block W_V W_O = alpha_vo Z - beta_vo I (0.4, 0.4; Z_ij ~
    U(+-sqrt(3/D))), written by mimetic's own V/proj writer (`mimetic.mimetic_vo`), with Q/K at the
    base init. Source: Trockman & Kolter, "Mimetic Initialization of Self-Attention Layers", ICML
    2023, arXiv 2305.09828; V-O alone set a modded-nanogpt speed record (KellerJordan/modded-nanogpt
    PR #214, January 2026; that record's form is W_V = sqrt(b) I, W_O = -sqrt(b) I per head with
    b = 0.05 plus N(0, 0.01) noise, not mimetic's alpha Z - beta I at 0.4 that is used here).
    A paired ablation: at the same seed, V and the projection are bit-identical to `mimetic`'s and
    Q/K (and every other weight) to the base init's. It runs `mimetic` whole (so its V/proj draws
    come from the same point of the random stream, after mimetic's Q/K draws) and puts back the
    Q/K rows the base init drew first from the same seed."""
    fused_attention(model, "mimetic_vo")
    dim = model.embed_dim
    with torch.random.fork_rng(devices=[]):  # the base draw mimetic itself starts with, then the stream is rewound
        base_init(model, cfg.base)
        base_qk = [block.attn.qkv.weight[:2 * dim].clone() for block in model.blocks]
    result = mimetic(model, cfg)
    for block, qk in zip(model.blocks, base_qk):
        block.attn.qkv.weight[:2 * dim] = qk
    return result
