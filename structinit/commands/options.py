"""The options several command lines share, defined once: a model's name and geometry, an init
and its seed, a study's name and storage, and the MLflow tracking URI."""
from __future__ import annotations

import argparse

from structinit.config import MODEL_FIELDS
from structinit.inits import InitConfig

VIT = "vit_tiny_patch2_32"  # the model inspect-init and rank build when none is named
TRACKING_URI = "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"


def _mass(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def add_model(p: argparse.ArgumentParser, default: str | None = VIT) -> None:
    g = p.add_argument_group("model (a timm ViT name; the flags override its geometry)")
    g.add_argument("--model", default=default, help="a timm ViT name (train: default suits the dataset)")
    g.add_argument("--img-size", type=int)
    g.add_argument("--patch-size", type=int)
    g.add_argument("--embed-dim", type=int)
    g.add_argument("--depth", type=int)
    g.add_argument("--num-heads", type=int)
    g.add_argument("--pos-embed", help="learn | sincos (structinit models)")
    g.add_argument("--global-pool", help="avg | token")
    g.add_argument("--kernel-size", type=int, help="ConvMixer: the depthwise filters' size")


def add_init(p: argparse.ArgumentParser) -> None:
    d = InitConfig()
    g = p.add_argument_group("init")
    g.add_argument("--init", default=d.name, help="ViT: default | torch_default | pe_scaled | mimetic | impulse; "
                   "ConvMixer: learned | frozen_random | frozen_impulse | frozen_box")
    g.add_argument("--base", default=d.base, help="timm | torch: weights the init does not set")
    g.add_argument("--filter-size", type=int, default=d.filter_size)
    g.add_argument("--offsets", default=d.offsets, help="cover | random")
    g.add_argument("--pseudo-input", default=d.pseudo_input, help="pe | uniform | gaussian | pe+uniform | pe+gaussian")
    g.add_argument("--solver", default=d.solver, help="closed_form | gradient")
    g.add_argument("--target-mass", type=_mass, default=d.target_mass,
                   help="attention mass on the impulse tap, in (0, 1); 'none' = raw v1 gradient solve, or --factor-norm")
    g.add_argument("--factor-norm", type=float, default=d.factor_norm,
                   help="with --target-mass none: each head's W_q, W_k to this Frobenius norm (the follow-up's 7)")
    g.add_argument("--damping", type=float, default=d.damping,
                   help="closed form: Tikhonov damping, a share of the pseudo input's largest singular value")
    g.add_argument("--qk", default=d.qk, help="per_block | shared")
    g.add_argument("--value-proj", default=d.value_proj, help="default | mimetic")
    g.add_argument("--pe-scale", type=float, default=d.pe_scale)
    g.add_argument("--target-shape", default=d.target_shape, help="impulse | box | gaussian (a blob around each tap)")
    g.add_argument("--blob", type=int, default=d.blob, help="box/gaussian: the blob's side")
    g.add_argument("--blob-sigma", type=float, default=d.blob_sigma)
    g.add_argument("--mix", help="noise | mimetic: blend the target with it before the solve")
    g.add_argument("--mix-ratio", type=float, default=d.mix_ratio)
    g.add_argument("--distinct-filters", type=int, help="ConvMixer: filters shared across the channels")
    g.add_argument("--seed", type=int, default=0)


def add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study's name, e.g. heads_vs_dim")
    p.add_argument("--storage", default="runs", help="the studies' storage folder (default ./runs)")
    p.add_argument("--tracking-uri", help=TRACKING_URI)


def init_config(args: argparse.Namespace) -> InitConfig:
    return InitConfig(name=args.init, base=args.base, filter_size=args.filter_size, offsets=args.offsets,
                      pseudo_input=args.pseudo_input, solver=args.solver, target_mass=args.target_mass,
                      factor_norm=args.factor_norm, damping=args.damping, qk=args.qk, value_proj=args.value_proj, pe_scale=args.pe_scale,
                      target_shape=args.target_shape, blob=args.blob, blob_sigma=args.blob_sigma, mix=args.mix,
                      mix_ratio=args.mix_ratio, distinct_filters=args.distinct_filters)


def geometry(args: argparse.Namespace) -> dict:
    """The model flags given (None where not), by ModelConfig field."""
    return {k: getattr(args, k, None) for k in MODEL_FIELDS}
