"""`structinit inspect-init`: initialise a model and print its attention's fidelity to the impulse
targets, per block and head (or as JSON), on the pseudo input and, with --dataset, on real images
(held out: a seeded batch of 64 of its validation images, `data.held_out`, never its test images; a
data-aware init solves on a seeded batch of training images), and draw block 0's attention maps."""
from __future__ import annotations

import argparse
import json

from structinit.commands.options import add_init, add_model, geometry, init_config
from structinit.validate import check

HELP = "initialise a ViT and print its attention's fidelity to the impulse targets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_init(p)
    p.add_argument("--dataset", help="measure on held-out images of this dataset too (a seeded batch of 64 of its "
                   "validation images, never its test images; with --pseudo-input data the init solves on its "
                   "training images); the model takes its channels, classes and image side")
    p.add_argument("--data-root", help="the dataset's folder in its standard on-disk format (digits: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object (solve_seconds, blocks: forward-pass "
                   "fidelity per block and head, data: the same on the held-out validation images, weights: "
                   "per-head W_q/W_k norms, notes: the solve's)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of block 0's initial attention maps")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit import fidelity

    try:
        cfg = init_config(args)
        model, result, held_out = build(args, cfg)
    except ValueError as err:
        parser.refuse(err)
    measured = fidelity.measure(model, result, held_out)
    blocks, data = measured["pseudo"], measured["data"]
    if args.plot:
        fidelity.plot_attention(model, result, args.plot)
    if args.json:
        print(json.dumps({"solve_seconds": result.solve_seconds, "blocks": blocks, "data": data,
                          "weights": measured["weights"], "chance": measured["chance"], "notes": result.notes,
                          "model": args.model, "dataset": args.dataset, "init": cfg.to_dict(), "seed": args.seed,
                          "data_split": "validation" if data else None, "data_images": len(held_out) if data else 0}))
        return 0
    print(f"{args.model}  init={cfg.name}  seed={args.seed}  solve {result.solve_seconds:.3f} s")
    where = "its batch of training images" if result.images is not None else "the pseudo input"
    print(f"forward pass with {where} entering block 0" + (f"; data: {len(held_out)} held-out {args.dataset} "
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


def build(args: argparse.Namespace, cfg):
    """(model, InitResult, 64 held-out validation images (`data.held_out`) or None): the model with
    the dataset's channels, classes and image side where --dataset is given, initialised (on its
    training images where the init is data-aware)."""
    from structinit.config import ModelConfig, build_model, data_kwargs, make
    from structinit.inits import needs_images

    model_cfg = ModelConfig(args.model, **geometry(args))
    if not args.dataset:
        check("dataset", None, f"a dataset name with --pseudo-input {cfg.pseudo_input} (it solves on its images)",
              not needs_images(cfg))
        return (*build_model(model_cfg, cfg, args.seed), None)
    from structinit import data

    trial = make(args.dataset, model=args.model, model_overrides={k: v for k, v in geometry(args).items()
                                                                   if v is not None and k != "name"},
                 init=cfg, data_root=args.data_root, seed=args.seed)
    d = data.build(trial.dataset, trial.data_root, img_size=trial.model.img_size, fraction=trial.fraction,
                   val_fraction=trial.val_fraction, seed=trial.seed, recipe=trial.recipe, val_size=trial.val_size)
    images = data.init_images(d, cfg.data_images, args.seed) if needs_images(cfg) else None
    model, result = build_model(trial.model, cfg, args.seed, images=images, **data_kwargs(trial, d.num_classes))
    return model, result, data.held_out(d, 64, args.seed)
