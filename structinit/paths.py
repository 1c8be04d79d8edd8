"""Where a study keeps its records, named in one place. On the driver's machine,
<storage>/<study>/ holds LATEST (the latest execution's name), optuna.db, results/ (results.py),
report/ and report_spec.json (report.py); Tune and Train state and checkpoints go under
<checkpoints>/<study>/{tune,train}, by default the study folder itself."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class StudyPaths:
    storage: str  # a folder on the driver's machine (made absolute)
    name: str
    checkpoints: str | None = None  # a URI (s3://, gs://) or a folder every node reaches
    optuna_url: str | None = None  # any SQLAlchemy URL; default sqlite in the study folder

    def __post_init__(self):
        object.__setattr__(self, "storage", os.path.abspath(self.storage))

    @property
    def folder(self) -> str:
        return os.path.join(self.storage, self.name)

    @property
    def optuna(self) -> str:
        return self.optuna_url or "sqlite:///" + os.path.join(self.folder, "optuna.db")

    @property
    def ray(self) -> str:
        """Where Tune and Train keep state and checkpoints: <checkpoints>/<name>, else the study folder."""
        if self.checkpoints is None:
            return self.folder
        return self.checkpoints.rstrip("/") + "/" + self.name

    @property
    def tune(self) -> str:
        """Tune's experiments, one per execution (named as the execution)."""
        return self.ray + "/tune"

    @property
    def train(self) -> str:
        """The Ray Train runs of the trials (see `train_name`)."""
        return self.ray + "/train"

    @staticmethod
    def train_name(trial_id: str) -> str:
        """The Train run of a Tune trial: a restarted trial finds its checkpoints under the same name."""
        return f"train-{trial_id}"

    @property
    def report(self) -> str:
        return os.path.join(self.folder, "report")

    @property
    def report_spec(self) -> str:
        """The pairs and plots the study declared, for its report."""
        return os.path.join(self.folder, "report_spec.json")

    @property
    def _latest(self) -> str:
        return os.path.join(self.folder, "LATEST")

    def execution(self) -> str | None:
        """The latest execution (what --resume continues, what the report reads), None before the first."""
        if not os.path.exists(self._latest):
            return None
        with open(self._latest) as f:
            return f.read().strip()

    def set_execution(self, execution: str) -> None:
        with open(self._latest, "w") as f:
            f.write(execution)
