"""The options several command lines share, defined once: every TrialConfig field, derived from
the dataclasses (`config.vocabulary`), a study's name and storage, and the MLflow tracking URI.

A field's flag is its dotted key (`--init.target_mass 0.6`, `--seed 3`), the key of the study
scripts' `--set` (which these commands take too); its leaf spelled with dashes is the same flag
where no other field or flag has that leaf (`--target-mass`, `--embed-dim`, `--lr`: the flags'
former names), and `--model`, `--init` name the model and the init. Defining them imports nothing
heavy (the CLI parses and answers --help before torch, timm, Ray or MLflow load): a field not given
is absent from the parsed arguments, and the config keeps its default."""
from __future__ import annotations

import argparse
import collections
import dataclasses
import typing

from structinit.config import InitConfig, ModelConfig, TrialConfig, vocabulary
from structinit.recipes import RECIPES
from structinit.validate import check

VIT = "vit_tiny_patch2_32"  # the model inspect-init and rank build when none is named
TRACKING_URI = "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"
METAVARS = {int: "INT", float: "NUM", str: "TEXT", tuple: "JSON"}
GROUPS = {  # section -> (title, description)
    "model": ("model", ModelConfig.__doc__),
    "recipe": ("recipe", f"--recipe names a preset ({' | '.join(RECIPES)}; default: the dataset's) that sets every "
                         "field; a flag overrides one. The defaults shown are the dataclass's, which a preset may "
                         "set."),
    "init": ("init", InitConfig.__doc__),
    "": ("data, resources and the run", TrialConfig.__doc__),
}


def add_config(p: argparse.ArgumentParser, defaults: dict[str, str] | None = None) -> None:
    """A flag for every TrialConfig field (see the module's docstring), `--recipe`, and `--set
    FIELD=VALUE` for any field; `defaults`: a command's own default of a field, as its help says
    it (e.g. the model: the dataset's). Flags of the command added before keep their names."""
    defaults = defaults or {}
    p.usage = "%(prog)s [--FIELD VALUE | --set FIELD=VALUE ...] [flags]   (FIELD: model.depth, init.filter_size, ...)"
    taken = set(p._option_string_actions)
    leaves = collections.Counter(f.key.rpartition(".")[2] for f in vocabulary())
    groups = {}
    for f in vocabulary():
        section, _, leaf = f.key.rpartition(".")
        if section not in groups:
            groups[section] = p.add_argument_group(*GROUPS.get(section, (section, None)))
            if section == "recipe":
                groups[section].add_argument("--recipe", help="a named recipe (default: the dataset's)")
        alias = f"--{section}" if leaf == "name" else "--" + leaf.replace("_", "-")
        names = [f"--{f.key}", *([alias] if alias != f"--{f.key}" and alias not in taken
                                 and (leaf == "name" or leaves[leaf] == 1) else [])]
        unset = "set by --recipe" if section == "recipe" else "none: required"  # a field without a default
        default = defaults.get(f.key, unset if f.default is dataclasses.MISSING else f.default)
        text = (f"{f.help} " if f.help else "") + f"(default: {default})"
        kind = next((a for a in typing.get_args(f.hint) if a is not type(None)), f.hint)
        if kind is bool:
            groups[section].add_argument(*names, dest=f.key, action=argparse.BooleanOptionalAction,
                                         default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        else:
            metavar = METAVARS.get(kind, "VALUE") + ("|none" if type(None) in typing.get_args(f.hint) else "")
            groups[section].add_argument(*names, dest=f.key, metavar=metavar, default=argparse.SUPPRESS,
                                         help=text.replace("%", "%%"))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any field by its dotted name, as the study scripts take it (--set init.target_mass=0.6)")


def given(args: argparse.Namespace) -> dict:
    """The fields the command line gives (`--set`, then the flags: a flag wins), each read as its
    type reads it (`config.parse`: a value of another type, or an unknown field, is refused)."""
    from structinit.config import parse

    texts = {}
    for item in args.set:
        check("--set", item, "FIELD=VALUE", "=" in item)
        key, _, value = item.partition("=")
        texts[key.strip()] = value
    texts.update({f.key: getattr(args, f.key) for f in vocabulary() if hasattr(args, f.key)})
    return {key: parse(key, value) for key, value in texts.items()}


def check_given(args: argparse.Namespace, dataset: str | None = "digits") -> dict:
    """What needs nothing heavy, answered before anything heavy loads: every value given is of its
    field's type, and the recipe and model geometry they name are valid (the dataset's recipe
    where none is named; an unknown dataset is refused later, by the config). Returns `given`."""
    import warnings

    from structinit.recipes import DEFAULT_RECIPE, recipe

    fields = given(args)
    part = {s: {k.partition(".")[2]: v for k, v in fields.items() if k.startswith(s + ".")}
            for s in ("model", "recipe")}
    name = args.recipe or DEFAULT_RECIPE.get(fields.get("dataset", dataset))
    if name:
        with warnings.catch_warnings():  # a clipped warmup is said once, by the config
            warnings.simplefilter("ignore")
            recipe(name, **part["recipe"])
    ModelConfig(**{"name": VIT, **part["model"]})
    return fields


def trial_config(fields: dict, recipe: str | None, dataset: str = "digits", model: str | None = None) -> TrialConfig:
    """The TrialConfig of the fields given (`given`): `config.make`'s for their dataset (else
    `dataset`; the dataset's model, else `model`, and recipe unless named), each field over it."""
    from structinit.config import make, with_overrides

    fields = dict(fields)
    base = make(fields.pop("dataset", dataset), model=fields.pop("model.name", model), recipe_name=recipe)
    return with_overrides(base, fields)


def add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study's name, e.g. heads_vs_dim")
    p.add_argument("--storage", default="runs", help="the studies' storage folder (default ./runs)")
    p.add_argument("--tracking-uri", help=TRACKING_URI)
