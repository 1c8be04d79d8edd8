"""A study: what it searches and how it pairs its runs, checked before anything runs.

    Study(name, trial=<base TrialConfig>, space=<define-by-run fn>, inits=..., seeds=...)
      space: a proposal of dotted TrialConfig fields (spaces.py), proposed by Optuna (runner.py)
      repeats: each proposal runs once per (init, seed), the paired runs every comparison needs
      trial_config: the TrialConfig of one of those runs
      objective: what the search optimises and the grouped scheduler judges a configuration by
      rungs: the epochs where the grouped scheduler judges a configuration's whole group

Running it is runner.py's; its command line is commands/study.py's.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from typing import Callable

import optuna

from structinit.config import SEEDS, TRIAL_INDEX, TrialConfig, config_key, search_params, trained, with_overrides
from structinit.declarations import OBJECTIVES, PAIRS, PLOTS, parse_objective
from structinit.paths import StudyPaths
from structinit.spaces import helper_params
from structinit.validate import check, choice, component, database_url

SCHEDULERS = ("fifo", "asha", "grouped")
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
    # what the search optimises (and the grouped scheduler judges) per configuration, from its
    # members' `metric` seed by seed (stats.group_objective): mean, arm:<init> or gap:<a>-<b>
    objective: str = "mean"
    # fifo: every trial to its last epoch; asha: ASHA per trial on the worker-reported epoch;
    # grouped: successive halving over whole groups (halving.GroupedHalving)
    scheduler: str = "fifo"
    grace_epochs: int = 1  # the first rung (asha, grouped)
    reduction_factor: int = 3  # eta: a rung every eta x the last; 1/eta of the configurations go on (asha, grouped)
    search_seed: int = 0
    max_concurrent: int | None = None  # None: from the cluster's resources
    storage: str = "runs"  # Optuna storage, results, reports (on the driver's machine): <storage>/<name>/...
    checkpoints: str | None = None  # Tune/Train state and checkpoints: a URI (s3://, gs://) or a folder all
    # nodes share; default <storage>/<name>
    optuna_url: str | None = None  # any SQLAlchemy URL; default sqlite in the storage folder
    tracking_uri: str | None = None
    pairs: tuple = PAIRS  # (a, b): the paired differences a - b its report shows, where both ran
    plots: tuple = PLOTS  # which of PLOTS its report draws, each where the results allow
    reference: dict | None = None  # a setting of dotted init fields, e.g. {"init.pseudo_input": "pe"}: its report
    # pairs every other setting of an init against this one (same base, same seed)

    def __post_init__(self):
        component("name", self.name)  # its folder under storage, its MLflow experiment
        check("inits", self.inits, "a non-empty tuple of distinct init names",
              len(self.inits) > 0 and len(set(self.inits)) == len(self.inits))
        check("pairs", self.pairs, "a tuple of (init, init) pairs", all(len(pair) == 2 for pair in self.pairs))
        for init in (*self.inits, *(i for pair in self.pairs for i in pair)):
            dataclasses.replace(self.trial.init, name=init)  # validates the name
        if self.reference is not None:
            fields = {f"init.{f.name}" for f in dataclasses.fields(self.trial.init)}
            check("reference", self.reference, "a dict of dotted init fields and their values, e.g. "
                  "{'init.pseudo_input': 'pe'}", isinstance(self.reference, dict) and bool(self.reference)
                  and all(k in fields for k in self.reference))
            dataclasses.replace(self.trial.init, **{k[len("init."):]: v for k, v in self.reference.items()})  # its values
        check("plots", self.plots, f"a tuple of names in {PLOTS}", all(p in PLOTS for p in self.plots))
        check("seeds", self.seeds, f"a non-empty tuple of distinct integers in [0, 2^32 - 1 = {SEEDS - 1}]",
              len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds) and all(
                  isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEEDS for s in self.seeds))
        check("search_seed", self.search_seed, f"an integer in [0, 2^32 - 1 = {SEEDS - 1}] (Optuna's sampler seed)",
              isinstance(self.search_seed, int) and not isinstance(self.search_seed, bool)
              and 0 <= self.search_seed < SEEDS)
        check("num_configs", self.num_configs, "a positive integer",
              isinstance(self.num_configs, int) and self.num_configs > 0)
        choice("mode", self.mode, ("max", "min"))
        choice("scheduler", self.scheduler, SCHEDULERS)
        check("grace_epochs", self.grace_epochs, f"an integer in [1, epochs={self.trial.recipe.epochs}] under the "
              f"{self.scheduler} scheduler", isinstance(self.grace_epochs, int) and self.grace_epochs >= 1 and (
                  self.grace_epochs <= self.trial.recipe.epochs or self.scheduler == "fifo"))
        check("reduction_factor", self.reduction_factor, "an integer >= 2",
              isinstance(self.reduction_factor, int) and not isinstance(self.reduction_factor, bool)
              and self.reduction_factor >= 2)
        _, named = parse_objective(self.objective)
        check("objective", self.objective, f"{OBJECTIVES}, naming inits of this study {self.inits}",
              all(i in self.inits for i in named))
        check("max_concurrent", self.max_concurrent, "None or a positive integer; None under the grouped scheduler "
              "(it proposes its whole cohort at once: the cluster's resources bound what trains)",
              self.max_concurrent is None or (isinstance(self.max_concurrent, int) and self.max_concurrent > 0
                                              and self.scheduler != "grouped"))
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
            database_url("optuna_url", self.optuna_url)
        if self.grid is not None:
            check("grid", self.grid, "a dict of non-empty lists", isinstance(self.grid, dict) and all(
                isinstance(v, list) and v for v in self.grid.values()))
            search_params(dict.fromkeys(self.grid), self.helpers)  # every key a field (or a declared helper)

    @property
    def helpers(self) -> frozenset[str]:
        """The params its space suggests that are not TrialConfig fields, as the space declares them."""
        return helper_params(self.space)

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(self.storage, self.name, self.checkpoints, self.optuna_url)

    @property
    def base(self) -> str:
        """The base trial by what it trains (config.trained): a report pools the executions of one base."""
        return config_key(trained(self.trial))

    @property
    def repeats(self) -> list[tuple[str, int]]:
        return list(itertools.product(self.inits, self.seeds))

    @property
    def configs(self) -> int:
        return math.prod(len(v) for v in self.grid.values()) if self.grid else self.num_configs

    @property
    def rungs(self) -> tuple[int, ...]:
        """Epochs (counted from 1) where the grouped scheduler judges a group: grace_epochs x
        reduction_factor^k short of the last epoch (which every group that goes on reaches)."""
        out, epoch = [], self.grace_epochs
        while epoch < self.trial.recipe.epochs:
            out.append(epoch)
            epoch *= self.reduction_factor
        return tuple(out)


def trial_config(study: Study, config: dict) -> tuple[TrialConfig, dict]:
    """The TrialConfig of one Tune trial, and its configuration's params (without init and seed).
    Under the grouped scheduler it also checkpoints at the rungs, where it waits for its group."""
    params = search_params(config, study.helpers)
    init, seed = study.repeats[config.get(TRIAL_INDEX, 0)]
    cfg = with_overrides(study.trial, {**params, "seed": seed})
    rungs = study.rungs if study.scheduler == "grouped" else cfg.checkpoint_at
    return dataclasses.replace(cfg, init=dataclasses.replace(cfg.init, name=init), checkpoint_at=rungs), params


def source(cfg: TrialConfig) -> tuple:
    """What names the files a trial reads: trials of one source share one read of the dataset."""
    return cfg.dataset, cfg.data_root, cfg.download, cfg.verify


def check_space(study: Study, bytes_per_parameter: int = 4, samples: int = 64, data: bool = True) -> dict:
    """Dry-run the space on an in-memory Optuna study: every proposal, with every init, must give a
    valid TrialConfig whose splits of its data keep every class and a batch, which reports the
    study's metric, and whose model at `bytes_per_parameter` fits in this machine's memory
    (config.validate_model); every param must be a TrialConfig field or one the space declares
    (spaces.helper_params). Bad bounds, unknown fields or broken constraints fail before any
    cluster work. Returns each dataset it read, by `source`: the study's one read, which its trials
    share. `data=False` reads no data (a preset whose data is on the cluster's workers, as `paper`'s
    /data): the splits go unchecked, and so does memory with `bytes_per_parameter=0`."""
    from structinit.config import validate_data, validate_model, validate_split

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study.grid:  # every cell of the grid
        trials = [optuna.trial.FixedTrial(dict(zip(study.grid, cell)))
                  for cell in itertools.product(*study.grid.values())]
    else:  # a seeded random sample of the space
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
        trials = [probe.ask() for _ in range(samples)]
    seen, sources, splits = set(), {}, set()
    for t in trials:
        params = search_params({**(study.space(t) or {}), **t.params}, study.helpers)
        if config_key(params) in seen:
            continue
        seen.add(config_key(params))
        for index in range(len(study.inits)):
            cfg = trial_config(study, {**params, TRIAL_INDEX: index * len(study.seeds)})[0]
            if data and source(cfg) not in sources:  # read each dataset once, not per configuration and init
                sources[source(cfg)] = validate_data(cfg)
            split = (source(cfg), cfg.fraction, cfg.val_fraction, cfg.val_size, cfg.recipe, cfg.workers)
            if data and split not in splits:
                validate_split(cfg, sources[source(cfg)])
                splits.add(split)
            check("val_fraction", cfg.val_fraction, f"a number in (0, 1) in a study that selects on "
                  f"metric={study.metric!r}: without a validation split its trials report none",
                  cfg.val_fraction > 0 or not study.metric.startswith("val_"))
            validate_model(cfg, bytes_per_parameter)
    return sources
