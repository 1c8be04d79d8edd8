"""`structinit rank`: the numerical and stable rank k of a model's patch embeddings on a dataset
(rank.py), against the widths the theory asks for, at init or from a run's checkpoint. A
checkpoint carries its run's TrialConfig: without model flags, the model is built as that run
built it and measured on the run's dataset (unless --dataset and --data-root name others).

k is measured on held-out images (`data.held_out`), never test images: a seeded batch of the
validation split drawn as a run draws it (its fraction, val_fraction, val_size and seed: a
checkpoint's run's, else the defaults and --seed), so `rank --checkpoint` measures the images that
run's epoch-0 `init_rank_k` did; training images where that run had no validation split."""
from __future__ import annotations

import argparse
import json

from structinit.commands.options import VIT, add_init, add_model, geometry, init_config

HELP = ("numerical and stable rank k of a model's patch embeddings on a dataset, against the widths D >= k f^2, "
        "h >= f^2, D/h >= k")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p, default=None)
    add_init(p)
    p.add_argument("--dataset", help="default: a checkpoint's run's, else digits")
    p.add_argument("--data-root")
    p.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument("--checkpoint", help="a run's checkpoint folder (or its state.pt) instead of the init; without "
                   "model flags, the model that run trained")
    p.add_argument("--images", type=int, default=64, help="held-out images k is measured on (median): a seeded "
                   "batch of the validation split (at most its size), never test images")
    p.add_argument("--rtol", type=float, default=1e-2, help="singular values >= rtol x the largest count")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit import data
    from structinit.checkpoint import load_state, load_weights, state_path
    from structinit.config import TrialConfig, build_model, data_kwargs, make
    from structinit.rank import measure, text

    try:
        filter_size = init_config(args).filter_size  # the f the widths are checked against (3 unless given)
        state = load_state(state_path(args.checkpoint), "cpu") if args.checkpoint else None
        named = args.model is not None or any(v is not None for v in geometry(args).values())
        saved = None if state is None or named else state.get("config")  # None: a checkpoint from before configs
        cfg = TrialConfig.from_dict(saved) if saved else make(
            args.dataset or "digits", model=args.model or VIT, data_root=args.data_root, verify=args.verify,
            model_overrides=geometry(args), init=init_config(args), seed=args.seed)
        dataset = args.dataset or cfg.dataset
        d = data.build(dataset, args.data_root or cfg.data_root, img_size=cfg.model.img_size, fraction=cfg.fraction,
                       val_fraction=cfg.val_fraction, seed=cfg.seed, recipe=cfg.recipe,
                       verify=args.verify and cfg.verify, val_size=cfg.val_size)
        model, _ = build_model(cfg.model, None if state is not None else cfg.init, args.seed,
                               **data_kwargs(cfg, d.num_classes))
        if state is not None:
            load_weights(model, state["model"], args.checkpoint)
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        parser.refuse(err)
    images = data.held_out(d, args.images, cfg.seed)
    m = measure(model, images, filter_size, rtol=args.rtol)
    name = cfg.model.name
    m.update(model=name, dataset=dataset, split="validation" if len(d.val) else "training",
             source=args.checkpoint or f"init {cfg.init.name} seed {args.seed}")
    print(json.dumps(m) if args.json else f"{name} on {dataset} {m['split']} images ({m['source']})\n{text(m)}")
    return 0
