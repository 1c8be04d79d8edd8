"""MLflow: runs, params, tags, batched per-epoch metrics and artifacts. The only module that
talks to MLflow. The default store is MLFLOW_TRACKING_URI, else a SQLite file at an absolute path
in the working directory; any tracking URI (an `mlflow server`) works the same.

A study must not stop because its tracking server does: `check` refuses an unusable URI before
any cluster work, logging during training is best effort (`attempt`: a failure warns and the
call is skipped), and `sync` writes whatever MLflow lacks from the study's Parquet tables, which
are complete either way (at the end of every study, and by `structinit sync`).

What a researcher sees: experiments open on their training runs (`mlflow.experimentKind`); every
run says where it came from (the entry point and the checkout's git commit, which MLflow's Source
column and run page show, its dirtiness, the stack's versions, the host; a training run also its
device, CUDA/cuDNN, its dataset as an MLflow dataset input and MLflow's system metrics); a study
execution's parent run carries the study's answer (its description, plots and summary metrics)
and a saved view of its trials; links into the UI (`where`) open those."""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY, MLFLOW_PARENT_RUN_ID,
                                     MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE)

from structinit import provenance
from structinit.attention import block_metrics
from structinit.config import config_ids, label
from structinit.validate import check as check_value, sqlite_path, sqlite_store, writable

# MLflow retries a failed HTTP call 7 times over about 4 minutes; what fails here is replayed by
# `sync`, so training waits less (export MLFLOW_HTTP_REQUEST_MAX_RETRIES to choose otherwise)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
RETRY_AFTER_S = 60.0  # after a failure, calls to that URI are skipped this long (sync fills the gap)
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
UNREACHABLE = (MlflowException, requests.RequestException, OSError)
_down_until: dict[str, float] = {}
# The experiment's kind as MLflow 3 defines it (the tag its UI's kind selector writes; "Machine
# learning" = custom_model_development: the page of training runs, where GenAI opens on traces)...
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# ...but MLflow 3.17's own UI picks the page from its workflow switch (this query parameter, else the
# viewer's last choice, GenAI at first), not from the tag: links to an experiment carry it
TRAINING_VIEW = "workflowType=machine_learning"
SOURCE_TAGS = (MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY)  # what MLflow's UI
# shows as a run's Source (the entry point, and beside it the commit's first digits) and its dirtiness
NOTE_LIMIT = 8000  # MLflow keeps this many characters of a run tag's value, a run's description (Overview) included
# A saved view of an experiment's runs table, as MLflow 3.17's UI stores one (its Views menu; a link's
# viewStateShareKey=<name> opens it): this experiment tag, valued {"name", "createdAt", "state": the table's
# filter, sort and columns as JSON}
SAVED_VIEW = "mlflow.sharedViewState."
# MLflow's system metrics are sampled every this many seconds: one sample, in a background thread,
# costs about 11 ms of CPU on a SQLite store (psutil 0.2 ms, the monitor's get_run 4 ms, log_batch
# 7 ms; over HTTP the calls mostly wait), about 0.1 % of the interval
SYSTEM_METRICS_INTERVAL_S = 10.0


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
    unknown scheme, a SQLite file in a missing folder or that is no database, a server or database
    that does not answer."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    allowed = ("an MLflow server (http://HOST:PORT), sqlite:////absolute/path.db, or a database URL "
               "(postgresql://, mysql://, mssql://)")
    check_value("tracking_uri", shown(uri), allowed, "://" in uri and scheme in SCHEMES)
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        folder = os.path.dirname(path)
        check_value("tracking_uri", uri, f"a SQLite file in an existing folder ({folder or '.'} is not one)",
                    os.path.isdir(folder or "."))
        for where, kind in ((folder or ".", True), (path, False), (os.path.join(folder, "mlartifacts"), True)):
            writable("tracking_uri", where, folder=kind)  # SQLite writes its journal beside the store
        if not os.path.exists(path):
            return  # a new store: nothing to reach, and nothing is created before the study starts
        sqlite_store("tracking store", uri)
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
    return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def provenance_tags(client: MlflowClient, parent: str | None) -> dict[str, str]:
    """Where a new run comes from: the entry point (the script run, MLflow's Source column) and the
    git commit and dirtiness of the project checkout (a child run: its parent's, which the study's
    driver read from the checkout it ran from), the versions of Python and the stack
    (`version.<name>`) and the host of this process."""
    if parent:
        source = {k: client.get_run(parent).data.tags.get(k, provenance.UNKNOWN) for k in SOURCE_TAGS}
    else:
        here = provenance.checkout()
        source = {MLFLOW_SOURCE_NAME: provenance.entry_point(), MLFLOW_SOURCE_TYPE: "LOCAL",
                  MLFLOW_GIT_COMMIT: here["commit"], MLFLOW_GIT_DIRTY: here["dirty"]}
    return {**source, **{f"version.{k}": v for k, v in provenance.versions().items()}, "hostname": provenance.host()}


