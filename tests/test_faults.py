"""Faults a week-long study must survive, each on real Ray, Optuna storage and MLflow: a trial
driver killed, the study driver SIGKILLed and resumed, a node removed, MLflow down mid-study,
a trial whose loss turns NaN, a second study on the same machine. (A killed Train worker:
tests/test_train.py.)"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from structinit import results
from structinit.config import make
from structinit.paths import StudyPaths
from structinit.runner import run
from structinit.study import Study, categorical
from tests.helpers import free_port, gcs, kill_driver, stop

pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # every test here runs a study or a Ray cluster

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, str(ROOT / "studies" / "heads_vs_dim.py"), "--preset", "smoke"]


def small(tmp_path, name, epochs=6, inits=("impulse",), grid=None, max_failures=1, **kw) -> Study:
    """A digits study of one configuration (or a grid), tracked in a SQLite MLflow store."""
    grid = grid or {"model.depth": [2]}
    trial = make("digits", recipe_overrides=dict(epochs=epochs, warmup_epochs=0), max_failures=max_failures,
                 checkpoint_every=1)  # every epoch: the kills land between checkpoints, as these tests mean
    return Study(name, trial, partial(categorical, **grid), grid=grid, inits=inits, seeds=(0,),
                 storage=str(tmp_path / "runs"), tracking_uri="sqlite:///" + str(tmp_path / "mlflow.db"), **kw)


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def checkpointed_epochs(trial: Path) -> int:
    """How many epochs a Tune trial's latest checkpoint holds (0 before its first)."""
    folders = sorted(trial.glob("checkpoint_*/history.json"))
    return len(json.loads(folders[-1].read_text())) if folders else 0


def children(uri: str, study: str, parent: str | None = None) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return []
    where = f"tags.`mlflow.parentRunId` = '{parent}'" if parent else "tags.trial_id != ''"
    return client.search_runs([exp.experiment_id], filter_string=where, max_results=1000)


def epochs_logged(uri: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "epoch"))


def test_killed_trial_is_restarted_and_resumes_with_the_right_progress(ray_local, tmp_path):
    """Tune restarts a trial whose process dies; the trial resumes from its latest checkpoint;
    ASHA reads the worker's `epoch`, which goes on from there, and no epoch is lost or doubled."""
    from ray.util.state import list_actors

    study = small(tmp_path, "driver_kill", epochs=6, scheduler="asha")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(out=run(study)))
    thread.start()
    tune = Path(study.paths.ray) / "tune"
    wait_for(lambda: any(checkpointed_epochs(t) >= 2 for t in tune.glob("*/run_trial_*")), 240,
             "two epochs checkpointed")
    (trial,) = [a for a in list_actors(address=gcs(ray_local), filters=[("state", "=", "ALIVE")])
                if a.class_name == "ImplicitFunc"]
    os.kill(trial.pid, signal.SIGKILL)  # the Tune trial actor, which trains
    thread.join(timeout=400)
    out = outcome["out"]
    trials, history = pd.read_parquet(out["trials"]), pd.read_parquet(out["history"])
    assert list(trials.status) == ["TERMINATED"] and list(trials.epochs_done) == [6]
    assert sorted(history.epoch) == list(range(6))  # no epoch missing, none twice
    # two starts (each epoch carries its start's setup time): the second went on from the checkpoint
    starts = history.sort_values("epoch").groupby("setup_seconds", sort=False).epoch.min()
    assert len(starts) == 2 and starts.iloc[0] == 0 and starts.iloc[1] >= 2
    progress = pd.read_csv(next((tune / out["execution"]).glob("run_trial_*/progress.csv")))
    assert list(progress.epoch) == list(range(6))  # what ASHA saw: each epoch once, in order
    (child,) = children(study.tracking_uri, study.name, out["parent_run_id"])
    assert child.info.status == "FINISHED" and set(epochs_logged(study.tracking_uri, child.info.run_id)) == set(range(6))
    print(f"trial killed; restarted from its checkpoint at epoch {starts.iloc[1]}")


