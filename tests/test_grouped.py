"""Early stopping that keeps the pairs: the grouped scheduler (structinit/halving.py) stops or
continues a configuration's whole group at each rung, the search hears one value per group (the
declared objective), a killed study driver resumes to the same decisions; and the statistics
behind it (the objective, importance over configurations). The rule and the searcher's side run
on fakes in milliseconds; the study tests on a real local Ray cluster with Optuna storage and
MLflow, on digits with a one-block model, 4 epochs, 2 seeds."""
import json
import math
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from structinit.config import GROUP, make
from structinit.halving import CURVE, GroupedHalving, GroupRepeater, survivors
from structinit.stats import configurations, group_objective, importance, importances
from structinit.study import TRIAL_INDEX, Study, categorical
from tests.helpers import kill_driver

# ---- the rule and the objective ----------------------------------------------------------------


def test_the_objective_is_the_mean_one_arm_or_a_paired_gap_seed_by_seed():
    values = {("impulse", 0): 90.0, ("default", 0): 80.0, ("impulse", 1): 70.0, ("default", 1): float("nan"),
              ("mimetic", 0): 60.0}
    assert group_objective("mean", values) == pytest.approx((90 + 80 + 70 + 60) / 4)
    assert group_objective("arm:impulse", values) == pytest.approx(80.0)
    assert group_objective("gap:impulse-default", values) == pytest.approx(10.0)  # seed 1 has no pair
    assert math.isnan(group_objective("gap:mimetic-default", {("mimetic", 1): 1.0, ("default", 0): 1.0}))
    for bad in ("median", "arm:", "gap:impulse", "gap:impulse-impulse", "gap:a-b-c"):
        with pytest.raises(ValueError, match="objective="):
            group_objective(bad, values)


def test_the_top_floor_n_over_eta_groups_go_on_ties_to_the_earlier():
    assert survivors({0: 10.0, 1: 50.0, 2: 20.0, 3: 40.0, 4: 30.0, 5: 0.0}, 3, "max") == {1, 3}
    assert survivors({0: 10.0, 1: 50.0, 2: 20.0}, 2, "min") == {0}
    assert survivors({0: 10.0, 1: 50.0}, 3, "max") == {1}  # at least one goes on
    assert survivors({0: 5.0, 1: 5.0, 2: 5.0, 3: 5.0}, 2, "max") == {0, 1}  # a tie: the earlier proposals
    assert survivors({0: float("nan"), 1: 1.0, 2: 2.0}, 3, "max") == {2}
    assert survivors({0: float("nan")}, 3, "max") == set()  # no member left to judge by


def test_study_rungs_objective_and_scheduler_are_checked():
    base = make("digits", recipe_overrides=dict(epochs=30, warmup_epochs=0))
    space = partial(categorical, **{"model.depth": [1]})
    study = Study("g", base, space, scheduler="grouped", grace_epochs=1, reduction_factor=3)
    assert study.rungs == (1, 3, 9, 27)
    assert Study("g", base, space, grace_epochs=3, reduction_factor=2).rungs == (3, 6, 12, 24)
    for fields, needle in ((dict(scheduler="hyperband"), "scheduler='hyperband'"),
                           (dict(reduction_factor=1), "reduction_factor=1"),
                           (dict(objective="gap:impulse-torch_default"), "naming inits of this study"),
                           (dict(scheduler="grouped", grace_epochs=31), "grace_epochs=31"),
                           (dict(scheduler="grouped", max_concurrent=2), "max_concurrent=2")):
        with pytest.raises(ValueError, match=needle):
            Study("g", base, space, **fields)
    Study("g", base, space, grace_epochs=31)  # fifo never judges: grace is not checked against the epochs


