"""`TrialConfig`: everything one training run needs, validated once, then passed unchanged
from the CLI or a study to the Train driver, each worker's loop, and the model + init.

Its fields are the one vocabulary of every command line (`vocabulary`): `structinit train`,
`inspect-init` and `rank` take each as a flag (`--init.target_mass 0.6`), the study scripts as
`--set init.target_mass=0.6`, study grids and spaces as a key; the text is read as the field's type
reads it (`parse`). Importing this module loads nothing heavy (the command line builds its flags
from it before torch loads); validating a config imports what it checks against."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import typing
from dataclasses import asdict, dataclass, field

from structinit.inits import InitConfig, setting
from structinit.recipes import DEFAULT_RECIPE, Recipe, replaced
from structinit.validate import check, choice, finite, nearest

# A model that suits each dataset when none is named (a recipe: recipes.DEFAULT_RECIPE).
DEFAULT_MODEL = {"digits": "vit_nano_patch2_8", "cifar10": "vit_tiny_patch2_32", "cifar100": "vit_tiny_patch2_32",
                 "svhn": "vit_tiny_patch2_32", "mnist": "vit_tiny_patch2_32", "fashion_mnist": "vit_tiny_patch2_32",
                 "stl10": "vit_tiny_patch16_224", "flowers102": "vit_tiny_patch16_224", "pets": "vit_tiny_patch16_224",
                 "food101": "vit_tiny_patch16_224", "imagefolder": "vit_base_patch16_224"}
SEEDS = 2 ** 32  # seeds are in [0, 2^32): NumPy's (scikit-learn's splits, Optuna's samplers) and torch's ranges


@dataclass(frozen=True)
class ModelConfig:
    """A timm ViT (or ConvMixer) name and geometry overrides (None keeps the named model's value)."""

    name: str  # a timm ViT or ConvMixer name, e.g. vit_nano_patch2_8, vit_tiny_patch2_32, convmixer_64_4_p1
    img_size: int | None = None  # the input side in pixels; None: the dataset's
    patch_size: int | None = None  # a ViT's patch side (it divides img_size)
    embed_dim: int | None = None  # the width D
    depth: int | None = None  # blocks
    num_heads: int | None = None  # attention heads (they divide embed_dim)
    mlp_ratio: float | None = None  # MLP hidden width over embed_dim
    pos_embed: str | None = None  # structinit ViTs: learn | sincos
    global_pool: str | None = None  # avg | token (a class token)
    kernel_size: int | None = None  # ConvMixer: the depthwise filters' f

    def __post_init__(self):
        finite(self)
        check("model", self.name, "a timm model name", isinstance(self.name, str) and bool(self.name))
        for name, hint in typing.get_type_hints(ModelConfig).items():
            value = getattr(self, name)
            if value is None or name == "name":
                continue
            if int in typing.get_args(hint):
                check(name, value, "a positive integer or None (the named model's)",
                      isinstance(value, int) and not isinstance(value, bool) and value > 0)
            elif float in typing.get_args(hint):
                check(name, value, "a positive number or None (the named model's)", value > 0)

    def kwargs(self) -> dict:
        """The geometry overrides given (None keeps the named model's value)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[1:]
                if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class TrialConfig:
    """One training run: the model, its recipe and init, the data it trains on, the seed, and
    where and how fast it runs (`RUN_ONLY`: none of those changes the model it trains)."""

    model: ModelConfig
    recipe: Recipe
    init: InitConfig = field(default_factory=InitConfig)
    dataset: str = "digits"  # digits (bundled, offline), or under data_root: cifar10, cifar100, svhn, stl10, ...
    data_root: str | None = None  # the dataset's folder in torchvision's on-disk layout (digits: none)
    download: bool = False  # fetch the dataset into data_root if it is missing
    verify: bool = True  # torchvision md5 checks; False: files need only exist
    fraction: float = 1.0  # stratified share of the training pool used for training
    val_fraction: float = 0.1  # stratified share of the training pool held out for validation
    val_size: int | None = 500  # at most this many validation images (a stratified, seeded subset); None: all
    test_every_epoch: bool = False  # False: the test set is evaluated only where it is read (the end)
    eval_batch_size: int = 256  # per worker, for validation and test (timm's validate.py default)
    checkpoint_every: int = 5  # epochs between checkpoints (always the last one); a resume replays the rest
    checkpoint_at: tuple = ()  # epochs (counted from 1) after which a checkpoint is written too: the
    # rungs a grouped study judges, where its trials wait for their group (study.trial_config sets them)
    seed: int = 0  # the init's draw, the data's splits and order, augmentation
    workers: int = 1  # Ray Train workers (DDP)
    gpu: bool = False  # one GPU per worker (a share: gpu_share), AMP (bf16 where supported)
    gpu_share: float = 1.0  # with gpu: the share of one GPU each worker takes (0.25: four trials on one GPU)
    cpus_per_worker: int = 1  # also the worker's torch intra-op threads
    backend: str | None = None  # torch.distributed backend; None: nccl on GPUs, gloo on CPUs
    compile: bool = False  # torch.compile the model
    max_failures: int = 2  # restarts from the last checkpoint (of the Tune trial, or Train's worker group)

    def __post_init__(self):
        from structinit.data import DATASETS

        if self.data_root:  # workers do not share the driver's working directory
            check("data_root", self.data_root, "a path without control characters",
                  isinstance(self.data_root, str) and self.data_root.isprintable())
            object.__setattr__(self, "data_root", os.path.abspath(os.path.expanduser(self.data_root)))
        finite(self)
        choice("dataset", self.dataset, sorted(DATASETS))
        check("fraction", self.fraction, "a number in (0, 1]", 0 < self.fraction <= 1)
        check("val_fraction", self.val_fraction, "a number in [0, 1)", 0 <= self.val_fraction < 1)
        check("val_size", self.val_size, "None or an integer >= 1",
              self.val_size is None or (isinstance(self.val_size, int) and self.val_size >= 1))
        for name in ("checkpoint_every", "eval_batch_size"):
            check(name, getattr(self, name), "an integer >= 1",
                  isinstance(getattr(self, name), int) and getattr(self, name) >= 1)
        check("checkpoint_at", self.checkpoint_at, "a list of integers >= 1 (epochs, counted from 1)",
              isinstance(self.checkpoint_at, (list, tuple)) and all(
                  isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in self.checkpoint_at))
        object.__setattr__(self, "checkpoint_at", tuple(self.checkpoint_at))  # from_dict and JSON give a list
        check("gpu_share", self.gpu_share, "a number in (0, 1]", 0 < self.gpu_share <= 1)
        check("gpu_share", self.gpu_share, f"1 with workers={self.workers} (a worker of a multi-worker trial needs a "
              "GPU of its own)", self.gpu_share == 1 or self.workers == 1)
        check("seed", self.seed, f"an integer in [0, 2^32 - 1 = {SEEDS - 1}]",
              isinstance(self.seed, int) and 0 <= self.seed < SEEDS)
        check("max_failures", self.max_failures, "an integer >= 0",
              isinstance(self.max_failures, int) and self.max_failures >= 0)
        for name in ("workers", "cpus_per_worker"):
            check(name, getattr(self, name), "an integer >= 1", isinstance(getattr(self, name), int)
                  and getattr(self, name) >= 1)
        check("backend", self.backend, "None, 'gloo' or 'nccl'", self.backend in (None, "gloo", "nccl"))
        check("backend", self.backend, "None or 'gloo' without gpu=true (nccl runs on GPUs only)",
              self.backend != "nccl" or self.gpu)
        check("batch_size", self.recipe.batch_size, f"a multiple of workers={self.workers}",
              self.recipe.batch_size % self.workers == 0)
        if self.recipe.mixup or self.recipe.cutmix:
            check("batch_size", self.recipe.batch_size // self.workers, "an even per-worker batch with mixup/cutmix",
                  (self.recipe.batch_size // self.workers) % 2 == 0)

    @property
    def gpus_per_worker(self) -> float:
        """Each worker's share of a GPU: gpu_share with gpu, else none."""
        return self.gpu_share if self.gpu else 0.0

    def worker_resources(self) -> dict:
        """What each of its workers holds on a Ray cluster: its CPUs and, with gpu, its share of a GPU."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpu_share} if self.gpu else {})}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrialConfig:
        """The config `to_dict` gave (a checkpoint carries it), validated again."""
        sections = {"model": ModelConfig, "recipe": Recipe, "init": InitConfig}
        return cls(**{k: sections[k](**v) if k in sections else v for k, v in values.items()})

    def flat(self) -> dict:
        """Flat `section.key` params, e.g. for MLflow."""
        out = {}
        for section, values in self.to_dict().items():
            if isinstance(values, dict):
                out.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                out[section] = values
        return out

    def digest(self) -> str:
        """Short stable hash: the same config names the same run (so a rerun resumes it). A config
        without rung checkpoints hashes as it did before `checkpoint_at` existed."""
        values = self.to_dict()
        if not values["checkpoint_at"]:
            del values["checkpoint_at"]
        return _hash(values)


# ---- what a trial is -----------------------------------------------------------------------

RUN_ONLY = ("data_root", "download", "verify", "test_every_epoch", "eval_batch_size", "checkpoint_every",
            "checkpoint_at", "gpu_share", "cpus_per_worker", "backend", "compile", "max_failures")  # where and how
# fast a trial runs, where its files are and what it logs: none of them changes the model it trains or its
# accuracies (the data's files are named by `dataset`; DDP's backend reduces the same gradients)


def trained(cfg: TrialConfig) -> dict:
    """What makes the model a trial trains: every TrialConfig field but `RUN_ONLY`, with the init
    reduced to its name and the fields it reads (`inits.setting`); the rest are normalised away."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY}
    values["init"] = {"name": cfg.init.name, **setting(cfg.init)}
    return values


def base_key(cfg: TrialConfig) -> str:
    """What the arms of a paired comparison share: everything `trained` holds but the init and
    the seed (dataset, split, model, recipe, ...). Two trials are paired only where this and the
    seed are equal."""
    return _hash({k: v for k, v in trained(cfg).items() if k not in ("init", "seed")})


def setting_key(cfg: TrialConfig) -> str:
    """The init's requested setting: its name and the fields it reads."""
    return _hash(trained(cfg)["init"])


def identity(cfg: TrialConfig, weights: str) -> str:
    """A trial by all that made it: its base, seed and init name, and the digest of the initial
    weights the init gave (`weights_digest`), which stands for every init field. Two requested
    settings whose weights are bit-identical (a mass beyond what the model can express) are one
    trial; a trial whose identity already finished is not trained again."""
    values = {k: v for k, v in trained(cfg).items() if k != "init"}
    return _hash({**values, "init": cfg.init.name, "weights": weights})


def field_types(cls=TrialConfig, prefix: str = "") -> dict[str, type]:
    """The type of each `flat()` key (an optional field by its other type), e.g. for a table's schema."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out.update(field_types(hint, f"{prefix}{name}."))
        else:
            out[prefix + name] = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return out


def canonical(values: dict) -> str:
    """The JSON a config or a proposal is stored and hashed as: sorted keys, other values as str."""
    return json.dumps(values, sort_keys=True, default=str)


def _hash(values: dict) -> str:
    return hashlib.sha1(canonical(values).encode()).hexdigest()[:10]


def config_key(params: dict) -> str:
    """Identifies one proposed configuration (all its inits and seeds share it): the pairing key."""
    return _hash(params)


CONFIG_ID_HEX = 4  # hex digits of config_key in a configuration's short id (c + 4: 65536 ids)


def config_ids(keys) -> dict[str, str]:
    """Each configuration's short id, as MLflow keys and tags name it: `c` and the first
    CONFIG_ID_HEX hex digits of its config_key (the hash of its params: the same id in every
    execution, resume and sync), e.g. `ce611`; configurations of `keys` whose ids would coincide
    keep their whole key instead (a collision: 1 in 65536 per pair)."""
    short = {k: "c" + k[:CONFIG_ID_HEX] for k in sorted(set(keys))}
    taken = list(short.values())
    return {k: v if taken.count(v) == 1 else "c" + k for k, v in short.items()}


def label(params: str) -> str:
    """A proposal's params (as `canonical` JSON) as a reader names the configuration (a float to
    4 significant digits: a sampled 0.9125266276248818 reads 0.9125)."""
    p = json.loads(params)
    return " ".join(f"{k.split('.')[-1]}={f'{v:.4g}' if isinstance(v, float) else v}"
                    for k, v in sorted(p.items())) or "(base)"


TRIAL_INDEX = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX: which (init, seed) a Tune trial runs
GROUP = "__group__"  # which proposal a Tune trial belongs to, in proposal order (halving.GroupRepeater)


def search_params(config: dict, helpers=frozenset()) -> dict:
    """The TrialConfig fields of a proposal (dotted `section.field` or top-level names), without
    Tune's `__trial_index__`, the group the Repeater put it in (`__group__`) and the params its
    space declares as helpers (`helpers`, e.g. `heads_e192`: study.helper_params); any other key
    is refused naming it and the nearest fields (a typo in a grid would otherwise leave every cell
    the base config)."""
    out = {}
    for key, value in config.items():
        if key in (TRIAL_INDEX, GROUP) or key in helpers:
            continue
        field_of(key)
        out[key] = value
    return out


# ---- the vocabulary: every field, as every command line names it --------------------------

@dataclass(frozen=True)
class Field:
    key: str  # dotted for a section's field (init.target_mass), bare for TrialConfig's own (seed)
    hint: object  # its type, e.g. float | None
    default: object  # dataclasses.MISSING where the dataclass has none (a recipe's epochs)
    help: str  # the comment beside it in the dataclass


@functools.cache
def vocabulary() -> tuple[Field, ...]:
    """Every TrialConfig field in order, a section's (model, recipe, init) dotted: derived from
    `dataclasses.fields` alone, so a new field is a new flag of every command and a new `--set` key."""
    out = []
    for f in _fields(TrialConfig):
        out += [Field(f"{f.key}.{g.key}", g.hint, g.default, g.help) for g in _fields(f.hint)] \
            if dataclasses.is_dataclass(f.hint) else [f]
    return tuple(out)


def _fields(cls) -> list[Field]:
    hints, notes = typing.get_type_hints(cls), comments(cls)
    return [Field(f.name, hints[f.name], f.default, notes.get(f.name, "")) for f in dataclasses.fields(cls)]


@functools.cache
def comments(cls) -> dict[str, str]:
    """The comment beside each field in a dataclass's source, carried on by comment lines right
    below it (the one-line help of its flag)."""
    import inspect
    import io
    import textwrap
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # a class without a source file (made at run time): no comments
        return {}
    rows: dict[int, list] = {}
    skip = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            rows.setdefault(tok.start[0], []).append(tok)
    names, out, last, previous = {f.name for f in dataclasses.fields(cls)}, {}, None, None
    for row, toks in sorted(rows.items()):
        text = toks[-1].string.lstrip("#").strip() if toks[-1].type == tokenize.COMMENT else None
        if toks[0].start[1] == 4 and toks[0].string in names and len(toks) > 1 and toks[1].string == ":":
            last = toks[0].string if text else None
            out.update({last: text} if text else {})
        elif len(toks) == 1 and text and last and row == previous + 1:
            out[last] += " " + text
        else:
            last = None
        previous = row
    return out


def field_of(key: str, what: str = "search field") -> Field:
    """The vocabulary's field `key`, or a ValueError naming it and the nearest fields."""
    found = {f.key: f for f in vocabulary()}
    if key not in found:
        close = nearest(key, found)
        check(what, key, "a TrialConfig field" + (f" (nearest: {', '.join(close)})" if close else
                                                  ", e.g. model.embed_dim, init.filter_size, recipe.lr or seed"), False)
    return found[key]


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
              tuple: "a list, e.g. [0.08, 1.0]"}