def test_study_driver_sigkilled_then_resumed(tmp_path):
    """SIGKILL the study driver with one trial finished and others mid-training; `--resume`
    finishes the study: no finished trial trains again, one MLflow child run per trial, none
    left RUNNING, complete Parquet tables."""
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    args = [*STUDY, "--epochs", "5", "--inits", "impulse,mimetic,default"]  # 3 trials, 2 at a time
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def progress():
            runs = children(uri, "heads_vs_dim")
            done = [r for r in runs if r.info.status == "FINISHED"]
            busy = [r for r in runs if r.info.status == "RUNNING" and epochs_logged(uri, r.info.run_id)]
            return (done, busy) if done and busy else None

        done, busy = wait_for(progress, 400, "a finished trial and one mid-training")
        time.sleep(2)
    finally:
        kill_driver(first)
        log.close()
    finished_before = {r.data.tags["trial_id"]: epochs_logged(uri, r.info.run_id) for r in done}
    second = subprocess.run([*args, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    trials, history = pd.read_parquet(out["trials"]), pd.read_parquet(out["history"])
    assert len(trials) == 3 and set(trials.status) == {"TERMINATED"} and (trials.epochs_done == 5).all()
    assert sorted(trials.init) == ["default", "impulse", "mimetic"]  # one trial per (init, seed)
    assert len(history) == 15 and not history.duplicated(["trial_id", "epoch"]).any()
    runs = children(uri, "heads_vs_dim", out["parent_run_id"])
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(trials.trial_id)  # one child run per trial
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert set(trials.mlflow_run_id) == {r.info.run_id for r in runs}
    for r in runs:
        assert set(epochs_logged(uri, r.info.run_id)) == set(range(5))
        if r.data.tags["trial_id"] in finished_before:  # not trained again: no epoch logged a second time
            assert epochs_logged(uri, r.info.run_id) == finished_before[r.data.tags["trial_id"]] == list(range(5))
    parent = MlflowClient(uri).get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    client = MlflowClient(uri)
    stale = [r for r in client.search_runs([parent.info.experiment_id], max_results=1000) if r.info.status == "RUNNING"]
    assert not stale
    import optuna

    search = optuna.load_study(study_name=out["execution"], storage=f"sqlite:///{tmp_path}/runs/heads_vs_dim/optuna.db")
    assert not search.get_trials(states=[optuna.trial.TrialState.RUNNING])  # none left RUNNING in Optuna either
    print(f"killed with {len(done)} trial(s) finished and {len(busy)} mid-training; resumed to 3 trials; "
          f"{out['optuna_orphans_closed']} orphaned Optuna trial(s) closed")


def test_ctrl_c_exits_130_and_resume_finishes_with_each_epoch_logged_once(tmp_path):
    """Ctrl-C (SIGINT to the study's process group, as a terminal sends it) mid-training: the study
    exits 130; `--resume` finishes every trial, one MLflow child run per trial, each epoch once."""
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    args = [*STUDY, "--epochs", "8", "--inits", "impulse,default"]
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        wait_for(lambda: any(r.info.status == "RUNNING" and len(epochs_logged(uri, r.info.run_id)) >= 2
                             for r in children(uri, "heads_vs_dim")), 400, "a trial two epochs in")
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=300)
    finally:
        stop(first)
    assert first.returncode == 130
    second = subprocess.run([*args, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    trials = pd.read_parquet(out["trials"])
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"} and (trials.epochs_done == 8).all()
    runs = children(uri, "heads_vs_dim", out["parent_run_id"])
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(trials.trial_id)  # one child run per trial
    for r in runs:
        assert r.info.status == "FINISHED" and epochs_logged(uri, r.info.run_id) == list(range(8))  # each once


@pytest.mark.parametrize("two_nodes", [{"num_cpus": 2}], indirect=True, ids=["two CPUs"])
def test_study_completes_when_a_node_is_removed(two_nodes, tmp_path):
    cluster, node = two_nodes
    study = small(tmp_path, "node_loss", epochs=6, inits=("impulse", "default"), max_concurrent=2)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(out=run(study)))
    thread.start()

    def on_node():  # a trial whose rank-0 worker reported from the second node, past its first checkpoint
        runs = children(study.tracking_uri, study.name)
        return [r for r in runs if r.data.tags.get("node_id") == node.node_id
                and len(epochs_logged(study.tracking_uri, r.info.run_id)) >= 2]

    victims = wait_for(on_node, 300, "a trial training on the second node")
    cluster.remove_node(node)
    thread.join(timeout=500)
    out = outcome["out"]
    trials, history = pd.read_parquet(out["trials"]), pd.read_parquet(out["history"])
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"} and (trials.epochs_done == 6).all()
    assert len(history) == 12 and not history.duplicated(["trial_id", "epoch"]).any()
    runs = {r.info.run_id: r for r in children(study.tracking_uri, study.name, out["parent_run_id"])}
    for victim in victims:
        after = runs[victim.info.run_id]
        assert after.info.status == "FINISHED" and after.data.tags["node_id"] != node.node_id  # moved, finished
    print(f"{len(victims)} trial(s) moved off the removed node and finished")


def mlflow_server(db: Path, port: int, log) -> subprocess.Popen:
    """A real, lean `mlflow server` on 127.0.0.1, ready."""
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--workers", "1", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{db}",
         "--artifacts-destination", str(db.parent / "mlartifacts")],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)

    def healthy():
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
        except requests.RequestException:
            return False

    wait_for(healthy, 120, "mlflow server")
    return server


