"""A run's checkpoint folder, the record of one training run: `state.pt` (weights, optimizer,
scheduler and scaler state, the epoch, and the TrialConfig that made them, as nanoGPT keeps its
model_args with the weights), `history.json` (every epoch's metrics so far) and `attention.json`
(the attention measures per block and head at each measured epoch so far, attention.py). The Train
loop writes and resumes from it; the study's tables and `structinit rank` read it."""
from __future__ import annotations

import json
import os

import torch

from structinit.validate import check

STATE, HISTORY, ATTENTION = "state.pt", "history.json", "attention.json"


def write(folder: str, state: dict, history: list[dict], attention: list[dict] | None = None) -> None:
    torch.save(state, os.path.join(folder, STATE))
    for name, records in ((HISTORY, history), (ATTENTION, attention)):
        if records is not None:
            with open(os.path.join(folder, name), "w") as f:
                json.dump(records, f)


def read(folder: str, device) -> tuple[dict, list[dict]]:
    """(state, history) of a checkpoint folder, the state's tensors on `device`."""
    state = load_state(os.path.join(folder, STATE), device)
    with open(os.path.join(folder, HISTORY)) as f:
        return state, json.load(f)


def state_path(path: str) -> str:
    """The state file of a checkpoint given as its folder or as the file itself."""
    return path if path.endswith(".pt") else os.path.join(path, STATE)


def load_state(path: str, device) -> dict:
    """A checkpoint's tensors, refused in one line where the file is not a run's state (unreadable,
    damaged, or without the model's weights). `weights_only=True`: a checkpoint from shared storage
    is never unpickled as arbitrary objects (a crafted pickle is refused, not run)."""
    import pickle

    allowed = ("a state.pt of tensors and plain containers, the model's weights under 'model' (a run's checkpoint "
               "folder holds one)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, OSError, EOFError, KeyError, RuntimeError) as err:  # a crafted pickle; a
        text = str(err)  # missing, empty or foreign file. Of torch's refusal, the unpickler's reason:
        lines = text.partition("WeightsUnpickler error:")[2].strip().splitlines() or text.splitlines()
        reason = " ".join([type(err).__name__, *lines[:1]])
        check("checkpoint", path, f"{allowed} (torch.load weights_only=True refused it: {reason})", False)
    check("checkpoint", path, f"{allowed} (it holds {type(state).__name__} without 'model')",
          isinstance(state, dict) and isinstance(state.get("model"), dict))
    return state


def load_weights(model, weights: dict, path: str) -> None:
    """A checkpoint's `model` weights into `model`; weights of another geometry are refused in one
    line naming the keys and shapes that differ (the first few of each kind)."""
    own = model.state_dict()

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    differences = [f"{label}: {few(items)}" for label, items in (
        ("shapes differ (checkpoint vs model)", shapes), ("missing", missing), ("unexpected", unexpected)) if items]
    check("checkpoint", path, f"weights of the model built here, a {type(model).__name__} of {len(own)} tensors ("
          + "; ".join(differences) + ")", not differences)
    model.load_state_dict(weights)


def read_attention(folder: str) -> list[dict]:
    """The attention rows of a checkpoint folder; none in one without them (a ConvMixer's, or a
    checkpoint written before runs measured attention)."""
    path = os.path.join(folder, ATTENTION)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def history_of(result) -> list[dict]:
    """Every epoch's metrics of a Ray Train Result or a Tune trial, from its latest checkpoint
    (complete across restarts)."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as folder:
        with open(os.path.join(folder, HISTORY)) as f:
            return json.load(f)


def attention_of(result) -> list[dict]:
    """Every measured epoch's attention rows of a Ray Train Result or a Tune trial, from its
    latest checkpoint (complete across restarts, as `history_of`)."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as folder:
        return read_attention(folder)
