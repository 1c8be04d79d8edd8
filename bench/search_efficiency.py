"""What early stopping saves a paired search, and what it costs: one search space, three schedulers.

    python bench/search_efficiency.py [--configs 8] [--epochs 30] [--seeds 0,1] [--grace 3] [--eta 2]
                                      [--search-seed 0] [--keep]

A smaller `heads_vs_dim` on digits (the `v1` footing, 25 % of digits, embed_dim 32/64, heads
2/4/8, the impulse settings searched; impulse, mimetic and torch_default over --seeds; its
declared objective, impulse - torch_default on validation, seed by seed; a warm-up of one epoch),
run three times with the same search seed, each as its own process with its own local Ray
cluster and storage (no run reuses another's trials): `--scheduler fifo`, `asha` (Tune's, per
trial) and `grouped` (structinit/halving.py), the last two with the same grace and eta (rungs
at grace x eta^k epochs). With fewer configurations than TPE's 10 random start-up trials the
three runs propose the same configurations, so FIFO's run scores every configuration any of them
finds, trained to the end. About 12 minutes on 2 cores with the defaults (30 epochs, the
cpu presets' length; the first rung at 3, where the arms leave chance).

Printed per run:
  epochs trained  over the trials that trained (a trial that reused an identical trial's result
                  trains nothing, in any run), from what each reported to Tune, and as a share of
                  FIFO's
  wall            seconds around the study's process: start-up, Ray, every trial, results, MLflow
  finished        configurations whose every (init, seed) trial reached the last epoch
  best            the finished configuration with the best objective (validation), its objective
                  there, and, under FIFO, its objective trained to the end (the same seeds train
                  the same models) and how far that is from FIFO's best
  test            the best configuration's impulse final test top-1 (mean over seeds) and its
                  paired test difference impulse - torch_default (mean over seeds)
  broken pairs    (configuration, declared pair, seed) with one side trained to the end and the
                  other stopped early, neither reused: pairs the report cannot use
And the FIFO run's compute floor, as bench/study_speed.py states it: its training FLOPs (images
trained x FLOPs per image, counted by FlopCounterMode over forward + backward) over the FLOP/s of
a bare, warmed-up PyTorch loop of the same model on this machine, with wall / floor.

Printed, not asserted: the machine is shared, so wall times move from run to run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from study_speed import bare_loop, geometry, per_trial, scratch  # noqa: E402  (the floor as study_speed states it)

from structinit.config import label  # noqa: E402
from structinit.declarations import PAIRS  # noqa: E402
from structinit.halving import survivors  # noqa: E402
from structinit.stats import configurations  # noqa: E402
from structinit.study import rungs  # noqa: E402

SCRIPT = '''
import sys
sys.path.insert(0, {studies!r})
from heads_vs_dim import study
from structinit.commands.study import cli

PRESETS = {{"bench": lambda: study("v1", "digits", [32, 64], [2, 4, 8], {configs}, {seeds!r}, fraction=0.25,
                                  recipe_overrides=dict(epochs={epochs}, warmup_epochs=1))}}
if __name__ == "__main__":
    cli("heads_vs_dim", PRESETS, default="bench")
'''


def run(scheduler: str, script: Path, tmp: Path, args) -> tuple[float, dict]:
    """One study process under `scheduler`, in its own folder; (wall seconds, its JSON summary)."""
    folder = tmp / scheduler
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "STRUCTINIT_CHECKPOINTS")}
    env["RAY_TMPDIR"] = str(tmp / "ray")  # short (`tmp` is): Ray's socket paths live under it
    cmd = [sys.executable, str(script), "--scheduler", scheduler, "--grace-epochs", str(args.grace),
           "--reduction-factor", str(args.eta), "--search-seed", str(args.search_seed), "--address", "local",
           "--storage", str(folder / "runs"), "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
    print(f"running {scheduler}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (folder / "study.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{scheduler} study exited {proc.returncode} after {wall:.0f} s (log: {folder}/study.log)")
    print(f"{scheduler}: {wall:.1f} s", file=sys.stderr, flush=True)
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def broken_pairs(trials: pd.DataFrame, inits: tuple) -> int:
    """(configuration, declared pair, seed) with one side trained to the end and the other stopped.
    A side that reused an identical trial's result trained nothing here: it is the same model as a
    finished arm of another configuration, and its partner was stopped with its whole group (under
    grouped) or alone (under asha), so it counts as neither side."""
    pairs = [(a, b) for a, b in PAIRS if a in inits and b in inits]
    broken = 0
    for _, g in trials[trials["reused_from"].isna()].groupby("config_key"):
        status = {(r.init, r.seed): r.status for r in g.itertuples()}
        for a, b in pairs:
            for seed in g["seed"].unique():
                sides = {status.get((a, seed)), status.get((b, seed))}
                broken += sides == {"TERMINATED", "STOPPED"}
    return broken


def trained_epochs(summary: dict, trials: pd.DataFrame) -> int:
    """Epochs the trials trained, from what each reported to Tune (its last `epoch` + 1): the
    Parquet history holds a trial's epochs up to its latest checkpoint, which a trial that per-trial
    ASHA stopped before its first checkpoint does not have. Reused trials trained nothing."""
    reused = set(trials.loc[trials["reused_from"].notna(), "trial_id"])
    folder = Path(summary["trials"]).parents[2] / "tune" / summary["execution"]  # <storage>/<study>/tune
    total = 0
    for log in folder.glob("*/result.json"):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        epochs = [r["epoch"] for r in rows if r.get("epoch") is not None]
        if rows and rows[0]["trial_id"] not in reused and epochs:
            total += max(epochs) + 1
    return total


def summarize(scheduler: str, wall: float, summary: dict, objective: str) -> dict:
    trials, history = pd.read_parquet(summary["trials"]), pd.read_parquet(summary["history"])
    configs = configurations(trials, history, objective, "val_top1")
    finished = configs[(configs["status"] == "finished") & configs["objective"].notna()]
    best = finished.loc[finished["objective"].idxmax()] if len(finished) else None
    out = {"scheduler": scheduler, "wall": wall, "summary": summary, "trials": trials, "configs": configs,
           "epochs": trained_epochs(summary, trials),
           "finished": len(finished), "stopped": int((configs["status"] == "stopped").sum()),
           "broken": broken_pairs(trials, tuple(sorted(trials["init"].unique()))), "best": best}
    if best is not None:
        g = trials[(trials["config_key"] == best["config_key"]) & (trials["status"] == "TERMINATED")]
        impulse = g[g["init"] == "impulse"].set_index("seed")["final_test_top1"]
        base = g[g["init"] == "torch_default"].set_index("seed")["final_test_top1"]
        out["test"], out["test_gap"] = impulse.mean(), (impulse - base).dropna().mean()
    return out


def replay(fifo: dict, objective: str, epochs: int, grace: int, eta: int) -> dict:
    """The grouped rule (halving.survivors at each rung, the cohort in proposal order) run on FIFO's
    curves: the same seeds train the same models, so these are the values a grouped run judges.
    Returns the configuration it finishes and the trial-epochs its groups reach, counted with
    every model trained once (twins shared, a lower bound) and once per trial (an upper bound)."""
    trials, history = fifo["trials"], pd.read_parquet(fifo["summary"]["history"])
    order = trials.groupby("config_key")["group"].min().sort_values()
    alive, reached = list(order.index), {}
    for rung in rungs(grace, eta, epochs):
        at = configurations(trials, history, objective, "val_top1", at=rung).set_index("config_key")["objective"]
        reached.update(dict.fromkeys(alive, rung))
        going = survivors({order[k]: at[k] for k in alive}, eta, "max")
        alive = [k for k in alive if order[k] in going]
    reached.update(dict.fromkeys(alive, epochs))
    model = {}
    for t in trials.itertuples():
        model[t.identity] = max(model.get(t.identity, 0), reached[t.config_key])
    return {"finishes": alive[0], "once": sum(model.values()),
            "per_trial": sum(reached[k] for k in trials["config_key"])}


def floor_of(fifo: dict) -> tuple[float, float, dict, pd.DataFrame]:
    """FIFO's training FLOPs and compute floor (seconds), as bench/study_speed.py states them."""
    trained = per_trial(fifo["summary"])[0]
    bare = {}
    for cfg in trained["cfg"]:
        if geometry(cfg) not in bare:
            bare[geometry(cfg)] = bare_loop(cfg, 3, 10, 3.0)
    flops = sum(t.images * bare[geometry(t.cfg)]["flops"] for t in trained.itertuples())
    floor = sum(t.images / bare[geometry(t.cfg)]["images_per_s"] for t in trained.itertuples())
    return flops, floor, bare, trained


