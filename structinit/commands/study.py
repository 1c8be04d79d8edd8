"""The command line every study script shares (studies/*.py): a preset, then overrides of any
field; bad input exits 2 with one line, before any cluster work. Parsing (and --help) loads
nothing heavy: the study machinery is imported once the arguments are read.

    cli(PRESETS):  parser (the flags) -> build_study (the preset, then the flags over it) -> preflight
                   and run (runner.py) -> finish (where its records are, its summary, the exit status)
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Callable

from structinit.commands.options import TRACKING_URI
from structinit.validate import Parser, check, choice, one_line_warnings

# the flags that set a TrialConfig field, and the Study fields set by the flag of their name
TRIAL_FLAGS = (("epochs", "recipe.epochs"), ("dataset", "dataset"), ("data_root", "data_root"),
               ("workers_per_trial", "workers"))
STUDY_FLAGS = ("num_configs", "search_seed", "scheduler", "grace_epochs", "reduction_factor", "objective",
               "max_concurrent", "storage", "checkpoints", "optuna_url", "tracking_uri")


def cli(name_or_presets, presets: dict[str, Callable] | None = None, argv=None, default: str = "cpu") -> dict:
    """The command line every study script shares: a preset, then overrides of any field.
    `cli(PRESETS)` names the script after its file (`script_name`); `cli(name, PRESETS)` names it
    (a script written elsewhere, e.g. bench/search_efficiency.py's).

    --preset smoke|cpu|paper   --resume   --seeds 0,1,2   --inits impulse,mimetic   --num-configs N
    --scheduler fifo|asha|grouped --grace-epochs N --reduction-factor ETA --objective mean|arm:X|gap:A-B
    --epochs N --dataset NAME --data-root DIR --workers-per-trial W --gpus-per-trial 0|1|0.25
    --set section.field=value (any TrialConfig field, e.g. --set recipe.lr=5e-4 --set init.target_mass=0.6)
    Bad input exits 2 with one line, before anything is created or started (runner.preflight); a
    study whose every trial failed exits 1 with one line saying what failed and where its records are."""
    name, presets = (script_name(), name_or_presets) if presets is None else (name_or_presets, presets)
    p = parser(name, presets, default)
    args = p.parse_args(argv)
    one_line_warnings()
    from structinit.cluster import check_address

    try:  # before the study machinery loads: an address nothing answers at is told at once
        check_address(args.address)
    except ValueError as err:
        p.refuse(err)
    from structinit.runner import preflight, run

    try:
        built = build_study(args, presets)
        data = preflight(built, resume=args.resume, address=args.address)
    except (ValueError, TypeError) as err:
        p.refuse(err)
    try:
        out = run(built, resume=args.resume, address=args.address, data=data)
    except ValueError as err:  # what only the cluster can tell (check_cluster)
        p.refuse(err)
    return finish(p, built, out)


def script_name() -> str:
    """The running study script's name, from its file: `studies/heads_vs_dim.py` -> heads_vs_dim."""
    return Path(getattr(sys.modules["__main__"], "__file__", None) or "study").stem


def parser(name: str, presets: dict[str, Callable], default: str) -> Parser:
    """The flags of `studies/<name>.py`, its help the script's docstring."""
    import argparse

    p = Parser(prog=f"studies/{name}.py", description=sys.modules["__main__"].__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=default, help=" | ".join(presets))
    p.add_argument("--resume", action="store_true", help="continue the latest execution (Tuner.restore + Optuna)")
    p.add_argument("--seeds", help="comma-separated seeds each configuration is repeated over")
    p.add_argument("--inits", help="comma-separated init names each configuration is run with")
    p.add_argument("--num-configs", type=int, help="configurations the search proposes")
    p.add_argument("--search-seed", type=int)
    p.add_argument("--scheduler", help="fifo: every trial to its last epoch | asha: stop single trials (breaks "
                   "pairs) | grouped: stop or continue each configuration's whole group at rungs")
    p.add_argument("--grace-epochs", type=int, help="the first rung, in epochs (asha, grouped)")
    p.add_argument("--reduction-factor", type=int, help="eta: rungs at grace x eta^k epochs, 1/eta of the "
                   "configurations go on at each (asha, grouped)")
    p.add_argument("--objective", help="what the search optimises (and grouped judges) per configuration: mean, "
                   "arm:INIT, or gap:A-B (A - B seed by seed)")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--dataset")
    p.add_argument("--data-root")
    p.add_argument("--workers-per-trial", type=int)
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per Train worker: 0, 1, or a share of one for "
                   "one-worker trials (0.25: four trials on each GPU)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override any TrialConfig field "
                   "(the flags of `structinit train`: model.*, recipe.*, init.*, seed, ...)")
    p.add_argument("--storage", help="where Optuna storage, results and reports go (default ./runs)")
    p.add_argument("--checkpoints", default=os.environ.get("STRUCTINIT_CHECKPOINTS"),
                   help="Tune/Train state and checkpoints: s3://..., gs://... or a shared folder "
                        "(default: STRUCTINIT_CHECKPOINTS, else --storage)")
    p.add_argument("--optuna-url", help="SQLAlchemy URL of the Optuna storage (default sqlite in --storage)")
    p.add_argument("--tracking-uri", help=TRACKING_URI)
    p.add_argument("--address", help="Ray cluster to attach to: HOST:PORT, or 'local' for a new local one "
                                     "(default: RAY_ADDRESS, else the one `ray start` runs here, else local)")
    return p


