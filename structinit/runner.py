"""Running a study: Ray Tune + Optuna over its space, each trial a Ray Train run, tracked in MLflow.

    run(study)
      -> OptunaSearch (TPE, or a grid) proposes a configuration (dotted TrialConfig fields)
      -> Repeater runs it once per (init, seed): the paired runs every comparison needs (its group;
         halving.GroupRepeater tells Optuna the group's declared objective)
      -> a scheduler runs every trial to its end (fifo), stops single trials (asha) or stops and
         continues whole groups at rungs (grouped: halving.GroupedHalving)
      -> each Tune trial builds its TrialConfig (study.trial_config) and trains it: itself, for
         one worker (`train.train_in_trial`: metrics and checkpoints straight to Tune, the trial's
         process reused for the next trial), or through a TorchTrainer for several (`train.fit`,
         TuneReportCallback)
      -> one MLflow child run per trial under one parent run per study execution
      -> Parquet tables (results.py), which MLflow is synced from (tracking.sync)

The only module that wires Tune.
"""
from __future__ import annotations

import os
import time
import uuid
import warnings
from functools import partial

import optuna

from structinit import cluster, report, results, tracking
from structinit.config import TRAINING_BYTES, WEIGHT_BYTES, canonical, config_key
from structinit.study import Study, check_space, source, trial_config
from structinit.validate import check, component, sqlite_path, sqlite_store, writable


def run_trial(config: dict, study: Study, execution: str, parent: str, tracking_uri: str, data: dict,
              trials) -> None:
    """The Tune trainable: one (configuration, init, seed), trained in this trial (one worker) or
    by a TorchTrainer (several), on the dataset the study read once (`data`: ObjectRefs by source;
    a source not there reads its files) -- unless its identity already finished (`trials`, the
    execution's registry.Registry): then it reports that trial's result once, with that trial's
    metric at every epoch (`curve`, what a grouped scheduler reads at its rungs), and trains
    nothing. A trial that resumes from its own checkpoint (restarted, or paused by the grouped
    scheduler) goes on training."""
    import ray
    import ray.tune

    from structinit.checkpoint import history_of
    from structinit.halving import CURVE
    from structinit.train import fit, train_in_trial, trial_identity

    trial_id = ray.tune.get_context().get_trial_id()
    cfg, params = trial_config(study, config)
    shared = data.get(source(cfg))
    identity, built = trial_identity(cfg, None if shared is None else ray.get(shared))
    try:  # a trial resuming from its own checkpoint (restarted, paused at a rung) goes on training
        record = ray.get(trials.lookup.remote(identity)) if ray.tune.get_checkpoint() is None else None
    except ray.exceptions.RayActorError:  # the registry is gone (its node with the driver's): train
        record = None
    name, tags = tracking.trial_run(study.name, {
        "init": cfg.init.name, "seed": cfg.seed, "dataset": cfg.dataset, "config_key": config_key(params),
        "params": canonical(params), "trial_id": trial_id, "identity": identity,
        "reused_from": record and record["trial_id"]})
    run = tracking.attempt(tracking_uri, f"the run of trial {trial_id}", lambda _: tracking.start_run(
        tracking_uri, study.name, name, cfg.flat(), tags, parent=parent))  # None: the study's sync creates it
    if record is not None:  # trained already: its result stands for this trial
        ray.tune.report({**record["result"], "reused_from": record["trial_id"],
                         **({CURVE: record["curve"]} if record.get("curve") else {})})
        if run is not None:
            tracking.log_epoch(run, record["result"], step=record["result"].get("epoch", 0))
            tracking.finish(run)
        return
    try:
        if cfg.workers == 1:
            epochs = train_in_trial(cfg, run=run, data=shared, expected=identity, built=built)
        else:
            from ray.tune.integration.ray_train import TuneReportCallback

            result = fit(cfg, storage_path=study.paths.train, name=study.paths.train_name(trial_id), run=run,
                         callbacks=[TuneReportCallback()], data=shared, expected=identity)
            epochs = history_of(result) or [result.metrics]
    except SystemExit:  # Tune ended the trial's thread: its scheduler paused or stopped it (the sync sets the status)
        if run is not None:
            tracking.finish(run, "KILLED")
        raise
    except BaseException as err:
        if run is not None:
            tracking.set_tags(run, {"error": str(err)[-5000:]})
            tracking.finish(run, "FAILED")
        raise
    trials.finish.remote(identity, {"trial_id": trial_id, "execution": execution, "result": epochs[-1],
                                    "curve": [e.get(study.metric) for e in epochs]})
    if run is not None:
        tracking.finish(run)


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
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Registry.options(scheduling_strategy=here).remote(finished)  # on the driver's node: it lives as
    # long as the study does, whichever worker nodes come and go


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
    """Successive halving over whole groups (grouped: halving.GroupedHalving), ASHA per trial on
    the worker-reported epoch (restarts do not reset it), or every trial to the end (fifo)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.scheduler == "grouped":
        from structinit.halving import GroupedHalving

        return GroupedHalving(epochs=study.trial.recipe.epochs, rungs=study.rungs,
                              reduction_factor=study.reduction_factor, objective=study.objective,
                              configs=study.configs,
                              repeats=study.repeats, history=partial(results.epochs_of, study.paths))
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
        return study.configs * len(study.repeats)
    return study.max_concurrent or cluster.concurrency(t.workers, t.cpus_per_worker, t.gpu_share if t.gpu else 0)


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
    gpus = t.workers * t.gpu_share if t.gpu else 0
    check_target(address, gpus, study.tracking_uri or tracking.default_uri())  # e.g. unreachable MLflow
    if local:
        cluster.fits(t.workers, t.cpus_per_worker, t.gpu_share if t.gpu else 0, cluster.local_resources(),
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
    checked first (`preflight`) unless the caller already did and passes what it read (`data`);
    each dataset is put in Ray's object store once and every trial's workers read it from there.
    The parent MLflow run it starts is never left RUNNING: FINISHED, FAILED (every trial failed)
    or KILLED (stopped early, or by an error)."""
    import ray
    import ray.tune

    if data is None:
        data = preflight(study, resume, address)
    paths = study.paths
    gpus = study.trial.workers * study.trial.gpu_share if study.trial.gpu else 0
    uri = study.tracking_uri or tracking.default_uri()
    if not ray.is_initialized():
        cluster.connect(address, num_cpus=os.cpu_count(), resources={cluster.DRIVER: 1000})
    cluster.check_cluster(gpus, study.checkpoints or paths.folder)  # before anything is recorded
    t = study.trial
    cluster.check_resources(t.workers, t.cpus_per_worker, t.gpu_share if t.gpu else 0, name="workers_per_trial")
    os.makedirs(paths.folder, exist_ok=True)
    # named to the second, and unique: two starts in one second get their own Tune folder, Optuna study, parent run
    execution = paths.execution() if resume else f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    parent = tracking.start_run(uri, study.name, execution, {"study": study.name, "inits": ",".join(study.inits),
                                                              "seeds": ",".join(map(str, study.seeds))},
                                {"study": study.name, "execution": execution})
    try:
        return _run(study, resume, data, execution, parent, uri)
    except BaseException:
        tracking.finish(parent, "KILLED")
        raise


