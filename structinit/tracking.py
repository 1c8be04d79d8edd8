"""MLflow: runs, params, tags, batched per-epoch metrics and artifacts. The only module that
talks to MLflow. The default store is MLFLOW_TRACKING_URI, else a SQLite file at an absolute path
in the working directory; any tracking URI (an `mlflow server`) works the same."""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class Run:
    uri: str
    run_id: str


def default_uri() -> str:
    """MLFLOW_TRACKING_URI (the cluster configs point it at the head's server), else a SQLite
    file in the working directory, by absolute path."""
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.abspath("mlflow.db")


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


def start_run(uri: str, experiment: str, name: str, params: dict, tags: dict, parent: str | None = None) -> Run:
    """A run named `name` in `experiment`, or the existing one of that name (a resumed run keeps
    its MLflow run). `parent` nests it under another run."""
    client = MlflowClient(uri)
    exp = experiment_id(client, experiment)
    found = client.search_runs([exp], filter_string=f"tags.`structinit.run` = '{name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return Run(uri, run_id)
    all_tags = {"structinit.run": name, **{k: str(v) for k, v in tags.items()}}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(exp, run_name=name, tags=all_tags).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return Run(uri, run_id)


def log_epoch(run: Run, metrics: dict, step: int) -> None:
    """One batched call for all of an epoch's numeric metrics."""
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if isinstance(v, (int, float))]
    MlflowClient(run.uri).log_batch(run.run_id, metrics=batch)


def log_init(run: Run, cfg, model, init, measured: dict) -> None:
    """The init's fidelity per block and head (JSON) and its initial attention maps (PNG)."""
    from structinit.fidelity import plot_attention

    client = MlflowClient(run.uri)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "init_fidelity.json")
        with open(path, "w") as f:
            json.dump({"solve_seconds": init.solve_seconds, **measured}, f)
        plot_attention(model, init, os.path.join(folder, "init_attention.png"))
        client.log_artifacts(run.run_id, folder, artifact_path="init")
    client.set_tag(run.run_id, "init_solve_seconds", f"{init.solve_seconds:.4f}")


def set_tags(run: Run, tags: dict) -> None:
    MlflowClient(run.uri).log_batch(run.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def finish(run: Run, status: str = "FINISHED") -> None:
    MlflowClient(run.uri).set_terminated(run.run_id, status)


def history(run: Run, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, in step order."""
    return sorted((m.step, m.value) for m in MlflowClient(run.uri).get_metric_history(run.run_id, key))


def child_runs(parent: Run) -> dict[str, str]:
    """{trial_id tag: run id} of the runs nested under `parent`."""
    client = MlflowClient(parent.uri)
    exp = client.get_run(parent.run_id).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
                              max_results=50000)
    return {r.data.tags.get("trial_id"): r.info.run_id for r in runs}


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
    MlflowClient(run.uri).log_artifacts(run.run_id, folder, artifact_path=artifact_path)