def test_importance_is_over_one_value_per_finished_configuration():
    """Eight configurations whose objective follows the lr (log) and not the dim; a stopped one and
    one without a value are left out."""
    rows = []
    for i, (lr, dim) in enumerate([(1e-5, 32), (1e-4, 64), (1e-3, 32), (1e-2, 64), (3e-5, 64), (3e-4, 32),
                                   (3e-3, 64), (2e-2, 32)]):
        rows.append({"params": json.dumps({"recipe.lr": lr, "model.embed_dim": dim}), "status": "finished",
                     "objective": 10 * math.log10(lr) + 0.01 * i})
    rows += [{"params": json.dumps({"recipe.lr": 1.0, "model.embed_dim": 32}), "status": "stopped", "objective": 99},
             {"params": json.dumps({"recipe.lr": 0.5, "model.embed_dim": 32}), "status": "finished",
              "objective": float("nan")}]
    found = importance(pd.DataFrame(rows))
    assert set(found) == {"recipe.lr", "model.embed_dim"} and found["recipe.lr"] > 0.9
    assert importance(pd.DataFrame(rows[:2])) == {}  # too few configurations


# ---- the scheduler and the searcher, on fakes ---------------------------------------------------

REPEATS = [("impulse", 0), ("default", 0)]


class FakeTrial:
    RUNNING, PAUSED, PENDING, TERMINATED, ERROR = "RUNNING", "PAUSED", "PENDING", "TERMINATED", "ERROR"

    def __init__(self, trial_id, group, index, status="RUNNING", last_result=None):
        self.trial_id, self.status, self.is_saving = trial_id, status, False
        self.config = {GROUP: group, TRIAL_INDEX: index}
        self.last_result = last_result or {}

    def should_recover(self):
        return False


class FakeController:
    """What a scheduler may ask of Tune's controller: its trials, stop one (as Tune does: the
    scheduler hears on_trial_remove), and the mark that saves a status."""

    def __init__(self, scheduler):
        self.scheduler, self.trials, self.stopped, self.marked = scheduler, [], [], []

    def add(self, trial):
        self.trials.append(trial)
        self.scheduler.on_trial_add(self, trial)
        return trial

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.scheduler.on_trial_remove(self, trial)
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)

    def _mark_trial_to_checkpoint(self, trial):
        self.marked.append(trial.trial_id)

    def report(self, trial, epoch, value, **extra):
        """A result as Tune hands it over, and Tune's follow-through on the decision."""
        decision = self.scheduler.on_trial_result(self, trial, {"epoch": epoch, "val_top1": value, **extra})
        trial.status = {"PAUSE": "PAUSED", "STOP": "TERMINATED"}.get(decision, trial.status)
        return decision


def halving(history=None, configs=2):
    scheduler = GroupedHalving(epochs=4, rungs=(1, 2), reduction_factor=2, objective="gap:impulse-default",
                               configs=configs, repeats=REPEATS, history=history or (lambda trial: []))
    scheduler.set_search_properties("val_top1", "max")
    return scheduler, FakeController(scheduler)


def test_a_group_waits_for_the_whole_cohort_at_a_rung_then_moves_as_one():
    s, tc = halving()
    a0, a1 = tc.add(FakeTrial("a0", 0, 0)), tc.add(FakeTrial("a1", 0, 1))
    assert tc.report(a0, 0, 30.0) == "PAUSE" and tc.report(a1, 0, 10.0) == "PAUSE"  # whole, but group 1 is not proposed
    b0, b1 = tc.add(FakeTrial("b0", 1, 0)), tc.add(FakeTrial("b1", 1, 1))
    assert tc.report(b0, 0, 20.0) == "PAUSE" and s.groups[0].decided == {}  # its own partner is not there yet
    assert tc.report(b1, 0, 18.0) == "STOP"  # the cohort is there: group 0 (gap 20) goes on, group 1 (gap 2) stops
    assert s.groups[0].decided == {1: True} and s.groups[1].decided == {1: False}
    assert tc.stopped == ["b0"] and tc.marked == ["b0"]  # its paused partner stops with it
    assert tc.scheduler.choose_trial_to_run(tc) is a0  # group 0's paused members resume
    a0.status = "PENDING"
    assert tc.scheduler.choose_trial_to_run(tc) is a1
    a1.status = "PENDING"
    assert tc.scheduler.choose_trial_to_run(tc) is None
    assert tc.report(a0, 0, 30.0) == "CONTINUE"  # a resumed member reports its rung again: decided, go on
    assert tc.report(a0, 1, 40.0) == "PAUSE" and tc.report(a1, 1, 15.0) == "CONTINUE"  # rung 2: group 0 alone is left
    assert tc.report(a0, 3, 50.0) == "CONTINUE"  # the end is no rung


