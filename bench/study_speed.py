"""Where a study's wall time goes, and how far it is from the compute floor.

    python bench/study_speed.py [--skip-smoke] [--skip-fraction] [--epochs N] [--val-sizes default,135]
                                [--seeds 0] [--inits impulse,default] [--cpus-per-worker 1]
                                [--randaugment rand-m9-mstd0.5-inc1-mmax9|recipe] [--keep]

Fixed studies, each run as its own process (a fresh interpreter, its own local Ray cluster,
MLflow in a SQLite file, every path under one temporary folder), one after the other (with the
defaults about 15 minutes on 2 cores; `--epochs 10 --inits impulse,mimetic,default --seeds 0,1
--val-sizes default` is the short form earlier notes measured, about 3 minutes):

  smoke     studies/heads_vs_dim.py --preset smoke (digits, 1 proposal x 3 inits x 1 seed, 2 epochs)
  fraction  a "1 %-data trial set", once per --val-sizes entry: a generated 60,000 / 10,000-image
            28x28 grey dataset in FashionMNIST's on-disk layout (10 classes of stripes: orientation x
            frequency, plus noise), fraction=0.01 (540 training images), ViT patch 4, dim 64, depth 4,
            4 heads, the dataset's recipe (v1_small: 200 epochs, 10 of warm-up; --epochs N: N without
            warm-up), validation capped at the entry's size; 1 configuration x --inits x --seeds.
            Every epoch validates on the cap; the test set (10,000) is evaluated at the end, on the
            final model and on the best validation epoch's. Its RandAugment
            magnitude is capped at 9 (`-mmax9`, as the recipes now are; `--randaugment recipe` keeps
            the recipe's string): before that cap, timm's `inc1` Posterize at a sampled magnitude of
            10 asked Pillow for 0 bits, which Pillow 13 refuses (about 1 image in 1,000), so the
            flag lets the bench run on checkouts from before the fix

Measured per study, from its Parquet tables (one row per trial, one per trial-epoch):
  wall           seconds around the study's process: start-up, Ray, every trial, results, MLflow
  sum train      sum over trial-epochs of `train_seconds` (pure training); where the table has no such
                 column, images per epoch (from the trial's data split) / `images_per_s`, marked *
  train share    sum train / wall; eval share: sum `eval_seconds` / wall; ckpt share: sum
                 `checkpoint_seconds` / wall (n/a where the column is missing). Trials run side by
                 side (up to `at once`), so a share sums over trials and may pass 100 %.
  ... of trials  sum train (sum `eval_seconds`) / the sum of the trials' own wall times (Tune's
                 `time_total_s` plus the process start of a trial that trained in a fresh process):
                 the share of a trial's time that trains (evaluates), whatever runs beside it
  fixed/trial    mean over trials of Tune's `time_total_s` - sum of that trial's `epoch_seconds`, plus,
                 for a one-worker trial (which trains in its Tune trial's process, started before
                 Tune's clock), its `startup_seconds` (0 where it reused the process of an earlier
                 trial); a multi-worker trial's TorchTrainer starts inside Tune's clock
  setup/trial    mean over trials of `setup_seconds` (worker loop entry to the first epoch), or n/a;
                 startup/trial: of `startup_seconds` (worker process start and imports), or n/a
  floor          the study's training FLOPs / the FLOP/s of a bare, warmed-up PyTorch loop (random
                 tensors, forward + backward + AdamW, the recipe's per-worker batch, torch threads =
                 the trial's cpus_per_worker) of the same model on this machine, run after the
                 studies: sum over trials of images trained x FLOPs/image / bare FLOP/s. FLOPs per
                 image from torch.utils.flop_counter.FlopCounterMode over one forward + backward;
                 where it does not see the attention kernel (CPU SDPA), the analytic 3 x 4 N^2 D L
                 is added. The analytic forward, L [N (8 D^2 + 4 r D^2) + 4 N^2 D] + patch embedding +
                 head, is printed beside the count as a check.
  wall / floor   how many times the floor the study took (a machine running `at once` trials side
                 by side could in principle reach floor / at once)

Printed, not asserted: the machine is shared, so figures move from run to run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from structinit.config import TrialConfig, data_kwargs
from structinit.data import DATASETS, labels_of, load_splits, split_indices
from structinit.train import build_model, optimizer_and_schedule

ROOT = Path(__file__).resolve().parents[1]
VAL_SIZE = next(f.default for f in dataclasses.fields(TrialConfig) if f.name == "val_size")

FRACTION_SCRIPT = '''"""The 1 %-data trial set of bench/study_speed.py (written and run by it)."""
from functools import partial

from structinit.commands.study import cli
from structinit.config import make
from structinit.study import Study, categorical

GRID = {{"init.filter_size": [3]}}
PRESETS = {{
    "bench": lambda: Study(
        {name!r},
        make("fashion_mnist", data_root={root!r}, fraction={fraction!r}, cpus_per_worker={cpus!r},{verify}{val_size}
             model_overrides=dict(patch_size=4, embed_dim=64, depth=4, num_heads=4),
             recipe_overrides=dict({recipe})),
        partial(categorical, **GRID), grid=GRID, inits={inits!r}, seeds={seeds!r}),
}}

if __name__ == "__main__":
    cli({name!r}, PRESETS, default="bench")
'''


# ---------------------------------------------------------------- data


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file (MNIST's format) of uint8 values."""
    header = np.array([(0x08 << 8) | array.ndim, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def stripes(labels: np.ndarray, rng) -> np.ndarray:
    """28x28 grey images whose class is the stripes' orientation (label % 2) and frequency
    (label // 2), at a random phase under noise: a signal that flips, small shifts and rotations
    (the recipe's RandAugment) keep."""
    t = np.arange(28, dtype=np.float32)
    cycles = np.array([1.5, 2.5, 3.5, 5.0, 7.0], dtype=np.float32)[labels // 2]
    phase = rng.uniform(0, 2 * np.pi, len(labels)).astype(np.float32)
    wave = np.sin(2 * np.pi * cycles[:, None] * t[None, :] / 28 + phase[:, None])  # (n, 28)
    img = np.where((labels % 2 == 0)[:, None, None], wave[:, :, None], wave[:, None, :])  # rows or columns
    img = 128 + 70 * img + rng.normal(0, 35, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def fashion_like(root: Path, train: int = 60_000, test: int = 10_000, seed: int = 0) -> None:
    """`train` / `test` images under root/FashionMNIST/raw as torchvision reads them."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.concatenate(
            [stripes(labels[i:i + 10_000], rng) for i in range(0, n, 10_000)]))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


# ---------------------------------------------------------------- studies


def run_study(label: str, argv: list[str], tmp: Path) -> tuple[float, dict]:
    """Run one study script as a process in `tmp`; (wall seconds, its JSON summary)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "STRUCTINIT_CHECKPOINTS")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env["RAY_TMPDIR"] = str(tmp / "ray")
    cmd = [sys.executable, *argv, "--storage", str(tmp / "runs"), "--address", "local"]
    print(f"running {label}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (tmp / f"{label}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{label} study exited {proc.returncode} after {wall:.0f} s (log: {tmp / label}.log)")
    print(f"{label}: {wall:.1f} s", file=sys.stderr, flush=True)
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def smoke(tmp: Path, args) -> tuple[str, float, dict]:
    return "smoke", *run_study("smoke", [str(ROOT / "studies" / "heads_vs_dim.py"), "--preset", "smoke"], tmp)


def fraction(tmp: Path, args, val_size: int | None) -> tuple[str, float, dict]:
    root = tmp / "data"
    if not root.exists():
        t0 = time.perf_counter()
        fashion_like(root)
        print(f"wrote 60,000 + 10,000 images under {root} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    fields = {f.name for f in dataclasses.fields(TrialConfig)}
    label = f"fraction, val_size {VAL_SIZE if val_size is None else val_size}"
    script = tmp / ("fraction_1pct.py" if val_size is None else f"fraction_1pct_val{val_size}.py")
    recipe = {} if args.epochs is None else {"epochs": args.epochs, "warmup_epochs": 0}
    recipe |= {k: v for k, v in (("loader_workers", args.loader_workers), ("randaugment", args.randaugment))
               if v not in (None, "recipe")}
    script.write_text(FRACTION_SCRIPT.format(
        name=script.stem, root=str(root), fraction=0.01, cpus=args.cpus_per_worker,
        verify=" verify=False," if "verify" in fields else "",
        val_size="" if val_size is None else f" val_size={val_size!r},",
        recipe=", ".join(f"{k}={v!r}" for k, v in recipe.items()),
        inits=tuple(args.inits.split(",")), seeds=tuple(int(s) for s in args.seeds.split(","))))
    return label, *run_study(script.stem, [str(script)], tmp)


# ---------------------------------------------------------------- tables


def trial_cfg(row) -> TrialConfig:
    """A trial's TrialConfig from its `trial_config` column (flat `section.field` JSON)."""
    nested: dict = {}
    for key, value in json.loads(row["trial_config"]).items():
        section, _, name = key.partition(".")
        if name:
            nested.setdefault(section, {})[name] = tuple(value) if isinstance(value, list) else value
        else:
            nested[key] = value
    return TrialConfig.from_dict(nested)


def column(frame: pd.DataFrame, name: str) -> pd.Series | None:
    """A column with values, or None where the table lacks it (or holds only nulls)."""
    return frame[name] if name in frame.columns and frame[name].notna().any() else None


_SPLITS: dict = {}


def images_per_epoch(cfg: TrialConfig) -> int:
    """How many images one epoch trains on: the trial's split, as its DistributedSampler serves it."""
    key = (cfg.dataset, cfg.data_root, cfg.verify, cfg.fraction, cfg.val_fraction, cfg.seed)
    if key not in _SPLITS:
        pool, _ = load_splits(cfg.dataset, cfg.data_root, False, cfg.verify)
        _SPLITS[key] = len(split_indices(labels_of(pool), cfg.fraction, cfg.val_fraction, cfg.seed)[0])
    n, world = _SPLITS[key], cfg.workers
    per_rank = math.ceil(n / world)
    if cfg.recipe.mixup or cfg.recipe.cutmix:  # drop_last
        per_rank -= per_rank % (cfg.recipe.batch_size // world)
    return per_rank * world


def per_trial(summary: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The trials table with, per trial: its config, sum of epoch_seconds, train seconds (and
    whether derived), images trained, eval / checkpoint seconds, setup seconds."""
    trials, history = pd.read_parquet(summary["trials"]), pd.read_parquet(summary["history"])
    have = {c: column(history, c) is not None for c in ("train_seconds", "eval_seconds", "checkpoint_seconds",
                                                        "setup_seconds", "startup_seconds")}
    rows = []
    for _, t in trials.iterrows():
        cfg = trial_cfg(t)
        h = history[history.trial_id == t["trial_id"]]
        if have["train_seconds"]:
            train = h["train_seconds"].sum()
            images = (h["train_seconds"] * h["images_per_s"]).sum()
        else:  # images_per_s = images / train_seconds of the epoch
            per_epoch = images_per_epoch(cfg)
            train = (per_epoch / h["images_per_s"]).sum()
            images = per_epoch * len(h)
        first = {c: h[c].dropna() if have[c] else pd.Series(dtype=float) for c in ("setup_seconds",
                                                                                 "startup_seconds")}
        rows.append(dict(trial_id=t["trial_id"], cfg=cfg, status=t["status"], epochs=len(h),
                         time_total_s=t["time_total_s"], epoch_seconds=h["epoch_seconds"].sum(), train=train,
                         images=images, test_top1=t.get("final_test_top1"),
                         eval=h["eval_seconds"].sum() if have["eval_seconds"] else None,
                         checkpoint=h["checkpoint_seconds"].sum() if have["checkpoint_seconds"] else None,
                         **{c.split("_")[0]: v.iloc[0] if len(v) else None for c, v in first.items()}))
    return pd.DataFrame(rows), history, have


# ---------------------------------------------------------------- compute floor


def geometry(cfg: TrialConfig) -> str:
    """What fixes a trial's training FLOPs and its bare loop's speed."""
    return json.dumps({"model": dataclasses.asdict(cfg.model), "data": data_kwargs(cfg, num_classes(cfg)),
                       "batch": cfg.recipe.batch_size // cfg.workers, "threads": cfg.cpus_per_worker}, sort_keys=True)


def num_classes(cfg: TrialConfig) -> int:
    return DATASETS[cfg.dataset].num_classes or 2


def analytic_forward(model) -> tuple[float, float] | None:
    """(forward FLOPs per image, its attention part 4 N^2 D L) of a timm ViT, 2 FLOPs per MAC:
    L [N (8 D^2 + 4 r D^2) + 4 N^2 D] + patch embedding 2 N_p C p^2 D + head 2 D K."""
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        return None
    d, layers = model.embed_dim, len(model.blocks)
    patches = model.patch_embed.num_patches
    n = patches + model.num_prefix_tokens
    r = model.blocks[0].mlp.fc1.out_features / d
    conv = model.patch_embed.proj.weight  # (D, C, p, p)
    embed = 2 * patches * conv[0].numel() * d
    head = 2 * d * model.head.out_features if hasattr(model.head, "out_features") else 0
    attention = 4 * n * n * d * layers
    return layers * n * (8 * d * d + 4 * r * d * d) + attention + embed + head, attention


def count_flops(model, x) -> tuple[float, float, bool]:
    """(forward, forward + backward) FLOPs per image by FlopCounterMode, and whether it saw the
    attention products (SDPA, or the bmm of an unfused attention)."""
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x)
    forward = counter.get_total_flops() / len(x)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    names = [str(op) for op in counter.get_flop_counts().get("Global", {})]
    seen = any("scaled_dot_product" in n or n.endswith("bmm") for n in names)
    return forward, counter.get_total_flops() / len(x), seen


def bare_loop(cfg: TrialConfig, warmup: int, steps: int, min_seconds: float) -> dict:
    """images/s of forward + backward + the trials' optimizer and per-update lr schedule
    (train.optimizer_and_schedule: timm's AdamW, no decay on biases, norms, PE) on random tensors,
    and FLOPs per image."""
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, **data_kwargs(cfg, num_classes(cfg)))
    model.train()
    r, spec = cfg.recipe, DATASETS[cfg.dataset]
    batch, size = r.batch_size // cfg.workers, cfg.model.img_size or spec.img_size
    x = torch.randn(batch, spec.in_chans, size, size)
    y = torch.randint(0, num_classes(cfg), (batch,))

    forward, counted, seen = count_flops(model, x[:4])
    analytic = analytic_forward(model)
    flops = counted if seen or analytic is None else counted + 3 * analytic[1]

    optimizer, scheduler = optimizer_and_schedule(cfg, model, steps_per_epoch=max(warmup + steps, 1))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    updates = 0

    def step():
        nonlocal updates
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        if r.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        optimizer.step()
        updates += 1
        scheduler.step_update(updates)

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.cpus_per_worker)
    try:
        for _ in range(warmup):
            step()
        done, t0 = 0, time.perf_counter()
        while done < steps or time.perf_counter() - t0 < min_seconds:
            step()
            done += 1
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    rate = done * batch / seconds
    blocks = getattr(model, "blocks", None)
    name = (f"{cfg.model.name} D={model.embed_dim} L={len(blocks)} h={blocks[0].attn.num_heads} "
            f"p={model.patch_embed.patch_size[0]} @{size}" if blocks is not None else cfg.model.name)
    return dict(name=f"{name}, batch {batch}, {cfg.cpus_per_worker} thread(s)", images_per_s=rate, flops=flops,
                counted=counted, counted_forward=forward, attention_seen=seen,
                analytic=analytic[0] if analytic else None, attention=analytic[1] if analytic else None,
                gflops_per_s=rate * flops / 1e9)


# ---------------------------------------------------------------- report


def fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}}{suffix}"


def row(label: str, wall: float, trials: pd.DataFrame, have: dict, bare: dict) -> str:
    share = lambda s: fmt(100 * s / wall, ".1f", " %") if s is not None else "n/a"  # noqa: E731
    train = trials["train"].sum()
    mark = "" if have["train_seconds"] else "*"
    in_trial = trials["cfg"].map(lambda c: c.workers == 1) & trials["startup"].notna()
    started = trials["startup"].where(in_trial, 0).fillna(0)
    fixed = (trials["time_total_s"] - trials["epoch_seconds"] + started).mean()
    trial_wall = (trials["time_total_s"] + started).sum()  # each trial's own wall, its process start included
    of_trial = lambda s: fmt(100 * s / trial_wall, ".1f", " %") if s is not None else "n/a"  # noqa: E731
    evals = trials["eval"].sum() if have["eval_seconds"] else None
    ckpt = trials["checkpoint"].sum() if have["checkpoint_seconds"] else None
    setup = trials["setup"].dropna().mean() if have["setup_seconds"] else None
    startup = trials["startup"].dropna().mean() if have["startup_seconds"] else None
    floor = sum(t.images / bare[geometry(t.cfg)]["images_per_s"] for t in trials.itertuples()) or None
    rates = sorted({round(bare[geometry(c)]["gflops_per_s"], 2) for c in trials["cfg"]})
    cfg = trials["cfg"].iloc[0]
    at_once = min(len(trials), max(1, (os.cpu_count() or 1) // (cfg.workers * cfg.cpus_per_worker)))
    statuses = ",".join(f"{s} {n}" for s, n in trials["status"].value_counts().items())
    return (f"| {label} | {len(trials)} ({statuses}) | {at_once} | {trials['epochs'].max()} | {wall:.1f} | "
            f"{train:.1f}{mark} | {share(train)}{mark} | {of_trial(train)}{mark} | {of_trial(evals)} | "
            f"{fmt(fixed)} | {fmt(setup)} | {fmt(startup)} | {share(evals)} | {share(ckpt)} | {fmt(floor)} | "
            f"{fmt(floor and wall / floor)} | {' / '.join(f'{g:.2f}' for g in rates)} | "
            f"{fmt(trials['test_top1'].mean())} |")


@contextmanager
def scratch(prefix: str, keep: bool, folder: str | None = None):
    """A temporary folder for a bench's runs and logs: removed at the end, or kept (and named)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    try:
        yield tmp
    finally:
        if keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-smoke", action="store_true", help="skip studies/heads_vs_dim.py --preset smoke")
    parser.add_argument("--skip-fraction", action="store_true", help="skip the 1 %%-data trial set")
    parser.add_argument("--epochs", type=int, help="epochs of the 1 %%-data trials, without warm-up "
                                                   "(default: the recipe's 200, its warm-up of 10)")
    parser.add_argument("--val-sizes", default="default,135",
                        help="one 1 %%-data trial set per validation cap ('default': TrialConfig's, "
                             f"{VAL_SIZE}; 135: a quarter of the 540 training images, VTAB-1k's 200:800)")
    parser.add_argument("--seeds", default="0", help="seeds of the 1 %%-data trials")
    parser.add_argument("--inits", default="impulse,default", help="inits of the 1 %%-data trials")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="of the 1 %%-data trials")
    parser.add_argument("--loader-workers", type=int, help="DataLoader workers of the 1 %%-data trials "
                                                           "(default: the recipe's)")
    parser.add_argument("--randaugment", default="rand-m9-mstd0.5-inc1-mmax9",
                        help="RandAugment of the 1 %%-data trials ('recipe': the recipe's own)")
    parser.add_argument("--bare-warmup", type=int, default=3, help="warm-up steps of the bare loop")
    parser.add_argument("--bare-steps", type=int, default=10, help="timed steps of the bare loop (at least)")
    parser.add_argument("--bare-seconds", type=float, default=3.0, help="timed seconds of the bare loop (at least)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data, runs, logs)")
    args = parser.parse_args()

    with scratch("study_speed_", args.keep) as tmp:
        studies = [] if args.skip_smoke else [smoke]
        if not args.skip_fraction:
            studies += [partial(fraction, val_size=None if v == "default" else int(v))
                        for v in args.val_sizes.split(",")]
        measured = []
        for study in studies:
            label, wall, summary = study(tmp, args)
            measured.append((label, wall, *per_trial(summary)))

        bare = {}  # after the studies: nothing of ours runs beside it
        for _, _, trials, _, _ in measured:
            for cfg in trials["cfg"]:
                if geometry(cfg) not in bare:
                    bare[geometry(cfg)] = bare_loop(cfg, args.bare_warmup, args.bare_steps, args.bare_seconds)

        print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads here (bare loop: the trial's "
              f"cpus_per_worker), machine: {os.cpu_count()} CPUs ({platform.machine()}, {platform.system()}, "
              f"python {platform.python_version()})")
        for b in bare.values():
            check = (f"analytic {b['analytic'] / 1e6:.2f}" if b["analytic"] else "analytic n/a")
            added = "" if b["attention_seen"] or b["attention"] is None else \
                f"; attention not counted, added 3 x {b['attention'] / 1e6:.2f}"
            print(f"- {b['name']}: {b['flops'] / 1e6:.2f} MFLOP/image fwd+bwd (counted {b['counted'] / 1e6:.2f}{added}; "
                  f"forward counted {b['counted_forward'] / 1e6:.2f} vs {check}); bare loop "
                  f"{b['images_per_s']:.0f} images/s = {b['gflops_per_s']:.2f} GFLOP/s")
        print()
        print("| study | trials | at once | epochs | wall s | sum train s | train share | train share of trials | "
              "eval share of trials | fixed s/trial | setup s/trial | startup s/trial | eval share | ckpt share | "
              "floor s | wall/floor | bare GFLOP/s | test top1 |")
        print("|---" * 18 + "|")
        for name, wall, trials, _, have in measured:
            print(row(name, wall, trials, have, bare))
        if any(not have["train_seconds"] for *_, have in measured):
            print("\n* no train_seconds column: images per epoch (the trial's split) / images_per_s")


if __name__ == "__main__":
    main()
