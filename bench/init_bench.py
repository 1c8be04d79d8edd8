"""Solve time and fidelity of the impulse init, both solvers, every pseudo input.

    python bench/init_bench.py [--models tiny,small,tiny_h8,base] [--grad-steps 10000]
    python bench/init_bench.py --data [--models tiny,base] [--images 64]

`--data`: the data-aware solve (pseudo_input `data`, layer by layer) on a batch of real digits
upsampled to the model's side (one channel), against the `pe` solve: seconds, the peak resident
memory it adds (sampled every 5 ms), and the forward-pass mass per head on the batch and on as
many held-out digits. Target: <= 5 s for ViT-T/2@32 with 64 images on this 2-core CPU.

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
import os
import threading
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


def digits(n: int, side: int) -> torch.Tensor:
    """n real digits (scikit-learn's), normalised as the loaders do, upsampled to side x side."""
    from sklearn.datasets import load_digits

    from structinit.data import DATASETS

    spec = DATASETS["digits"]
    x = (torch.tensor(load_digits().images[:n] / 16.0, dtype=torch.float32)[:, None] - spec.mean[0]) / spec.std[0]
    return torch.nn.functional.interpolate(x, size=side, mode="bilinear")


def rss() -> int:
    """This process's resident memory in bytes (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss(fn):
    """(fn's result, the peak resident memory above the start while it ran, MiB)."""
    start, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    return out, (max(peak[0], rss()) - start) / 2 ** 20


def data_rows(models: list[str], n: int) -> None:
    print("| model | pseudo input | images | solve s | peak memory MiB | mass on the batch (min–max) | mean | "
          "held-out mean | held-out min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in models:
        label, name, overrides = MODELS[key]
        side = create(name, **overrides).patch_embed.img_size[0]
        images = digits(2 * n, side)
        batch, held_out = images[:n], images[n:]
        for pseudo in ("pe", "data"):
            model = create(name, in_chans=1, **overrides)
            cfg = InitConfig(pseudo_input=pseudo, target_mass=0.5, base="torch")
            t0 = time.perf_counter()
            result, mib = peak_rss(lambda: apply_init(model, cfg, seed=0, images=batch))
            wall = time.perf_counter() - t0
            on = [[h["target_mass"] for b in fidelity.data_fidelity(model, result, x) for h in b["heads"]]
                  for x in (batch, held_out)]
            print(f"| {label} | {pseudo} | {n} | {wall:.2f} | {mib:.0f} | {min(on[0]):.3f}–{max(on[0]):.3f} | "
                  f"{sum(on[0]) / len(on[0]):.3f} | {sum(on[1]) / len(on[1]):.3f} | {min(on[1]):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--grad-steps", type=int, default=10_000)
    parser.add_argument("--solvers", default="closed_form,gradient")
    parser.add_argument("--data", action="store_true", help="the data-aware solve on real digits instead")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.data:
        data_rows(args.models.split(",") if args.models != ",".join(MODELS) else ["tiny", "base"], args.images)
        return
    print("| model | solver | pseudo input | requested mass | solve s | rank | mass mean | mass min | mass max | hit min "
          "| fwd mass | |W_q| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in args.models.split(","):
        label, name, overrides = MODELS[key]
        model = create(name, **overrides)
        for pseudo in (p for p in PSEUDO_INPUTS if "data" not in p):
            if "closed_form" in args.solvers:
                for mass in (0.3, 0.6, 0.9):
                    row(label, model, InitConfig(pseudo_input=pseudo, target_mass=mass), mass)
            if "gradient" in args.solvers:
                cfg = InitConfig(pseudo_input=pseudo, solver="gradient", target_mass=None, qk="shared",
                                 solver_steps=args.grad_steps)
                row(label, model, cfg, "v1 raw")


if __name__ == "__main__":
    main()
