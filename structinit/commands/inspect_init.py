"""`structinit inspect-init`: initialise a model and print its attention's fidelity to the impulse
targets, per block and head (or as JSON), and draw block 0's attention maps."""
from __future__ import annotations

import argparse
import json

from structinit.commands.options import add_init, add_model, geometry, init_config

HELP = "initialise a ViT and print its attention's fidelity to the impulse targets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_init(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (solve_seconds, blocks)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of block 0's initial attention maps")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit import fidelity
    from structinit.config import ModelConfig, build_model

    try:
        cfg = init_config(args)
        model, result = build_model(ModelConfig(args.model, **geometry(args)), cfg, args.seed)
    except ValueError as err:
        parser.refuse(err)
    blocks = fidelity.measure(model, result)["pseudo"]
    if args.plot:
        fidelity.plot_attention(model, result, args.plot)
    if args.json:
        print(json.dumps({"solve_seconds": result.solve_seconds, "blocks": blocks, "model": args.model,
                          "init": cfg.to_dict(), "seed": args.seed}))
        return 0
    print(f"{args.model}  init={cfg.name}  seed={args.seed}  solve {result.solve_seconds:.3f} s")
    print(f"{'block':>5} {'head':>4} {'offset':>8} {'mass':>7} {'hit':>6}")
    for b in blocks:
        for h in b["heads"]:
            print(f"{b['block']:>5} {h['head']:>4} {str(tuple(h['offset'])):>8} "
                  f"{h['target_mass']:>7.3f} {h['argmax_hit']:>6.3f}")
    return 0
