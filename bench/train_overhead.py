"""Ray Train path vs a bare PyTorch loop: steady-state images/s and the fixed start-up cost.

    python bench/train_overhead.py [--epochs 12] [--threads 1] [--dataset digits]

Same model, data, recipe, thread count and machine, in one process: a bare loop over the very
`build` / `train_one_epoch` the Ray worker uses, then `fit` (TorchTrainer, 1 worker) on a fresh
local Ray cluster, then the bare loop again (to see drift on a shared machine). Steady state is
the median images/s of the epochs after the first. Target: Ray / bare >= 0.95.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from structinit.checkpoint import history_of
from structinit.config import make
from structinit.train import Context, build, fit, loss_function, optimizer_and_schedule, train_one_epoch


def bare(cfg) -> list[float]:
    """images/s per epoch of the plain loop (no Ray, no eval)."""
    torch.manual_seed(cfg.seed)
    _, model, _, loaders, mixup = build(cfg, Context())
    r = cfg.recipe
    optimizer, scheduler = optimizer_and_schedule(cfg, model, len(loaders["train"]))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rates, updates = [], 0
    for epoch in range(r.epochs):
        loaders["train"].sampler.set_epoch(epoch)
        stats = train_one_epoch(model, loaders["train"], optimizer, scheduler, loss_function(cfg),
                                device=torch.device("cpu"), dtype=None, scaler=scaler, grad_clip=r.grad_clip,
                                mixup=mixup, epoch=epoch, updates=updates)
        updates = stats["updates"]
        rates.append(stats["images"] / stats["train_seconds"])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", default="digits")
    args = parser.parse_args()
    cfg = make(args.dataset, recipe_overrides=dict(epochs=args.epochs, warmup_epochs=0),
               cpus_per_worker=args.threads, val_fraction=0.1)
    torch.set_num_threads(args.threads)
    steady = lambda rates: statistics.median(rates[1:])  # noqa: E731

    before = bare(cfg)
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=max(2, args.threads), log_to_driver=False)
    ray_start = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as storage:
        t0 = time.perf_counter()
        result = fit(cfg, storage_path=storage, name="overhead")
        fit_wall = time.perf_counter() - t0
        history = history_of(result)
    ray.shutdown()
    after = bare(cfg)

    ray_rate = steady([h["images_per_s"] for h in history])
    bare_rate = statistics.median(before[1:] + after[1:])
    epochs_time = sum(h["epoch_seconds"] for h in history)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dataset}, {cfg.model.name}, "
          f"batch {cfg.recipe.batch_size}, {args.epochs} epochs")
    print(f"bare loop images/s (median epochs 2..n), before / after Ray: {steady(before):.0f} / {steady(after):.0f}")
    print(f"Ray Train images/s (median epochs 2..n): {ray_rate:.0f}")
    print(f"ratio Ray / bare: {ray_rate / bare_rate:.3f}  (target >= 0.95)")
    first = history[0]
    fixed = fit_wall - epochs_time
    worker, setup = first.get("startup_seconds", float("nan")), first.get("setup_seconds", float("nan"))
    print(f"start-up: ray.init {ray_start:.1f} s; fit wall {fit_wall:.1f} s of which epochs {epochs_time:.1f} s "
          f"-> fixed cost per run {fixed:.1f} s")
    print(f"fixed cost by piece: worker process start and imports {worker:.1f} s; data, model, init, measures "
          f"{setup:.1f} s; Train controller start, worker-group start, reports and teardown (the rest) "
          f"{fixed - worker - setup:.1f} s")


if __name__ == "__main__":
    main()
