"""`structinit train`: train one initialised model with Ray Train (TorchTrainer), tracked in
MLflow; prints (and with --json-out writes) a JSON summary of the run. Every TrialConfig field is a
flag (options.py); `preflight` checks all it can before anything is created or started."""
from __future__ import annotations

import argparse
import json
import os
import sys

from structinit.commands.options import TRACKING_URI, add_config, check_given, trial_config
from structinit.metrics import FINAL
from structinit.validate import component, writable

HELP = "train one initialised ViT with Ray Train (TorchTrainer), tracked in MLflow"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where it runs and what it writes")
    g.add_argument("--address", help="Ray cluster to attach to, e.g. auto (default: RAY_ADDRESS, else a new local one)")
    g.add_argument("--tracking-uri", help=TRACKING_URI)
    g.add_argument("--experiment", default="structinit-train", help="the MLflow experiment (one path component: "
                   "its artifacts' folder)")
    g.add_argument("--storage-path", default="runs", help="Ray Train storage: checkpoints and run state "
                   "(default ./runs)")
    g.add_argument("--name", help="the run's name and its folder under --storage-path: one path component "
                   "(default: from the config; the same name resumes)")
    g.add_argument("--json-out", metavar="PATH", help="write the final JSON summary here too (in an existing folder)")
    add_config(p, {"model.name": "the dataset's"})


def preflight(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """Everything that can be checked before anything is created or started (no Ray session, no
    MLflow store, no run folder), each refused in one line: the fields given and the recipe (before
    anything heavy loads), the names that become folders, the outputs (creatable and writable), the
    Ray address, the config with its data and model (which, trained on this machine, must fit in its
    memory), the GPUs a new local cluster needs, the MLflow store. Returns (cfg, tracking URI, run
    name, storage folder)."""
    from structinit.cluster import check_address

    try:  # what needs nothing heavy answers before it loads
        fields = check_given(args)
        check_address(args.address)
        component("experiment", args.experiment)
        if args.name is not None:
            component("name", args.name)
        writable("storage_path", args.storage_path, folder=True)
        if args.json_out:
            writable("json_out", args.json_out)
    except ValueError as err:
        parser.refuse(err)
    from structinit import config, tracking
    from structinit.cluster import fits, local_resources, starts_here
    from structinit.train import check_target, run_name

    uri = args.tracking_uri or tracking.default_uri()
    try:
        cfg = trial_config(fields, args.recipe)
        local = starts_here(args.address)  # a new local cluster: its workers train on this machine
        config.validate(cfg, config.TRAINING_BYTES * cfg.workers if local and not cfg.gpu else config.WEIGHT_BYTES)
        check_target(args.address, cfg.workers * cfg.worker_resources().get("GPU", 0), uri, name="gpu", value=cfg.gpu)
        if local:
            fits(cfg.workers, cfg.cpus_per_worker, cfg.worker_resources().get("GPU", 0), local_resources(),
                 "this machine (the local Ray cluster train starts)")
        name = args.name or run_name(cfg)
        component("name", name)
    except ValueError as err:
        parser.refuse(err)
    return cfg, uri, name, os.path.abspath(os.path.expanduser(args.storage_path))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cfg, uri, name, storage = preflight(args, parser)
    import ray
    from ray.train import TrainingFailedError

    from structinit import cluster, tracking
    from structinit.checkpoint import history_of
    from structinit.train import fit

    cluster.connect(args.address, num_cpus=max(2, cfg.workers * cfg.cpus_per_worker),
                    num_gpus=cfg.workers if cfg.gpu else None)
    try:  # an existing cluster: what it can give, before anything is recorded
        cluster.check_resources(cfg.workers, cfg.cpus_per_worker, cfg.worker_resources().get("GPU", 0))
    except ValueError as err:
        ray.shutdown()
        parser.refuse(err)
    run = tracking.start_run(uri, args.experiment, name, cfg.flat(),
                             {"init": cfg.init.name, "dataset": cfg.dataset, "seed": cfg.seed, "model": cfg.model.name})
    failure = None
    try:
        result = fit(cfg, storage_path=storage, name=name, run=run)
    except (TrainingFailedError, Exception) as err:  # Train's, or one of starting it
        failure = err
    except BaseException:  # Ctrl-C: the same command resumes it
        tracking.finish(run, "KILLED")
        raise
    finally:
        ray.shutdown()  # its workers' last lines are printed before the run's own
    if failure is not None:  # never left RUNNING: FAILED, and one line saying what and where its records are
        tracking.set_tags(run, {"error": str(failure)[-5000:]})
        tracking.finish(run, "FAILED")
        print(f"{parser.prog}: error: run {name} failed: {reason(failure)}; its records: MLflow run {run.run_id} "
              f"at {tracking.shown(uri)}, checkpoints under {os.path.join(storage, name)}", file=sys.stderr)
        return 1
    history = history_of(result)
    summary = {"name": name, "tracking_uri": uri, "mlflow_run_id": run.run_id,
               "checkpoint": result.checkpoint.path if result.checkpoint else None,
               "epochs": len(history), "final": history[-1] if history else None,
               **{k: history[-1].get(k) if history else None
                  for k in FINAL},
               "config": cfg.to_dict(), "history": history}
    text = json.dumps(summary)
    try:  # the run trained: FINISHED, even if its summary could not be written here (preflight checked it can)
        if args.json_out:
            with open(args.json_out, "w") as f:
                f.write(text)
    finally:
        tracking.finish(run)
    print(text)
    return 0


def reason(err: BaseException) -> str:
    """The innermost cause of a failure in one line: its type and the last line of its message
    (a worker's error arrives wrapped in Ray's, with the worker's traceback in between)."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:500]