def test_a_reused_member_counts_at_every_rung_and_a_failed_one_holds_no_group():
    s, tc = halving()
    a0, a1 = tc.add(FakeTrial("a0", 0, 0)), tc.add(FakeTrial("a1", 0, 1))
    # reused: one report at its last epoch, with the trained trial's value at every epoch
    assert tc.report(a1, 3, 19.0, reused_from="old", **{CURVE: [10.0, 12.0, 15.0, 19.0]}) == "CONTINUE"
    s.on_trial_complete(tc, a1, {})
    a1.status = "TERMINATED"
    assert s.groups[0].values["a1"] == {1: 10.0, 2: 12.0}
    b0, b1 = tc.add(FakeTrial("b0", 1, 0)), tc.add(FakeTrial("b1", 1, 1))
    assert tc.report(b0, 0, 50.0) == "PAUSE"
    b1.status = "ERROR"
    s.on_trial_error(tc, b1)  # failed for good: group 1 is judged without it -- no pair, no score
    assert tc.report(a0, 0, 30.0) == "CONTINUE" and s.groups[0].scores[1] == pytest.approx(20.0)
    assert s.groups[1].decided[1] is False and tc.stopped == ["b0"]


def test_a_search_that_ends_short_of_the_cohort_is_judged_on_what_it_proposed():
    s, tc = halving(configs=3)
    trials = [tc.add(FakeTrial(f"{g}{i}", n, i)) for n, g in enumerate("ab") for i in range(2)]
    for t, v in zip(trials, (30.0, 10.0, 20.0, 18.0)):
        assert tc.report(t, 0, v) == "PAUSE"
    assert s.groups[0].decided == {}  # group 2 is still to come
    assert tc.scheduler.choose_trial_to_run(tc) is trials[0]  # nothing else can run: the two are the cohort
    assert s.configs == 2 and s.groups[0].decided == {1: True} and s.groups[1].decided == {1: False}


def test_decisions_are_derived_again_from_the_trials_a_resumed_study_restores():
    """Tune rebuilds the scheduler empty on resume: the trials it restores (stopped, paused at a
    rung, finished) bring their values from their checkpoints' history, and the same decisions
    follow, whatever order Tune adds them in."""
    s, tc = halving(configs=3)
    trials = [tc.add(FakeTrial(f"{g}{i}", n, i)) for n, g in enumerate("abc") for i in range(2)]
    values = {"a0": [30, 40, 45, 50], "a1": [10, 15, 20, 25], "b0": [20, 30], "b1": [18, 28],
              "c0": [35, 50, 55, 60], "c1": [12, 16]}
    for epoch in range(2):
        for t in trials:
            if t.status == "RUNNING" and epoch < len(values[t.trial_id]):
                tc.report(t, epoch, values[t.trial_id][epoch])
        for t in trials:
            if t.status == "PAUSED" and t.trial_id in s.resume:
                t.status = "RUNNING"
                tc.report(t, epoch, values[t.trial_id][epoch])
    decided = {g: dict(s.groups[g].decided) for g in s.groups}
    assert decided == {0: {1: False}, 1: {1: False}, 2: {1: True, 2: True}}  # gaps 20, 2, 23: one of 3 goes on

    history = {t: [{"epoch": e, "val_top1": v} for e, v in enumerate(vs)] for t, vs in values.items()}
    again, tc2 = halving(lambda trial: history[trial.trial_id][:2], configs=3)
    for t in reversed(trials):  # as restored: the last result they reached, and their status
        tc2.add(FakeTrial(t.trial_id, t.config[GROUP], t.config[TRIAL_INDEX], status="PENDING",
                          last_result=history[t.trial_id][-1] if t.trial_id != "c1" else history["c1"][1]))
    again._settle(tc2)
    assert {g: dict(again.groups[g].decided) for g in again.groups} == decided


def start(tc, trial, identity):
    """The report runner.run_trial makes before it trains: its identity alone."""
    decision = tc.scheduler.on_trial_result(tc, trial, {"identity": identity, "val_top1": None})
    trial.status = {"PAUSE": "PAUSED", "STOP": "TERMINATED"}.get(decision, trial.status)
    return decision


