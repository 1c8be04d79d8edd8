"""Running a study: Ray Tune + Optuna over its space, each trial a Ray Train run, tracked in MLflow.

    run(study): preflight -> start -> declare -> tune -> record
      preflight  everything checkable before anything is created or started
      start      attach to Ray, name the execution, start its parent MLflow run
      tune       a Tuner over `trainable` (run_trial), wiring only search, scheduler and storage:
        -> OptunaSearch (TPE, or a grid) proposes a configuration (dotted TrialConfig fields)
        -> Repeater runs it once per (init, seed): the paired runs every comparison needs (its
           group; halving.GroupRepeater tells Optuna the group's declared objective)
        -> a scheduler runs every trial to its end (fifo), stops single trials (asha) or stops
           and continues whole groups at rungs (grouped: halving.GroupedHalving)
        -> each Tune trial builds its TrialConfig (study.trial_config) and trains it: itself, for
           one worker (`train.train_in_trial`: metrics and checkpoints straight to Tune, the
           trial's process reused for the next trial), or through a TorchTrainer for several
           (`train.fit`, TuneReportCallback); one MLflow child run per trial under the parent
      record     (record.py) Tune's results read into Parquet tables (results.py), which MLflow is
                 synced from (tracking.sync), and the summary `run` returns

The only module that wires Tune.
"""
from __future__ import annotations

import os
import time
import uuid
from functools import partial

import optuna

from structinit import cluster, report, results, tracking
from structinit.config import TRAINING_BYTES, WEIGHT_BYTES, canonical, config_key
from structinit.record import Execution, epochs_of, record
from structinit.study import Study, check_space, source, trial_config
from structinit.validate import check, component, sqlite_path, sqlite_store, writable


def run_trial(config: dict, study: Study, execution: str, parent: str, tracking_uri: str, data: dict,
              trials) -> None:
    """The Tune trainable: one (configuration, init, seed), trained in this trial (one worker) or
    by a TorchTrainer (several), on the dataset the study read once (`data`: ObjectRefs by source;
    a source not there reads its files) -- unless its identity already finished (`trials`, the
    execution's registry.Registry): then it reports that trial's result once, with that trial's
    metric at every epoch (`curve`, what a grouped scheduler reads at its rungs), and trains
    nothing. Under the grouped scheduler it first reports its identity alone: while another trial
    trains that identity, the scheduler pauses it there (a twin). A trial that resumes from its own
    checkpoint (restarted, or paused by the grouped scheduler) goes on training."""
    import ray
    import ray.tune

    from structinit.halving import IDENTITY
    from structinit.train import trial_identity

    trial_id = ray.tune.get_context().get_trial_id()
    cfg, params = trial_config(study, config)
    shared = data.get(source(cfg))
    identity, built = trial_identity(cfg, None if shared is None else ray.get(shared))
    earlier = finished_before(trials, identity)
    if earlier is None and study.scheduler == "grouped" and ray.tune.get_checkpoint() is None:
        # the grouped scheduler pauses it here while another trial trains this identity (halving's twins)
        ray.tune.report({IDENTITY: identity, study.metric: None})
    name, tags = tracking.trial_run(study.name, {
        "init": cfg.init.name, "seed": cfg.seed, "dataset": cfg.dataset, "config_key": config_key(params),
        "params": canonical(params), "trial_id": trial_id, "identity": identity,
        "reused_from": earlier and earlier["trial_id"]})
    # None: the study's sync creates it
    run = tracking.attempt(tracking_uri, f"the run of trial {trial_id}", lambda _: tracking.start_run(
        tracking_uri, study.name, name, cfg.flat(), tags, parent=parent))
    if earlier is not None:
        reuse(earlier, run)
        return
    epochs = train_trial(cfg, study, trial_id, run, shared, identity, built)
    trials.finish.remote(identity, {"trial_id": trial_id, "execution": execution, "result": epochs[-1],
                                    "curve": [e.get(study.metric) for e in epochs]})
    if run is not None:
        tracking.finish(run)


