"""Small-data Vision Transformers on timm.

One model family, many geometries by keyword. `vit(...)` builds any timm
`VisionTransformer` geometry; the paper's models are registered with timm so
`timm.create_model("vit_tiny_patch2_32")` works like any other timm name.

Position embedding is either timm's learned one (`pos_embed="learn"`) or a fixed
2-D sin-cos table (`pos_embed="sincos"`, v1 of the paper), held as a buffer so it
is never trained and every init leaves it as it is.

timm's ConvMixer, under the same keyword names, is the testbed of the random-filter argument
(`convmixer`, `spatial_filters`).
"""
from __future__ import annotations

import torch
from timm.layers import Attention, build_sincos2d_pos_embed
from timm.models import register_model
from timm.models.convmixer import ConvMixer
from timm.models.vision_transformer import VisionTransformer

from structinit.validate import check, choice

POS_EMBEDS = ("learn", "sincos")
POOLS = ("avg", "token")


def vit(
    *,
    img_size: int = 32,
    patch_size: int = 2,
    in_chans: int = 3,
    num_classes: int = 10,
    embed_dim: int = 192,
    depth: int = 12,
    num_heads: int = 3,
    mlp_ratio: float = 4.0,
    global_pool: str = "avg",
    pos_embed: str = "sincos",
    class_token: bool | None = None,
    **timm_kwargs,
) -> VisionTransformer:
    """A timm ViT of the given geometry.

    `global_pool="avg"` (v1 of the paper) or `"token"` (class token, the follow-up);
    `class_token` defaults to whether the pool needs one. `pos_embed="sincos"` is the
    fixed 2-D sin-cos table, `"learn"` timm's learned embedding. Weights are PyTorch
    defaults (timm `weight_init="skip"`): an init strategy from `structinit.inits`
    sets them.
    """
    for name, value in (("img_size", img_size), ("patch_size", patch_size), ("in_chans", in_chans),
                        ("num_classes", num_classes), ("embed_dim", embed_dim), ("depth", depth),
                        ("num_heads", num_heads)):
        check(name, value, "a positive integer", isinstance(value, int) and value > 0)
    check("patch_size", patch_size, f"a divisor of img_size={img_size}", img_size % patch_size == 0)
    check("num_heads", num_heads, f"a divisor of embed_dim={embed_dim}", embed_dim % num_heads == 0)
    check("mlp_ratio", mlp_ratio, "a positive number", mlp_ratio > 0)
    choice("global_pool", global_pool, POOLS)
    choice("pos_embed", pos_embed, POS_EMBEDS)
    if class_token is None:
        class_token = global_pool == "token"
    check("global_pool", global_pool, "'avg' when class_token=False", class_token or global_pool != "token")
    if pos_embed == "sincos":
        check("pos_embed", pos_embed, "'learn' when embed_dim is not a multiple of 4", embed_dim % 4 == 0)
    model = VisionTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        global_pool=global_pool, class_token=class_token, pos_embed="learn",
        no_embed_class=timm_kwargs.pop("no_embed_class", pos_embed == "sincos"),
        weight_init="skip", **timm_kwargs,
    )
    model.pos_embed.data.normal_(std=0.02)  # timm's own value under weight_init="skip"
    if pos_embed == "sincos":
        table = sincos_pos_embed(model)
        del model.pos_embed
        model.register_buffer("pos_embed", table)
    return model


def grid_size(model: VisionTransformer) -> tuple[int, int]:
    return tuple(model.patch_embed.grid_size)


def has_fixed_pos_embed(model: VisionTransformer) -> bool:
    return "pos_embed" in model._buffers


def sincos_pos_embed(model: VisionTransformer) -> torch.Tensor:
    """The (1, N, D) fixed 2-D sin-cos table for the model's patch grid (prefix tokens get none)."""
    table = build_sincos2d_pos_embed(list(grid_size(model)), dim=model.embed_dim)
    return table.reshape(1, -1, model.embed_dim)


def patch_pos_embed(model: VisionTransformer) -> torch.Tensor:
    """The position embedding of the N patch tokens, (N, D): the class-token row, if any, dropped."""
    pe = model.pos_embed[0]
    return pe if model.no_embed_class else pe[model.num_prefix_tokens:]


@torch.no_grad()
def pseudo_tokens(model: VisionTransformer, p: torch.Tensor) -> torch.Tensor:
    """(1, T, D) the tokens block 0 gets when the patch tokens are the pseudo input `p` (N, D):
    the prefix tokens (class, register) in front, with their position embedding where timm adds
    one. For `pe` this is what the model computes on an image whose patch embedding is zero."""
    x = p.to(model.blocks[0].norm1.weight)[None]
    prefix = [t for t in (model.cls_token, model.reg_token) if t is not None]
    if prefix:
        pre = torch.cat(prefix, 1)
        if not model.no_embed_class:
            pre = pre + model.pos_embed[:, :pre.shape[1]]
        x = torch.cat([pre, x], 1)
    return model.norm_pre(x)


