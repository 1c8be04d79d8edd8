"""Init strategies for timm ViTs (and ConvMixer spatial filters), a registry by name.

    result = apply_init(model, InitConfig(name="impulse", filter_size=3), seed=0)

Every strategy is a small function `fn(model, cfg) -> InitResult` registered with
`@register("name")`; its docstring holds its math. `apply_init` validates the config
against the model, seeds torch in a forked RNG (same seed, bit-identical weights, the
caller's RNG untouched) and times the call.

Importing this package loads nothing heavy: the command line derives its flags from InitConfig's
fields before torch loads. The strategies (torch, timm) are imported on first use (`strategies`:
validating a config, applying an init, reading `INITS` or `READS`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

from structinit.validate import check, choice, finite

if TYPE_CHECKING:  # annotations only: importing this module loads no torch
    import torch
    from timm.models.vision_transformer import VisionTransformer

BASES = ("timm", "torch")
OFFSETS = ("cover", "random")
PSEUDO_INPUTS = ("pe", "uniform", "gaussian", "pe+uniform", "pe+gaussian", "data", "pe+data")
SOLVERS = ("closed_form", "gradient")
QK_MODES = ("per_block", "shared")
VALUE_PROJ = ("default", "mimetic")
TARGET_SHAPES = ("impulse", "box", "gaussian")
MIXES = (None, "noise", "mimetic")
FILTER_INITS = ("learned", "frozen_random", "frozen_impulse", "frozen_box")  # ConvMixer spatial filters


@dataclass(frozen=True)
class InitConfig:
    """Everything an init strategy reads. Fields a strategy does not use are ignored by it."""

    name: str = "impulse"  # a registered init (ViT: impulse, mimetic, default, ...; ConvMixer: learned, frozen_*)
    base: str = "timm"  # what every weight the strategy does not set gets: timm trunc-normal or PyTorch defaults
    # impulse
    filter_size: int = 3  # the impulse filter's side f (odd, >= 3, at most the patch grid's side)
    offsets: str = "cover"  # which tap each head takes: cover (every tap once before repeats) | random
    pseudo_input: str = "pe"  # what the solve reads: pe | uniform | gaussian | pe+uniform | pe+gaussian | data
    # | pe+data (data: solved layer by layer on a seeded batch of training images)
    data_images: int = 64  # data, pe+data: the seeded batch of training images the layer-wise solve uses
    match_pe_mass: bool = False  # data, pe+data: calibrate each block to the mass this init solved on `pe` (at
    # its target_mass or factor_norm) realises there on the same images, so data - pe is matched in sharpness
    solver: str = "closed_form"  # closed_form | gradient (v1's Adam solve)
    target_mass: float | None = 0.9  # None: the gradient solver's raw v1 map, or `factor_norm` (the follow-up)
    factor_norm: float | None = None  # closed form, target_mass=None: each head's W_q, W_k to this Frobenius
    # norm (the follow-up's sharpness: 7)
    qk: str = "per_block"  # per_block | shared (one Q/K solve for every block: v1)
    value_proj: str = "default"  # default | mimetic (the follow-up's V/proj)
    pe_scale: float | None = None  # None: 18 on a learned PE (the follow-up), 1 on a fixed sin-cos PE
    rank_rtol: float = 1e-2  # closed form: keep singular values of the pseudo input >= rank_rtol * largest
    damping: float = 0.1  # closed form: Tikhonov damping lambda = damping * largest singular value (0: none)
    solver_steps: int = 10_000  # gradient solver (v1): Adam steps, lr, norm constraint every 100 steps
    solver_lr: float = 1e-4  # gradient solver (v1): Adam's learning rate
    # mimetic (also the follow-up's value/projection init)
    alpha_qk: float = 0.7  # W_q W_k^T ~ alpha_qk Z + beta_qk I
    beta_qk: float = 0.7
    alpha_vo: float = 0.4  # W_v W_o ~ alpha_vo Z - beta_vo I
    beta_vo: float = 0.4
    # impulse targets beyond one tap (the paper's open questions): a blob around each head's tap,
    # and a blend with noise or a mimetic map
    target_shape: str = "impulse"  # impulse | box | gaussian (a blob around each head's tap)
    blob: int = 3  # box, gaussian: the blob's side (odd)
    blob_sigma: float = 1.0  # gaussian: the blob's width
    mix: str | None = None  # None | noise | mimetic: blend the target with it before the solve
    mix_ratio: float = 0.0  # the blend's share r: (1 - r) target + r mix
    distinct_filters: int | None = None  # ConvMixer (filters.py): m distinct filters shared across the channels;
    # None: one per channel

    def __post_init__(self):
        finite(self)
        choice("init", self.name, sorted(strategies()))
        choice("base", self.base, BASES)
        check("filter_size", self.filter_size, "an odd integer >= 3",
              isinstance(self.filter_size, int) and self.filter_size >= 3 and self.filter_size % 2 == 1)
        choice("offsets", self.offsets, OFFSETS)
        choice("pseudo_input", self.pseudo_input, PSEUDO_INPUTS)
        choice("solver", self.solver, SOLVERS)
        check("pseudo_input", self.pseudo_input, "a fixed pseudo input (pe, uniform, gaussian, or a sum of them) "
              "with solver='gradient'; data, pe+data take solver='closed_form'",
              self.solver == "closed_form" or not uses_data(self.pseudo_input))
        check("data_images", self.data_images, "a positive integer",
              isinstance(self.data_images, int) and self.data_images > 0)
        check("match_pe_mass", self.match_pe_mass, "true or false", isinstance(self.match_pe_mass, bool))
        if self.target_mass is None:
            check("target_mass", None, "a number in (0, 1) with solver='closed_form' and no factor_norm",
                  self.solver == "gradient" or self.factor_norm is not None)
        else:
            check("target_mass", self.target_mass, "a number in (0, 1)", 0 < self.target_mass < 1)
        check("factor_norm", self.factor_norm, "None, or a positive number with solver='closed_form' and "
              "target_mass=None (it sets the sharpness instead)", self.factor_norm is None or (
                  self.factor_norm > 0 and self.solver == "closed_form" and self.target_mass is None))
        choice("qk", self.qk, QK_MODES)
        choice("value_proj", self.value_proj, VALUE_PROJ)
        check("pe_scale", self.pe_scale, "a positive number or None", self.pe_scale is None or self.pe_scale > 0)
        check("rank_rtol", self.rank_rtol, "a number in (0, 1)", 0 < self.rank_rtol < 1)
        check("damping", self.damping, "a number in [0, 1)", 0 <= self.damping < 1)
        check("solver_steps", self.solver_steps, "a positive integer",
              isinstance(self.solver_steps, int) and self.solver_steps > 0)
        check("solver_lr", self.solver_lr, "a positive number", self.solver_lr > 0)
        choice("target_shape", self.target_shape, TARGET_SHAPES)
        check("blob", self.blob, "an odd integer >= 1", isinstance(self.blob, int) and self.blob >= 1 and self.blob % 2)
        check("blob_sigma", self.blob_sigma, "a positive number", self.blob_sigma > 0)
        choice("mix", self.mix, MIXES)
        check("mix_ratio", self.mix_ratio, "a number in [0, 1)", 0 <= self.mix_ratio < 1)
        for name in ("alpha_qk", "beta_qk", "alpha_vo", "beta_vo"):
            check(name, getattr(self, name), "a number >= 0", getattr(self, name) >= 0)

    def check_model(self, model) -> None:
        from timm.models.convmixer import ConvMixer
        from timm.models.vision_transformer import VisionTransformer

        from structinit.models import grid_size

        if self.name in FILTER_INITS:
            check("model", type(model).__name__, f"a timm ConvMixer for init={self.name!r}", isinstance(model, ConvMixer))
            dim = model.num_features
            check("distinct_filters", self.distinct_filters, f"None or an integer in [1, embed_dim={dim}]",
                  self.distinct_filters is None or (isinstance(self.distinct_filters, int)
                                                    and 1 <= self.distinct_filters <= dim))
            return
        check("model", type(model).__name__, f"a timm VisionTransformer for init={self.name!r} (ConvMixers take "
              f"{', '.join(FILTER_INITS)})", isinstance(model, VisionTransformer))
        grid = grid_size(model)
        check("filter_size", self.filter_size, f"at most the patch grid's side {min(grid)} (grid {grid[0]}x{grid[1]})",
              self.filter_size <= min(grid))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InitResult:
    """What an init did: per block, the impulse offset of each head, the pseudo input the
    fidelity is measured on, and (impulse) the keys each query's target puts its mass on. For
    inits without impulse targets these are the reference: the `cover` offsets of `filter_size`
    on the model's position embedding."""

    offsets: list[list[tuple[int, int]]]
    pseudo_inputs: list[torch.Tensor]
    supports: list[torch.Tensor] = field(default_factory=list)  # per block (heads, N, N): the intended keys
    images: torch.Tensor | None = None  # data, pe+data: the training images the solve used (its pseudo input)
    solve_seconds: float = 0.0
    notes: dict = field(default_factory=dict)