def _find_or_create(client: MlflowClient, experiment: str, name: str, params: dict, tags: dict,
                    parent: str | None) -> tuple[str, bool]:
    """(run id, created) of the run named `name` in `experiment` (the `structinit.run` tag); a new
    run carries its provenance (`provenance_tags`)."""
    exp = experiment_id(client, experiment)
    found = client.search_runs([exp], filter_string=f"tags.`structinit.run` = '{name}'", max_results=1)
    if found:
        return found[0].info.run_id, False
    all_tags = {"structinit.run": name, **provenance_tags(client, parent), **{k: str(v) for k, v in tags.items()}}
    if parent:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent
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


def log_dataset(run: Run, name: str, root: str | None, pool, test, context: str, facts: dict) -> None:
    """A dataset as the run's dataset input (MLflow's dataset entity, as `mlflow.log_input` logs
    it): its name, digest (data.fingerprint), where it is read from (a folder; digits: scikit-learn)
    and its profile (pool and test sizes, classes), which every run of it shares; the input's tags
    say what this run drew from it (`facts`: split sizes, fraction, seed) and its `context` (best effort)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource

    from structinit.data import fingerprint, num_classes

    source = LocalArtifactDatasetSource(root) if root else CodeDatasetSource({"loader": f"structinit.data:{name}"})
    profile = {"pool": len(pool), "test": len(test), "classes": num_classes(name, pool)}
    entity = Dataset(name=name, digest=fingerprint(name, root, pool), source_type=source._get_source_type(),
                     source=source.to_json(), profile=json.dumps(profile))
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), *(InputTag(k, str(v)) for k, v in facts.items())]
    attempt(run.uri, f"the dataset input of run {run.run_id}",
            lambda c: c.log_inputs(run.run_id, datasets=[DatasetInput(entity, tags=tags)]))


def log_training(run: Run, cfg, d, device) -> None:
    """What only a training worker knows, on its run: its CUDA/cuDNN and GPU (provenance.accelerator),
    and the data it trains on (`d`: data.build's Data) as the run's dataset input, with the sizes
    of its train, val and test splits, the training fraction and the seed that drew them."""
    set_tags(run, {k if k == "gpu" else f"version.{k}": v for k, v in provenance.accelerator(device).items()})
    facts = {"train": len(d.train), "val": len(d.val), "test": len(d.test), "fraction": cfg.fraction,
             "val_fraction": cfg.val_fraction, "val_size": cfg.val_size, "seed": cfg.seed}
    log_dataset(run, cfg.dataset, cfg.data_root, d.train.base, d.test.base, "training", facts)


def log_study_data(run: Run, data: dict, fraction: float, seeds: tuple) -> None:
    """A study execution's datasets (`data`: the (pool, test) splits it read, by study.source:
    (name, root, download, verify)) as its parent run's dataset inputs, with the base training
    fraction and the seeds its trials draw their splits with."""
    for (name, root, *_), (pool, test) in data.items():
        log_dataset(run, name, root, pool, test, "study", {"fraction": fraction, "seeds": ",".join(map(str, seeds))})


@contextlib.contextmanager
def system_metrics(run: Run | None, interval: float = SYSTEM_METRICS_INTERVAL_S):
    """MLflow's own system metrics (`system/...`: CPU, memory, disk, network; GPU where nvidia-ml-py
    sees one) on `run` while the block runs, sampled every `interval` seconds by MLflow's
    SystemMetricsMonitor in a background thread (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    overrides); a resumed run continues its steps. The samples of the last interval, which the
    monitor drops when it stops, are logged too, so a run shorter than one interval has one.
    None: nothing (e.g. ranks other than 0)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = run and attempt(run.uri, f"system metrics of run {run.run_id}", lambda _: SystemMetricsMonitor(
        run.run_id, sampling_interval=interval, resume_logging=True, tracking_uri=run.uri))
    if monitor:
        monitor.start()
    try:
        yield
    finally:
        if monitor:
            monitor.finish()
            tail = monitor.aggregate_metrics()

            def publish(_):
                monitor.publish_metrics(tail)
                monitor.mlflow_logger.flush()

            if tail:
                attempt(run.uri, f"the last system metrics of run {run.run_id}", publish)