@torch.no_grad()
def image_tokens(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(B, T, D) the tokens block 0 gets from `images` (B, C, H, W): patch embedding, position
    embedding and prefix tokens, as timm's forward_features computes them in eval mode."""
    return model.norm_pre(model._pos_embed(model.patch_embed(images)))


def _registered(pretrained: bool, defaults: dict, kwargs: dict, build=vit):
    """A registered name: `build` with the name's geometry under the caller's kwargs."""
    if pretrained:
        raise ValueError("pretrained=True is not allowed: structinit models have no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return build(**{**defaults, **kwargs})


# The paper's small-data models (v1: 32 px, patch 2, avg pool, fixed sin-cos PE), and a digits model.
PAPER_MODELS = {
    "vit_tiny_patch2_32": dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch2_32": dict(img_size=32, patch_size=2, embed_dim=384, depth=12, num_heads=6),
    # digits (8x8 grey): a 4x4 grid of 2x2 patches, the CPU workhorse
    "vit_nano_patch2_8": dict(img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=4, num_heads=4),
}


@register_model
def vit_tiny_patch2_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-T/2 at 32 px: dim 192, depth 12, 3 heads, 16x16 patch grid."""
    return _registered(pretrained, PAPER_MODELS["vit_tiny_patch2_32"], kwargs)


@register_model
def vit_small_patch2_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/2 at 32 px: dim 384, depth 12, 6 heads, 16x16 patch grid."""
    return _registered(pretrained, PAPER_MODELS["vit_small_patch2_32"], kwargs)


@register_model
def vit_nano_patch2_8(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 8x8 grey digits: patch 2 (4x4 grid), dim 64, depth 4, 4 heads."""
    return _registered(pretrained, PAPER_MODELS["vit_nano_patch2_8"], kwargs)


def convmixer(embed_dim: int, depth: int, kernel_size: int, patch_size: int, in_chans: int = 3,
              num_classes: int = 1000, img_size: int | None = None) -> ConvMixer:
    """timm's ConvMixer under the ViT's keyword names (embed_dim = D channels); `img_size` is
    accepted and unused: the model is fully convolutional."""
    return ConvMixer(dim=embed_dim, depth=depth, kernel_size=kernel_size, patch_size=patch_size, in_chans=in_chans,
                     num_classes=num_classes)


def spatial_filters(model: ConvMixer) -> list[torch.nn.Conv2d]:
    """The depthwise f x f convolution of each block: the spatial mixing the filter inits set."""
    return [block[0].fn[0] for block in model.blocks]


# ConvMixers for the random-filter study (the paper's Proposition 1: D >= k f^2)
CONVMIXERS = {
    # digits: patch 1 keeps the 8x8 grid, so a 3x3 or 5x5 filter has room
    "convmixer_64_4_p1": dict(embed_dim=64, depth=4, kernel_size=3, patch_size=1),
}


@register_model
def convmixer_64_4_p1(pretrained: bool = False, **kwargs) -> ConvMixer:
    """ConvMixer for 8x8 digits: D = 64 channels, depth 4, 3x3 depthwise filters, patch 1."""
    return _registered(pretrained, CONVMIXERS["convmixer_64_4_p1"], kwargs, build=convmixer)


def create(name: str, **overrides) -> VisionTransformer | ConvMixer:
    """`timm.create_model(name, **overrides)` for a ViT or ConvMixer name (unset overrides are
    dropped), with a clear error for an unknown name or another kind of model."""
    import timm

    check("model", name, "a timm model name, e.g. " + ", ".join([*PAPER_MODELS, *CONVMIXERS]) + " or vit_base_patch16_224",
          timm.is_model(name))
    try:
        model = timm.create_model(name, **{k: v for k, v in overrides.items() if v is not None})
    except (TypeError, AssertionError) as err:
        raise ValueError(f"model={name!r} does not take {overrides}: {err}") from err
    check("model", name, "a timm VisionTransformer or ConvMixer", isinstance(model, (VisionTransformer, ConvMixer)))
    return model


@torch.no_grad()
def attention_probs(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, T) softmax attention of `attn` on its input x (B, T, D), as its forward computes it."""
    b, t, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return (attn.scale * q @ k.transpose(-2, -1)).float().softmax(-1)


@torch.no_grad()
def attention_inputs(model: VisionTransformer, forward) -> list[torch.Tensor]:
    """What each block's attention sees (its norm1 output, hooked) while `forward()` runs the model
    in eval mode; the model's mode is left as found."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [blk.attn.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0]))
             for i, blk in enumerate(model.blocks)]
    was_training = model.training
    try:
        model.eval()
        forward()
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [seen[i] for i in range(len(model.blocks))]