def finished_before(trials, identity: str) -> dict | None:
    """The registry's record of a finished trial of this identity, None where there is none or this
    trial resumes from its own checkpoint (restarted, paused at a rung: it goes on training)."""
    import ray
    import ray.tune

    if ray.tune.get_checkpoint() is not None:
        return None
    try:
        return ray.get(trials.lookup.remote(identity))
    except ray.exceptions.RayActorError:  # the registry is gone (its node with the driver's): train
        return None


def reuse(earlier: dict, run: tracking.Run | None) -> None:
    """Report a trial that trained already as this trial's result (its metric at every epoch too,
    for a grouped scheduler's rungs), and log it on this trial's MLflow run."""
    import ray.tune

    from structinit.halving import CURVE

    ray.tune.report({**earlier["result"], "reused_from": earlier["trial_id"],
                     **({CURVE: earlier["curve"]} if earlier.get("curve") else {})})
    if run is not None:
        tracking.log_epoch(run, earlier["result"], step=earlier["result"].get("epoch", 0))
        tracking.finish(run)


def train_trial(cfg, study: Study, trial_id: str, run: tracking.Run | None, shared, identity: str,
                built) -> list[dict]:
    """Train a trial's TrialConfig: itself (one worker), or by a TorchTrainer reporting to Tune
    (several). Returns every epoch's metrics. Its MLflow run ends KILLED where Tune ended the
    trial (its scheduler paused or stopped it: the sync sets the status), FAILED with the error
    where training raised."""
    from structinit.checkpoint import history_of
    from structinit.train import fit, train_in_trial

    try:
        if cfg.workers == 1:
            return train_in_trial(cfg, run=run, data=shared, expected=identity, built=built)
        from ray.tune.integration.ray_train import TuneReportCallback

        result = fit(cfg, storage_path=study.paths.train, name=study.paths.train_name(trial_id), run=run,
                     callbacks=[TuneReportCallback()], data=shared, expected=identity)
        return history_of(result) or [result.metrics]
    except SystemExit:  # Tune ended the trial's thread
        if run is not None:
            tracking.finish(run, "KILLED")
        raise
    except BaseException as err:
        if run is not None:
            tracking.set_tags(run, {"error": str(err)[-5000:]})
            tracking.finish(run, "FAILED")
        raise


def registry(study: Study):
    """The execution's registry of trials by identity, knowing every identity a finished trial of
    an earlier execution trained (its last epoch's metrics, from the study's Parquet tables)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from structinit.registry import Registry

    finished = {}
    for trial, last, epochs in results.trained(study.paths.folder):
        finished[trial["identity"]] = {"trial_id": trial["trial_id"], "execution": trial["execution"], "result": last,
                                       "curve": [e.get(study.metric) for e in epochs]}
    # on the driver's node: it lives as long as the study does, whichever worker nodes come and go
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Registry.options(scheduling_strategy=here).remote(finished)


def searcher(study: Study, execution: str):
    """OptunaSearch (seeded TPE, or a seeded grid) over the study's space with persistent storage,
    wrapped in a Repeater that runs each proposal once per (init, seed) and tells Optuna one value
    per proposal: the study's objective over its group (halving.GroupRepeater), which the Optuna
    study names in its user attribute `objective`."""
    from ray.tune.search.optuna import OptunaSearch

    from structinit.halving import GroupRepeater

    sampler = (optuna.samplers.GridSampler(study.grid, seed=study.search_seed) if study.grid
               else optuna.samplers.TPESampler(seed=study.search_seed))
    store = sqlite_path(study.paths.optuna)
    if store:  # SQLite makes the file, not its folder (preflight checked it can be made)
        os.makedirs(os.path.dirname(os.path.abspath(store)), exist_ok=True)
    optuna_search = OptunaSearch(space=study.space, metric=study.metric, mode=study.mode, sampler=sampler,
                                 storage=optuna.storages.RDBStorage(study.paths.optuna), study_name=execution)
    optuna.load_study(study_name=execution, storage=study.paths.optuna).set_user_attr(
        "objective", f"{study.objective} of {study.metric}")
    return GroupRepeater(optuna_search, repeats=study.repeats, objective=study.objective,
                         epochs=study.trial.recipe.epochs)


def scheduler(study: Study):
    """Successive halving over whole groups (grouped: halving.GroupedHalving), ASHA per trial on
    the worker-reported epoch (restarts do not reset it), or every trial to the end (fifo)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.scheduler == "grouped":
        from structinit.halving import GroupedHalving

        return GroupedHalving(epochs=study.trial.recipe.epochs, rungs=study.rungs,
                              reduction_factor=study.reduction_factor, objective=study.objective,
                              configs=study.configs,
                              repeats=study.repeats, history=partial(epochs_of, study.paths))
    if study.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=study.trial.recipe.epochs, grace_period=study.grace_epochs,
                             reduction_factor=study.reduction_factor)
    return FIFOScheduler()


