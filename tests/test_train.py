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


def test_killed_worker_resumes_from_a_cadenced_checkpoint_to_the_same_result(ray_local, tmp_path):
    """Checkpoints every 3 epochs: the worker is killed past the first, the new one replays the
    epochs since it exactly (same final metrics as an uninterrupted run), and MLflow holds each
    epoch once."""
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
    workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.class_name == "RayTrainWorker"]
    assert len(workers) == 1
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=300)
    history = history_of(outcome["result"])
    assert [h["epoch"] for h in history] == list(range(6))  # nothing missing, nothing twice
    logged = tracking.history(run, "val_top1")
    assert [step for step, _ in logged] == list(range(6))  # the replayed epochs were not logged again
    new_workers = [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")])]
    assert len({a.pid for a in new_workers}) >= 2  # a second worker process did the rest
    straight = history_of(fit(cfg, storage_path=storage, name="uninterrupted"))
    for key in ("train_loss", "val_top1", "final_test_top1", "test_top1_at_best_val"):
        assert history[-1][key] == pytest.approx(straight[-1][key], abs=1e-6), key


def test_test_at_best_val_is_the_test_accuracy_of_the_best_validation_epoch(ray_local, tmp_path):
    """Per-epoch test curves on (test_every_epoch) so the epoch the validation split picks can be
    read off; a high constant lr makes the last epoch not the best one (at this seed: the last
    assertion checks that the run is one where they differ, and names it if a change of the
    init's numerics moves the best epoch to the last, as float32 in the solve did for seed 0)."""
    cfg = digits(recipe=dict(epochs=6, lr=2e-2, warmup_epochs=0, min_lr=2e-2), test_every_epoch=True, seed=1)
    history = history_of(fit(cfg, storage_path=str(tmp_path)))
    best = max(range(6), key=lambda e: (history[e]["val_top1"], -e))  # the first epoch of the best accuracy
    last = history[-1]
    assert last["best_val_epoch"] == best and last["best_val_top1"] == history[best]["val_top1"]
    assert last["test_top1_at_best_val"] == pytest.approx(history[best]["test_top1"], abs=1e-9)
    assert last["final_test_top1"] == pytest.approx(last["test_top1"], abs=1e-9)
    assert best != 5 and last["test_top1_at_best_val"] != last["final_test_top1"]  # a run where they differ
    assert all(h["test_top1"] is not None for h in history)
    plain = history_of(fit(digits(recipe=dict(epochs=2, warmup_epochs=0)), storage_path=str(tmp_path)))
    assert "test_top1" not in plain[0] and "test_top1" in plain[1]  # by default: the test set at the end only


def test_non_finite_loss_stops_with_a_clear_reason(ray_local, tmp_path):
    cfg = digits(recipe=dict(lr=1e6, grad_clip=None, warmup_epochs=0), max_failures=0)
    with pytest.raises(TrainingFailedError, match="non-finite training loss"):
        fit(cfg, storage_path=str(tmp_path))


def test_a_study_trains_a_multi_worker_trial_through_ray_train(ray_local, tmp_path):
    """A study's one-worker trials train in their Tune trial; a trial of two workers goes through
    a TorchTrainer (DDP over gloo) and lands in the same tables, its history read from Train's run."""
    from functools import partial

    import pandas as pd

    from structinit.runner import run
    from structinit.spaces import categorical
    from structinit.study import Study

    grid = {"model.depth": [2]}
    study = Study("ddp", digits(workers=2, recipe=dict(epochs=2, warmup_epochs=0)), partial(categorical, **grid),
                  grid=grid, inits=("impulse",), seeds=(0,), storage=str(tmp_path / "runs"),
                  tracking_uri="sqlite:///" + str(tmp_path / "mlflow.db"))
    out = run(study)
    trials, history = pd.read_parquet(out["trials"]), pd.read_parquet(out["history"])
    assert list(trials.status) == ["TERMINATED"] and list(trials.epochs_done) == [2]
    assert sorted(history.epoch) == [0, 1] and history.test_top1_at_best_val.notna().sum() == 1
    assert os.path.isdir(os.path.join(study.paths.train, study.paths.train_name(trials.trial_id[0])))