_INITS: dict[str, Callable[[VisionTransformer, InitConfig], InitResult]] = {}  # INITS: by name, the strategy
_READS: dict[str, Callable[[InitConfig], tuple[str, ...]]] = {}  # READS: by init, the InitConfig fields it reads


def strategies() -> dict[str, Callable]:
    """The registered strategies by name, imported (with torch and timm) on the first call."""
    from structinit.inits import attention_baselines, default, filters, impulse, mimetic  # noqa: F401 (they register)

    return _INITS


def __getattr__(name: str):
    """`INITS` and `READS`, the registries, with every strategy registered."""
    if name in ("INITS", "READS"):
        strategies()
        return _INITS if name == "INITS" else _READS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(name: str, reads: tuple[str, ...] | Callable[[InitConfig], tuple[str, ...]] = ()):
    """Register an init strategy under `name`, declaring the InitConfig fields it reads (a tuple,
    or a function of the config where what it reads depends on other fields): the fields that make
    its setting (`setting`); every other field leaves its weights as they are."""
    def wrap(fn):
        _INITS[name] = fn
        _READS[name] = reads if callable(reads) else (lambda cfg, fields=tuple(reads): fields)
        return fn
    return wrap


def setting(cfg: InitConfig) -> dict:
    """The fields `cfg`'s init reads, with their values: what two configs of one init must share
    to give the same weights (at the same seed, on the same model). The rest are normalised away."""
    strategies()
    return {name: getattr(cfg, name) for name in sorted(_READS[cfg.name](cfg))}


