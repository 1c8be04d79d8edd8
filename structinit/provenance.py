"""Where a run came from, as plain strings: the git commit of the project checkout and whether its
tree was dirty, the versions of Python and the stack, the host, the accelerator's CUDA/cuDNN, and a
digest of a dataset's files. Nothing secret (no environment), nothing heavy imported: versions come
from the installed packages' metadata, CUDA from a torch the caller already imported."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

PACKAGES = ("structinit", "torch", "torchvision", "timm", "ray", "optuna", "mlflow")
UNKNOWN = "unknown"
GIT_TIMEOUT_S = 5.0
CHECKOUT = Path(__file__).resolve().parent  # the package's folder: inside the project checkout where it runs from one


def _git(*args: str) -> str | None:
    """A git command's output in the package's folder, None where git is missing, fails or hangs."""
    try:
        out = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def checkout() -> dict[str, str]:
    """{"commit": the checkout's HEAD, "dirty": "true" | "false"} of the git checkout this package
    was imported from (a copy installed outside one, or no git: both "unknown"). Dirty: any tracked
    file changed or any untracked file that git does not ignore."""
    if _git("ls-files", "--error-unmatch", "__init__.py") is None:  # not a tracked file of a checkout
        return {"commit": UNKNOWN, "dirty": UNKNOWN}
    commit, status = _git("rev-parse", "HEAD"), _git("status", "--porcelain")
    return {"commit": commit.strip() if commit else UNKNOWN,
            "dirty": UNKNOWN if status is None else str(bool(status.strip())).lower()}


def entry_point() -> str:
    """What this process runs, as MLflow's Source column names it: its script relative to the
    project checkout where it is one of its files (`studies/heads_vs_dim.py`), else the script's
    name (`structinit`, a study script copied to a cluster's head)."""
    script = Path(sys.argv[0] or "python").resolve()
    root = CHECKOUT.parent
    return str(script.relative_to(root)) if script.is_relative_to(root) else script.name


def versions() -> dict[str, str]:
    """Python's version and each of PACKAGES' installed versions ("unknown" where not installed)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = UNKNOWN
    return out


def host() -> str:
    return socket.gethostname()


def accelerator(device) -> dict[str, str]:
    """CUDA and cuDNN versions of this process's torch ("none" where it has none), and the GPU's
    name where `device` is one; empty where torch was not imported (nothing is imported here)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out = {"cuda": torch.version.cuda or "none", "cudnn": str(cudnn) if cudnn else "none"}
    if str(device).startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def files_digest(root: str, paths: tuple[str, ...]) -> str:
    """sha256 (16 hex digits) of the names and sizes of every file under `paths` (relative to
    `root`; a missing one counts as missing): what pins a dataset's files without reading them all
    (the contents of the official archives are torchvision's md5 checks)."""
    h = hashlib.sha256()
    for rel in sorted(paths):
        top = os.path.join(root, rel)
        if os.path.isfile(top):
            files = [top]
        else:
            files = sorted(os.path.join(d, f) for d, _, names in os.walk(top) for f in names)
        h.update(f"{rel}:{len(files)}\n".encode())
        for f in files:
            h.update(f"{os.path.relpath(f, root)}\t{os.path.getsize(f)}\n".encode())
    return h.hexdigest()[:16]