def live_trials(study: Study) -> int:
    """Tune's limit on trials proposed and not ended (max_concurrent_trials): what trains at once
    (`max_concurrent`, else what the cluster holds). Under the grouped scheduler a member paused
    at a rung still counts, and a rung is judged once the whole cohort is there: the limit is every
    trial of the study; the cluster's CPUs/GPUs bound what trains."""
    t = study.trial
    if study.scheduler == "grouped":
        return study.trials
    return study.max_concurrent or cluster.concurrency(t.workers, t.cpus_per_worker, t.gpus_per_worker)


def trial_resources(study: Study) -> dict:
    """What a trial holds: its one worker's CPUs (and GPU share) where it trains itself, else a
    driver's sliver (cluster.driver_resources), its TorchTrainer reserving the workers."""
    t = study.trial
    if t.workers == 1:
        return t.worker_resources()
    return cluster.driver_resources()


def preflight(study: Study, resume: bool = False, address: str | None = None) -> dict:
    """Everything a study can check before anything is created or started (no Ray session, no
    MLflow store, no study folder), each refused with a ValueError naming the value: an execution
    for `resume` to continue (the one LATEST names, with Tune's state), the folders and stores it
    will write (creatable and writable, checked without creating them), the space with every
    configuration it proposes, their data and models (`check_space`; trained on this machine, a
    model must fit in its memory), the records it reads (Optuna storage, earlier results), the Ray
    address and the MLflow store, and what a local cluster it would start can give a trial (its
    workers' CPUs and GPUs). What only a running cluster can tell is checked once it is attached
    (`cluster.check_cluster`). Returns the datasets `check_space` read, by source."""
    from structinit.train import check_target

    paths, t = study.paths, study.trial
    if resume:
        check_resume(study)
    writable("storage", paths.folder, folder=True)
    if "://" not in paths.ray:
        writable("checkpoints", paths.ray, folder=True)
    check_optuna(paths.optuna)
    results.trained(paths.folder)  # the registry's records (a damaged table is refused now, not in a trial)
    local = cluster.starts_here(address)
    data = check_space(study, TRAINING_BYTES * t.workers if local and not t.gpu else WEIGHT_BYTES)
    gpus = t.workers * t.gpus_per_worker
    check_target(address, gpus, study.tracking_uri or tracking.default_uri())  # e.g. unreachable MLflow
    if local:
        cluster.fits(t.workers, t.cpus_per_worker, t.gpus_per_worker, cluster.local_resources(),
                     "this machine (the local Ray cluster a study starts)", name="workers_per_trial")
    return data


def check_resume(study: Study) -> None:
    """There is an execution to continue: LATEST names one, and Tune's state of it is there."""
    import ray.tune

    paths = study.paths
    execution = paths.execution()
    check("resume", study.name, f"a study with a previous execution under {paths.folder}", execution is not None)
    component(f"execution (in {paths.folder}/LATEST)", execution)
    check("resume", execution, f"an execution Tune can continue: LATEST names it, but {paths.tune}/{execution} holds "
          "no Tune state (run without --resume for a new execution)", ray.tune.Tuner.can_restore(
              f"{paths.tune}/{execution}"))


def check_optuna(url: str) -> None:
    """The Optuna storage can be used: an SQLite file that can be made and written (and, where it
    exists, is a database), else a database that answers."""
    path = sqlite_path(url)
    if path is not None:  # its folder is made with the study's (searcher)
        writable("optuna storage", os.path.dirname(os.path.abspath(path)), folder=True)
        if os.path.exists(path):
            writable("optuna storage", path)
            sqlite_store("optuna storage", url)
        return
    import sqlalchemy

    try:
        sqlalchemy.create_engine(url).connect().close()
    except Exception as err:  # a missing driver, an unreachable or refusing server
        check("optuna_url", url, f"a database that answers ({type(err).__name__}: "
              f"{(str(err).strip().splitlines() or [''])[0][:200]})", False)


