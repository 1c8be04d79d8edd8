"""The record step of a study's execution, once Tune has run it: what became of each trial, read
from Tune (`ExperimentAnalysis` for its trials, `ray.tune.Result` for each one's error) and from
each trial's latest checkpoint (checkpoint.history_of), into the rows of results.py's tables;
then those rows synced to MLflow, summed up on the parent run and written as Parquet, and the
execution's loose ends closed (Optuna proposals left RUNNING) or warned of (placement groups left
reserved).

    runner.run: preflight -> start -> tune -> record (here)

The only module that reads Tune's results; results.py only writes and reads the Parquet tables.
"""
from __future__ import annotations

import traceback
import warnings
from dataclasses import dataclass
from functools import partial

import optuna

from structinit import cluster, report, results, tracking
from structinit.config import GROUP, base_key, canonical, config_key, setting_key
from structinit.inits import setting
from structinit.paths import StudyPaths
from structinit.results import CONFIG, HISTORY, INIT, STOPPED, attention_rows, column
from structinit.study import Study, trial_config


@dataclass(frozen=True)
class Execution:
    """One execution of a study: its name (its Tune folder, its Optuna study, its parent MLflow
    run's name), that parent run, the MLflow store, the datasets its preflight read (by source),
    and whether it continues an earlier start (`resume`)."""

    name: str
    parent: tracking.Run
    uri: str
    data: dict
    resume: bool = False


def record(study: Study, execution: Execution) -> dict:
    """Record an execution Tune has run: its trials' rows synced to MLflow (a child run each) and
    written as Parquet, its summary on the parent run; then its loose ends. Returns where its
    results went, with what it counted (`summary`). An MLflow store that does not answer loses
    nothing: the tables are written, and a warning says how to sync them later."""
    uri, name = execution.uri, execution.name
    trials, history, attention = collect(study.name, name, study.paths, partial(trial_config, study), study.base)
    ids = tracking.attempt(uri, "the study's records", lambda _: tracking.sync(uri, study.name, name,
                                                                                trials, history, attention))
    report.log_summary(execution.parent, trials, study.pairs, study.reference, history, study.objective,
                       study.metric)
    for t in trials:
        t["mlflow_run_id"] = (ids or {}).get(t["trial_id"])
    out = results.write(study.paths.folder, name, trials, history, attention)
    if ids is None:
        warnings.warn(f"MLflow at {tracking.shown(uri)} was unreachable when study {study.name} ended: the MLflow "
                      f"records of its {len(trials)} trials ({len(history)} epochs) may be incomplete; the Parquet tables are "
                      f"complete ({out['trials']}). Once MLflow is back, write what it lacks with: structinit sync "
                      f"{study.name} --storage {study.storage} --tracking-uri {tracking.shown(uri)}")
    return summary(study, execution, trials, out, synced=ids is not None)


def summary(study: Study, execution: Execution, trials: list[dict], out: dict, synced: bool) -> dict:
    """What `run` returns: where the results went (`out`), how many trials finished, trained and
    reused, the first failure; and, once every trial finished, the Optuna proposals it closed
    (close_orphans) and the placement groups still reserved (a warning where any are: on a shared
    cluster they would starve other trials). Stopped early (Ctrl-C), it says how to continue."""
    finished = sum(out["statuses"].get(s, 0) for s in ("TERMINATED", STOPPED, "ERROR"))
    reused = sum(1 for t in trials if t["reused_from"])
    expected = study.trials
    orphans = close_orphans(study, execution.name) if finished == expected else 0
    left = cluster.placement_groups_left() if finished == expected else None
    if left:
        warnings.warn(f"study {study.name}: {left} placement group(s) it created are still reserved on the Ray "
                      f"cluster after its last trial ended (`ray list placement-groups`)")
    if finished < expected:  # Tune saved its state
        print(f"study {study.name} stopped with {finished} of {expected} trials finished; continue it with --resume")
    failed = [t for t in trials if t["status"] == "ERROR"]
    return {"execution": execution.name, "parent_run_id": execution.parent.run_id, "finished": finished,
            "expected": expected, "trained": len(trials) - reused, "reused": reused,
            "dataset_reads": len(execution.data), "placement_groups_left": left, "mlflow_synced": synced,
            "optuna_orphans_closed": orphans, "failed": len(failed),
            "first_error": failed[0]["error"] if failed else None, **out}


