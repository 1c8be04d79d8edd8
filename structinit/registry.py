"""Trials by identity (config.identity), across a study's executions: one Ray actor per study
execution knows every identity that finished, in this execution or (from the study's Parquet
tables) an earlier one. A trial whose identity finished is not trained again: it reuses the
recorded result. Two trials of one identity that run at the same time both train (the report
counts the identity once); a study's order makes that rare: the arms that repeat across its
configurations run after the impulse arm of theirs."""
from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class Registry:
    def __init__(self, finished: dict[str, dict]):
        self.finished = dict(finished)  # identity -> {"trial_id", "execution", "result": its last metrics}

    def lookup(self, identity: str) -> dict | None:
        return self.finished.get(identity)

    def finish(self, identity: str, record: dict) -> None:
        self.finished.setdefault(identity, record)
