"""What several test files need to run real servers and processes: a free port, and ways to stop a
process started in its own session (`start_new_session=True`) with everything it started: politely
(`stop`), or as when its machine's session dies (`kill_driver`)."""
import os
import signal
import socket
import subprocess


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
