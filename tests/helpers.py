"""What several test files need: to run real servers and processes, a free port and ways to stop a
process started in its own session (`start_new_session=True`) with everything it started, politely
(`stop`) or as when its machine's session dies (`kill_driver`); the address of the test's Ray
cluster (`gcs`); and trials-table rows of one configuration (`arm_rows`)."""
import json
import os
import signal
import socket
import subprocess

from structinit.config import config_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 30 s; nothing if it already ended."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL a study driver alone, as when its machine's session dies, then what it started and
    left behind (its process group)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def gcs(ray) -> str:
    """The address of the cluster this test's driver is connected to: the State API asks it alone,
    not whichever clusters run on the machine (several: 'Found multiple active Ray instances')."""
    return ray.get_runtime_context().gcs_address


def arm_rows(params: dict, accs: dict, seeds=range(5), **fields) -> list[dict]:
    """Trials rows of one configuration: `accs[init](seed)` -> (final test top-1, best val top-1)."""
    rows = []
    for init, acc in accs.items():
        for seed in seeds:
            test, val = acc(seed)
            rows.append(dict(status="TERMINATED", error=None, execution="s-1", trial_id=f"t{len(rows)}",
                             config_key=config_key(params),
                             params=json.dumps(params, sort_keys=True), init=init, seed=seed, final_test_top1=test,
                             test_top1_at_best_val=test, best_val_top1=val, **fields))
    return rows