def print_runs(runs: dict) -> None:
    fifo = runs["fifo"]
    full = fifo["configs"].set_index("config_key")["objective"]  # every configuration, trained to the end
    print("| scheduler | epochs trained | of FIFO's | wall s | configurations finished / stopped | best "
          "configuration (by validation) | its objective | FIFO's objective for it (to the end) | "
          "impulse test top-1 | test gap impulse − torch_default | broken pairs |")
    print("|---" * 11 + "|")
    for r in runs.values():
        best = r["best"]
        name = label(best["params"]) if best is not None else "none finished"
        here = f"{best['objective']:.2f}" if best is not None else "–"
        there = "–"
        if best is not None and fifo["best"] is not None:
            value = full.get(best["config_key"], float("nan"))
            there = f"{value:.2f} ({value - fifo['best']['objective']:+.2f} vs FIFO's best)"
        print(f"| {r['scheduler']} | {r['epochs']} | {100 * r['epochs'] / fifo['epochs']:.0f} % | "
              f"{r['wall']:.0f} | {r['finished']} / {r['stopped']} | {name} | {here} | {there} | "
              f"{r.get('test', float('nan')):.2f} | {r.get('test_gap', float('nan')):+.2f} | {r['broken']} |")


def print_configs(runs: dict) -> None:
    print("\nEvery configuration's objective under each scheduler (stopped: at the rung it stopped at):\n")
    cells = {r["scheduler"]: {c.config_key: f"{c.objective:.2f}" + (
        f" @{int(c.stopped_at)}" if c.status == "stopped" else "") for c in r["configs"].itertuples()}
        for r in runs.values()}
    print("| configuration | " + " | ".join(cells) + " |")
    print("|---" * (len(cells) + 1) + "|")
    for c in runs["fifo"]["configs"].itertuples():
        print(f"| {label(c.params)} | " + " | ".join(v.get(c.config_key, "–") for v in cells.values()) + " |")