def test_a_twin_waits_with_the_values_of_the_trial_that_trains_its_model_and_trains_when_that_one_stops():
    s, tc = halving()
    a0, a1 = tc.add(FakeTrial("a0", 0, 0)), tc.add(FakeTrial("a1", 0, 1))
    b0, b1 = tc.add(FakeTrial("b0", 1, 0)), tc.add(FakeTrial("b1", 1, 1))
    assert start(tc, a0, "impulse-a") == start(tc, a1, "default") == start(tc, b0, "impulse-b") == "CONTINUE"
    assert start(tc, b1, "default") == "PAUSE" and s.twin_of == {"b1": "a1"}  # a1 trains the same model
    assert tc.report(a0, 0, 30.0) == "PAUSE" and tc.report(a1, 0, 10.0) == "PAUSE"
    assert s.groups[1].values["b1"] == {1: 10.0}  # a1's value is b1's
    assert tc.report(b0, 0, 40.0) == "CONTINUE"  # group 1 (gap 30) goes on, group 0 (gap 20) stops
    assert sorted(tc.stopped) == ["a0", "a1"]
    assert s.choose_trial_to_run(tc) is b1  # its model's trial stopped: the twin trains it itself
    b1.status = "RUNNING"
    assert start(tc, b1, "default") == "CONTINUE" and s.owner["default"] == "b1" and not s.twin_of
    assert tc.report(b1, 0, 10.0) == "CONTINUE"  # the rung it passed is decided: on


def test_a_twin_resumes_to_reuse_the_result_once_its_model_finished_and_stops_with_its_group():
    s, tc = halving()
    a0, a1 = tc.add(FakeTrial("a0", 0, 0)), tc.add(FakeTrial("a1", 0, 1))
    b0, b1 = tc.add(FakeTrial("b0", 1, 0)), tc.add(FakeTrial("b1", 1, 1))
    start(tc, a1, "default")
    assert start(tc, b1, "default") == "PAUSE"
    s.on_trial_complete(tc, a1, {})  # a1 finished (here without a decision to wait for)
    assert "b1" in s.resume and not s.twin_of  # runner.run_trial then finds its result in the registry
    s2, tc2 = halving()
    a0, a1 = tc2.add(FakeTrial("a0", 0, 0)), tc2.add(FakeTrial("a1", 0, 1))
    b0, b1 = tc2.add(FakeTrial("b0", 1, 0)), tc2.add(FakeTrial("b1", 1, 1))
    start(tc2, a1, "default")
    assert start(tc2, b1, "default") == "PAUSE"
    tc2.report(a0, 0, 40.0), tc2.report(a1, 0, 10.0)
    assert tc2.report(b0, 0, 15.0) == "STOP" and tc2.stopped == ["b1"]  # group 1 (gap 5) stops, its twin with it
    assert s2.choose_trial_to_run(tc2) is a0


def test_a_twin_that_completes_the_cohort_and_is_released_by_it_trains():
    s, tc = halving()
    a0, a1 = tc.add(FakeTrial("a0", 0, 0)), tc.add(FakeTrial("a1", 0, 1))
    b0, b1 = tc.add(FakeTrial("b0", 1, 0)), tc.add(FakeTrial("b1", 1, 1))
    start(tc, a0, "impulse-a"), start(tc, a1, "default"), start(tc, b0, "impulse-b")
    tc.report(a0, 0, 30.0), tc.report(a1, 0, 10.0)
    assert tc.report(b0, 0, 40.0) == "PAUSE"  # b1, the last to start, is not there
    # b1 is a1's twin: a1's value completes the cohort, group 0 stops, a1 with it -- so b1 trains
    assert start(tc, b1, "default") == "CONTINUE" and s.owner["default"] == "b1" and "b1" not in s.resume
    assert s.choose_trial_to_run(tc) is b0