def log_summary(run: Run, metrics: dict, params: dict, description: str = "", images: tuple = ()) -> None:
    """A study execution's summary on its parent run: metrics (logged again as the summary
    changes, a resumed execution), params (the same values every time), its description (the
    Overview's Markdown, replaced) and `images` (files, at the top of its artifacts), best effort."""
    batch = _metrics(metrics, 0, int(time.time() * 1000))

    def log(client):
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run.run_id, metrics=batch[i:i + 1000])
        client.log_batch(run.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        if description:
            client.set_tag(run.run_id, MLFLOW_RUN_NOTE, description[:NOTE_LIMIT])
        for path in images:
            client.log_artifact(run.run_id, path)

    attempt(run.uri, f"the study summary of run {run.run_id}", log)


# ---- links into MLflow's UI: paths after the server's address ("#/..."), which a run's description
# ---- links as they are (relative to the page) and `where` prints after the server's URL

def trials_path(experiment_id: str, parent: str) -> str:
    """The saved view `save_trials_view` writes for the study execution of run `parent`."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey=trials-{parent}&{TRAINING_VIEW}"


def filtered_path(experiment_id: str, parent: str) -> str:
    """The trials of run `parent` flat, best final test top-1 first, without a saved view (the
    table's columns are then the viewer's own)."""
    facets = urlencode({"searchFilter": f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'",
                        "orderByKey": "metrics.`final_test_top1`", "orderByAsc": "false"}, quote_via=quote)
    return f"#/experiments/{experiment_id}/runs?{facets}&{TRAINING_VIEW}"


def compare_path(experiment_id: str, run_ids) -> str:
    """MLflow's compare view of `run_ids` (their params, metrics, parallel coordinates)."""
    runs, experiments = (quote(json.dumps(v, separators=(",", ":")), safe="[],")
                         for v in (sorted(run_ids), [experiment_id]))
    return f"#/compare-runs?runs={runs}&experiments={experiments}&{TRAINING_VIEW}"  # 39 characters a run


def artifact_path(experiment_id: str, run_id: str, path: str) -> str:
    """A run's artifact in its page's Artifacts tab."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{quote(path)}?{TRAINING_VIEW}"


def artifact_src(run_id: str, path: str) -> str:
    """A run's artifact as the server sends it (an image in a description), relative to its UI's page."""
    return f"get-artifact?path={quote(path)}&run_uuid={run_id}"


def save_trials_view(run: Run, name: str, params: tuple = ()) -> None:
    """A saved view of the experiment's runs table (MLflow's Views menu; `trials_path` opens it):
    the trials of the study execution of run `run` (its child runs) flat, best final test top-1
    first, with the columns that read them: final and at-best-val test top-1, init, configuration
    id, seed, the searched `params`, and the Source and Version (commit). Best effort."""
    columns = ["metrics.`final_test_top1`", "metrics.`test_top1_at_best_val`", "tags.`init`", "tags.`config`",
               "tags.`seed`", *(f"params.`{p}`" for p in params), "attributes.`Source`", "attributes.`Version`"]
    state = {"searchFilter": f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.run_id}'",
             "orderByKey": "metrics.`final_test_top1`", "orderByAsc": False, "selectedColumns": columns}

    def save(client):
        exp = client.get_run(run.run_id).info.experiment_id
        now = int(time.time() * 1000)
        client.set_experiment_tag(exp, f"{SAVED_VIEW}trials-{run.run_id}", json.dumps(
            {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}))

    attempt(run.uri, f"the saved view of the trials of run {run.run_id}", save)


def config_runs(client: MlflowClient, parent: str) -> dict[str, list[str]]:
    """The run ids of run `parent`'s children by configuration (their `config` tag)."""
    out: dict[str, list[str]] = {}
    for r in children(client, parent):
        out.setdefault(r.data.tags.get("config", "?"), []).append(r.info.run_id)
    return out


