"""A study: Ray Tune + Optuna over TrialConfig fields, each trial a Ray Train run, tracked in MLflow.

    Study(name, trial=<base TrialConfig>, space=<define-by-run fn>, inits=..., seeds=...)
      -> OptunaSearch (TPE, or a grid) proposes a configuration (dotted TrialConfig fields)
      -> Repeater runs it once per (init, seed): the paired runs every comparison needs
      -> each Tune trial builds a TrialConfig and calls `train.fit` (TuneReportCallback)
      -> one MLflow child run per trial under one parent run per study execution
      -> Parquet tables (results.py) and a report (report.py)

The only module that wires Tune.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import optuna

from structinit import tracking
from structinit.config import TrialConfig, canonical, config_key, search_params, with_overrides
from structinit.paths import StudyPaths
from structinit.validate import Parser, check, choice

TRIAL_INDEX = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX
CHECKPOINT_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")  # what pyarrow's filesystems open


@dataclass(frozen=True)
class Study:
    name: str
    trial: TrialConfig  # every field a trial does not sample comes from here
    space: Callable[[optuna.Trial], dict | None]  # define-by-run over dotted TrialConfig fields
    grid: dict | None = None  # a full grid over these params instead of TPE (Optuna GridSampler)
    num_configs: int = 4  # configurations to propose (a grid: its size)
    inits: tuple = ("impulse", "mimetic", "default")
    seeds: tuple = (0, 1, 2)
    metric: str = "val_top1"
    mode: str = "max"
    scheduler: str = "fifo"  # or "asha" on the worker-reported epoch
    grace_epochs: int = 1
    search_seed: int = 0
    max_concurrent: int | None = None  # None: from the cluster's resources
    storage: str = "runs"  # Optuna storage, results, reports (on the driver's machine): <storage>/<name>/...
    checkpoints: str | None = None  # Tune/Train state and checkpoints: a URI (s3://, gs://) or a folder all
    # nodes share; default <storage>/<name>
    optuna_url: str | None = None  # any SQLAlchemy URL; default sqlite in the storage folder
    tracking_uri: str | None = None

    def __post_init__(self):
        check("name", self.name, "a non-empty name of letters, digits, '_' or '-'",
              bool(self.name) and all(c.isalnum() or c in "_-" for c in self.name))
        check("inits", self.inits, "a non-empty tuple of init names", len(self.inits) > 0)
        for init in self.inits:
            dataclasses.replace(self.trial.init, name=init)  # validates the name
        check("seeds", self.seeds, "a non-empty tuple of distinct integers >= 0",
              len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds) and all(
                  isinstance(s, int) and s >= 0 for s in self.seeds))
        check("num_configs", self.num_configs, "a positive integer",
              isinstance(self.num_configs, int) and self.num_configs > 0)
        choice("mode", self.mode, ("max", "min"))
        choice("scheduler", self.scheduler, ("fifo", "asha"))
        check("grace_epochs", self.grace_epochs, f"an integer in [1, epochs={self.trial.recipe.epochs}]",
              isinstance(self.grace_epochs, int) and 1 <= self.grace_epochs <= self.trial.recipe.epochs)
        check("max_concurrent", self.max_concurrent, "None or a positive integer",
              self.max_concurrent is None or (isinstance(self.max_concurrent, int) and self.max_concurrent > 0))
        for name in ("storage", "checkpoints"):  # absolute: Tune runs trials in their own working directories
            path = getattr(self, name)
            if path and "://" not in path:
                object.__setattr__(self, name, os.path.abspath(os.path.expanduser(path)))
        check("storage", self.storage, "a folder (it is created if missing), not a file",
              bool(self.storage) and not os.path.isfile(self.storage))
        scheme = (self.checkpoints or "").partition("://")[0]
        check("checkpoints", self.checkpoints, f"a folder every node reaches, or a URI with a scheme in {CHECKPOINT_SCHEMES}",
              self.checkpoints is None or (scheme in CHECKPOINT_SCHEMES if "://" in self.checkpoints
                                           else bool(self.checkpoints) and not os.path.isfile(self.checkpoints)))
        if self.optuna_url is not None:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                make_url(self.optuna_url)
            except ArgumentError:
                check("optuna_url", self.optuna_url, "an SQLAlchemy URL such as sqlite:////abs/optuna.db or "
                      "postgresql://user@host/db", False)
        if self.grid is not None:
            check("grid", self.grid, "a dict of non-empty lists", all(isinstance(v, list) and v for v in
                                                                        self.grid.values()))

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(self.storage, self.name, self.checkpoints, self.optuna_url)

    @property
    def folder(self) -> str:
        return self.paths.folder

    @property
    def ray_storage(self) -> str:
        """Where Tune and Train keep state and checkpoints (see StudyPaths.ray)."""
        return self.paths.ray

    @property
    def repeats(self) -> list[tuple[str, int]]:
        return list(itertools.product(self.inits, self.seeds))

    @property
    def configs(self) -> int:
        return math.prod(len(v) for v in self.grid.values()) if self.grid else self.num_configs


def trial_config(study: Study, config: dict) -> tuple[TrialConfig, dict]:
    """The TrialConfig of one Tune trial, and its configuration's params (without init and seed)."""
    params = search_params(config)
    init, seed = study.repeats[config.get(TRIAL_INDEX, 0)]
    cfg = with_overrides(study.trial, {**params, "seed": seed})
    return dataclasses.replace(cfg, init=dataclasses.replace(cfg.init, name=init)), params