def test_a_resumed_study_gives_a_stopped_twin_the_values_of_its_identity():
    history = {"a0": [{"epoch": 0, "val_top1": 30.0}], "a1": [{"epoch": 0, "val_top1": 10.0, "identity": "default"}],
               "b0": [{"epoch": 0, "val_top1": 15.0}], "b1": []}
    s, tc = halving(lambda trial: history[trial.trial_id])
    restored = [FakeTrial("b1", 1, 1, status="TERMINATED", last_result={"identity": "default", "val_top1": None}),
                FakeTrial("b0", 1, 0, status="TERMINATED", last_result=history["b0"][0]),
                FakeTrial("a1", 0, 1, status="PAUSED", last_result=history["a1"][0]),
                FakeTrial("a0", 0, 0, status="PAUSED", last_result=history["a0"][0])]
    for t in restored:
        tc.add(t)
    s._settle(tc)
    assert s.groups[1].values["b1"] == {1: 10.0}  # from a1, the trial of its identity
    assert {g: dict(s.groups[g].decided) for g in s.groups} == {0: {1: True}, 1: {1: False}}
    assert s.owner["default"] == "a1"  # restored, it goes on training: a restarted twin waits for it


class FakeSearcher:
    """What the Repeater's searcher hears."""
    metric, mode = "val_top1", "max"

    def __init__(self):
        self.heard, self.n = [], 0

    def suggest(self, trial_id):
        self.n += 1
        return {"recipe.lr": self.n}

    def on_trial_result(self, trial_id, result):
        self.heard.append(("result", trial_id, result))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.heard.append(("complete", trial_id, result, error))


def test_the_searcher_hears_one_value_per_group_and_a_stopped_group_at_its_rung():
    inner = FakeSearcher()
    rep = GroupRepeater(inner, repeats=REPEATS, objective="gap:impulse-default", epochs=4)
    configs = {t: rep.suggest(t) for t in ("a0", "a1", "b0", "b1")}
    assert [(c[GROUP], c[TRIAL_INDEX]) for c in configs.values()] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    rep.on_trial_complete("a0", {"epoch": 3, "val_top1": 40.0})
    assert inner.heard == []  # one member is no group
    rep.on_trial_complete("a1", {"epoch": 3, "val_top1": 99.0, CURVE: [1.0, 2.0, 3.0, 25.0]})  # a reused member
    assert inner.heard == [("complete", "a0", {"val_top1": 15.0}, False)]  # the gap at the last epoch
    rep.on_trial_result("b0", {"epoch": 0, "val_top1": 20.0})  # paused at rung 1, then stopped while paused
    rep.on_trial_complete("b0")
    rep.on_trial_complete("b1", {"epoch": 0, "val_top1": 18.0})
    assert inner.heard[1:] == [("result", "b0", {"val_top1": 2.0, "training_iteration": 1}),
                               ("complete", "b0", None, False)]  # pruned at 1 epoch with its gap there


def test_a_stopped_twin_is_told_with_the_values_of_the_trial_of_its_identity():
    inner = FakeSearcher()
    rep = GroupRepeater(inner, repeats=REPEATS, objective="gap:impulse-default", epochs=4)
    for t in ("a0", "a1", "b0", "b1"):
        rep.suggest(t)
    rep.on_trial_result("a1", {"identity": "default", "val_top1": None})
    rep.on_trial_result("a1", {"identity": "default", "epoch": 0, "val_top1": 10.0})
    rep.on_trial_result("b1", {"identity": "default", "val_top1": None})  # a twin of a1: paused, then stopped
    rep.on_trial_result("b0", {"epoch": 0, "val_top1": 25.0})
    rep.on_trial_complete("b0")
    rep.on_trial_complete("b1")
    assert inner.heard == [("result", "b0", {"val_top1": 15.0, "training_iteration": 1}),
                           ("complete", "b0", None, False)]  # 25 - a1's 10 at 1 epoch


def test_a_stopped_twins_row_is_the_model_of_its_identity_to_its_groups_rung():
    from structinit.record import twins_stopped

    rows = [dict(trial_id="a1", group=0, config_key="k0", status="TERMINATED", identity="D", epochs_done=4, reused_from=None,
                 stopped_at=None),
            dict(trial_id="b0", group=1, config_key="k1", status="STOPPED", identity="I", epochs_done=2, reused_from=None,
                 stopped_at=2),
            dict(trial_id="b1", group=1, config_key="k1", status="STOPPED", identity="D", epochs_done=0, reused_from=None,
                 stopped_at=0)]
    out = {r["trial_id"]: r for r in twins_stopped(rows)}
    assert (out["b1"]["reused_from"], out["b1"]["epochs_done"], out["b1"]["stopped_at"]) == ("a1", 2, 2)
    assert out["b0"]["reused_from"] is None and out["a1"]["reused_from"] is None


