"""record.py: what a failed trial's row says it raised, read from Tune's `Result.error` (the
exception object Tune kept), not from the text of its error file."""
from types import SimpleNamespace

from ray.exceptions import RayTaskError
from ray.train import WorkerGroupError

from structinit.record import error_of
from structinit.train import NonFiniteLossError


def test_a_failed_trial_says_what_its_trainable_raised():
    raised = NonFiniteLossError("non-finite training loss at epoch 3, step 2")
    carried = RayTaskError("train", "Traceback (most recent call last): ...", raised)
    expected = "structinit.train.NonFiniteLossError: non-finite training loss at epoch 3, step 2"
    assert error_of(SimpleNamespace(error=carried)) == expected
    assert error_of(SimpleNamespace(error=carried.as_instanceof_cause())) == expected  # as Tune pickles it


def test_a_torchtrainer_failure_says_its_lowest_rank_workers_error():
    failures = {1: RayTaskError("worker", "tb", ValueError("rank 1's")), 0: ValueError("rank 0's")}
    carried = RayTaskError("driver", "tb", WorkerGroupError("workers 0 and 1 failed", failures))
    assert error_of(SimpleNamespace(error=carried)) == "ValueError: rank 0's"


def test_a_trial_without_an_error_has_none():
    assert error_of(SimpleNamespace(error=None)) is None
