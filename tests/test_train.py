"""Training runs on a real local Ray cluster: Ray Train TorchTrainer (gloo), MLflow store, checkpoints."""
import os
import signal
import threading
import time

import pytest
from mlflow.tracking import MlflowClient
from ray.train import TrainingFailedError

from structinit import tracking
from structinit.checkpoint import attention_of, history_of
from structinit.config import make
from structinit.train import fit
from tests.helpers import gcs

pytestmark = [pytest.mark.slow, pytest.mark.cluster]  # each trains on the shared local Ray cluster

QUICK = dict(epochs=8, batch_size=32, lr=2e-3, warmup_epochs=1)


def digits(**kw):
    return make("digits", recipe_overrides={**QUICK, **kw.pop("recipe", {})}, **kw)


def test_digits_beats_chance_with_two_ddp_workers(ray_local, tmp_path):
    """Two Train workers (DDP over gloo; one worker's `fit` runs in the tests below) learn digits;
    by default the test set is evaluated at the end only."""
    cfg = digits(workers=2)
    result = fit(cfg, storage_path=str(tmp_path))
    history = history_of(result)
    assert [h["epoch"] for h in history] == list(range(8))
    assert history[-1]["val_top1"] >= 40 and history[-1]["test_top1"] >= 40  # chance is 10 %
    assert all("test_top1" not in h for h in history[:-1])
    assert history[0]["init_mass_pseudo"] == pytest.approx(0.9, abs=0.05)
    assert all(h["images_per_s"] > 0 for h in history)
    measured = attention_of(result)  # rank 0's, at the init, the epoch-5 checkpoint and the end
    assert sorted({m["epoch"] for m in measured}) == [0, 5, 8] and len(measured) == 3 * 4 * 4  # nano: 4 x 4 heads


def test_killed_worker_resumes_from_a_cadenced_checkpoint_to_the_same_result(ray_local, tmp_path):
    """Checkpoints every 3 epochs: the worker is killed past the first, the new one replays the
    epochs since it exactly (same final metrics as an uninterrupted run, whose one worker learns
    digits well beyond chance from an init at its target mass), and MLflow holds each epoch once."""
    from ray.util.state import list_actors

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    cfg = digits(recipe=dict(epochs=6), max_failures=2, checkpoint_every=3)
    run = tracking.start_run(uri, "kill-test", "killed", cfg.flat(), {"init": "impulse"})
    name, storage = "killed", str(tmp_path / "runs")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=fit(cfg, storage_path=storage, name=name, run=run)))
    thread.start()
    deadline = time.time() + 240
    while time.time() < deadline:  # the epoch-2 checkpoint and a later epoch logged: then kill the worker
        folder = os.path.join(storage, name)
        if (os.path.isdir(folder) and any(f.startswith("checkpoint_") for f in os.listdir(folder))
                and tracking.last_step(run, "train_loss") >= 3):
            break
        time.sleep(0.5)
    workers = [a for a in list_actors(address=gcs(ray_local), filters=[("state", "=", "ALIVE")])
               if a.class_name == "RayTrainWorker"]
    assert len(workers) == 1
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=300)
    history = history_of(outcome["result"])
    assert [h["epoch"] for h in history] == list(range(6))  # nothing missing, nothing twice
    logged = sorted(m.step for m in MlflowClient(uri).get_metric_history(run.run_id, "val_top1"))
    assert logged == list(range(6))  # the replayed epochs were not logged again
    new_workers = [a for a in list_actors(address=gcs(ray_local), filters=[("class_name", "=", "RayTrainWorker")])]
    assert len({a.pid for a in new_workers}) >= 2  # a second worker process did the rest
    straight = history_of(fit(cfg, storage_path=storage, name="uninterrupted"))
    assert straight[-1]["val_top1"] >= 40 and straight[0]["init_mass_pseudo"] == pytest.approx(0.9, abs=0.05)
    for key in ("train_loss", "val_top1", "final_test_top1", "test_top1_at_best_val"):
        assert history[-1][key] == pytest.approx(straight[-1][key], abs=1e-6), key


def test_test_at_best_val_is_the_test_accuracy_of_the_best_validation_epoch(ray_local, tmp_path):
    """Per-epoch test curves on (test_every_epoch) so the epoch the validation split picks can be
    read off; a high constant lr makes the last epoch often not the best one. Which seed gives such
    a run moves with the numerics of the init and the libraries (seed 0 lost it to a float32 solve,
    seed 1 to a later install), so the first of a few seeds where the best epoch is not the last is
    the run checked; none of them: the test fails, naming it."""
    for seed in range(1, 5):
        cfg = digits(recipe=dict(epochs=6, lr=2e-2, warmup_epochs=0, min_lr=2e-2), test_every_epoch=True, seed=seed)
        history = history_of(fit(cfg, storage_path=str(tmp_path / str(seed))))
        best = max(range(6), key=lambda e: (history[e]["val_top1"], -e))  # the first epoch of the best accuracy
        if best != 5:
            break
    last = history[-1]
    assert last["best_val_epoch"] == best and last["best_val_top1"] == history[best]["val_top1"]
    assert last["test_top1_at_best_val"] == pytest.approx(history[best]["test_top1"], abs=1e-9)
    assert last["final_test_top1"] == pytest.approx(last["test_top1"], abs=1e-9)
    assert best != 5 and last["test_top1_at_best_val"] != last["final_test_top1"], "no seed of 1-4 gave a run " \
        "whose best validation epoch is not its last"
    assert all(h["test_top1"] is not None for h in history)


def test_non_finite_loss_stops_with_a_clear_reason(ray_local, tmp_path):
    cfg = digits(recipe=dict(lr=1e6, grad_clip=None, warmup_epochs=0), max_failures=0)
    with pytest.raises(TrainingFailedError, match="non-finite training loss"):
        fit(cfg, storage_path=str(tmp_path))