def test_configurations_score_stopped_groups_where_they_stopped():
    trials = pd.DataFrame([
        dict(trial_id=t, execution="e", config_key=k, params=json.dumps({"recipe.lr": lr}), init=i, seed=0,
             status=st, epochs_done=n, final_val_top1=v, reused_from=None)
        for t, k, lr, i, st, n, v in [("a0", "k1", 1e-3, "impulse", "TERMINATED", 4, 40.0),
                                      ("a1", "k1", 1e-3, "default", "TERMINATED", 4, 30.0),
                                      ("b0", "k2", 1e-6, "impulse", "STOPPED", 1, 11.0),
                                      ("b1", "k2", 1e-6, "default", "STOPPED", 1, 10.0)]])
    history = pd.DataFrame([dict(trial_id="b0", epoch=0, val_top1=11.0), dict(trial_id="b1", epoch=0, val_top1=10.0)])
    got = configurations(trials, history, "gap:impulse-default", "val_top1").set_index("config_key")
    assert got.loc["k1", "status"] == "finished" and got.loc["k1", "objective"] == 10.0
    assert got.loc["k2", "status"] == "stopped" and got.loc["k2", "stopped_at"] == 1 and got.loc["k2", "objective"] == 1.0


def test_under_early_stopping_importance_is_also_read_where_every_configuration_was():
    """Three finished configurations and two stopped after one epoch: importance over the three at
    their last epoch, and over all five at the one epoch all of them reached."""
    trials, history = [], []
    for k, (lr, stopped) in enumerate([(1e-3, False), (3e-3, False), (1e-4, False), (1e-6, True), (3e-6, True)]):
        for init, base in (("impulse", 20.0), ("default", 10.0)):
            t = f"t{k}{init}"
            epochs = 1 if stopped else 4
            trials.append(dict(trial_id=t, execution="e", config_key=f"k{k}", params=json.dumps({"recipe.lr": lr}),
                               init=init, seed=0, status="STOPPED" if stopped else "TERMINATED", epochs_done=epochs,
                               reused_from=None, final_val_top1=base + 1000 * lr * (init == "impulse") + epochs))
            history += [dict(trial_id=t, epoch=e, val_top1=base + 1000 * lr * (init == "impulse") + e + 1)
                        for e in range(epochs)]
    views = importances(pd.DataFrame(trials), pd.DataFrame(history), "gap:impulse-default", "val_top1")
    assert {k: n for k, (n, _) in views.items()} == {"final": 3, "at 1 epochs": 5}
    assert all(set(found) == {"recipe.lr"} for _, found in views.values())


# ---- studies on a real local Ray cluster -------------------------------------------------------

LRS = {"recipe.lr": [3e-3, 1e-6, 1e-3, 3e-6]}


def grouped_study(tmp_path, **kw) -> Study:
    trial = make("digits", recipe_overrides=dict(epochs=4, warmup_epochs=0), model_overrides=dict(depth=1))
    fields = dict(grid=LRS, inits=("impulse", "default"), seeds=(0, 1), scheduler="grouped", grace_epochs=1,
                  reduction_factor=2, objective="gap:impulse-default", storage=str(tmp_path / "runs"),
                  tracking_uri="sqlite:///" + str(tmp_path / "mlflow.db"))
    return Study("grouped", trial, **{**fields, **kw})


def at_epochs(history: pd.DataFrame, trials: pd.DataFrame, epochs: int, objective: str) -> float:
    """A group's objective from its members' validation top-1 after `epochs` epochs."""
    rows = history[history["trial_id"].isin(trials["trial_id"]) & (history["epoch"] == epochs - 1)]
    return group_objective(objective, {(r.init, r.seed): r.val_top1 for r in rows.itertuples()})


