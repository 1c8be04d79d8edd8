"""Early stopping that keeps the pairs: successive halving over whole groups, on Tune's interfaces.

A group is one proposal's trials, all its (init, seed) -- the Repeater's group. Every comparison
the report makes is paired within a group, so a group continues or stops as one:

    GroupRepeater   a Repeater that tags each trial with its group (GROUP, in proposal order) and
                    tells the searcher one value per group: the study's declared objective
                    (stats.group_objective) over its members, seed by seed -- for a stopped group
                    at the rung it reached, as an intermediate value Optuna prunes the trial at
    GroupedHalving  a Tune TrialScheduler: at each rung (Study.rungs, grace x eta^k epochs) a
                    member PAUSEs (its trial checkpoints there: TrialConfig.checkpoint_at, and
                    frees its CPUs/GPU) until every group still going has reached it; the
                    groups are then judged, and all of a group's members continue or all stop

The judgment is synchronous successive halving (HyperBand's bracket): the cohort is every
configuration the study proposes (Study.configs). At a rung, once every group of the cohort still
going is there (or failed for good), the top max(1, floor(n / eta)) of those n groups by score go
on, the rest stop; ties go to the earlier proposal. A decision is a function of the cohort's scores
alone: the same seeds give the same values, hence the same decisions, whatever the timing, and
after a killed study driver resumes: Tune rebuilds this scheduler empty, each restored trial
brings its values at the rungs it passed (its checkpoint's history) and the decisions are derived
again. A member that reused a finished trial's result (runner.run_trial) reports once, at its last
epoch, with that trial's `curve`: its value at every rung.

Twins. Trials of different groups can train the very same model: an arm that reads none of the
searched fields (mimetic, the baseline) at a (dim, heads) two proposals share. FIFO trains it once
(runner.run_trial reuses a finished identity); under halving every group trains to the first rung
before any finishes, so each trial, before it trains, reports its `identity` (config.identity): if
another member trains that identity, it waits paused as its twin and takes that member's values
at the rungs. It resumes once that member no longer trains it: finished (the twin then reuses the
result, training nothing) or stopped with its group while the twin's group goes on (the twin then
trains it itself, from the start).

Why not asynchronous halving (ASHA): it judges a configuration against those already at the rung,
so the first few always go on -- with the handful of configurations a paired study affords (each is
inits x seeds trials), that leniency is most of the search (bench/search_efficiency.py measured
58 % of FIFO's epochs against the cohort's ~1/3). What synchronous halving costs: the searcher
proposes the whole cohort before it hears a value, which for TPE, whose first 10 proposals are
random anyway, changes nothing at up to 10 configurations; and members wait paused at each rung
(their CPUs/GPUs freed for the others) until the cohort is there.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

from ray.tune.experiment import Trial
from ray.tune.result import DEFAULT_METRIC, TRAINING_ITERATION
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Repeater

from structinit.config import GROUP, TRIAL_INDEX
from structinit.stats import group_objective

logger = logging.getLogger(__name__)

CURVE = "curve"  # in a reused trial's one report: the trained trial's metric at every epoch
IDENTITY = "identity"  # in every report of a trial that trains; alone (epoch None) just before it trains


def value_at(result: dict, metric: str, epochs: int) -> float | None:
    """A member's `metric` after `epochs` epochs: from the `curve` a reused result carries, else
    from a result of exactly that epoch (`epoch` counts from 0); None if it says nothing there."""
    curve = result.get(CURVE)
    if curve is not None and len(curve) >= epochs:
        return curve[epochs - 1]
    if result.get("epoch") is not None and result["epoch"] + 1 == epochs:
        return result.get(metric)
    return None


def survivors(scores: dict[int, float], reduction_factor: int, mode: str) -> set[int]:
    """Successive halving's rule at one rung: of the n groups judged there (group -> score), the
    top max(1, floor(n / eta)) go on; ties go to the earlier group. A NaN score (no member left to
    judge by) never goes on."""
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted((g for g, x in scores.items() if not math.isnan(x)), key=lambda g: (sign * scores[g], g))
    return set(ranked[:max(1, len(scores) // reduction_factor)])


class _Group:
    """One proposal's members and what the scheduler knows of them."""

    def __init__(self, size: int):
        self.size = size
        self.members: dict[str, int] = {}  # trial id -> its index in the group (__trial_index__)
        self.values: dict[str, dict[int, float]] = {}  # trial id -> {rung: its metric there}
        self.dropped: set[str] = set()  # members that failed for good: the group is judged without them
        self.scores: dict[int, float] = {}  # rung -> the group's objective there
        self.decided: dict[int, bool] = {}  # rung -> went on (True) or stopped (False)

    def stopped_below(self, rung: int) -> bool:
        return any(not go for r, go in self.decided.items() if r < rung)

    @property
    def stopped(self) -> bool:
        """Stopped at some rung."""
        return not all(self.decided.values())

    def gone(self) -> bool:
        return len(self.members) == self.size and self.dropped == set(self.members)

    def ready(self, rung: int) -> bool:
        """Every member is known and has a value at `rung`, or failed for good."""
        return len(self.members) == self.size and all(
            t in self.dropped or rung in self.values.get(t, {}) for t in self.members)


