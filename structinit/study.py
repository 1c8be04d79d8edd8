"""A study: what it searches and how it pairs its runs, checked before anything runs.

    Study(name, trial=<base TrialConfig>, space=<define-by-run fn> or grid={field: [values]}, inits=..., seeds=...)
      space: a proposal of dotted TrialConfig fields (the spaces below), proposed by Optuna (runner.py)
      repeats: each proposal runs once per (init, seed), the paired runs every comparison needs
      trial_config: the TrialConfig of one of those runs
      objective: what the search optimises and the grouped scheduler judges a configuration by
      rungs: the epochs where the grouped scheduler judges a configuration's whole group

The search spaces (`categorical`, `heads_and_dims`, `impulse_settings`) and the trials a study
script's `smoke` and `paper` presets start from are here too, so a study script names one module.
Running it is runner.py's; its command line is commands/study.py's.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from dataclasses import dataclass
from typing import Callable

import optuna

from structinit.config import (SEEDS, TRIAL_INDEX, TrialConfig, config_key, make, search_params, trained,
                               with_overrides)
from structinit.declarations import OBJECTIVES, PAIRS, PLOTS, parse_objective
from structinit.paths import StudyPaths
from structinit.validate import check, choice, component, database_url

SCHEDULERS = ("fifo", "asha", "grouped")
CHECKPOINT_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")  # what pyarrow's filesystems open


@dataclass(frozen=True)
class Study:
    name: str
    trial: TrialConfig  # every field a trial does not sample comes from here
    # define-by-run over dotted TrialConfig fields; None with a grid: `categorical` over the grid
    space: Callable[[optuna.Trial], dict | None] | None = None
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
    # Tune/Train state and checkpoints: a URI (s3://, gs://) or a folder all nodes share; default <storage>/<name>
    checkpoints: str | None = None
    optuna_url: str | None = None  # any SQLAlchemy URL; default sqlite in the storage folder
    tracking_uri: str | None = None
    pairs: tuple = PAIRS  # (a, b): the paired differences a - b its report shows, where both ran
    plots: tuple = PLOTS  # which of PLOTS its report draws, each where the results allow
    # a setting of dotted init fields, e.g. {"init.pseudo_input": "pe"}: its report pairs every other
    # setting of an init against this one (same base, same seed)
    reference: dict | None = None

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
            if self.space is None:
                object.__setattr__(self, "space", functools.partial(categorical, **self.grid))
            search_params(dict.fromkeys(self.grid), self.helpers)  # every key a field (or a declared helper)
        check("space", self.space, "a define-by-run function of an Optuna trial, or grid= to search a full grid",
              callable(self.space))

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
        """Epochs (counted from 1) where the grouped scheduler judges a group (`rungs`)."""
        return rungs(self.grace_epochs, self.reduction_factor, self.trial.recipe.epochs)

    @property
    def trials(self) -> int:
        """How many Tune trials the study runs: every configuration once per (init, seed)."""
        return self.configs * len(self.repeats)


def rungs(grace: int, reduction_factor: int, epochs: int) -> tuple[int, ...]:
    """grace x reduction_factor^k epochs, short of the last epoch (which every group that goes on
    reaches)."""
    out, epoch = [], grace
    while epoch < epochs:
        out.append(epoch)
        epoch *= reduction_factor
    return tuple(out)


# Search spaces: define-by-run over dotted TrialConfig fields, shared by the studies. Each is a plain
# function `space(trial, **choices)`; a study binds its choices with `functools.partial`, which keeps
# it picklable for Tune's searcher state and for resume. Every param a space suggests is a dotted
# TrialConfig field, or a helper it declares (`@helpers`): any other name is refused
# (config.search_params), so a typo never leaves a study training its base config.
def helpers(names):
    """Declare the params a space suggests that are not TrialConfig fields (their values reach the
    config through what the space returns): `names(*args, **choices)`, of the choices the space is
    bound to, gives them."""
    def declare(space):
        space.helpers = names
        return space
    return declare


def helper_params(space) -> frozenset[str]:
    """The helper params `space` (a space, or a functools.partial of one) declares; none undeclared."""
    fn, args, kwargs = (space.func, space.args, space.keywords) if isinstance(space, functools.partial) \
        else (space, (), {})
    names = getattr(fn, "helpers", None)
    return frozenset(names(*args, **kwargs)) if names else frozenset()


def _heads(dim: int) -> str:
    """The helper param of the heads for one embed_dim."""
    return f"heads_e{dim}"


@helpers(lambda dims, heads, **_: {_heads(d) for d in dims})
def heads_and_dims(trial, dims, heads):
    """embed_dim from `dims`, then heads from those of `heads` that divide it. One parameter name
    per dim (a declared helper): Optuna rejects a categorical whose choices change with another
    parameter."""
    dim = trial.suggest_categorical("model.embed_dim", list(dims))
    check("heads", list(heads), f"at least one that divides every embed_dim in {list(dims)} (none divides {dim})",
          any(dim % h == 0 for h in heads))
    h = trial.suggest_categorical(_heads(dim), [h for h in heads if dim % h == 0])
    return {"model.num_heads": h}


def categorical(trial, **choices):
    """Independent categorical choices, e.g. `categorical(trial, **{"init.filter_size": [3, 5]})`;
    with a study `grid` of the same lists, the full grid in a seeded order."""
    for name, values in choices.items():
        trial.suggest_categorical(name, list(values))
    return None


@helpers(heads_and_dims.helpers)
def impulse_settings(trial, dims, heads, masses=(0.2, 0.999), pe_scales=None, pseudo_inputs=("pe", "data")):
    """(embed_dim, heads) as `heads_and_dims`, and the impulse init's own settings: its sharpness
    `init.target_mass` in `masses`, the pseudo input it is solved on and, given `pe_scales`
    (lo, hi), the PE scale `init.pe_scale`, log-uniform (pe_scaled reads it too, so the control
    stays matched; for a learned PE only: a fixed one cannot shrink back in training, and at x28
    it drowns the image -- trials of digits at chance)."""
    fixed = heads_and_dims(trial, dims, heads)
    trial.suggest_float("init.target_mass", *masses)
    if pe_scales is not None:
        trial.suggest_float("init.pe_scale", *pe_scales, log=True)
    trial.suggest_categorical("init.pseudo_input", list(pseudo_inputs))
    return fixed


# The trials the presets of every study script start from.
def smoke(model: str | None = None, **model_fields) -> TrialConfig:
    """A `smoke` preset's trial: digits, two blocks (and `model_fields`), two epochs, no warm-up;
    a few minutes on a 2-core CPU. `model` names another than the dataset's default."""
    return make("digits", model, model_overrides=dict(depth=2, **model_fields),
                recipe_overrides=dict(epochs=2, warmup_epochs=0))


PAPER = dict(data_root="/data", gpu=True, cpus_per_worker=4)  # the data on the GPU workers' disks


def paper(dataset: str, **fields) -> TrialConfig:
    """A `paper` preset's trial: `dataset` under /data on GPU workers with 4 CPUs each (`PAPER`);
    `fields` as `config.make` takes them (footing, model, its overrides)."""
    return make(dataset, **PAPER, **fields)


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
    (`helper_params`). Bad bounds, unknown fields or broken constraints fail before any
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
