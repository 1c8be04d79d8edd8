"""`TrialConfig`: everything one training run needs, validated once, then passed unchanged
from the CLI or a study to the Train driver, each worker's loop, and the model + init."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import asdict, dataclass, field

from structinit.data import DATASETS
from structinit.inits import InitConfig, apply_init, setting
from structinit.models import create
from structinit.recipes import DEFAULT_RECIPE, Recipe, replaced
from structinit.validate import check, choice, finite

# A model that suits each dataset when none is named (a recipe: recipes.DEFAULT_RECIPE).
DEFAULT_MODEL = {"digits": "vit_nano_patch2_8", "cifar10": "vit_tiny_patch2_32", "cifar100": "vit_tiny_patch2_32",
                 "svhn": "vit_tiny_patch2_32", "mnist": "vit_tiny_patch2_32", "fashion_mnist": "vit_tiny_patch2_32",
                 "stl10": "vit_tiny_patch16_224", "flowers102": "vit_tiny_patch16_224", "pets": "vit_tiny_patch16_224",
                 "food101": "vit_tiny_patch16_224", "imagefolder": "vit_base_patch16_224"}
MODEL_FIELDS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "pos_embed", "global_pool",
                "kernel_size")


@dataclass(frozen=True)
class ModelConfig:
    """A timm ViT (or ConvMixer) name and geometry overrides (None keeps the named model's value)."""

    name: str
    img_size: int | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    pos_embed: str | None = None
    global_pool: str | None = None
    kernel_size: int | None = None  # ConvMixer: the depthwise filters' f

    def __post_init__(self):
        finite(self)

    def kwargs(self) -> dict:
        return {k: getattr(self, k) for k in MODEL_FIELDS if getattr(self, k) is not None}


@dataclass(frozen=True)
class TrialConfig:
    model: ModelConfig
    recipe: Recipe
    init: InitConfig = field(default_factory=InitConfig)
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    verify: bool = True  # torchvision md5 checks; False: files need only exist
    fraction: float = 1.0  # stratified share of the training pool used for training
    val_fraction: float = 0.1  # stratified share of the training pool held out for validation
    val_size: int | None = 500  # at most this many validation images (a stratified, seeded subset); None: all
    test_every_epoch: bool = False  # False: the test set is evaluated only where it is read (the end)
    eval_batch_size: int = 256  # per worker, for validation and test (timm's validate.py default)
    checkpoint_every: int = 5  # epochs between checkpoints (always the last one); a resume replays the rest
    seed: int = 0
    workers: int = 1
    gpu: bool = False
    gpu_share: float = 1.0  # with gpu: the share of one GPU each worker takes (0.25: four trials on one GPU)
    cpus_per_worker: int = 1  # also the worker's torch intra-op threads
    backend: str | None = None  # torch.distributed backend; None: nccl on GPUs, gloo on CPUs
    compile: bool = False
    max_failures: int = 2  # restarts from the last checkpoint (of the Tune trial, or Train's worker group)

    def __post_init__(self):
        if self.data_root:  # workers do not share the driver's working directory
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
        check("gpu_share", self.gpu_share, "a number in (0, 1]", 0 < self.gpu_share <= 1)
        check("gpu_share", self.gpu_share, f"1 with workers={self.workers} (a worker of a multi-worker trial needs a "
              "GPU of its own)", self.gpu_share == 1 or self.workers == 1)
        for name in ("seed", "max_failures"):
            check(name, getattr(self, name), "an integer >= 0", isinstance(getattr(self, name), int)
                  and getattr(self, name) >= 0)
        for name in ("workers", "cpus_per_worker"):
            check(name, getattr(self, name), "an integer >= 1", isinstance(getattr(self, name), int)
                  and getattr(self, name) >= 1)
        check("backend", self.backend, "None, 'gloo' or 'nccl'", self.backend in (None, "gloo", "nccl"))
        check("batch_size", self.recipe.batch_size, f"a multiple of workers={self.workers}",
              self.recipe.batch_size % self.workers == 0)
        if self.recipe.mixup or self.recipe.cutmix:
            check("batch_size", self.recipe.batch_size // self.workers, "an even per-worker batch with mixup/cutmix",
                  (self.recipe.batch_size // self.workers) % 2 == 0)

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
        """Short stable hash: the same config names the same run (so a rerun resumes it)."""
        return _hash(self.to_dict())


# ---- what a trial is -----------------------------------------------------------------------

RUN_ONLY = ("data_root", "download", "verify", "test_every_epoch", "eval_batch_size", "checkpoint_every",
            "gpu_share", "cpus_per_worker", "backend", "compile", "max_failures")  # where and how fast a
# trial runs, where its files are and what it logs: none of them changes the model it trains or its
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


def label(params: str) -> str:
    """A proposal's params (as `canonical` JSON) as a reader names the configuration (a float to
    4 significant digits: a sampled 0.9125266276248818 reads 0.9125)."""
    p = json.loads(params)
    return " ".join(f"{k.split('.')[-1]}={f'{v:.4g}' if isinstance(v, float) else v}"
                    for k, v in sorted(p.items())) or "(base)"


def search_params(config: dict) -> dict:
    """The TrialConfig fields in a proposal (dotted `section.field` or top-level names); helper
    names of the space such as `heads_e192` and Tune's `__trial_index__` are dropped."""
    top = {f.name for f in dataclasses.fields(TrialConfig)}
    return {k: v for k, v in config.items() if "." in k or (k in top and not k.startswith("__"))}


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
              tuple: "a list, e.g. [0.08, 1.0]"}


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
    return tuple(value) if kind is tuple else value


def with_overrides(base: TrialConfig, overrides: dict) -> TrialConfig:
    """`base` with dotted fields replaced (`model.embed_dim`, `init.filter_size`, `recipe.lr`, `seed`),
    each value of its field's type (`typed`); every section is re-validated (a recipe's warmup fits
    a shorter run: recipes.replaced)."""
    sections: dict[str, dict] = {}
    top = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            check("search field", key, "a TrialConfig field such as model.embed_dim or init.filter_size",
                  section in ("model", "init", "recipe") and name in {f.name for f in dataclasses.fields(
                      getattr(base, section))})
            hint = typing.get_type_hints(type(getattr(base, section)))[name]
            sections.setdefault(section, {})[name] = typed(key, value, hint)
        else:
            check("search field", key, "a TrialConfig field", key in {f.name for f in dataclasses.fields(base)}
                  and not dataclasses.is_dataclass(getattr(base, key)))
            top[key] = typed(key, value, typing.get_type_hints(TrialConfig)[key])
    changed = {s: (replaced if s == "recipe" else dataclasses.replace)(getattr(base, s), **v)
               for s, v in sections.items()}
    return dataclasses.replace(base, **changed, **top)


def make(dataset: str = "digits", model: str | None = None, recipe_name: str | None = None,
         recipe_overrides: dict | None = None, model_overrides: dict | None = None, footing: str | None = None,
         init_overrides: dict | None = None, **fields) -> TrialConfig:
    """A TrialConfig with the dataset's default model and recipe unless named. A `footing`
    (footings.py: `v1`, `followup`) fixes a paper's PE, pooling and init fields; the overrides
    given here win over it."""
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


def validate(cfg: TrialConfig) -> None:
    """Everything that can be checked before Ray starts: the dataset files, the splits drawn from
    them, the model geometry and the init against it (bad input raises ValueError naming the value)."""
    validate_split(cfg, validate_data(cfg))
    validate_model(cfg)


def validate_data(cfg: TrialConfig):
    """The dataset's files are there and readable; returns what they hold (`load_splits`)."""
    from structinit.data import load_splits

    return load_splits(cfg.dataset, cfg.data_root, cfg.download, cfg.verify)


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


def validate_model(cfg: TrialConfig) -> None:
    """The model geometry builds and the init fits it."""
    model, _ = build_model(cfg.model, **data_kwargs(cfg, DATASETS[cfg.dataset].num_classes or 2))
    cfg.init.check_model(model)


def build_model(model: ModelConfig, init: InitConfig | None = None, seed: int = 0, images=None, **fixed):
    """A model and its init from a config, the one way every caller builds them: `model`'s timm
    name and geometry over what the data fix (`fixed`: `data_kwargs`; none for a bare model), then
    `init` applied at `seed` (None: left as built, for a checkpoint's weights or a check), on
    `images` where it is data-aware (`data.init_images`). Returns (model, InitResult or None)."""
    net = create(model.name, **{**fixed, **model.kwargs()})
    return net, None if init is None else apply_init(net, init, seed=seed, images=images)


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
    spec = DATASETS[cfg.dataset]
    kw = {"img_size": spec.img_size, "in_chans": spec.in_chans, "num_classes": num_classes}
    if cfg.recipe.drop_path:
        kw["drop_path_rate"] = cfg.recipe.drop_path
    return kw