def test_mlflow_down_mid_study_training_goes_on_and_sync_writes_the_rest(tmp_path):

    port, db = free_port(), tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")
    server = mlflow_server(db, port, log)
    study = subprocess.Popen([*STUDY, "--epochs", "6", "--inits", "impulse,default", "--tracking-uri", uri],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        wait_for(lambda: any(epochs_logged(uri, r.info.run_id) for r in children(uri, "heads_vs_dim")), 300,
                 "a first epoch in MLflow")
        stop(server)  # down for the rest of the study
        stdout, stderr = study.communicate(timeout=600)
    finally:
        stop(study)
        stop(server)
    assert study.returncode == 0, stderr[-4000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["mlflow_synced"] is False
    assert f"structinit sync heads_vs_dim --storage {tmp_path / 'runs'} --tracking-uri {uri}" in stderr  # how to replay
    print("\n".join(line for line in stderr.splitlines() if "MLflow at" in line))
    trials, history = pd.read_parquet(out["trials"]), pd.read_parquet(out["history"])
    assert len(trials) == 2 and set(trials.status) == {"TERMINATED"} and (trials.epochs_done == 6).all()
    assert len(history) == 12 and history.val_top5.notna().all()  # the tables are complete without MLflow
    assert history.test_top5.notna().sum() == 2  # the test set once per trial, at the end

    server = mlflow_server(db, port, log)  # back, on the same store
    try:
        sync = [str(Path(sys.executable).parent / "structinit"), "sync", "heads_vs_dim", "--tracking-uri", uri]
        done = subprocess.run(sync, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs = children(uri, "heads_vs_dim", out["parent_run_id"])
        assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(trials.trial_id)
        assert {r.info.status for r in runs} == {"FINISHED"}
        client = MlflowClient(uri)
        counts = {}
        for r in runs:
            assert epochs_logged(uri, r.info.run_id) == list(range(6))  # every epoch, once
            attention = sorted(m.step for m in client.get_metric_history(r.info.run_id, "attn_distance/b0"))
            assert attention == [0, 5, 6]  # the init, the checkpoint, the end: what Parquet holds, once each
            counts[r.info.run_id] = len(client.get_metric_history(r.info.run_id, "test_top1"))
        assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"
        assert set(pd.read_parquet(out["trials"]).mlflow_run_id) == {r.info.run_id for r in runs}
        again = subprocess.run(sync, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0
        assert all(len(client.get_metric_history(i, "test_top1")) == n for i, n in counts.items())  # idempotent
        assert all(len(client.get_metric_history(i, "attn_distance/b0")) == 3 for i in counts)
    finally:
        stop(server)
        log.close()


def test_non_finite_loss_fails_its_trial_and_the_study_goes_on(ray_local, tmp_path):
    grid = {"recipe.lr": [2e-3, 1e6], "recipe.grad_clip": [None]}
    study = small(tmp_path, "nan_trial", epochs=2, grid=grid, max_failures=0)  # Tune still retries it once
    out = run(study)
    trials = pd.read_parquet(out["trials"]).set_index("params")
    ok, bad = trials.loc[json.dumps({"recipe.grad_clip": None, "recipe.lr": 0.002})], trials.loc[
        json.dumps({"recipe.grad_clip": None, "recipe.lr": 1e6})]
    assert ok.status == "TERMINATED" and ok.epochs_done == 2
    assert bad.status == "ERROR" and "non-finite training loss" in bad.error
    client = MlflowClient(study.tracking_uri)
    failed = client.get_run(bad.mlflow_run_id)
    assert failed.info.status == "FAILED" and "non-finite training loss" in failed.data.tags["error"]
    from structinit.report import report

    text = report("nan_trial", storage=study.storage, tracking_uri=study.tracking_uri)
    assert "Failed trials:" in text and "non-finite training loss" in text


def test_two_studies_started_together_each_keep_to_their_own_cluster(tmp_path):
    """Two smoke studies started at once on one machine, each on the local cluster it starts, in
    one Ray temp root (as /tmp/ray would be). Their trial has two workers, so it goes through a
    TorchTrainer (DDP over gloo; a study's one-worker trials train in their Tune trial), whose
    PlacementGroupCleaner looks its cluster up through the State API every second. Both finish:
    the trial TERMINATED, its history (read from Train's run) in the study's tables, one MLflow
    child run in each store, no placement group of either left once its trial ended (the State
    API, asked by each study at its own cluster's address), and no Ray component of one study met
    the other's cluster ("Found multiple active Ray instances")."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": temp}
    studies = {}
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            log = open(folder / "study.log", "w")
            args = [*STUDY, "--inits", "impulse", "--workers-per-trial", "2",
                    "--storage", str(folder / "runs"), "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
            studies[name] = (subprocess.Popen(args, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True), log)
        for proc, _ in studies.values():
            proc.wait(900)
    finally:
        for proc, log in studies.values():
            stop(proc)
            log.close()
        shutil.rmtree(temp, ignore_errors=True)
    for name, (proc, _) in studies.items():
        folder = tmp_path / name
        text = (folder / "study.log").read_text()
        assert proc.returncode == 0, text[-4000:]
        assert "Started a local Ray instance" in text  # its own cluster, not one found on the machine
        # the defect itself; a traceback alone is not one (Ray may print an ActorDiedError while it
        # tears down a Train run)
        assert "multiple active Ray instances" not in text, text[-4000:]
        out = json.loads(next(line for line in reversed(text.splitlines()) if line.startswith('{"execution"')))
        assert out["placement_groups_left"] == 0  # none of this study's left on its cluster
        trials, history = results.load(str(folder / "runs" / "heads_vs_dim"))
        assert len(trials) == 1 and set(trials.status) == {"TERMINATED"} and list(trials.epochs_done) == [2]
        assert sorted(history.epoch) == [0, 1] and history.test_top1_at_best_val.notna().sum() == 1
        paths = StudyPaths(str(folder / "runs"), "heads_vs_dim")
        assert os.path.isdir(os.path.join(paths.train, paths.train_name(trials.trial_id[0])))  # Train's run
        uri = f"sqlite:///{folder}/mlflow.db"
        runs = children(uri, "heads_vs_dim", out["parent_run_id"])
        assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(trials.trial_id)  # one child run per trial
        assert {r.info.status for r in runs} == {"FINISHED"}
        print(f"study {name}: {len(trials)} trial TERMINATED, {len(runs)} child run, "
              f"{out['placement_groups_left']} placement groups left")


ALL_FAIL = '''
from functools import partial

from structinit.commands.study import cli
from structinit.config import make
from structinit.study import Study, categorical

GRID = {"recipe.lr": [1e6], "recipe.grad_clip": [None]}  # its loss turns NaN in the first epoch
PRESETS = {"nan": lambda: Study("all_nan", make("digits", recipe_overrides=dict(epochs=2, warmup_epochs=0),
                                                max_failures=0), partial(categorical, **GRID), grid=GRID,
                                inits=("impulse",), seeds=(0,))}
if __name__ == "__main__":
    cli("all_nan", PRESETS, default="nan")
'''


def not_running(uri: str) -> list:
    """Every run of every experiment of an MLflow store, asserting none is left RUNNING."""
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    return runs


def test_a_study_whose_every_trial_failed_exits_1_with_one_line_saying_where(tmp_path):
    """Every trial ERROR (a NaN loss): the study's JSON, then one line naming the failure and its
    records, exit 1 (it exited 0); its tables are complete, no MLflow run is left RUNNING, and the
    execution's parent run is FAILED."""
    (tmp_path / "all_nan.py").write_text(ALL_FAIL)
    out = subprocess.run([sys.executable, "all_nan.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-4000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("studies/all_nan.py: error:")]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(errors) == 1 and f"every trial of {summary['execution']} failed (1 of 1" in errors[0], errors
    assert "non-finite training loss" in errors[0] and summary["trials"] in errors[0], errors[0]
    trials = pd.read_parquet(summary["trials"])
    assert len(trials) == 1 and set(trials.status) == {"ERROR"}
    runs = {r.info.run_id: r for r in not_running("sqlite:///" + str(tmp_path / "mlflow.db"))}
    assert runs[summary["parent_run_id"]].info.status == "FAILED"
    assert runs[trials.mlflow_run_id[0]].info.status == "FAILED"


def test_a_train_run_that_fails_exits_1_with_one_line_and_leaves_no_run_running(tmp_path):
    """`structinit train` whose loss turns NaN: exit 1, its last line says what failed and where
    its records are; its MLflow run is FAILED with the reason, and no JSON summary is half-written."""
    out = subprocess.run([sys.executable, "-m", "structinit", "train", "--epochs", "2", "--warmup-epochs", "0",
                          "--lr", "1e6", "--grad-clip", "none", "--max-failures", "0", "--depth", "1",
                          "--json-out", "summary.json"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-4000:]
    # the last line the command itself printed: Ray redraws a worker's progress bar after each line (behind a
    # \r, or as a blank line that clears it), and its log forwarding may deliver a worker's last lines,
    # "(pid=...) ...", after the driver's own, even past ray.shutdown (seen under load)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line.rsplit("\r", 1)[-1]) for line in out.stderr.split("\n")]
    last = [line for line in lines if line.strip() and not line.startswith("(")][-1]
    assert last.startswith("structinit train: error: run train-digits-impulse-s0-") and "non-finite" in last, last
    assert "its records: MLflow run" in last and str(tmp_path / "runs" / "train-digits") in last, last
    assert not (tmp_path / "summary.json").exists()
    (run,) = not_running("sqlite:///" + str(tmp_path / "mlflow.db"))
    assert run.info.status == "FAILED" and "non-finite training loss" in run.data.tags["error"]
