"""ConvMixer spatial filters: learned, or frozen at random, impulse or box filters.

The paper's Proposition 1: if the patch embeddings X (N x D) have rank k, D >= k f^2 channels
whose fixed f x f depthwise filters span the f^2-dimensional filter space let the learned 1x1
channel mixing reproduce any f x f convolution; Corollary 2: random impulse (one-hot) filters
span it once every tap is used, a box filter (the same all-ones filter on every channel) never does.

`distinct_filters` = m shares m filters across the D channels (channel c gets filter c mod m);
None gives every channel its own. Every weight is first reset to PyTorch's defaults under the
init's seed (the depthwise conv: U(+-1/f)), so the same seed gives the same model.
"""
from __future__ import annotations

import torch
from timm.models.convmixer import ConvMixer

from structinit.inits import InitConfig, InitResult, register
from structinit.inits.default import reset_modules
from structinit.inits.targets import cover_offsets, random_offsets
from structinit.models import spatial_filters


def reset(model: ConvMixer) -> None:
    """Every weight to PyTorch's defaults, every filter trainable."""
    reset_modules(model)
    for conv in spatial_filters(model):
        conv.weight.requires_grad_(True)


def shared(filters: torch.Tensor, channels: int) -> torch.Tensor:
    """(m, f, f) filters tiled over `channels`: channel c gets filter c mod m; as (channels, 1, f, f)."""
    return filters[torch.arange(channels) % len(filters)].unsqueeze(1)


def set_frozen(model: ConvMixer, cfg: InitConfig, make) -> InitResult:
    """Each block's depthwise weights from `make(m, f)` -> (m, f, f), tiled and frozen (biases stay learned)."""
    for conv in spatial_filters(model):
        channels, f = conv.weight.shape[0], conv.weight.shape[-1]
        conv.weight.copy_(shared(make(cfg.distinct_filters or channels, f), channels))
        conv.weight.requires_grad_(False)
    return InitResult(offsets=[], pseudo_inputs=[])


@register("learned")
def learned(model: ConvMixer, cfg: InitConfig) -> InitResult:
    """PyTorch's defaults (depthwise conv U(+-1/f)), every filter trained: the reference."""
    reset(model)
    return InitResult(offsets=[], pseudo_inputs=[])


@register("frozen_random", reads=("distinct_filters",))
def frozen_random(model: ConvMixer, cfg: InitConfig) -> InitResult:
    """m random filters U(+-1/f) (PyTorch's depthwise default), frozen."""
    reset(model)
    return set_frozen(model, cfg, lambda m, f: (torch.rand(m, f, f) * 2 - 1) / f)


@register("frozen_impulse", reads=("distinct_filters", "offsets"))
def frozen_impulse(model: ConvMixer, cfg: InitConfig) -> InitResult:
    """m one-hot filters, frozen: filter i is the impulse at tap i mod f^2 (`offsets="cover"`: all
    f^2 taps before any repeats) or at a random tap (`offsets="random"`, v1's draw)."""
    reset(model)

    def impulses(m: int, f: int) -> torch.Tensor:
        taps = cover_offsets(f, m) if cfg.offsets == "cover" else random_offsets(f, m)
        out = torch.zeros(m, f, f)
        for i, (dy, dx) in enumerate(taps):
            out[i, dy + f // 2, dx + f // 2] = 1.0
        return out

    return set_frozen(model, cfg, impulses)


@register("frozen_box", reads=("distinct_filters",))
def frozen_box(model: ConvMixer, cfg: InitConfig) -> InitResult:
    """The box filter 1/f^2 on every channel, frozen: spans one filter direction, whatever D."""
    reset(model)
    return set_frozen(model, cfg, lambda m, f: torch.full((m, f, f), 1.0 / (f * f)))