INT64 = 2 ** 63  # an integer field holds what NumPy and torch hold (beyond: "Overflow when unpacking long long")


def typed(name: str, value, hint):
    """`value` for the field `name` of type `hint` (a list for a tuple field becomes a tuple), or a
    ValueError naming the type allowed: a value of another type (`--set model.depth=abc`) would
    pass the range checks of some fields and fail in the workers."""
    args = typing.get_args(hint)
    optional = type(None) in args
    kind = next((a for a in args if a is not type(None)), hint)
    if value is None and optional:
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {int: number and isinstance(value, int), float: number, str: isinstance(value, str),
          bool: isinstance(value, bool), tuple: isinstance(value, (list, tuple))}.get(kind, True)
    check(name, value, TYPE_NAMES.get(kind, str(kind)) + (" or null" if optional else ""), ok)
    if kind is int:
        check(name, value, "an integer in [-2^63, 2^63)", -INT64 <= value < INT64)
    return tuple(value) if kind is tuple else value


def parse(key: str, text):
    """The command line's text for the field `key` as its type reads it (`typed`): a number for
    int and float fields (inf and nan too: the config refuses them as not finite), `none`/`null`
    for an optional field's None, `true`/`false`, a JSON list for a tuple, else the text itself; a
    value that is not text (a study grid's) is only checked. Refuses an unknown key."""
    hint = field_of(key).hint
    if not isinstance(text, str):
        return typed(key, text, hint)
    args = typing.get_args(hint)
    kind = next((a for a in args if a is not type(None)), hint)
    value = text
    if type(None) in args and text.strip().lower() in ("none", "null"):
        value = None
    elif kind is float:
        value = _number(text, float)
    elif kind is str:
        value = _json(text) if text.startswith('"') else text
    elif kind is bool:
        value = {"true": True, "false": False}.get(text.strip().lower(), text)
    else:  # int: a float or a word is refused as what it is; tuple: a JSON list
        value = _number(text, int) if kind is int else _json(text)
    return typed(key, value, hint)


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        return _json(text)


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def with_overrides(base: TrialConfig, overrides: dict) -> TrialConfig:
    """`base` with dotted fields replaced (`model.embed_dim`, `init.filter_size`, `recipe.lr`, `seed`),
    each value of its field's type (`parse`: text is read as the type reads it); every section is
    re-validated (a recipe's warmup fits a shorter run: recipes.replaced). An unknown key is
    refused naming it and the nearest fields."""
    changes: dict[str, dict] = {}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        changes.setdefault(section, {})[name] = parse(key, value)
    top = changes.pop("", {})
    changed = {s: (replaced if s == "recipe" else dataclasses.replace)(getattr(base, s), **v)
               for s, v in changes.items()}
    return dataclasses.replace(base, **changed, **top)