def run(study: Study, resume: bool = False, address: str | None = None, data: dict | None = None) -> dict:
    """Run (or with `resume`, continue) a study; returns where its results went. The study is
    checked first (`preflight`) unless the caller already did and passes what it read (`data`).
    The parent MLflow run it starts is never left RUNNING: FINISHED, FAILED (every trial failed)
    or KILLED (stopped early, or by an error)."""
    if data is None:
        data = preflight(study, resume, address)
    execution = start(study, resume, address, data)
    try:
        declare(study, execution)
        tune(study, execution)
        return record(study, execution)
    except BaseException:
        tracking.finish(execution.parent, "KILLED")
        raise


def start(study: Study, resume: bool, address: str | None, data: dict) -> Execution:
    """Attach to the Ray cluster (starting a local one where `address` names none) and check what
    only it can tell, then name the execution (the latest one, to resume it) and start its parent
    MLflow run."""
    import ray

    paths, t = study.paths, study.trial
    gpus = t.workers * t.gpus_per_worker
    uri = study.tracking_uri or tracking.default_uri()
    if not ray.is_initialized():
        cluster.connect(address, num_cpus=os.cpu_count(), resources={cluster.DRIVER: 1000})
    # before anything is recorded
    cluster.check_cluster(gpus, study.checkpoints or paths.folder)
    cluster.check_resources(t.workers, t.cpus_per_worker, t.gpus_per_worker, name="workers_per_trial")
    os.makedirs(paths.folder, exist_ok=True)
    # named to the second, and unique: two starts in one second get their own Tune folder, Optuna study, parent run
    name = paths.execution() if resume else f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    parent = tracking.start_run(uri, study.name, name, {"study": study.name, "inits": ",".join(study.inits),
                                                         "seeds": ",".join(map(str, study.seeds))},
                                {"study": study.name, "execution": name})
    return Execution(name, parent, uri, data, resume)


def declare(study: Study, execution: Execution) -> None:
    """Name the execution the study's latest (what --resume continues, what the report reads), log
    the datasets it reads on its parent run, and write what the report is to compare."""
    study.paths.set_execution(execution.name)
    tracking.log_study_data(execution.parent, execution.data, study.trial.fraction, study.seeds)
    report.declare(study.paths, study.pairs, study.plots, study.reference, study.objective, study.metric)


def tune(study: Study, execution: Execution) -> None:
    """Tune runs the study's trials (`trainable`) to its end: Optuna proposes (`searcher`), the
    study's `scheduler` stops or continues them, and Tune keeps its state under the study's
    storage; a resumed execution continues from that state."""
    import ray.tune

    trial = trainable(study, execution)
    path = f"{study.paths.tune}/{execution.name}"
    if execution.resume:  # preflight checked that Tune's state of it is there
        tuner = ray.tune.Tuner.restore(path, trainable=trial, resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trial,
            tune_config=ray.tune.TuneConfig(
                metric=study.metric, mode=study.mode, num_samples=study.trials,
                search_alg=searcher(study, execution.name), scheduler=scheduler(study),
                # a one-worker trial's process (torch, timm imported) serves the next
                reuse_actors=True,
                max_concurrent_trials=live_trials(study)),
            run_config=ray.tune.RunConfig(
                name=execution.name, storage_path=study.paths.tune,
                # of one-worker trials
                checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=2),
                failure_config=ray.tune.FailureConfig(max_failures=max(1, study.trial.max_failures))))
    tuner.fit()


def trainable(study: Study, execution: Execution):
    """`run_trial` with what every trial of the execution shares: each dataset, put in Ray's object
    store once for every trial's workers to read; the registry of trained identities; the
    execution's name and parent run. It holds `trial_resources`."""
    import ray
    import ray.tune

    shared = {key: ray.put(splits) for key, splits in execution.data.items()}
    return ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, study=study, execution=execution.name, parent=execution.parent.run_id,
                                 tracking_uri=execution.uri, data=shared, trials=registry(study)),
        trial_resources(study))