def study_runs(run: Run) -> tuple[str, dict[str, list[str]]] | None:
    """(experiment id, config_runs) of a study execution's parent run `run`; None where MLflow fails."""
    return attempt(run.uri, f"the trial runs of run {run.run_id}", lambda c: (
        c.get_run(run.run_id).info.experiment_id, config_runs(c, run.run_id)))


def finish(run: Run, status: str = "FINISHED") -> None:
    attempt(run.uri, f"status {status} of run {run.run_id}", lambda c: c.set_terminated(run.run_id, status))


def children(client: MlflowClient, parent: str) -> list:
    """The runs nested under the run `parent`."""
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'", max_results=50000)


def trial_run(study: str, trial: dict, ids: dict | None = None) -> tuple[str, dict]:
    """Name and tags of a trial's child run, from the fields of its Parquet row: the name reads
    well in MLflow's compare view, the tags group and pair runs (`config_key`: same configuration;
    `config`: its short id, as the parent run's keys name it, from `ids` (config_ids of the
    execution's configurations) or alone)."""
    name = f"{trial['init']} s{trial['seed']} {label(trial['params'])} [{trial['trial_id']}]"
    config = (ids or config_ids([trial["config_key"]]))[trial["config_key"]]
    return name, {"study": study, **{k: trial[k] for k in ("init", "dataset", "seed", "config_key", "trial_id")},
                  "config": config, **{k: trial[k] for k in ("identity", "reused_from") if trial.get(k)}}


# Tune's final statuses (and results.STOPPED: stopped by the scheduler) -> MLflow's; others KILLED
STATUS = {"TERMINATED": "FINISHED", "STOPPED": "FINISHED", "ERROR": "FAILED"}


