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
    p.add_argument("--json", action="store_true", help="print one JSON object (solve_seconds, blocks: forward-pass "
                   "fidelity per block and head, weights: per-head W_q/W_k norms, notes: the solve's)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of block 0's initial attention maps")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit import fidelity
    from structinit.config import ModelConfig, build_model

    try:
        cfg = init_config(args)
        model, result = build_model(ModelConfig(args.model, **geometry(args)), cfg, args.seed)
    except ValueError as err:
        parser.refuse(err)
    measured = fidelity.measure(model, result)
    blocks = measured["pseudo"]
    if args.plot:
        fidelity.plot_attention(model, result, args.plot)
    if args.json:
        print(json.dumps({"solve_seconds": result.solve_seconds, "blocks": blocks, "weights": measured["weights"],
                          "notes": result.notes, "model": args.model, "init": cfg.to_dict(), "seed": args.seed}))
        return 0
    print(f"{args.model}  init={cfg.name}  seed={args.seed}  solve {result.solve_seconds:.3f} s")
    print("forward pass with the pseudo input entering block 0; |W_q|, |W_k|: per-head Frobenius norms")
    print(f"{'block':>5} {'head':>4} {'offset':>8} {'mass':>7} {'hit':>6} {'|W_q|':>7} {'|W_k|':>7}")
    for b, w in zip(blocks, measured["weights"]):
        for h in b["heads"]:
            print(f"{b['block']:>5} {h['head']:>4} {str(tuple(h['offset'])):>8} {h['target_mass']:>7.3f} "
                  f"{h['argmax_hit']:>6.3f} {w['wq_norm'][h['head']]:>7.2f} {w['wk_norm'][h['head']]:>7.2f}")
    return 0
