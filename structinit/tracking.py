"""MLflow: runs, params, tags, batched per-epoch metrics and artifacts. The only module that
talks to MLflow. The default store is MLFLOW_TRACKING_URI, else a SQLite file at an absolute path
in the working directory; any tracking URI (an `mlflow server`) works the same.

A study must not stop because its tracking server does: `check` refuses an unusable URI before
any cluster work, logging during training is best effort (`attempt`: a failure warns and the
call is skipped), and `sync` writes whatever MLflow lacks from the study's Parquet tables, which
are complete either way (at the end of every study, and by `structinit sync`)."""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import dataclass

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from structinit.config import label
from structinit.validate import check as check_value

# MLflow retries a failed HTTP call 7 times over about 4 minutes; what fails here is replayed by
# `sync`, so training waits less (export MLFLOW_HTTP_REQUEST_MAX_RETRIES to choose otherwise)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
RETRY_AFTER_S = 60.0  # after a failure, calls to that URI are skipped this long (sync fills the gap)
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
UNREACHABLE = (MlflowException, requests.RequestException, OSError)
_down_until: dict[str, float] = {}


@dataclass(frozen=True)
class Run:
    uri: str
    run_id: str


def default_uri() -> str:
    """MLFLOW_TRACKING_URI (the cluster configs point it at the head's server), else a SQLite
    file in the working directory, by absolute path."""
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.abspath("mlflow.db")


def shown(uri: str) -> str:
    """A URI as messages print it: without a password (prefer MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"))


def _reason(err: Exception, uri: str) -> str:
    """The first line of an MLflow failure, for a one-line message (a URI password shown as ***)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300].replace(uri, shown(uri))


@contextlib.contextmanager
def _patient(retries: int, timeout: int):
    """MLflow's HTTP retry budget for the calls inside (MLflow reads it per call)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(retries), MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout))
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def check(uri: str) -> None:
    """Refuse a tracking URI that MLflow cannot use, with one line, before any cluster work: an
    unknown scheme, a SQLite file in a missing folder, a server or database that does not answer."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    allowed = ("an MLflow server (http://HOST:PORT), sqlite:////absolute/path.db, or a database URL "
               "(postgresql://, mysql://, mssql://)")
    check_value("tracking_uri", shown(uri), allowed, "://" in uri and scheme in SCHEMES)
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        folder = os.path.dirname(path)
        check_value("tracking_uri", uri, f"a SQLite file in an existing folder ({folder or '.'} is not one)",
                    os.path.isdir(folder or "."))
        if not os.path.exists(path):
            return  # a new store: nothing to reach, and nothing is created before the study starts
    try:
        with _patient(retries=1, timeout=10):
            MlflowClient(uri).search_experiments(max_results=1)
    except UNREACHABLE as err:
        raise ValueError(f"tracking_uri={shown(uri)!r} is not allowed: expected a reachable MLflow store "
                         f"(start the server, or pass another --tracking-uri): {_reason(err, uri)}") from None