def close_orphans(study: Study, execution: str) -> int:
    """Mark FAIL the Optuna trials a finished execution left RUNNING: proposals of Tune trials that
    a killed study driver had started before Tune last saved its state (Tune proposed anew in
    their place). Returns how many."""
    search = optuna.load_study(study_name=execution, storage=study.paths.optuna)
    stale = search.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
    for t in stale:
        search.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def collect(study: str, execution: str, paths: StudyPaths, configure,
            study_base: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Rows (trials, history, attention) of every trial of one execution, from Tune's experiment
    state, each trial's Result and its latest checkpoint (no cluster needed); `configure(config)`
    is a Tune trial's (TrialConfig, params). A trial that reused another's result
    (runner.run_trial) has that result and no epochs or attention measures."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    analysis = ExperimentAnalysis(f"{paths.tune}/{execution}")
    trials, history, attention = [], [], []
    # a ResultGrid holds a Result per trial of its analysis, in the same order
    for t, result in zip(analysis.trials, ResultGrid(analysis)):
        cfg, params = configure(t.config)
        epochs, measured = train_history(paths, t)
        base = {"study": study, "execution": execution, "trial_id": t.trial_id, "config_key": config_key(params),
                "init": cfg.init.name, "seed": cfg.seed}
        trials.append(trial_row(base, t, result, cfg, params, epochs, study_base))
        history += [{**base, **{k: e.get(k) for k in HISTORY.names if k not in base and k != "study"}}
                    for e in epochs]
        attention += attention_rows({k: base[k] for k in ("study", "execution", "trial_id", "init", "seed")}, measured)
    return twins_stopped(trials), history, attention


def twins_stopped(trials: list[dict]) -> list[dict]:
    """A twin the grouped scheduler stopped while it waited (halving's twins) trained nothing: it
    is the model of the trial of its identity that trained furthest, to where its group stopped
    -- as a reused trial is that of a finished one."""
    trained = {}
    for t in sorted(trials, key=lambda t: t["epochs_done"] or 0):
        if t["identity"] and t["epochs_done"] and not t["reused_from"]:
            trained[t["identity"]] = t["trial_id"]
    rungs = {}
    for t in trials:
        if t["status"] == STOPPED and t["epochs_done"]:
            rungs[t["group"]] = max(rungs.get(t["group"], 0), t["epochs_done"])
    for t in trials:
        if t["status"] == STOPPED and not t["epochs_done"] and t["identity"] in trained and t["group"] in rungs:
            t.update(reused_from=trained[t["identity"]], epochs_done=rungs[t["group"]], stopped_at=rungs[t["group"]])
    return trials


def trial_row(base: dict, trial, result, cfg, params: dict, epochs: list[dict], study_base: str) -> dict:
    """A Tune trial's row of the trials table: what it is (`base`, its identity and configuration),
    how it ended (Tune's status; STOPPED where a scheduler stopped it before its last epoch; its
    error) and what it measured, from its last epoch (`epochs`) or, where it reused another trial's
    result, from what it reported."""
    reused_from = (trial.last_result or {}).get("reused_from")
    last = epochs[-1] if epochs else (trial.last_result if reused_from else {})
    status = STOPPED if trial.status == "TERMINATED" and last.get("final_test_top1") is None else trial.status
    flat = cfg.flat()
    done = last["epoch"] + 1 if reused_from else len(epochs)

    def best(key):
        values = [e[key] for e in epochs if e.get(key) is not None]
        return max(values) if values else None

    return {**base, "status": status, "error": error_of(result) if trial.status == "ERROR" else None,
            "group": trial.config.get(GROUP), "stopped_at": done if status == STOPPED else None,
            "identity": last.get("identity") or (trial.last_result or {}).get("identity"),
            "weights": last.get("weights"), "base_key": base_key(cfg),
            "setting_key": setting_key(cfg), "setting": canonical(setting(cfg.init)),
            "study_base": study_base, "reused_from": reused_from,
            **{column(k): flat[k] for k in CONFIG},
            "epochs_done": done,
            "final_val_top1": last.get("val_top1"), "best_val_top1": best("val_top1"),
            "final_test_top1": last.get("final_test_top1"),
            "test_top1_at_best_val": last.get("test_top1_at_best_val"),
            "best_val_epoch": last.get("best_val_epoch"),
            **{k: last.get(k) for k in INIT}, "time_total_s": (trial.last_result or {}).get("time_total_s"),
            "params": canonical(params), "trial_config": canonical(flat)}


def error_of(result) -> str | None:
    """What a failed trial raised, as a traceback ends (`module.Type: message`), from its Result's
    `error`: the exception Tune kept, whose cause is the one its trainable raised."""
    if result.error is None:
        return None
    return "".join(traceback.format_exception_only(cause(result.error))).strip()[:2000]


def cause(err: BaseException) -> BaseException:
    """The exception that failed a trial, unwrapped from what carried it to Tune: a Ray task's
    error (its `cause`), a TorchTrainer's failure (its lowest-rank worker's error, or its
    controller's)."""
    failures = getattr(err, "worker_failures", None)
    inner = (getattr(err, "cause", None) or (failures[min(failures)] if failures else None)
             or getattr(err, "controller_failure", None))
    return cause(inner) if isinstance(inner, BaseException) and inner is not err else err


def train_history(paths: StudyPaths, trial) -> tuple[list[dict], list[dict]]:
    """(every epoch, every attention measure) a Tune trial trained, from its latest checkpoint: its
    own (a trial that trained itself) or its Ray Train run's; complete across restarts, unlike
    Tune's per-trial log, which starts over when a trial restarts."""
    import ray.train

    from structinit.checkpoint import attention_of, history_of

    if trial.checkpoint is not None:
        return history_of(trial), attention_of(trial)
    try:
        result = ray.train.Result.from_path(f"{paths.train}/{paths.train_name(trial.trial_id)}")
        return history_of(result), attention_of(result)
    except RuntimeError:  # the trial never reached a checkpoint
        return [], []


def epochs_of(paths: StudyPaths, trial) -> list[dict]:
    """Every epoch a Tune trial trained, from its latest checkpoint (`train_history`'s epochs):
    what the grouped scheduler reads of the trials a resumed study brings back."""
    return train_history(paths, trial)[0]