def _record_status(tune_controller, trial: Trial) -> None:
    """Have Tune's next experiment state hold `trial`'s new status. Tune 2.60 writes a trial's
    state anew only where it marks the trial, and stop_trial does not mark a paused trial whose
    actor another trial has taken: its saved state would stay PAUSED, so the study's records would
    miss the stop and a resumed study would restart it. The mark is private (this Tune's gap; the
    scheduler gets the controller behind a wrapper)."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller._mark_trial_to_checkpoint(trial)


class GroupedHalving(FIFOScheduler):
    """Successive halving over whole groups (see the module's docstring). `configs`: the cohort,
    how many groups the study proposes; `repeats`: the (init, seed) of each __trial_index__;
    `history(trial)`: every epoch's metrics from a trial's latest
    checkpoint (record.train_history), read for trials a resumed study brings back."""

    _supports_buffered_results = False  # decide on every epoch's result as it comes

    def __init__(self, *, epochs: int, rungs: tuple[int, ...], reduction_factor: int, objective: str, configs: int,
                 repeats: list[tuple[str, int]], history: Callable[[Trial], list[dict]],
                 metric: str | None = None, mode: str | None = None):
        super().__init__()
        self.epochs, self.rungs, self.eta, self.configs = epochs, tuple(rungs), reduction_factor, configs
        self.objective, self.repeats, self.history = objective, list(repeats), history
        self._metric, self._mode = metric, mode
        self.groups: dict[int, _Group] = {}
        self.trials: dict[str, Trial] = {}
        self.group_of: dict[str, int] = {}
        self.resume: set[str] = set()  # paused members whose group went on: choose_trial_to_run starts them
        self.owner: dict[str, str] = {}  # identity -> the member that trains it
        self.identity: dict[str, str] = {}  # member -> the identity it reported
        self.twin_of: dict[str, str] = {}  # a paused member -> the member that trains its identity
        self.ended: set[str] = set()  # members that completed
        self._settling = False

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric or DEFAULT_METRIC
        self._mode = mode or self._mode
        return True

    # ---- what the scheduler learns ------------------------------------------------------------

    def on_trial_add(self, tune_controller, trial: Trial):
        if GROUP not in trial.config:
            raise ValueError(f"trial {trial.trial_id} has no {GROUP} in its config: the grouped scheduler needs "
                             "the GroupRepeater, which tags each trial with its group")
        gid = trial.config[GROUP]
        group = self.groups.setdefault(gid, _Group(len(self.repeats)))
        group.members[trial.trial_id] = trial.config.get(TRIAL_INDEX, 0)
        self.trials[trial.trial_id], self.group_of[trial.trial_id] = trial, gid
        if trial.last_result:  # restored by a resumed study: what it had reached, from its checkpoint
            self._identify(trial.trial_id, trial.last_result.get(IDENTITY))
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                self.ended.add(trial.trial_id)
            elif trial.last_result.get("epoch") is not None and trial.last_result.get(IDENTITY) is not None:
                self.owner.setdefault(trial.last_result[IDENTITY], trial.trial_id)  # it trained: it goes on
            for metrics in [*self.history(trial), trial.last_result]:
                self._observe(trial.trial_id, metrics)
        if trial.status == Trial.ERROR:
            group.dropped.add(trial.trial_id)

    def _identify(self, trial_id: str, identity: str | None) -> None:
        """Learn a member's identity; it has the values any member of that identity has."""
        if identity is not None and trial_id not in self.identity:
            self.identity[trial_id] = identity
            for other, same in list(self.identity.items()):
                if same == identity and other != trial_id:
                    self._share(other)

    def _observe(self, trial_id: str, result: dict) -> None:
        """Record a member's value at each rung `result` (a report, or a row of a checkpoint's
        history) tells: the one it is at, or every one a reused result's curve covers."""
        values = self.groups[self.group_of[trial_id]].values.setdefault(trial_id, {})
        for rung in self.rungs:
            v = None if rung in values else value_at(result, self._metric, rung)
            if v is not None:
                values[rung] = float(v)
        self._share(trial_id)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self.resume.discard(trial.trial_id)  # it reports: it runs
        self._identify(trial.trial_id, result.get(IDENTITY))
        if result.get(IDENTITY) is not None and result.get("epoch") is None:
            return self._start(tune_controller, trial, result[IDENTITY])
        if result.get(IDENTITY) is not None:  # training it (a restored member reports no start)
            self.owner.setdefault(result[IDENTITY], trial.trial_id)
        if self._metric not in result or result.get("epoch") is None:
            return TrialScheduler.CONTINUE
        self._observe(trial.trial_id, result)
        done = result["epoch"] + 1
        group = self.groups[self.group_of[trial.trial_id]]
        missing = [r for r in self.rungs if r < done and r not in group.values.get(trial.trial_id, {})]
        if missing and not result.get(CURVE):  # a rung it passed unreported (a lost report): its checkpoint has it
            for metrics in self.history(trial):
                self._observe(trial.trial_id, metrics)
        self._settle(tune_controller, current=trial)
        if result.get("reused_from") is not None:  # reported once and ends: nothing to pause or stop
            return TrialScheduler.CONTINUE
        for rung in self.rungs:
            if rung > done:
                break
            if rung not in group.decided:
                return TrialScheduler.PAUSE  # at the rung (or past it, its report late): wait for the group
            if not group.decided[rung]:
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _start(self, tune_controller, trial: Trial, identity: str) -> str:
        """A member about to train `identity`: a twin (it waits paused, and stops with its group)
        while another member trains it, else the member that trains it."""
        owner = self.owner.get(identity)
        if owner is None or owner == trial.trial_id or not self._training(owner):
            self.owner[identity] = trial.trial_id
            return TrialScheduler.CONTINUE
        self.twin_of[trial.trial_id] = owner
        self._share(owner)
        self._settle(tune_controller, current=trial)
        if self.groups[self.group_of[trial.trial_id]].stopped:
            return TrialScheduler.STOP
        if trial.trial_id not in self.twin_of:  # judging released it (its member stopped): it trains
            self.owner[identity] = trial.trial_id
            return TrialScheduler.CONTINUE
        return TrialScheduler.PAUSE

    def _training(self, trial_id: str) -> bool:
        """Whether a member still trains: not completed, not failed for good, its group not stopped."""
        g = self.groups[self.group_of[trial_id]]
        return trial_id not in self.ended and trial_id not in g.dropped and not g.stopped

    def _share(self, trial_id: str) -> None:
        """Give a member's values at the rungs to every member of its identity (the same model:
        the same values) that lacks them: its twins, and on a resumed study the twins it had."""
        values = self.groups[self.group_of[trial_id]].values.get(trial_id, {})
        identity = self.identity.get(trial_id)
        for other, same in self.identity.items():
            if same == identity and other != trial_id and other in self.group_of:
                mine = self.groups[self.group_of[other]].values.setdefault(other, {})
                mine.update({r: v for r, v in values.items() if r not in mine})

    def _release(self) -> None:
        """Twins whose member no longer trains their identity and whose group goes on resume: they
        reuse a finished result (runner.run_trial), or train it themselves."""
        for twin, owner in list(self.twin_of.items()):
            g = self.groups[self.group_of[twin]]
            if not self._training(owner) and not g.stopped and twin not in g.dropped:
                del self.twin_of[twin]
                if self.trials[twin].status == Trial.PAUSED or self.trials[twin].is_saving:
                    self.resume.add(twin)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict):
        self.ended.add(trial.trial_id)
        if result:
            self._observe(trial.trial_id, result)
        if not self._settling:
            self._settle(tune_controller)

    def on_trial_remove(self, tune_controller, trial: Trial):
        """A paused or pending member removed: by this scheduler's STOP, or by Tune (the study
        ends, or a trial failed before it started) -- then the group goes on without it."""
        group = self.groups.get(self.group_of.get(trial.trial_id))
        if group is None or self._settling:
            return
        if not group.stopped:
            group.dropped.add(trial.trial_id)
        self._settle(tune_controller)

    def on_trial_error(self, tune_controller, trial: Trial):
        """A member that failed for good (Tune will not restart it) no longer holds its group back."""
        if trial.should_recover() and trial.status != Trial.PENDING:
            return  # Tune restarts it from its checkpoint: it reports its rungs again
        group = self.groups.get(self.group_of.get(trial.trial_id))
        if group is not None:
            group.dropped.add(trial.trial_id)
            if not self._settling:
                self._settle(tune_controller)

    # ---- deciding ------------------------------------------------------------------------------

    def _cohort(self, rung: int) -> list[int] | None:
        """The groups judged at `rung`, once they all can be: every proposed group neither stopped
        below it nor gone, each with a value there from every member left. None while any is
        missing (not yet proposed, or not yet at the rung)."""
        if len(self.groups) < self.configs:
            return None
        cohort = [gid for gid, g in sorted(self.groups.items()) if not g.stopped_below(rung) and not g.gone()]
        return cohort if all(self.groups[gid].ready(rung) for gid in cohort) else None

    def _settle(self, tune_controller, current: Trial | None = None) -> None:
        """Judge every rung that can be judged, lowest first, and act on the groups' members: those
        paused at the rung resume (choose_trial_to_run) or stop; `current`, whose result is being
        processed, gets its decision from on_trial_result."""
        self._settling = True
        try:
            for rung in self.rungs:
                cohort = self._cohort(rung)
                if cohort is None:
                    break
                if all(rung in self.groups[gid].decided for gid in cohort):
                    continue
                for gid in cohort:
                    g = self.groups[gid]
                    values = {self.repeats[i]: g.values[t][rung] for t, i in g.members.items() if t not in g.dropped}
                    g.scores[rung] = group_objective(self.objective, values)
                going = survivors({gid: self.groups[gid].scores[rung] for gid in cohort}, self.eta, self._mode)
                logger.info("at %s epochs, of %s groups %s go on: %s", rung, len(cohort), len(going), sorted(going))
                for gid in cohort:
                    self.groups[gid].decided[rung] = gid in going
                for gid in cohort:
                    self._act(tune_controller, self.groups[gid], rung, current)
            self._release()
        finally:
            self._settling = False

    def _act(self, tune_controller, group: _Group, rung: int, current: Trial | None) -> None:
        for trial_id in group.members:
            trial = self.trials[trial_id]
            if trial is current or trial_id in group.dropped:
                continue
            waiting = trial.status == Trial.PAUSED or trial.is_saving
            if group.decided[rung]:
                if waiting and not (trial_id in self.twin_of and self._training(self.twin_of[trial_id])):
                    self.resume.add(trial_id)
            elif waiting or trial.status == Trial.PENDING:
                tune_controller.stop_trial(trial)
                _record_status(tune_controller, trial)
            # RUNNING (a restored member on its way back to the rung): STOP when it reports there

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """A paused member whose group went on, earliest group first; pending trials Tune starts
        itself. Should the search end short of the cohort (nothing runs or waits to start, and
        members wait at a rung), the cohort is the groups it proposed."""
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id in self.resume:
                return trial
        stuck = any(t.status == Trial.PAUSED for t in trials) and not any(
            t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
        if stuck and len(self.groups) < self.configs:
            logger.warning("the search proposed %s of %s configurations: judging those", len(self.groups), self.configs)
            self.configs = len(self.groups)
            self._settle(tune_controller)
            return next((t for t in trials if t.status == Trial.PAUSED and t.trial_id in self.resume), None)
        return None

    def debug_string(self) -> str:
        stopped = sum(1 for g in self.groups.values() if g.stopped)
        return (f"Grouped successive halving: rungs at {list(self.rungs)} epochs, eta {self.eta}, "
                f"{len(self.groups)} groups, {stopped} stopped")


class GroupRepeater(Repeater):
    """Tune's Repeater (one proposal, one trial per (init, seed)) that tags each trial with its
    group and tells the searcher one value per group, once all its members have ended: the
    declared `objective` over the members' values at the last epoch all of them reached -- the
    last (`epochs`): the searcher completes the proposal with it; a rung (the group was
    stopped): it reports it as the proposal's value at that step and the searcher prunes the
    proposal there (Optuna keeps a pruned trial's last value). A reused member's `curve` gives
    its value at every epoch; a twin stopped while it waited (GroupedHalving) takes the values
    of the trial of its identity. No member left: the proposal fails."""

    def __init__(self, searcher, repeats: list[tuple[str, int]], objective: str, epochs: int):
        super().__init__(searcher, repeat=len(repeats), set_index=True)
        self.repeats, self.objective, self.epochs = list(repeats), objective, epochs
        self.next_group = 0
        self.member_of: dict[str, tuple[int, int]] = {}  # trial id -> (group, index)
        self.members: dict[int, dict[int, str]] = {}  # group -> {index: trial id}
        self.curves: dict[str, dict[int, float]] = {}  # trial id -> {epochs: its metric after them}
        self.identity: dict[str, str] = {}  # trial id -> the identity it reported
        self.ended: dict[str, bool] = {}  # trial id -> ended (True), failed (False)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            index = config[TRIAL_INDEX]
            if index == 0:
                self.next_group += 1
            config[GROUP] = self.next_group - 1
            self.member_of[trial_id] = (config[GROUP], index)
            self.members.setdefault(config[GROUP], {})[index] = trial_id
        return config

    def _remember(self, trial_id: str, result: dict | None) -> None:
        if not result:
            return
        if result.get(IDENTITY) is not None:
            self.identity[trial_id] = result[IDENTITY]
        metric = self.searcher.metric
        if result.get(metric) is not None and result.get("epoch") is not None:
            curve = self.curves.setdefault(trial_id, {})
            curve[result["epoch"] + 1] = result[metric]
            curve.update({e + 1: v for e, v in enumerate(result.get(CURVE) or [])})  # a reused result's

    def on_trial_result(self, trial_id: str, result: dict):
        self._remember(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False, **kwargs):
        if trial_id not in self.member_of:
            logger.error("trial %s is in no group; its result is not told", trial_id)
            return
        self._remember(trial_id, result)
        self.ended[trial_id] = not error and (trial_id in self.curves or trial_id in self.identity)
        gid, _ = self.member_of[trial_id]
        members = self.members[gid]
        if len(members) == self.repeat and all(t in self.ended for t in members.values()):
            self._tell(members)

    def _curve(self, trial_id: str) -> dict[int, float]:
        """A member's metric by epochs: its own, else that of the trials of its identity."""
        curve = {}
        for t, i in self.identity.items():
            if i == self.identity.get(trial_id) and t != trial_id:
                curve.update(self.curves.get(t, {}))
        return {**curve, **self.curves.get(trial_id, {})}

    def _value(self, trial_id: str, epochs: int) -> float:
        return self._curve(trial_id).get(epochs, math.nan)

    def _tell(self, members: dict[int, str]) -> None:
        primary = members[0]  # the trial the searcher proposed; the others repeat it
        alive = {self.repeats[i]: t for i, t in members.items() if self.ended[t]}
        # where its members stopped; a group of twins alone (a configuration proposed twice): its models'
        reached = ([max(self.curves[t]) for t in alive.values() if t in self.curves]
                   or [max(self._curve(t)) for t in alive.values() if self._curve(t)])
        if not reached:
            self.searcher.on_trial_complete(primary, error=True)
            return
        at = min(reached)
        score = group_objective(self.objective, {k: self._value(t, at) for k, t in alive.items()})
        metric = self.searcher.metric
        if math.isnan(score):
            self.searcher.on_trial_complete(primary, error=True)
        elif at >= self.epochs:
            self.searcher.on_trial_complete(primary, result={metric: score})
        else:
            self.searcher.on_trial_result(primary, {metric: score, TRAINING_ITERATION: at})
            self.searcher.on_trial_complete(primary)  # pruned at `at`, with that value
