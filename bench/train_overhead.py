"""Ray paths vs a bare PyTorch loop: steady-state images/s and the fixed cost of a run.

    python bench/train_overhead.py [--epochs 12] [--threads 1] [--dataset digits]

Same model, data, recipe, thread count and machine, in one process: a bare loop over the very
`build` / `train_one_epoch` the Ray worker uses; then, on a fresh local Ray cluster, `fit`
(TorchTrainer, 1 worker: the path of multi-worker trials and `structinit train`) and a Tuner of
two trials one after the other, each training in its Tune trial (`train_in_trial`: the path of a
study's one-worker trials; the second reuses the first's process, as a study's trials do); then
the bare loop again (to see drift on a shared machine). Steady state is the median images/s of
the epochs after the first. A path's fixed cost: its wall time minus its epochs' seconds.
Target: Ray / bare >= 0.95.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from structinit.checkpoint import history_of
from structinit.config import make
from structinit.train import (Context, build, fit, loss_function, optimizer_and_schedule, train_in_trial,
                              train_one_epoch)


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


def in_trials(cfg, storage: str) -> list[dict]:
    """Two Tune trials one after the other, each training `cfg` in itself; per trial its wall time
    (from the Tuner's start, or the previous trial's end, to its end), epochs and images/s."""
    import ray.tune

    ends: list[float] = []

    def trial(config):
        train_in_trial(cfg)

    class Ended(ray.tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            ends.append(time.perf_counter())

    t0 = time.perf_counter()
    grid = ray.tune.Tuner(
        ray.tune.with_resources(trial, {"CPU": cfg.cpus_per_worker}),
        tune_config=ray.tune.TuneConfig(num_samples=2, max_concurrent_trials=1, reuse_actors=True),
        run_config=ray.tune.RunConfig(name="in_trial", storage_path=storage, callbacks=[Ended()], verbose=0)).fit()
    out = []
    for i, result in enumerate(grid):  # one at a time: they end in the order they were made
        history = history_of(result)
        out.append({"wall": ends[i] - ([t0] + ends)[i], "epochs": sum(h["epoch_seconds"] for h in history),
                    "rate": statistics.median([h["images_per_s"] for h in history][1:]),
                    "startup": history[0]["startup_seconds"], "setup": history[0]["setup_seconds"]})
    return out


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
        trials = in_trials(cfg, storage)
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
    for i, t in enumerate(trials):
        print(f"in a Tune trial ({'a fresh process' if i == 0 else 'the reused process'}): wall {t['wall']:.1f} s "
              f"of which epochs {t['epochs']:.1f} s -> fixed cost {t['wall'] - t['epochs']:.1f} s (process start "
              f"and imports {t['startup']:.1f} s; data, model, init, measures {t['setup']:.1f} s); images/s "
              f"{t['rate']:.0f} = {t['rate'] / bare_rate:.3f} of bare")


if __name__ == "__main__":
    main()