def uses_data(kind: str) -> bool:
    """Whether a pseudo-input kind solves on real images (`data`, `pe+data`)."""
    return "data" in kind.split("+")


def needs_images(cfg: InitConfig) -> bool:
    """Whether the init solves on real images (impulse with pseudo_input `data` or `pe+data`)."""
    return cfg.name == "impulse" and uses_data(cfg.pseudo_input)


def apply_init(model: VisionTransformer, cfg: InitConfig, seed: int = 0, images: torch.Tensor | None = None) -> InitResult:
    """Initialise `model` in place by `cfg.name`; deterministic in `seed` (and `images`, the batch
    of training images a data-aware init solves on: `data.init_images`)."""
    import torch

    check("seed", seed, "a non-negative integer", isinstance(seed, int) and seed >= 0)
    cfg.check_model(model)
    if needs_images(cfg):
        check("images", None if images is None else tuple(images.shape), f"a batch (B, C, H, W) of training "
              f"images for pseudo_input={cfg.pseudo_input!r}", images is not None and images.ndim == 4 and len(images))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        start = time.perf_counter()
        fn = strategies()[cfg.name]
        result = fn(model, cfg, images) if needs_images(cfg) else fn(model, cfg)
        result.solve_seconds = time.perf_counter() - start
    return result