@pytest.mark.slow
@pytest.mark.cluster
def test_grouped_study_stops_whole_groups_and_tells_optuna_one_value_per_group(ray_local, tmp_path):
    from structinit.report import report
    from structinit.runner import run

    study = grouped_study(tmp_path)
    out = run(study)
    trials, history = pd.read_parquet(out["trials"]), pd.read_parquet(out["history"])
    assert len(trials) == 16 and trials["group"].nunique() == 4
    outcome = {}
    for group, g in trials.groupby("group"):
        if (g["status"] == "TERMINATED").all():  # finished: every (init, seed) to the last epoch
            assert sorted(zip(g.init, g.seed)) == sorted(study.repeats) and (g["epochs_done"] == 4).all()
            outcome[group] = "finished"
        else:  # stopped: every member at the same rung, each epoch it trained recorded
            assert (g["status"] == "STOPPED").all() and g["stopped_at"].nunique() == 1, g
            assert g["stopped_at"].iloc[0] in study.rungs and (g["epochs_done"] == g["stopped_at"]).all()
            outcome[group] = int(g["stopped_at"].iloc[0])
    assert "finished" in outcome.values() and any(v != "finished" for v in outcome.values()), outcome

    search = optuna.load_study(study_name=out["execution"], storage=study.paths.optuna)
    assert len(search.trials) == 4 and search.user_attrs["objective"] == "gap:impulse-default of val_top1"
    by_params = {json.dumps(t.params, sort_keys=True): t for t in search.trials}
    for group, g in trials.groupby("group"):
        told = by_params[g["params"].iloc[0]]  # one Optuna trial per group: the group's objective
        if outcome[group] == "finished":
            assert told.state == optuna.trial.TrialState.COMPLETE
            assert told.value == pytest.approx(at_epochs(history, g, 4, study.objective))
        else:
            assert told.state == optuna.trial.TrialState.PRUNED
            assert told.intermediate_values == {outcome[group]: pytest.approx(
                at_epochs(history, g, outcome[group], study.objective))}

    client = MlflowClient(study.tracking_uri)
    for t in trials[trials["status"] == "STOPPED"].itertuples():
        run_ = client.get_run(t.mlflow_run_id)
        assert run_.info.status == "FINISHED" and run_.data.tags["stopped_at"] == str(int(t.stopped_at))
        assert sorted(m.step for m in client.get_metric_history(t.mlflow_run_id, "epoch")) == list(
            range(int(t.stopped_at)))
    text = report("grouped", storage=study.storage, tracking_uri=study.tracking_uri)
    stopped = sum(1 for v in outcome.values() if v != "finished")
    assert f"## Stopped early\n\n{stopped} of 4 configurations were stopped" in text and "Failed trials" not in text
    print(f"groups: {outcome}; {out['statuses']}")


@pytest.mark.slow
@pytest.mark.cluster
def test_grouped_study_trains_a_model_that_groups_share_once_up_to_a_rung(ray_local, tmp_path):
    """The default arm reads no target_mass: four configurations x two seeds, the same two models.
    Each group still moves as one, a stopped twin is recorded as the model it shares (its
    values told to Optuna), and the default arm trains fewer epochs than its groups reached."""
    from structinit.runner import run

    masses = {"init.target_mass": [0.3, 0.5, 0.7, 0.9]}
    study = grouped_study(tmp_path, grid=masses)
    out = run(study)
    trials, history = pd.read_parquet(out["trials"]), pd.read_parquet(out["history"])
    assert len(trials) == 16 and out["statuses"].get("ERROR", 0) == 0
    reached = {}
    for group, g in trials.groupby("group"):
        assert g["status"].nunique() == 1 and g["epochs_done"].nunique() == 1, g  # whole, at one rung or the end
        reached[group] = int(g["epochs_done"].iloc[0])
    assert sorted(reached.values()) == [1, 1, 2, 4]  # eta 2: 4 groups, 2 go past the first rung, 1 to the end
    default = trials[trials["init"] == "default"]
    trained = history[history["trial_id"].isin(default["trial_id"])]
    assert len(trained) < 2 * sum(reached.values()), trained  # without twins every group trains its own
    shared = default[default["reused_from"].notna()]
    assert len(shared) and shared["reused_from"].isin(default["trial_id"]).all()
    by_id = default.set_index("trial_id")
    assert all(by_id.loc[r.reused_from, "seed"] == r.seed for r in shared.itertuples())
    configs = configurations(trials, history, study.objective, study.metric)
    search = optuna.load_study(study_name=out["execution"], storage=study.paths.optuna)
    told = {json.dumps(t.params, sort_keys=True): (t.value if t.value is not None else
                                                    list(t.intermediate_values.values())[-1]) for t in search.trials}
    for c in configs.itertuples():  # what Optuna heard is the report's objective, twins' values included
        assert told[json.dumps(json.loads(c.params), sort_keys=True)] == pytest.approx(c.objective), c
    print(f"reached {reached}; default epochs trained {len(trained)} of {2 * sum(reached.values())}")