def make(dataset: str = "digits", model: str | None = None, recipe_name: str | None = None,
         recipe_overrides: dict | None = None, model_overrides: dict | None = None, footing: str | None = None,
         init_overrides: dict | None = None, **fields) -> TrialConfig:
    """A TrialConfig with the dataset's default model and recipe unless named. A `footing`
    (footings.py: `v1`, `followup`) fixes a paper's PE, pooling and init fields; the overrides
    given here win over it."""
    from structinit.data import DATASETS
    from structinit.footings import FOOTINGS
    from structinit.recipes import recipe

    choice("dataset", dataset, sorted(DATASETS))
    choice("footing", footing, [None, *FOOTINGS])
    base = FOOTINGS[footing] if footing else None
    model_cfg = ModelConfig(name=model or DEFAULT_MODEL[dataset],
                            **{**(base.model if base else {}), **(model_overrides or {})})
    if base or init_overrides:
        check("init", fields.get("init"), "not given with footing= or init_overrides= (they build it)",
              "init" not in fields)
        fields["init"] = InitConfig(**{**(base.init if base else {}), **(init_overrides or {})})
    rec = recipe(recipe_name or DEFAULT_RECIPE[dataset], **(recipe_overrides or {}))
    return TrialConfig(model=model_cfg, recipe=rec, dataset=dataset, **fields)