def _run(study: Study, resume: bool, data: dict, execution: str, parent: tracking.Run, uri: str) -> dict:
    """`run` once its parent MLflow run is started."""
    import ray
    import ray.tune

    paths = study.paths
    paths.set_execution(execution)
    tracking.log_study_data(parent, data, study.trial.fraction, study.seeds)
    report.declare(paths, study.pairs, study.plots, study.reference, study.objective, study.metric)

    shared = {key: ray.put(splits) for key, splits in data.items()}
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, study=study, execution=execution, parent=parent.run_id,
                                 tracking_uri=uri, data=shared, trials=registry(study)),
        trial_resources(study))
    if resume:  # preflight checked that Tune's state of it is there
        tuner = ray.tune.Tuner.restore(f"{paths.tune}/{execution}", trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable,
            tune_config=ray.tune.TuneConfig(
                metric=study.metric, mode=study.mode, num_samples=study.configs * len(study.repeats),
                search_alg=searcher(study, execution), scheduler=scheduler(study),
                reuse_actors=True,  # a one-worker trial's process (torch, timm imported) serves the next
                max_concurrent_trials=live_trials(study)),
            run_config=ray.tune.RunConfig(
                name=execution, storage_path=paths.tune,
                checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=2),  # of one-worker trials
                failure_config=ray.tune.FailureConfig(max_failures=max(1, study.trial.max_failures))))
    tuner.fit()
    trials, history, attention = results.collect(study.name, execution, paths, partial(trial_config, study),
                                                 study.base)
    ids = tracking.attempt(uri, "the study's records", lambda _: tracking.sync(uri, study.name, execution,
                                                                                trials, history, attention))
    report.log_summary(parent, trials, study.pairs, study.reference, history, study.objective, study.metric)
    for t in trials:
        t["mlflow_run_id"] = (ids or {}).get(t["trial_id"])
    out = results.write(paths.folder, execution, trials, history, attention)
    if ids is None:
        warnings.warn(f"MLflow at {tracking.shown(uri)} was unreachable when study {study.name} ended: the MLflow "
                      f"records of its {len(trials)} trials ({len(history)} epochs) may be incomplete; the Parquet tables are "
                      f"complete ({out['trials']}). Once MLflow is back, write what it lacks with: structinit sync "
                      f"{study.name} --storage {study.storage} --tracking-uri {tracking.shown(uri)}")
    finished = sum(out["statuses"].get(s, 0) for s in ("TERMINATED", results.STOPPED, "ERROR"))
    reused = sum(1 for t in trials if t["reused_from"])
    expected = study.configs * len(study.repeats)
    orphans = close_orphans(study, execution) if finished == expected else 0
    left = cluster.placement_groups_left() if finished == expected else None
    if left:  # a Train run's workers still reserved: on a shared cluster they would starve other trials
        warnings.warn(f"study {study.name}: {left} placement group(s) it created are still reserved on the Ray "
                      f"cluster after its last trial ended (`ray list placement-groups`)")
    if finished < expected:  # stopped early (Ctrl-C): Tune saved its state
        print(f"study {study.name} stopped with {finished} of {expected} trials finished; continue it with --resume")
    failed = [t for t in trials if t["status"] == "ERROR"]
    return {"execution": execution, "parent_run_id": parent.run_id, "finished": finished, "expected": expected,
            "trained": len(trials) - reused, "reused": reused, "dataset_reads": len(data), "placement_groups_left": left,
            "mlflow_synced": ids is not None, "optuna_orphans_closed": orphans, "failed": len(failed),
            "first_error": failed[0]["error"] if failed else None, **out}
