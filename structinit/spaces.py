"""Define-by-run search spaces over dotted TrialConfig fields, shared by the studies.

Each is a plain function `space(trial, **choices)`; a study binds its choices with
`functools.partial`, which keeps it picklable for Tune's searcher state and for resume. Every param
a space suggests is a dotted TrialConfig field, or a helper it declares (`@helpers`): any other
name is refused (config.search_params), so a typo never leaves a study training its base config.
"""
from __future__ import annotations

import functools

from structinit.validate import check


def helpers(names):
    """Declare the params a space suggests that are not TrialConfig fields (their values reach the
    config through what the space returns): `names(*args, **choices)`, of the choices the space is
    bound to, gives them."""
    def declare(space):
        space.helpers = names
        return space
    return declare


def helper_params(space) -> frozenset[str]:
    """The helper params `space` (a space, or a functools.partial of one) declares; none undeclared."""
    fn, args, kwargs = (space.func, space.args, space.keywords) if isinstance(space, functools.partial) \
        else (space, (), {})
    names = getattr(fn, "helpers", None)
    return frozenset(names(*args, **kwargs)) if names else frozenset()


def _heads(dim: int) -> str:
    """The helper param of the heads for one embed_dim."""
    return f"heads_e{dim}"


@helpers(lambda dims, heads, **_: {_heads(d) for d in dims})
def heads_and_dims(trial, dims, heads):
    """embed_dim from `dims`, then heads from those of `heads` that divide it. One parameter name
    per dim (a declared helper): Optuna rejects a categorical whose choices change with another
    parameter."""
    dim = trial.suggest_categorical("model.embed_dim", list(dims))
    check("heads", list(heads), f"at least one that divides every embed_dim in {list(dims)} (none divides {dim})",
          any(dim % h == 0 for h in heads))
    h = trial.suggest_categorical(_heads(dim), [h for h in heads if dim % h == 0])
    return {"model.num_heads": h}


def categorical(trial, **choices):
    """Independent categorical choices, e.g. `categorical(trial, **{"init.filter_size": [3, 5]})`;
    with a study `grid` of the same lists, the full grid in a seeded order."""
    for name, values in choices.items():
        trial.suggest_categorical(name, list(values))
    return None


@helpers(heads_and_dims.helpers)
def impulse_settings(trial, dims, heads, masses=(0.2, 0.999), pe_scales=None, pseudo_inputs=("pe", "data")):
    """(embed_dim, heads) as `heads_and_dims`, and the impulse init's own settings: its sharpness
    `init.target_mass` in `masses`, the pseudo input it is solved on and, given `pe_scales`
    (lo, hi), the PE scale `init.pe_scale`, log-uniform (pe_scaled reads it too, so the control
    stays matched; for a learned PE only: a fixed one cannot shrink back in training, and at x28
    it drowns the image -- trials of digits at chance)."""
    fixed = heads_and_dims(trial, dims, heads)
    trial.suggest_float("init.target_mass", *masses)
    if pe_scales is not None:
        trial.suggest_float("init.pe_scale", *pe_scales, log=True)
    trial.suggest_categorical("init.pseudo_input", list(pseudo_inputs))
    return fixed