def sync(uri: str, study: str, execution: str, trials: list[dict], history: list[dict],
         attention: list[dict] = ()) -> dict[str, str]:
    """Make MLflow hold one study execution as its Parquet rows do, writing only what it lacks:
    the parent run; one child run per trial (params, tags); every epoch's metrics and every
    measured epoch's attention (per block, attention.block_metrics, at the epochs trained); each
    run's final status, a failed trial's error and the epochs a stopped one stopped at
    (`stopped_at`). Child runs of trials that Tune no longer has (a study driver killed before Tune
    saved them; their configurations ran again as new trials) are deleted (recoverable: `mlflow
    runs restore`). Idempotent. Returns {trial_id: run id}."""
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
    measured: dict[str, dict[int, list[dict]]] = {}
    for a in attention:
        measured.setdefault(a["trial_id"], {}).setdefault(a["epoch"], []).append(a)
    configs = config_ids(t["config_key"] for t in trials)
    ids = {}
    for t in trials:
        found = existing.get(t["trial_id"])
        name, tags = trial_run(study, t, configs)
        if found:
            run_id = found.info.run_id
            if found.data.tags.get("config") != tags["config"]:  # a run of an older version, or an id that collided
                client.set_tag(run_id, "config", tags["config"])
        else:
            run_id, _ = _find_or_create(client, study, name, json.loads(t["trial_config"] or "{}"), tags, parent)
        ids[t["trial_id"]] = run_id
        logged = {m.step for m in client.get_metric_history(run_id, "epoch")}
        ts = int(time.time() * 1000)
        batch = [m for e in epochs.get(t["trial_id"], []) if e["epoch"] not in logged
                 for m in _metrics({k: v for k, v in e.items() if k not in ("seed",)}, e["epoch"], ts)]
        if t["trial_id"] in measured:
            seen = {m.step for m in client.get_metric_history(run_id, "attn_distance/b0")}
            batch += [m for step, rows in sorted(measured[t["trial_id"]].items()) if step not in seen
                      for m in _metrics(block_metrics(rows), step, ts)]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=batch[i:i + 1000])
        if t.get("error"):
            client.set_tag(run_id, "error", t["error"][:5000])
        if t.get("stopped_at") is not None:  # its scheduler stopped it there (MLflow's status says FINISHED)
            client.set_tag(run_id, "stopped_at", str(t["stopped_at"]))
        status = STATUS.get(t["status"], "KILLED")
        if (found.info.status if found else "RUNNING") != status:
            client.set_terminated(run_id, status)
    for trial_id, r in existing.items():
        if trial_id not in ids:
            client.set_tag(r.info.run_id, "structinit.discarded", "a trial Tune discarded on resume")
            client.set_terminated(r.info.run_id, "KILLED")
            client.delete_run(r.info.run_id)
    failed = bool(trials) and all(t["status"] == "ERROR" for t in trials)
    client.set_terminated(parent, ("FAILED" if failed else "FINISHED") if done else "KILLED")
    return ids


def ui_link(server: str, experiment_id: str) -> str:
    """An experiment's page in MLflow's UI at `server` (http://HOST:PORT), on its training runs."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def _unmade(uri: str) -> bool:
    """Whether `uri` is a SQLite store not created yet: reading it would create it, and find nothing."""
    path = sqlite_path(uri)
    return path is not None and not os.path.exists(path)


def where(uri: str, experiment: str, parent: str | None = None) -> list[str]:
    """Lines saying where to open `experiment` in MLflow's UI (none: it has none, or MLflow is
    unreachable): its link on the server, or, for a database store, after `mlflow ui`. With the
    parent run of a study execution: its trials flat, best final test top-1 first (its saved view,
    else the same filter and sort), then a compare link per configuration (its runs across inits
    and seeds). Every link opens MLflow's training pages (TRAINING_VIEW)."""
    def read(client):
        exp = client.get_experiment_by_name(experiment)
        if exp is None or parent is None:
            return exp, {}, {}
        return exp, config_runs(client, parent), client.get_run(parent).data.params

    found = None if _unmade(uri) else attempt(uri, f"the experiment {experiment}", read)
    if found is None or found[0] is None:
        return []
    exp, runs, params = found
    if parent is None:
        path = f"#/experiments/{exp.experiment_id}?{TRAINING_VIEW}"
    elif f"{SAVED_VIEW}trials-{parent}" in exp.tags:
        path = trials_path(exp.experiment_id, parent)
    else:
        path = filtered_path(exp.experiment_id, parent)
    server = shown(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    first = (f"MLflow: {server}/{path}" if uri.startswith(("http://", "https://")) else
             f"MLflow: run `mlflow ui --backend-store-uri {shown(uri)}`, then open {server}/{path}")
    names = {c: params.get(f"config.{c}", "?") for c in runs}
    return [first, *(f"  compare {c} ({names[c]}, {len(runs[c])} runs): "
                     f"{server}/{compare_path(exp.experiment_id, runs[c])}"
                     for c in sorted(runs, key=lambda c: (names[c], c)))]  # as the description orders them


def latest_run(uri: str, experiment: str, tag: str, value: str) -> Run | None:
    """The most recent run of `experiment` with tags.<tag> = value, if any."""
    if _unmade(uri):
        return None
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