def check_space(study: Study, samples: int = 64) -> None:
    """Dry-run the space on an in-memory Optuna study: every proposal, with every init, must give a
    valid TrialConfig (bad bounds, unknown fields or broken constraints fail before any cluster work)."""
    from structinit.config import validate_data, validate_model

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study.grid:  # every cell of the grid
        trials = [optuna.trial.FixedTrial(dict(zip(study.grid, cell)))
                  for cell in itertools.product(*study.grid.values())]
    else:  # a seeded random sample of the space
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
        trials = [probe.ask() for _ in range(samples)]
    seen, sources = set(), set()
    for t in trials:
        params = search_params({**(study.space(t) or {}), **t.params})
        if config_key(params) in seen:
            continue
        seen.add(config_key(params))
        for index in range(len(study.inits)):
            cfg = trial_config(study, {**params, TRIAL_INDEX: index * len(study.seeds)})[0]
            source = (cfg.dataset, cfg.data_root, cfg.download, cfg.verify)
            if source not in sources:  # read each dataset once, not once per configuration and init
                validate_data(cfg)
                sources.add(source)
            validate_model(cfg)


def run_trial(config: dict, study: Study, parent: str, tracking_uri: str) -> None:
    """The Tune trainable: one (configuration, init, seed) trained by a TorchTrainer."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from structinit.train import fit

    trial_id = ray.tune.get_context().get_trial_id()
    cfg, params = trial_config(study, config)
    name, tags = tracking.trial_run(study.name, {
        "init": cfg.init.name, "seed": cfg.seed, "dataset": cfg.dataset, "config_key": config_key(params),
        "params": canonical(params), "trial_id": trial_id})
    run = tracking.attempt(tracking_uri, f"the run of trial {trial_id}", lambda _: tracking.start_run(
        tracking_uri, study.name, name, cfg.flat(), tags, parent=parent))  # None: the study's sync creates it
    try:
        fit(cfg, storage_path=study.paths.train, name=study.paths.train_name(trial_id), run=run,
            callbacks=[TuneReportCallback()])
    except BaseException as err:
        if run is not None:
            tracking.set_tags(run, {"error": str(err)[-5000:]})
            tracking.finish(run, "FAILED")
        raise
    if run is not None:
        tracking.finish(run)


def searcher(study: Study, execution: str):
    """OptunaSearch (seeded TPE, or a seeded grid) over the study's space with persistent storage,
    wrapped in a Repeater that runs each proposal once per (init, seed)."""
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    sampler = (optuna.samplers.GridSampler(study.grid, seed=study.search_seed) if study.grid
               else optuna.samplers.TPESampler(seed=study.search_seed))
    optuna_search = OptunaSearch(space=study.space, metric=study.metric, mode=study.mode, sampler=sampler,
                                 storage=optuna.storages.RDBStorage(study.paths.optuna), study_name=execution)
    return Repeater(optuna_search, repeat=len(study.repeats), set_index=True)


def close_orphans(study: Study, execution: str) -> int:
    """Mark FAIL the Optuna trials a finished execution left RUNNING: proposals of Tune trials that
    a killed study driver had started before Tune last saved its state (Tune proposed anew in
    their place). Returns how many."""
    search = optuna.load_study(study_name=execution, storage=study.paths.optuna)
    stale = search.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
    for t in stale:
        search.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def scheduler(study: Study):
    """ASHA on the worker-reported epoch (restarts do not reset it), or run every trial to the end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=study.trial.recipe.epochs, grace_period=study.grace_epochs)
    return FIFOScheduler()