WEIGHT_BYTES = 4  # a parameter's fp32 weight: what building a model (inspect-init, rank) holds
TRAINING_BYTES = 16  # ... and its gradient and AdamW's two moments: what training it holds


def validate(cfg: TrialConfig, bytes_per_parameter: int = WEIGHT_BYTES) -> None:
    """Everything that can be checked before Ray starts: the dataset files, the splits drawn from
    them, the model geometry and the init against it, the model's size against this machine's
    memory (`validate_model`; bad input raises ValueError naming the value)."""
    validate_split(cfg, validate_data(cfg))
    validate_model(cfg, bytes_per_parameter)


def validate_data(cfg: TrialConfig):
    """The dataset's files are there and readable, and every label of both splits is a class index
    (files that are not the official archives, read with verify=False, may hold others: each trial
    would fail on them); returns what they hold (`load_splits`)."""
    from structinit.data import labels_of, load_splits, num_classes

    splits = load_splits(cfg.dataset, cfg.data_root, cfg.download, cfg.verify)
    n = num_classes(cfg.dataset, splits[0])
    for split, labels in zip(("training", "test"), map(labels_of, splits)):
        bad = [y for y in labels if not 0 <= y < n]
        check("data_root", cfg.data_root, f"{cfg.dataset} files whose labels are class indices in [0, {n}): "
              f"{len(bad)} {split} labels are not (e.g. {bad[0] if bad else None})", not bad)
    return splits


