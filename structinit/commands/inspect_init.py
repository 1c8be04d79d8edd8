"""`structinit inspect-init`: initialise a model and print its attention's fidelity to the impulse
targets, per block and head (or as JSON), on the pseudo input and, with --dataset, on real images
(held out: a seeded batch of 64 of its validation images, `data.held_out`, never its test images; a
data-aware init solves on a seeded batch of training images), and draw block 0's attention maps."""
from __future__ import annotations

import argparse
import json

from structinit.commands.options import VIT, add_config, check_given, trial_config
from structinit.validate import check, writable

HELP = "initialise a ViT and print its attention's fidelity to the impulse targets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object (solve_seconds, blocks: forward-pass "
                   "fidelity per block and head, data: the same on the held-out validation images, weights: "
                   "per-head W_q/W_k norms, notes: the solve's)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of block 0's initial attention maps (in an existing "
                   "folder)")
    add_config(p, {"model.name": VIT, "dataset": "none: the pseudo input only; a dataset also measures on a seeded "
                   "batch of 64 of its validation images (never its test images), and the model takes its channels, "
                   "classes and image side"})


def preflight(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """What can be checked before the model is built and solved, each refused in one line: the
    fields given (before anything heavy loads), the plot's path (creatable and writable), the
    config. The model's size is checked before it is built (`train.build_model`). Returns (cfg,
    the dataset given or None)."""
    try:
        fields = check_given(args, dataset=None)
        if args.plot:
            writable("plot", args.plot)
    except ValueError as err:
        parser.refuse(err)
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from structinit.config import create_model
    from structinit.inits import needs_images

    try:
        cfg = trial_config(fields, args.recipe, model=VIT)
        dataset = fields.get("dataset")
        check("dataset", dataset, f"a dataset name with pseudo_input={cfg.init.pseudo_input!r} (it solves on its "
              "images)", dataset is not None or not needs_images(cfg.init))
        with torch.device("meta"):  # nothing allocated: its size is checked before it is built
            vit = isinstance(create_model(cfg.model), VisionTransformer)
        check("model", cfg.model.name, "a timm VisionTransformer (inspect-init measures attention; a ConvMixer's "
              "embeddings: structinit rank)", vit)
    except ValueError as err:
        parser.refuse(err)
    return cfg, dataset


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cfg, dataset = preflight(args, parser)
    from structinit import fidelity

    try:
        model, result, held_out = build(cfg, dataset)
    except ValueError as err:
        parser.refuse(err)
    measured = fidelity.measure(model, result, held_out)
    blocks, data = measured["pseudo"], measured["data"]
    if args.plot:
        fidelity.plot_attention(model, result, args.plot)
    if args.json:
        print(json.dumps({"solve_seconds": result.solve_seconds, "blocks": blocks, "data": data,
                          "weights": measured["weights"], "chance": measured["chance"], "notes": result.notes,
                          "model": cfg.model.name, "dataset": dataset, "init": cfg.init.to_dict(), "seed": cfg.seed,
                          "data_split": "validation" if data else None, "data_images": len(held_out) if data else 0}))
        return 0
    print(f"{cfg.model.name}  init={cfg.init.name}  seed={cfg.seed}  solve {result.solve_seconds:.3f} s")
    where = "its batch of training images" if result.images is not None else "the pseudo input"
    print(f"forward pass with {where} entering block 0" + (f"; data: {len(held_out)} held-out {dataset} "
                                                           "validation images" if data else "")
          + "; |W_q|, |W_k|: per-head Frobenius norms")
    extra = f" {'data mass':>9} {'data hit':>8}" if data else ""
    print(f"{'block':>5} {'head':>4} {'offset':>8} {'mass':>7} {'hit':>6}{extra} {'|W_q|':>7} {'|W_k|':>7}")
    for i, (b, w) in enumerate(zip(blocks, measured["weights"])):
        for h in b["heads"]:
            real = data[i]["heads"][h["head"]] if data else None
            cols = f" {real['target_mass']:>9.3f} {real['argmax_hit']:>8.3f}" if real else ""
            print(f"{b['block']:>5} {h['head']:>4} {str(tuple(h['offset'])):>8} {h['target_mass']:>7.3f} "
                  f"{h['argmax_hit']:>6.3f}{cols} {w['wq_norm'][h['head']]:>7.2f} {w['wk_norm'][h['head']]:>7.2f}")
    return 0


def build(cfg, dataset: str | None):
    """(model, InitResult, 64 held-out validation images (`data.held_out`) or None): the model with
    the dataset's channels, classes and image side where a dataset is given (else as its name
    builds it), initialised (on its training images where the init is data-aware)."""
    from structinit.config import data_kwargs
    from structinit.inits import needs_images
    from structinit.train import build_model

    if not dataset:
        return (*build_model(cfg.model, cfg.init, cfg.seed), None)
    from structinit import data

    d = data.build(cfg.dataset, cfg.data_root, img_size=cfg.model.img_size, fraction=cfg.fraction,
                   val_fraction=cfg.val_fraction, seed=cfg.seed, recipe=cfg.recipe, val_size=cfg.val_size,
                   download=cfg.download, verify=cfg.verify)
    images = data.init_images(d, cfg.init.data_images, cfg.seed) if needs_images(cfg.init) else None
    model, result = build_model(cfg.model, cfg.init, cfg.seed, images=images, **data_kwargs(cfg, d.num_classes))
    return model, result, data.held_out(d, 64, cfg.seed)