def attempt(uri: str, what: str, call):
    """`call(client)`, or None with a warning where MLflow fails; after a failure, calls to that
    URI are skipped for RETRY_AFTER_S (training goes on; `sync` writes what was skipped)."""
    if time.monotonic() < _down_until.get(uri, 0.0):
        return None
    try:
        return call(MlflowClient(uri))
    except UNREACHABLE as err:
        _down_until[uri] = time.monotonic() + RETRY_AFTER_S
        warnings.warn(f"MLflow at {shown(uri)} failed, {what} not logged ({_reason(err, uri)}): the study's Parquet "
                      f"tables keep it, and the study's end (or `structinit sync`) writes it to MLflow", stacklevel=2)
        return None


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created with an explicit artifact location beside a SQLite store
    (MLflow would otherwise use ./mlruns relative to whichever process creates it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        root = os.path.join(os.path.dirname(uri[len("sqlite:///"):]), "mlartifacts")
        location = "file://" + os.path.join(root, name)
    return client.create_experiment(name, artifact_location=location)


def _find_or_create(client: MlflowClient, experiment: str, name: str, params: dict, tags: dict,
                    parent: str | None) -> tuple[str, bool]:
    """(run id, created) of the run named `name` in `experiment` (the `structinit.run` tag)."""
    exp = experiment_id(client, experiment)
    found = client.search_runs([exp], filter_string=f"tags.`structinit.run` = '{name}'", max_results=1)
    if found:
        return found[0].info.run_id, False
    all_tags = {"structinit.run": name, **{k: str(v) for k, v in tags.items()}}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(exp, run_name=name, tags=all_tags).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run_id, True


def start_run(uri: str, experiment: str, name: str, params: dict, tags: dict, parent: str | None = None) -> Run:
    """A run named `name` in `experiment`, or the existing one of that name set RUNNING again (a
    resumed trial or study keeps its MLflow run). `parent` nests it under another run."""
    client = MlflowClient(uri)
    run_id, created = _find_or_create(client, experiment, name, params, tags, parent)
    if not created:
        client.update_run(run_id, status="RUNNING")
    return Run(uri, run_id)


def _metrics(values: dict, step: int, ts: int) -> list[Metric]:
    return [Metric(k, float(v), ts, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]  # v == v: not NaN


def log_epoch(run: Run, metrics: dict, step: int) -> None:
    """One batched call for all of an epoch's numeric metrics (best effort)."""
    batch = _metrics(metrics, step, int(time.time() * 1000))
    attempt(run.uri, f"epoch {step} of run {run.run_id}", lambda c: c.log_batch(run.run_id, metrics=batch))


def log_init(run: Run, folder: str, solve_seconds: float) -> None:
    """The init's artifacts the Train loop wrote to `folder` (its fidelity per block and head, its
    initial attention maps), as the run's init/, and its solve time, best effort (`structinit
    inspect-init` regenerates them)."""
    def log(client):
        client.log_artifacts(run.run_id, folder, artifact_path="init")
        client.set_tag(run.run_id, "init_solve_seconds", f"{solve_seconds:.4f}")

    attempt(run.uri, f"the init artifacts of run {run.run_id} (structinit inspect-init redraws them)", log)


def last_step(run: Run, key: str) -> int:
    """The last step of metric `key` the run holds (-1: none, or MLflow unreachable), best effort."""
    steps = attempt(run.uri, f"the logged steps of run {run.run_id}",
                    lambda c: [m.step for m in c.get_metric_history(run.run_id, key)])
    return max(steps or [-1])


def set_tags(run: Run, tags: dict) -> None:
    batch = [RunTag(k, str(v)) for k, v in tags.items()]
    attempt(run.uri, f"tags {sorted(tags)} of run {run.run_id}", lambda c: c.log_batch(run.run_id, tags=batch))


def finish(run: Run, status: str = "FINISHED") -> None:
    attempt(run.uri, f"status {status} of run {run.run_id}", lambda c: c.set_terminated(run.run_id, status))


def history(run: Run, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, in step order."""
    return sorted((m.step, m.value) for m in MlflowClient(run.uri).get_metric_history(run.run_id, key))


def children(client: MlflowClient, parent: str) -> list:
    """The runs nested under the run `parent`."""
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000)


def trial_run(study: str, trial: dict) -> tuple[str, dict]:
    """Name and tags of a trial's child run, from the fields of its Parquet row: the name reads
    well in MLflow's compare view, the tags group and pair runs (`config_key`: same configuration)."""
    name = f"{trial['init']} s{trial['seed']} {label(trial['params'])} [{trial['trial_id']}]"
    return name, {"study": study, **{k: trial[k] for k in ("init", "dataset", "seed", "config_key", "trial_id")}}


STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}  # Tune's final statuses -> MLflow's; others KILLED


def sync(uri: str, study: str, execution: str, trials: list[dict], history: list[dict]) -> dict[str, str]:
    """Make MLflow hold one study execution as its Parquet rows do, writing only what it lacks:
    the parent run; one child run per trial (params, tags); every epoch's metrics; each run's
    final status and a failed trial's error. Child runs of trials that Tune no longer has (a study
    driver killed before Tune saved them; their configurations ran again as new trials) are
    deleted (recoverable: `mlflow runs restore`). Idempotent. Returns {trial_id: run id}."""
    client = MlflowClient(uri)
    done = all(t["status"] in STATUS for t in trials)
    parent, _ = _find_or_create(client, study, execution, {
        "study": study, "inits": ",".join(sorted({t["init"] for t in trials})),
        "seeds": ",".join(map(str, sorted({t["seed"] for t in trials})))}, {"study": study, "execution": execution},
        None)
    existing = {r.data.tags.get("trial_id"): r for r in children(client, parent)}
    epochs: dict[str, list[dict]] = {}
    for h in history:
        epochs.setdefault(h["trial_id"], []).append(h)
    ids = {}
    for t in trials:
        found = existing.get(t["trial_id"])
        if found:
            run_id = found.info.run_id
        else:
            name, tags = trial_run(study, t)
            run_id, _ = _find_or_create(client, study, name, json.loads(t["trial_config"] or "{}"), tags, parent)
        ids[t["trial_id"]] = run_id
        logged = {m.step for m in client.get_metric_history(run_id, "epoch")}
        ts = int(time.time() * 1000)
        batch = [m for e in epochs.get(t["trial_id"], []) if e["epoch"] not in logged
                 for m in _metrics({k: v for k, v in e.items() if k not in ("seed",)}, e["epoch"], ts)]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=batch[i:i + 1000])
        if t.get("error"):
            client.set_tag(run_id, "error", t["error"][:5000])
        status = STATUS.get(t["status"], "KILLED")
        if (found.info.status if found else "RUNNING") != status:
            client.set_terminated(run_id, status)
    for trial_id, r in existing.items():
        if trial_id not in ids:
            client.set_tag(r.info.run_id, "structinit.discarded", "a trial Tune discarded on resume")
            client.set_terminated(r.info.run_id, "KILLED")
            client.delete_run(r.info.run_id)
    client.set_terminated(parent, "FINISHED" if done else "KILLED")
    return ids


def latest_run(uri: str, experiment: str, tag: str, value: str) -> Run | None:
    """The most recent run of `experiment` with tags.<tag> = value, if any."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return Run(uri, runs[0].info.run_id) if runs else None


def log_folder(run: Run, folder: str, artifact_path: str) -> None:
    attempt(run.uri, f"{artifact_path}/ of run {run.run_id}",
            lambda c: c.log_artifacts(run.run_id, folder, artifact_path=artifact_path))