def print_replays(fifo: dict, objective: str, args) -> None:
    print("\nThe grouped rule replayed on FIFO's curves, first rung x eta (trial-epochs as a share of "
          "FIFO's trained epochs: every model once, and once per trial):\n")
    print("| grace | eta | rungs | finishes | FIFO's objective for it | epochs, models once | epochs, per trial |")
    print("|---" * 7 + "|")
    full = fifo["configs"].set_index("config_key")
    best = fifo["best"]["objective"]
    for grace in sorted({max(1, args.grace - 1), args.grace, args.grace + 1}):
        for eta in (2, 3, 4):
            r = replay(fifo, objective, args.epochs, grace, eta)
            value = full.loc[r["finishes"], "objective"]
            print(f"| {grace} | {eta} | {rungs(grace, eta, args.epochs)} | {label(full.loc[r['finishes'], 'params'])} "
                  f"| {value:.2f} ({value - best:+.2f}) | {100 * r['once'] / fifo['epochs']:.0f} % | "
                  f"{100 * r['per_trial'] / fifo['epochs']:.0f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=8, help="configurations each run proposes")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--grace", type=int, default=3, help="the first rung, in epochs (asha, grouped)")
    parser.add_argument("--eta", type=int, default=2, help="the reduction factor (asha, grouped)")
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, logs)")
    args = parser.parse_args()

    # short: a run's Ray socket paths live under it
    with scratch("se", args.keep, "/tmp") as tmp:
        script = tmp / "heads_vs_dim_bench.py"
        seeds = tuple(int(s) for s in args.seeds.split(","))
        script.write_text(SCRIPT.format(studies=str(ROOT / "studies"), configs=args.configs, seeds=seeds,
                                        epochs=args.epochs))
        objective = "gap:impulse-torch_default"
        runs = {s: summarize(s, *run(s, script, tmp, args), objective) for s in ("fifo", "asha", "grouped")}
        fifo = runs["fifo"]
        flops, floor, bare, trained = floor_of(fifo)
        print(f"heads_vs_dim (v1, digits 25 %): {args.configs} configurations x 3 inits x seeds {seeds}, "
              f"{args.epochs} epochs, search seed {args.search_seed}; objective {objective} (validation top-1); "
              f"asha and grouped: rungs at {rungs(args.grace, args.eta, args.epochs)} epochs (grace "
              f"{args.grace}, eta {args.eta}); {os.cpu_count()} CPUs\n")
        print_runs(runs)
        print(f"\nFIFO's compute floor: {flops / 1e12:.3f} TFLOP trained ({len(trained)} trials, "
              f"{int(trained['epochs'].sum())} epochs) / the bare loop's "
              + ", ".join(f"{b['gflops_per_s']:.2f}" for b in bare.values())
              + f" GFLOP/s (by geometry) = {floor:.1f} s; FIFO's wall / floor = {fifo['wall'] / floor:.1f}")
        print_configs(runs)
        if fifo["best"] is not None:
            print_replays(fifo, objective, args)


if __name__ == "__main__":
    main()