def build_study(args, presets: dict[str, Callable]):
    """The preset's Study with the flags over it: its base trial's fields (`trial_overrides`), then
    the Study's own (seeds, inits, the search and where it is stored); the Study checks them all."""
    from structinit.config import with_overrides

    choice("preset", args.preset, sorted(presets))
    preset = presets[args.preset]()
    fields = {"trial": with_overrides(preset.trial, trial_overrides(args))}
    if args.seeds is not None:  # an empty list is refused, not ignored; the Study refuses repeats
        check("seeds", args.seeds, "comma-separated integers >= 0, e.g. 0,1,2",
              all(part.strip().isdigit() for part in args.seeds.split(",")))
        fields["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.inits is not None:
        fields["inits"] = tuple(part.strip() for part in args.inits.split(","))
        check("inits", args.inits, "comma-separated init names, e.g. impulse,mimetic", all(fields["inits"]))
    fields.update({flag: getattr(args, flag) for flag in STUDY_FLAGS if getattr(args, flag) is not None})
    return dataclasses.replace(preset, **fields)


def trial_overrides(args) -> dict:
    """The dotted TrialConfig fields the flags set: each --set (read as its field's type reads it,
    config.parse), --epochs, --dataset, --data-root, --workers-per-trial and --gpus-per-trial."""
    overrides = {}
    for item in args.set:
        check("--set", item, "FIELD=VALUE", "=" in item)
        key, _, value = item.partition("=")
        overrides[key.strip()] = value
    overrides.update({key: getattr(args, flag) for flag, key in TRIAL_FLAGS if getattr(args, flag) is not None})
    if args.gpus_per_trial is not None:
        check("gpus_per_trial", args.gpus_per_trial, "0, 1, or a share in (0, 1)", 0 <= args.gpus_per_trial <= 1)
        overrides["gpu"] = bool(args.gpus_per_trial)
        if args.gpus_per_trial:
            overrides["gpu_share"] = args.gpus_per_trial
    return overrides


def finish(p: Parser, study, out: dict) -> dict:
    """Where the run's records are (its trials, a compare link per configuration) and its JSON
    summary; exits 130 if it stopped early (Ctrl-C) and 1 if every trial failed, saying what failed."""
    from structinit import tracking

    uri = study.tracking_uri or tracking.default_uri()
    for line in tracking.where(uri, study.name, out["parent_run_id"]):
        print(line)
    print(json.dumps(out))
    if out["finished"] < out["expected"]:  # stopped early: exit as an interrupted command does
        raise SystemExit(130)
    if out["failed"] == out["expected"]:  # nothing to report: say what failed and where to look
        first = [line.strip() for line in (out["first_error"] or "").splitlines() if line.strip()]
        p.exit(1, f"{p.prog}: error: every trial of {out['execution']} failed ({out['failed']} of {out['expected']}; "
                  f"the first: {first[-1][:300] if first else 'no error recorded'}); its records: {out['trials']}, "
                  f"MLflow run {out['parent_run_id']} at {tracking.shown(uri)}\n")
    return out
