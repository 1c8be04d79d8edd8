"""The options several command lines share, defined once: a model's name and geometry, an init
and its seed, a study's name and storage, and the MLflow tracking URI.

Defining them imports nothing heavy (the CLI parses and answers --help before torch, timm, Ray or
MLflow load): an init flag not given is absent from the parsed arguments, and `init_config` leaves
that field to InitConfig's default."""
from __future__ import annotations

import argparse

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
    """The init flags (an InitConfig field each; one not given is absent: InitConfig's default) and --seed."""
    g = p.add_argument_group("init", argument_default=argparse.SUPPRESS)
    g.add_argument("--init", help="ViT: default | torch_default | pe_scaled | mimetic | impulse; "
                   "ConvMixer: learned | frozen_random | frozen_impulse | frozen_box")
    g.add_argument("--base", help="timm | torch: weights the init does not set")
    g.add_argument("--filter-size", type=int)
    g.add_argument("--offsets", help="cover | random")
    g.add_argument("--pseudo-input", help="pe | uniform | gaussian | pe+uniform | pe+gaussian | data | pe+data "
                   "(data: solved layer by layer on a seeded batch of training images)")
    g.add_argument("--data-images", type=int, help="data, pe+data: how many training images the solve uses (64)")
    g.add_argument("--solver", help="closed_form | gradient")
    g.add_argument("--target-mass", type=_mass,
                   help="attention mass on the impulse tap, in (0, 1); 'none' = raw v1 gradient solve, or --factor-norm")
    g.add_argument("--factor-norm", type=float,
                   help="with --target-mass none: each head's W_q, W_k to this Frobenius norm (the follow-up's 7)")
    g.add_argument("--damping", type=float,
                   help="closed form: Tikhonov damping, a share of the pseudo input's largest singular value")
    g.add_argument("--qk", help="per_block | shared")
    g.add_argument("--value-proj", help="default | mimetic")
    g.add_argument("--pe-scale", type=float)
    g.add_argument("--target-shape", help="impulse | box | gaussian (a blob around each tap)")
    g.add_argument("--blob", type=int, help="box/gaussian: the blob's side")
    g.add_argument("--blob-sigma", type=float)
    g.add_argument("--mix", help="noise | mimetic: blend the target with it before the solve")
    g.add_argument("--mix-ratio", type=float)
    g.add_argument("--distinct-filters", type=int, help="ConvMixer: filters shared across the channels")
    g.add_argument("--seed", type=int, default=0)


def add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study's name, e.g. heads_vs_dim")
    p.add_argument("--storage", default="runs", help="the studies' storage folder (default ./runs)")
    p.add_argument("--tracking-uri", help=TRACKING_URI)


INIT_FIELDS = ("base", "filter_size", "offsets", "pseudo_input", "data_images", "solver", "target_mass", "factor_norm", "damping",
               "qk", "value_proj", "pe_scale", "target_shape", "blob", "blob_sigma", "mix", "mix_ratio",
               "distinct_filters")  # the InitConfig fields `add_init` has a flag for (and --init: name)


def init_config(args: argparse.Namespace):
    """The InitConfig the init flags given name (validated: a bad value raises ValueError)."""
    from structinit.inits import InitConfig

    given = {k: getattr(args, k) for k in ("init", *INIT_FIELDS) if hasattr(args, k)}
    return InitConfig(**{"name" if k == "init" else k: v for k, v in given.items()})


def geometry(args: argparse.Namespace) -> dict:
    """The model flags given (None where not), by ModelConfig field."""
    from structinit.config import MODEL_FIELDS

    return {k: getattr(args, k, None) for k in MODEL_FIELDS}
