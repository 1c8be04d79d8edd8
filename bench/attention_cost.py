"""What measuring the attention through training (attention.py) adds to a trial.

    python bench/attention_cost.py [--preset cpu] [--epochs 3] [--repeats 20]

Runs the real `train.train_loop` in this process (a local Session, no Ray, no MLflow) on a study
preset's trial (`init_comparison --preset cpu` by default: the followup footing's nano ViT on 25 %
of digits, one thread as a trial has) for a few epochs with a checkpoint, hence an attention
measure, every epoch; then times `attention.measure` alone on the same model and held-out batch.
Prints the epoch's seconds, one measure's seconds, and the share of a trial the measures take at
the preset's own cadence (the init, every `checkpoint_every` epochs, the last). Target: <= 3 %.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from structinit import attention, train
from structinit.config import with_overrides
from structinit.data import held_out
from structinit.study import TRIAL_INDEX, trial_config


def preset_trial(study: str, preset: str, init: str):
    """The TrialConfig of `init`'s first trial in a study script's preset (its first grid cell)."""
    path = Path(__file__).resolve().parents[1] / "studies" / f"{study}.py"
    spec = importlib.util.spec_from_file_location(f"study_{study}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    s = module.PRESETS[preset]()
    cell = {k: v[0] for k, v in (s.grid or {}).items()}
    return trial_config(s, {**cell, TRIAL_INDEX: s.inits.index(init) * len(s.seeds)})[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="init_comparison")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--init", default="impulse")
    p.add_argument("--epochs", type=int, default=3, help="epochs the loop trains here (each one measured)")
    p.add_argument("--repeats", type=int, default=20, help="timings of the measure alone")
    args = p.parse_args()

    cfg = preset_trial(args.study, args.preset, args.init)
    cadence, epochs = cfg.checkpoint_every, cfg.recipe.epochs  # the preset's own
    short = with_overrides(cfg, {"checkpoint_every": 1, "recipe.epochs": args.epochs})  # warmup fits (recipes.replaced)
    reports = []

    class Checkpoint:
        @staticmethod
        def from_directory(folder):
            return None

    threads = torch.get_num_threads()
    try:
        start = time.perf_counter()
        train.train_loop({"trial": short, "tracking": None, "data": None},
                         train.Session(train.Context(), lambda: None, lambda m, checkpoint=None: reports.append(m),
                                       Checkpoint))
        wall = time.perf_counter() - start
        d, model, init, _, _ = train.build(cfg, train.Context())
        images = held_out(d, 64, cfg.seed)
        alone = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            attention.measure(model, init, images)
            alone.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)

    epoch = statistics.median(m["epoch_seconds"] for m in reports[1:] or reports)  # the first holds the init's
    in_loop = statistics.median(m["attention_seconds"] for m in reports[1:] or reports)
    measure = statistics.median(alone)
    measures = 1 + len({e for e in range(1, epochs + 1) if e % cadence == 0 or e == epochs})
    setup = reports[0]["setup_seconds"]
    trial = setup + epochs * epoch
    print(f"{args.study} --preset {args.preset}, {args.init}: {cfg.model.name}, {cfg.dataset} fraction {cfg.fraction}, "
          f"{cfg.cpus_per_worker} thread(s); loop of {args.epochs} epochs in {wall:.1f} s")
    print(f"epoch (train + validate + measure): {epoch:.3f} s median; one attention measure: {in_loop * 1000:.1f} ms "
          f"in the loop, {measure * 1000:.1f} ms alone (median of {args.repeats}) = {100 * in_loop / epoch:.2f} % of "
          f"an epoch where it measures")
    print(f"at the preset's cadence ({measures} measures in {epochs} epochs: the init, every {cadence}, the last): "
          f"{measures * in_loop:.2f} s of a {trial:.1f} s trial (setup {setup:.1f} s + {epochs} epochs) = "
          f"{100 * measures * in_loop / trial:.2f} %; {100 * measures * in_loop / (epochs * epoch):.2f} % of its "
          f"epochs' time")


if __name__ == "__main__":
    main()
