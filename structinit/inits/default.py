"""Baselines: timm's init and PyTorch's defaults, and the PE scale the impulse init and its control
(`pe_scaled`, impulse.py) share."""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models import named_apply
from timm.models.vision_transformer import VisionTransformer, get_init_weights_vit

from structinit.inits import InitConfig, InitResult, register
from structinit.inits.targets import cover_offsets
from structinit.models import has_fixed_pos_embed, patch_pos_embed, sincos_pos_embed


def reset_modules(model: torch.nn.Module) -> None:
    """Every submodule to PyTorch's defaults (Kaiming-uniform a=sqrt(5), biases U(+-1/sqrt(fan_in)))."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def base_init(model: VisionTransformer, base: str) -> None:
    """Every weight to `base`: "timm" is timm's ViT init (trunc-normal std 0.02 for Linear
    weights and the PE, zero biases, class token N(0, 1e-6)); "torch" is PyTorch's module
    defaults (Kaiming-uniform a=sqrt(5), biases U(+-1/sqrt(fan_in)); learned PE N(0, 0.02),
    class token 0), i.e. timm's `weight_init="skip"`, the official code's baseline.
    A fixed sin-cos PE stays as it is under either."""
    if base == "timm":  # VisionTransformer.init_weights(""), whatever weight_init the model was built with
        named_apply(get_init_weights_vit(""), model)
        if model.pos_embed is not None:
            trunc_normal_(model.pos_embed, std=0.02)
        for token in (model.cls_token, model.reg_token):
            if token is not None:
                torch.nn.init.normal_(token, std=1e-6)
    else:
        reset_modules(model)
        if model.pos_embed is not None:
            model.pos_embed.normal_(std=0.02)
        if model.cls_token is not None:
            model.cls_token.zero_()
    if has_fixed_pos_embed(model):
        model.pos_embed.copy_(sincos_pos_embed(model))


def pe_scale(model: VisionTransformer, cfg: InitConfig) -> float:
    """The factor on the position embedding: `cfg.pe_scale`, or 18 (the follow-up's value)
    for a learned PE and 1 for a fixed sin-cos one."""
    if cfg.pe_scale is not None:
        return cfg.pe_scale
    return 1.0 if has_fixed_pos_embed(model) else 18.0


def scale_pos_embed(model: VisionTransformer, cfg: InitConfig) -> None:
    if model.pos_embed is not None:
        model.pos_embed.mul_(pe_scale(model, cfg))


def reference(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """Fidelity reference for inits without impulse targets: `cover` offsets on the model's PE."""
    offsets = cover_offsets(cfg.filter_size, model.blocks[0].attn.num_heads)
    pe = patch_pos_embed(model).detach().clone()
    return InitResult(offsets=[offsets] * len(model.blocks), pseudo_inputs=[pe] * len(model.blocks))


@register("default")
def default(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """timm's ViT init: W ~ TN(0, 0.02) for every Linear, zero biases, PE ~ TN(0, 0.02)."""
    base_init(model, "timm")
    return reference(model, cfg)


@register("torch_default")
def torch_default(model: VisionTransformer, cfg: InitConfig) -> InitResult:
    """PyTorch's module defaults, W ~ U(+-1/sqrt(fan_in)): the official code's "skip" baseline."""
    base_init(model, "torch")
    return reference(model, cfg)

