"""Training runs on a real local Ray cluster: Ray Train TorchTrainer (gloo), MLflow store, checkpoints."""
import os
import signal
import threading
import time

import pytest
from ray.train import TrainingFailedError

from structinit import tracking
from structinit.checkpoint import history_of
from structinit.config import make
from structinit.train import fit

QUICK = dict(epochs=8, batch_size=32, lr=2e-3, warmup_epochs=1)


def digits(**kw):
    return make("digits", recipe_overrides={**QUICK, **kw.pop("recipe", {})}, **kw)


@pytest.mark.parametrize("workers", [1, 2])
def test_digits_beats_chance(ray_local, tmp_path, workers):
    cfg = digits(workers=workers)
    result = fit(cfg, storage_path=str(tmp_path))
    history = history_of(result)
    assert [h["epoch"] for h in history] == list(range(8))
    assert history[-1]["val_top1"] >= 40 and history[-1]["test_top1"] >= 40  # chance is 10 %
    assert history[0]["init_mass_pseudo"] == pytest.approx(0.9, abs=0.05)
    assert all(h["images_per_s"] > 0 for h in history)


def test_killed_worker_resumes_from_its_checkpoint(ray_local, tmp_path):
    from ray.util.state import list_actors

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    cfg = digits(recipe=dict(epochs=6), max_failures=2)
    run = tracking.start_run(uri, "kill-test", "killed", cfg.flat(), {"init": "impulse"})
    name, storage = "killed", str(tmp_path / "runs")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=fit(cfg, storage_path=storage, name=name, run=run)))
    thread.start()
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for two epochs' checkpoints, then kill the worker process
        folder = os.path.join(storage, name)
        if os.path.isdir(folder) and len([f for f in os.listdir(folder) if f.startswith("checkpoint_")]) >= 2:
            break
        time.sleep(0.5)
    workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.class_name == "RayTrainWorker"]
    assert len(workers) == 1
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=300)
    history = history_of(outcome["result"])
    assert [h["epoch"] for h in history] == list(range(6))  # nothing missing, nothing twice
    logged = tracking.history(run, "val_top1")
    assert sorted({step for step, _ in logged}) == list(range(6))
    new_workers = [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")])]
    assert len({a.pid for a in new_workers}) >= 2  # a second worker process did the rest


def test_non_finite_loss_stops_with_a_clear_reason(ray_local, tmp_path):
    cfg = digits(recipe=dict(lr=1e6, grad_clip=None, warmup_epochs=0), max_failures=0)
    with pytest.raises(TrainingFailedError, match="non-finite training loss"):
        fit(cfg, storage_path=str(tmp_path))
