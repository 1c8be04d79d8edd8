"""A run's checkpoint folder, the record of one training run: `state.pt` (weights, optimizer,
scheduler and scaler state, the epoch, and the TrialConfig that made them, as nanoGPT keeps its
model_args with the weights) and `history.json` (every epoch's metrics so far). The Train loop
writes and resumes from it; the study's tables and `structinit rank` read it."""
from __future__ import annotations

import json
import os

import torch

STATE, HISTORY = "state.pt", "history.json"


def write(folder: str, state: dict, history: list[dict]) -> None:
    torch.save(state, os.path.join(folder, STATE))
    with open(os.path.join(folder, HISTORY), "w") as f:
        json.dump(history, f)


def read(folder: str, device) -> tuple[dict, list[dict]]:
    """(state, history) of a checkpoint folder, the state's tensors on `device`."""
    state = load_state(os.path.join(folder, STATE), device)
    with open(os.path.join(folder, HISTORY)) as f:
        return state, json.load(f)


def state_path(path: str) -> str:
    """The state file of a checkpoint given as its folder or as the file itself."""
    return path if path.endswith(".pt") else os.path.join(path, STATE)


def load_state(path: str, device) -> dict:
    """A checkpoint's tensors. `weights_only=True`: a checkpoint from shared storage is never
    unpickled as arbitrary objects (a crafted pickle is refused, not run)."""
    import pickle

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint={path!r} is not allowed: expected a state.pt of tensors and plain "
                         f"containers (torch.load weights_only=True refused it: {str(err).splitlines()[0]})") from None


def history_of(result) -> list[dict]:
    """Every epoch's metrics of a Ray Train Result or a Tune trial, from its latest checkpoint
    (complete across restarts)."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as folder:
        with open(os.path.join(folder, HISTORY)) as f:
            return json.load(f)
