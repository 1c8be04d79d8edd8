"""Per-head query/key and value/projection maps, read from and written into timm's fused attention.

timm's `Attention` holds one Linear `qkv` of weight W (3 I x D, I = heads * d, d the head dim)
and computes x W^T + b: its rows stack W_Q, W_K, W_V (rows 0..I, I..2I, 2I..3I), and head h's
query is x W_Q[hd:(h+1)d]^T. A per-head map here is (D x d), x -> x M, so head h's query map is
wq[h] = W_Q[hd:(h+1)d]^T and its logits are x wq[h] wk[h]^T x^T (times timm's d^-1/2). The
value path is x -> proj(v(x)) = x W_V^T W_O^T.
"""
from __future__ import annotations

import torch
from timm.layers import Attention


def read_qk(attn: Attention) -> tuple[torch.Tensor, torch.Tensor]:
    """(wq, wk), each (heads, D, d) in float64: the per-head query and key maps `attn` holds."""
    inner = attn.num_heads * attn.head_dim

    def heads(rows: slice) -> torch.Tensor:
        return attn.qkv.weight[rows].reshape(attn.num_heads, attn.head_dim, -1).transpose(1, 2).double()

    return heads(slice(0, inner)), heads(slice(inner, 2 * inner))


def set_qk(attn: Attention, wq: torch.Tensor, wk: torch.Tensor) -> None:
    """Write per-head query/key maps wq, wk (heads x D x d) into W_Q, W_K: row block h of W_Q is
    wq[h]^T, so head h's logits are x wq[h] wk[h]^T x^T (times timm's d^-1/2)."""
    heads, dim, head_dim = wq.shape
    inner = heads * head_dim
    attn.qkv.weight[:inner] = wq.transpose(1, 2).reshape(inner, dim)
    attn.qkv.weight[inner:2 * inner] = wk.transpose(1, 2).reshape(inner, dim)


def zero_qk_bias(attn: Attention) -> None:
    """Zero the query and key biases (where the Linear has a bias): logits x W_q W_k^T x^T alone."""
    if attn.qkv.bias is not None:
        inner = attn.num_heads * attn.head_dim
        attn.qkv.bias[:2 * inner] = 0


def copy_qk(source: Attention, target: Attention) -> None:
    """W_Q, W_K (and their biases) of `source` written into `target`: the same logits on the same input."""
    inner = source.num_heads * source.head_dim
    target.qkv.weight[:2 * inner] = source.qkv.weight[:2 * inner]
    if source.qkv.bias is not None:
        target.qkv.bias[:2 * inner] = source.qkv.bias[:2 * inner]


def set_vo(attn: Attention, left: torch.Tensor, right: torch.Tensor) -> None:
    """Write W_V = left^T and W_O = right, so that the value path x -> proj(v(x)) is the right
    multiplication x (left right^T) (timm's Linear computes x W^T, hence the transposes)."""
    inner = attn.qkv.weight.shape[0] // 3
    attn.qkv.weight[2 * inner:] = left.T
    attn.proj.weight.copy_(right)