def validate_split(cfg: TrialConfig, splits) -> None:
    """The run's splits of the (pool, test) `validate_data` read keep every class, and give each
    worker a batch to train on: with mixup/cutmix the loader drops a partial batch (train.build),
    so a batch beyond a worker's share would train nothing (without, it is one smaller batch)."""
    from structinit.data import check_split, labels_of

    train = check_split(labels_of(splits[0]), cfg.fraction, cfg.val_fraction, cfg.val_size)
    r = cfg.recipe
    if r.mixup or r.cutmix:
        check("batch_size", r.batch_size, f"at most the {train} training images (fraction={cfg.fraction}) with "
              "mixup/cutmix, which drop each worker's last partial batch",
              r.batch_size // cfg.workers <= train // cfg.workers)


def validate_model(cfg: TrialConfig, bytes_per_parameter: int = WEIGHT_BYTES) -> int:
    """The model geometry builds, its patches fit its images, the init fits it, and its parameters
    at `bytes_per_parameter` fit in this machine's memory (`check_model`); returns its parameter
    count. Built on torch's meta device: nothing is allocated, whatever its size."""
    from structinit.data import DATASETS

    return check_model(cfg.model, cfg.init, bytes_per_parameter,
                       **data_kwargs(cfg, DATASETS[cfg.dataset].num_classes or 2))


def check_model(model: ModelConfig, init: InitConfig | None, bytes_per_parameter: int = WEIGHT_BYTES,
                **fixed) -> int:
    """`train.build_model`'s checks without building it (on the meta device): the geometry is one the
    model takes, a ViT's patch grid is at least 1x1, `init` fits the model, and its parameters at
    `bytes_per_parameter` (0: unchecked) fit in the memory this machine has available. Returns
    the parameter count."""
    import psutil
    import torch

    with torch.device("meta"):
        net = create_model(model, **fixed)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if grid is not None:
        side, patch = net.patch_embed.img_size, net.patch_embed.patch_size
        check("patch_size", patch[0], f"at most img_size={side[0]} (model {model.name!r} on images of side "
              f"{side[0]}: set model.img_size or model.patch_size)", min(grid) >= 1)
    if init is not None:
        init.check_model(net)
    count = sum(p.numel() for p in net.parameters())
    need, have = count * bytes_per_parameter, psutil.virtual_memory().available
    given = ", ".join(f"{k}={v}" for k, v in model.kwargs().items())
    check("model", model.name + (f" ({given})" if given else ""), f"a model that fits in memory: its {count:.3g} "
          f"parameters need {_size(need)} ({bytes_per_parameter} bytes each), this machine has {_size(have)} "
          "available", need <= have)
    return count


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024


def create_model(model: ModelConfig, **fixed):
    """The model `model` names, geometry over what the data fix (`fixed`), uninitialised."""
    from structinit.models import create

    return create(model.name, **{**fixed, **model.kwargs()})


def weights_digest(model) -> str:
    """A digest of a model's weights and buffers, bit for bit, and of which parameters are frozen:
    equal digests, identical initial models."""
    import torch

    h = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(",".join(n for n, p in model.named_parameters() if not p.requires_grad).encode())
    return h.hexdigest()[:16]


def data_kwargs(cfg: TrialConfig, num_classes: int) -> dict:
    """What a run's data and recipe fix in its model: the dataset's image side (a model config's
    img_size wins) and channels, the number of classes, the drop-path rate."""
    from structinit.data import DATASETS

    spec = DATASETS[cfg.dataset]
    kw = {"img_size": spec.img_size, "in_chans": spec.in_chans, "num_classes": num_classes}
    if cfg.recipe.drop_path:
        kw["drop_path_rate"] = cfg.recipe.drop_path
    return kw

