"""Solve time and fidelity of the impulse init, both solvers, every pseudo input.

    python bench/init_bench.py [--models tiny,small,tiny_h8,base] [--grad-steps 10000]

Closed form: every block solved (qk=per_block), for requested masses 0.3, 0.6, 0.9.
Gradient (v1): one solve shared by all blocks, v1's raw map (target_mass=None), `--grad-steps`
Adam steps. Mass and hit (argmax hit rate) are the solve's, on each block's own pseudo input;
`fwd mass` is the forward-pass mean with the pseudo input entering block 0; `|W_q|` the mean
per-head Frobenius norm.
Targets (2-core CPU): closed form for all blocks of ViT-T/2@32 <= 1 s; mass within +-0.05 of the
request for every head; argmax hit >= 0.98.
"""
from __future__ import annotations

import argparse
import time

import torch

from structinit import fidelity
from structinit.inits import PSEUDO_INPUTS, InitConfig, apply_init
from structinit.models import create

MODELS = {
    "tiny": ("ViT-T/2@32", "vit_tiny_patch2_32", {}),
    "small": ("ViT-S/2@32", "vit_small_patch2_32", {}),
    "tiny_h8": ("ViT-T/2@32 8 heads", "vit_tiny_patch2_32", {"num_heads": 8}),
    "base": ("ViT-B/16@224", "vit_base_patch16_224", {}),
}


def row(label, model, cfg, mass_label):
    t0 = time.perf_counter()
    result = apply_init(model, cfg, seed=0)
    wall = time.perf_counter() - t0
    notes = result.notes["blocks"]
    mass = torch.tensor([m for b in notes for m in b["mass"]])
    hit = torch.tensor([a for b in notes for a in b["argmax_hit"]])
    wq = torch.tensor([n for b in notes for n in b["wq_norm"]])
    forward = fidelity.summary(fidelity.measure(model, result)["pseudo"])["target_mass"]["mean"]
    ranks = {b["rank"] for b in notes}
    print(f"| {label} | {cfg.solver} | {cfg.pseudo_input} | {mass_label} | {wall:.2f} | "
          f"{','.join(str(r) for r in sorted(ranks, key=str))} | {mass.mean():.3f} | {mass.min():.3f} | "
          f"{mass.max():.3f} | {hit.min():.3f} | {forward:.3f} | {wq.mean():.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--grad-steps", type=int, default=10_000)
    parser.add_argument("--solvers", default="closed_form,gradient")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | solver | pseudo input | requested mass | solve s | rank | mass mean | mass min | mass max | hit min "
          "| fwd mass | |W_q| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in args.models.split(","):
        label, name, overrides = MODELS[key]
        model = create(name, **overrides)
        for pseudo in PSEUDO_INPUTS:
            if "closed_form" in args.solvers:
                for mass in (0.3, 0.6, 0.9):
                    row(label, model, InitConfig(pseudo_input=pseudo, target_mass=mass), mass)
            if "gradient" in args.solvers:
                cfg = InitConfig(pseudo_input=pseudo, solver="gradient", target_mass=None, qk="shared",
                                 solver_steps=args.grad_steps)
                row(label, model, cfg, "v1 raw")


if __name__ == "__main__":
    main()