def run(study: Study, resume: bool = False, address: str | None = None, checked: bool = False) -> dict:
    """Run (or with `resume`, continue) a study; returns where its results went. The study is
    checked first (`check_space`) unless the caller already did."""
    import ray
    import ray.tune

    from structinit import cluster, results

    paths = study.paths
    if resume:
        check("resume", study.name, f"a study with a previous execution under {paths.folder}",
              paths.execution() is not None)
    if not checked:
        check_space(study)
    cluster.check_address(address)
    gpus = study.trial.workers if study.trial.gpu else 0
    cluster.check_local_gpus(address, gpus)
    uri = study.tracking_uri or tracking.default_uri()
    tracking.check(uri)  # unreachable MLflow: a clear error before any cluster work
    if not ray.is_initialized():
        cluster.connect(address, num_cpus=os.cpu_count(), resources={cluster.DRIVER: 1000})
    cluster.check_cluster(gpus, study.checkpoints or paths.folder)  # before anything is recorded
    os.makedirs(paths.folder, exist_ok=True)
    execution = paths.execution() if resume else f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = tracking.start_run(uri, study.name, execution, {"study": study.name, "inits": ",".join(study.inits),
                                                              "seeds": ",".join(map(str, study.seeds))},
                                {"study": study.name, "execution": execution})
    paths.set_execution(execution)

    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, study=study, parent=parent.run_id, tracking_uri=uri),
        cluster.driver_resources())
    try:
        if resume and ray.tune.Tuner.can_restore(f"{paths.tune}/{execution}"):
            tuner = ray.tune.Tuner.restore(f"{paths.tune}/{execution}", trainable=trainable,
                                           resume_unfinished=True, resume_errored=True)
        else:
            tuner = ray.tune.Tuner(
                trainable,
                tune_config=ray.tune.TuneConfig(
                    metric=study.metric, mode=study.mode, num_samples=study.configs * len(study.repeats),
                    search_alg=searcher(study, execution), scheduler=scheduler(study),
                    max_concurrent_trials=study.max_concurrent or cluster.concurrency(
                        study.trial.workers, study.trial.cpus_per_worker, study.trial.gpu)),
                run_config=ray.tune.RunConfig(name=execution, storage_path=paths.tune,
                                              failure_config=ray.tune.FailureConfig(max_failures=1)))
        tuner.fit()
        trials, history = results.collect(study.name, execution, paths, partial(trial_config, study))
    except BaseException:
        tracking.finish(parent, "KILLED")
        raise
    ids = tracking.attempt(uri, "the study's records", lambda _: tracking.sync(uri, study.name, execution,
                                                                                trials, history))
    for t in trials:
        t["mlflow_run_id"] = (ids or {}).get(t["trial_id"])
    out = results.write(paths.folder, execution, trials, history)
    if ids is None:
        warnings.warn(f"MLflow at {tracking.shown(uri)} was unreachable when study {study.name} ended: the MLflow "
                      f"records of its {len(trials)} trials ({len(history)} epochs) may be incomplete; the Parquet tables are "
                      f"complete ({out['trials']}). Once MLflow is back, write what it lacks with: structinit sync "
                      f"{study.name} --storage {study.storage} --tracking-uri {tracking.shown(uri)}")
    finished = sum(out["statuses"].get(s, 0) for s in ("TERMINATED", "ERROR"))
    expected = study.configs * len(study.repeats)
    orphans = close_orphans(study, execution) if finished == expected else 0
    if finished < expected:  # stopped early (Ctrl-C): Tune saved its state
        print(f"study {study.name} stopped with {finished} of {expected} trials finished; continue it with --resume")
    return {"execution": execution, "parent_run_id": parent.run_id, "finished": finished, "expected": expected,
            "mlflow_synced": ids is not None, "optuna_orphans_closed": orphans, **out}


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cli(name: str, presets: dict[str, Callable[[], Study]], argv=None, default: str = "cpu") -> dict:
    """The command line every study script shares: a preset, then overrides of any field.

    --preset smoke|cpu|paper   --resume   --seeds 0,1,2   --inits impulse,mimetic   --num-configs N
    --epochs N --dataset NAME --data-root DIR --workers-per-trial W --gpus-per-trial 0|1
    --set section.field=value (any TrialConfig field, e.g. --set recipe.lr=5e-4 --set init.target_mass=0.6)
    Bad input exits 2 with one line, before any cluster work."""
    import argparse
    import sys

    p = Parser(prog=f"studies/{name}.py", description=sys.modules["__main__"].__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=default, help=" | ".join(presets))
    p.add_argument("--resume", action="store_true", help="continue the latest execution (Tuner.restore + Optuna)")
    p.add_argument("--seeds", help="comma-separated seeds each configuration is repeated over")
    p.add_argument("--inits", help="comma-separated init names each configuration is run with")
    p.add_argument("--num-configs", type=int, help="configurations the search proposes")
    p.add_argument("--search-seed", type=int)
    p.add_argument("--scheduler", help="fifo | asha")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--dataset")
    p.add_argument("--data-root")
    p.add_argument("--workers-per-trial", type=int)
    p.add_argument("--gpus-per-trial", type=int, help="0 or 1 GPU per Train worker")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override any TrialConfig field")
    p.add_argument("--storage", help="where Optuna storage, results and reports go (default ./runs)")
    p.add_argument("--checkpoints", default=os.environ.get("STRUCTINIT_CHECKPOINTS"),
                   help="Tune/Train state and checkpoints: s3://..., gs://... or a shared folder "
                        "(default: STRUCTINIT_CHECKPOINTS, else --storage)")
    p.add_argument("--optuna-url", help="SQLAlchemy URL of the Optuna storage (default sqlite in --storage)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--address", help="Ray cluster to attach to: HOST:PORT, or 'local' for a new local one "
                                     "(default: RAY_ADDRESS, else the one `ray start` runs here, else local)")
    args = p.parse_args(argv)
    try:
        choice("preset", args.preset, sorted(presets))
        study = presets[args.preset]()
        overrides = {}
        for item in args.set:
            check("--set", item, "FIELD=VALUE", "=" in item)
            key, _, value = item.partition("=")
            overrides[key] = _value(value)
        for flag, key in (("epochs", "recipe.epochs"), ("dataset", "dataset"), ("data_root", "data_root"),
                          ("workers_per_trial", "workers")):
            if getattr(args, flag) is not None:
                overrides[key] = getattr(args, flag)
        if args.gpus_per_trial is not None:
            check("gpus_per_trial", args.gpus_per_trial, "0 or 1", args.gpus_per_trial in (0, 1))
            overrides["gpu"] = bool(args.gpus_per_trial)
        fields = {"trial": with_overrides(study.trial, overrides)}
        if args.seeds:
            check("seeds", args.seeds, "comma-separated integers >= 0, e.g. 0,1,2",
                  all(part.strip().isdigit() for part in args.seeds.split(",")))
            fields["seeds"] = tuple(int(s) for s in args.seeds.split(","))
        if args.inits:
            fields["inits"] = tuple(args.inits.split(","))
        for flag in ("num_configs", "search_seed", "scheduler", "max_concurrent", "storage", "checkpoints",
                     "optuna_url", "tracking_uri"):
            if getattr(args, flag) is not None:
                fields[flag] = getattr(args, flag)
        study = dataclasses.replace(study, **fields)
        check_space(study)
    except (ValueError, TypeError) as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    try:
        out = run(study, resume=args.resume, address=args.address, checked=True)
    except ValueError as err:  # what only the cluster can tell (check_cluster), or no execution to resume
        p.exit(2, f"{p.prog}: error: {err}\n")
    print(json.dumps(out))
    return out
