"""`structinit rank`: the numerical and stable rank k of a model's patch embeddings on a dataset
(rank.py), against the widths the theory asks for, at init or from a run's checkpoint."""
from __future__ import annotations

import argparse
import json

from structinit.commands.options import add_init, add_model, geometry, init_config

HELP = ("numerical and stable rank k of a model's patch embeddings on a dataset, against the widths D >= k f^2, "
        "h >= f^2, D/h >= k")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_init(p)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument("--checkpoint", help="a run's checkpoint folder (or its state.pt) instead of the init")
    p.add_argument("--images", type=int, default=64, help="test images k is measured on (median)")
    p.add_argument("--rtol", type=float, default=1e-2, help="singular values >= rtol x the largest count")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from structinit import data
    from structinit.checkpoint import load_state, state_path
    from structinit.config import build_model, data_kwargs, make
    from structinit.rank import measure, text

    try:
        cfg = make(args.dataset, model=args.model, data_root=args.data_root, verify=args.verify,
                   model_overrides=geometry(args), init=init_config(args))
        d = data.build(cfg.dataset, cfg.data_root, img_size=cfg.model.img_size, fraction=1.0, val_fraction=0.0,
                       seed=args.seed, recipe=cfg.recipe, verify=cfg.verify)
        model, _ = build_model(cfg.model, None if args.checkpoint else cfg.init, args.seed,
                               **data_kwargs(cfg, d.num_classes))
        if args.checkpoint:
            model.load_state_dict(load_state(state_path(args.checkpoint), "cpu")["model"])
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        parser.refuse(err)
    images = torch.stack([d.test[i][0] for i in range(min(args.images, len(d.test)))])
    m = measure(model, images, args.filter_size, rtol=args.rtol)
    m.update(model=args.model, dataset=args.dataset, source=args.checkpoint or f"init {cfg.init.name} seed {args.seed}")
    print(json.dumps(m) if args.json else f"{args.model} on {args.dataset} ({m['source']})\n{text(m)}")
    return 0
