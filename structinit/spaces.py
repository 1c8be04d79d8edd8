"""Define-by-run search spaces over dotted TrialConfig fields, shared by the studies.

Each is a plain function `space(trial, **choices)`; a study binds its choices with
`functools.partial`, which keeps it picklable for Tune's searcher state and for resume.
"""
from __future__ import annotations

from structinit.validate import check


def heads_and_dims(trial, dims, heads):
    """embed_dim from `dims`, then heads from those of `heads` that divide it. One parameter name
    per dim: Optuna rejects a categorical whose choices change with another parameter."""
    dim = trial.suggest_categorical("model.embed_dim", list(dims))
    check("heads", list(heads), f"at least one that divides every embed_dim in {list(dims)} (none divides {dim})",
          any(dim % h == 0 for h in heads))
    h = trial.suggest_categorical(f"heads_e{dim}", [h for h in heads if dim % h == 0])
    return {"model.num_heads": h}


def categorical(trial, **choices):
    """Independent categorical choices, e.g. `categorical(trial, **{"init.filter_size": [3, 5]})`;
    with a study `grid` of the same lists, the full grid in a seeded order."""
    for name, values in choices.items():
        trial.suggest_categorical(name, list(values))
    return None
