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

from structinit.commands.options import VIT, add_config, check_given, trial_config
from structinit.validate import check

HELP = ("numerical and stable rank k of a model's patch embeddings on a dataset, against the widths D >= k f^2, "
        "h >= f^2, D/h >= k")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a run's checkpoint folder (or its state.pt) instead of the init; without "
                   "model flags, the model that run trained, measured on its dataset")
    p.add_argument("--images", type=int, default=64, help="held-out images k is measured on (median): a seeded "
                   "batch of the validation split (at most its size), never test images")
    p.add_argument("--rtol", type=float, default=1e-2, help="singular values >= rtol x the largest count")
    p.add_argument("--json", action="store_true")
    add_config(p, {"model.name": f"a checkpoint's run's, else {VIT}", "dataset": "a checkpoint's run's, else digits"})


def preflight(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """What can be checked before anything is built, each refused in one line: the fields given
    and the measure's own flags (before anything heavy loads), then the checkpoint and the config
    it gives. Returns (cfg, the checkpoint's state or None, the fields given)."""
    import math

    try:
        fields = check_given(args)
        check("images", args.images, "an integer >= 1", args.images >= 1)
        check("rtol", args.rtol, "a number in (0, 1)", math.isfinite(args.rtol) and 0 < args.rtol < 1)
    except ValueError as err:
        parser.refuse(err)
    from structinit.checkpoint import load_state, state_path
    from structinit.config import TrialConfig

    try:
        state = load_state(state_path(args.checkpoint), "cpu") if args.checkpoint else None
        named = any(k.startswith("model.") for k in fields)
        saved = None if state is None or named else state.get("config")  # None: a checkpoint from before configs
        cfg = TrialConfig.from_dict(saved) if saved else trial_config(fields, args.recipe, model=VIT)
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        parser.refuse(err)
    return cfg, state, fields


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cfg, state, fields = preflight(args, parser)
    from structinit import data
    from structinit.checkpoint import load_weights
    from structinit.config import data_kwargs
    from structinit.rank import measure, text
    from structinit.train import build_model

    try:
        filter_size = fields.get("init.filter_size", cfg.init.filter_size)  # the f the widths are checked against
        dataset = fields.get("dataset", cfg.dataset)
        d = data.build(dataset, fields.get("data_root", cfg.data_root), img_size=cfg.model.img_size,
                       fraction=cfg.fraction, val_fraction=cfg.val_fraction, seed=cfg.seed, recipe=cfg.recipe,
                       verify=fields.get("verify", True) and cfg.verify, val_size=cfg.val_size)
        model, _ = build_model(cfg.model, None if state is not None else cfg.init, cfg.seed,
                               **data_kwargs(cfg, d.num_classes))
        if state is not None:
            load_weights(model, state["model"], args.checkpoint)
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        parser.refuse(err)
    images = data.held_out(d, args.images, cfg.seed)
    m = measure(model, images, filter_size, rtol=args.rtol)
    name = cfg.model.name
    m.update(model=name, dataset=dataset, split="validation" if len(d.val) else "training",
             source=args.checkpoint or f"init {cfg.init.name} seed {cfg.seed}")
    print(json.dumps(m) if args.json else f"{name} on {dataset} {m['split']} images ({m['source']})\n{text(m)}")
    return 0
