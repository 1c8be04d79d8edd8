"""`structinit` command line: inspect-init (more commands come with training and studies)."""
from __future__ import annotations

import argparse
import json
import sys

from structinit.inits import InitConfig, apply_init


def _mass(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a timm ViT name; the flags override its geometry)")
    g.add_argument("--model", default="vit_tiny_patch2_32")
    g.add_argument("--img-size", type=int)
    g.add_argument("--patch-size", type=int)
    g.add_argument("--embed-dim", type=int)
    g.add_argument("--depth", type=int)
    g.add_argument("--num-heads", type=int)
    g.add_argument("--pos-embed", help="learn | sincos (structinit models)")
    g.add_argument("--global-pool", help="avg | token")


def _add_init_args(p: argparse.ArgumentParser) -> None:
    d = InitConfig()
    g = p.add_argument_group("init")
    g.add_argument("--init", default=d.name, help="default | torch_default | pe_scaled | mimetic | impulse")
    g.add_argument("--base", default=d.base, help="timm | torch: weights the init does not set")
    g.add_argument("--filter-size", type=int, default=d.filter_size)
    g.add_argument("--offsets", default=d.offsets, help="cover | random")
    g.add_argument("--pseudo-input", default=d.pseudo_input, help="pe | uniform | gaussian | pe+uniform | pe+gaussian")
    g.add_argument("--solver", default=d.solver, help="closed_form | gradient")
    g.add_argument("--target-mass", type=_mass, default=d.target_mass,
                   help="attention mass on the impulse tap, in (0, 1); 'none' = raw v1 gradient solve")
    g.add_argument("--qk", default=d.qk, help="per_block | shared")
    g.add_argument("--value-proj", default=d.value_proj, help="default | mimetic")
    g.add_argument("--pe-scale", type=float, default=d.pe_scale)
    g.add_argument("--seed", type=int, default=0)


def init_config(args: argparse.Namespace) -> InitConfig:
    return InitConfig(name=args.init, base=args.base, filter_size=args.filter_size, offsets=args.offsets,
                      pseudo_input=args.pseudo_input, solver=args.solver, target_mass=args.target_mass,
                      qk=args.qk, value_proj=args.value_proj, pe_scale=args.pe_scale)


def model_from(args: argparse.Namespace):
    from structinit.models import create

    return create(args.model, img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim,
                  depth=args.depth, num_heads=args.num_heads, pos_embed=args.pos_embed,
                  global_pool=args.global_pool)


def inspect_init(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit import fidelity

    try:
        cfg = init_config(args)
        model = model_from(args)
        result = apply_init(model, cfg, seed=args.seed)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="structinit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect-init", help="initialise a ViT and print its attention's fidelity to the impulse targets")
    _add_model_args(p)
    _add_init_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (solve_seconds, blocks)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of block 0's initial attention maps")
    p.set_defaults(run=inspect_init, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args, args.parser)


if __name__ == "__main__":
    sys.exit(main())