SCRIPT = '''
from functools import partial
from structinit.commands.study import cli
from structinit.config import make
from structinit.study import Study, categorical

GRID = {{{field!r}: {values!r}}}
PRESETS = {{"tiny": lambda: Study(
    "killed", make("digits", recipe_overrides=dict(epochs=4, warmup_epochs=0), model_overrides=dict(depth=1)),
    partial(categorical, **GRID), num_configs=4, inits=("impulse", "default"), seeds=(0, 1), search_seed=6,
    scheduler="grouped", grace_epochs=1, reduction_factor=2, objective="arm:impulse")}}
if __name__ == "__main__":
    cli("killed", PRESETS, default="tiny")
'''


def saved_statuses(folder: Path) -> list[str]:
    """The trial statuses in the latest experiment state Tune saved under a study folder: PAUSED
    for a trial waiting at a rung (its last result an epoch's), TWIN for one paused before it
    trained (its last result its identity alone)."""
    states = sorted(folder.glob("runs/killed/tune/*/experiment_state-*.json"))
    if not states:
        return []
    try:
        data = json.loads(states[-1].read_text())
    except (ValueError, OSError):  # being written
        return []
    out = []
    for t, meta in data["trial_data"]:
        status, last = json.loads(t)["status"], (json.loads(meta) if isinstance(meta, str) else meta)["last_result"]
        out.append("TWIN" if status == "PAUSED" and (last or {}).get("epoch") is None else status)
    return out


def outcomes(summary: dict) -> dict:
    """Each group's configuration and where it ended: 'finished' or the epochs it stopped at."""
    trials = pd.read_parquet(summary["trials"])
    out = {}
    for _, g in trials.groupby("group"):
        stopped = g[g["status"] == "STOPPED"]
        assert stopped.empty or (len(stopped) == len(g) and stopped["stopped_at"].nunique() == 1), g
        out[g["params"].iloc[0]] = "finished" if stopped.empty else int(stopped["stopped_at"].iloc[0])
    return out


@pytest.mark.slow
@pytest.mark.cluster
def test_grouped_study_driver_killed_mid_rung_resumes_to_the_same_decisions(tmp_path):
    """One study run through, and the same study (same seeds) SIGKILLed while members wait paused
    at a rung -- and, the default arm reading no target_mass, its twins wait paused before they
    train -- then `--resume`d: the same groups stop at the same rungs, the others finish."""
    script = tmp_path / "killed.py"
    script.write_text(SCRIPT.format(field="init.target_mass", values=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def args(folder):
        return [sys.executable, str(script), "--address", "local", "--storage", str(folder / "runs"),
                "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference, killed):
        folder.mkdir()
    done = subprocess.run(args(reference), cwd=reference, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    expected = outcomes(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "finished" in expected.values() and any(v != "finished" for v in expected.values()), expected

    log = open(killed / "first.log", "w")
    first = subprocess.Popen(args(killed), cwd=killed, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    try:
        deadline = time.time() + 400
        while not {"PAUSED", "TWIN"} <= set(saved_statuses(killed)) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        statuses = saved_statuses(killed)
    finally:
        kill_driver(first)
        log.close()
    assert {"PAUSED", "TWIN"} <= set(statuses), (killed / "first.log").read_text()[-3000:]
    second = subprocess.run([*args(killed), "--resume"], cwd=killed, capture_output=True, text=True, timeout=600,
                            env=env)
    assert second.returncode == 0, second.stderr[-4000:]
    assert outcomes(json.loads(second.stdout.strip().splitlines()[-1])) == expected
    print(f"killed with saved statuses {sorted(statuses)}; resumed to {expected}")
