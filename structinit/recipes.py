"""Named training recipes: the papers' settings (method.md §3) and a CPU recipe for digits."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace

from structinit.validate import check, choice, finite


@dataclass(frozen=True)
class Recipe:
    epochs: int  # training epochs
    batch_size: int  # global: split evenly over the Train workers
    lr: float  # AdamW's peak learning rate (cosine schedule)
    weight_decay: float
    opt_eps: float = 1e-8  # AdamW's epsilon
    warmup_epochs: int = 0  # linear warmup from warmup_lr (a run no longer than it: epochs - 1, with a warning)
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6  # where the cosine schedule ends
    grad_clip: float | None = None  # clip the gradient norm to this; None: no clipping
    label_smoothing: float = 0.1
    randaugment: str | None = None  # a timm auto_augment string, e.g. "rand-m9-mstd0.5-inc1-mmax9"
    hflip: float = 0.5  # probability of a horizontal flip
    crop_scale: tuple = (1.0, 1.0)  # RandomResizedCrop scale; (1, 1) = no crop (v1)
    color_jitter: float = 0.0  # timm turns it off under RandAugment anyway
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off)
    reprob: float = 0.0  # random erasing probability
    drop_path: float = 0.0  # stochastic depth rate
    amp: bool = True  # autocast on GPU (bf16 where supported, else fp16 with a scaler); CPU runs fp32
    loader_workers: int = 0  # DataLoader worker processes per Train worker

    def __post_init__(self):
        finite(self)
        for name in ("epochs", "batch_size"):
            check(name, getattr(self, name), "a positive integer", isinstance(getattr(self, name), int)
                  and getattr(self, name) > 0)
        for name in ("lr", "opt_eps"):
            check(name, getattr(self, name), "a positive number", getattr(self, name) > 0)
        for name in ("weight_decay", "warmup_lr", "min_lr", "mixup", "cutmix"):
            check(name, getattr(self, name), "a number >= 0", getattr(self, name) >= 0)
        for name in ("label_smoothing", "hflip", "reprob", "drop_path", "color_jitter"):
            check(name, getattr(self, name), "a number in [0, 1)", 0 <= getattr(self, name) < 1 or
                  (name == "hflip" and getattr(self, name) == 1))
        check("warmup_epochs", self.warmup_epochs, f"an integer in [0, epochs={self.epochs})",
              isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs < self.epochs)
        check("grad_clip", self.grad_clip, "a positive number or None", self.grad_clip is None or self.grad_clip > 0)
        check("randaugment", self.randaugment, "None or a timm RandAugment string starting with 'rand-'",
              self.randaugment is None or str(self.randaugment).startswith("rand-"))
        check("crop_scale", self.crop_scale, "a pair (low, high) with 0 < low <= high <= 1",
              isinstance(self.crop_scale, (tuple, list)) and len(self.crop_scale) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.crop_scale)
              and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1)
        check("loader_workers", self.loader_workers, "an integer >= 0",
              isinstance(self.loader_workers, int) and self.loader_workers >= 0)


# The papers' RandAugment (m9, std 0.5, increasing ops) with the sampled magnitude capped at 9: at
# 10 timm's PosterizeIncreasing asks Pillow for 0 bits, which Pillow 13 refuses (about 1 image in
# 1,000 crashed a run); only magnitudes above 9 change.
RANDAUGMENT = "rand-m9-mstd0.5-inc1-mmax9"

RECIPES = {
    # v1 small datasets (CIFAR/SVHN, timm 0.9.16 train.py): 200 epochs, AdamW 1e-3, eps 1e-3, wd 0.01,
    # clip 3, warmup 10, RandAugment, no crop, smoothing 0.1, batch 512, AMP.
    "v1_small": Recipe(epochs=200, batch_size=512, lr=1e-3, weight_decay=0.01, opt_eps=1e-3, warmup_epochs=10,
                       warmup_lr=1e-5, min_lr=1e-6, grad_clip=3.0, randaugment=RANDAUGMENT,
                       loader_workers=8),
    # follow-up small/medium datasets (upsampled to 224): 300 epochs, AdamW 2e-3, wd 0.05, warmup 50,
    # RandAugment, mixup 0.8, cutmix 1.0, random erasing 0.25, drop-path 0.1, batch 512.
    "followup_small": Recipe(epochs=300, batch_size=512, lr=2e-3, weight_decay=0.05, warmup_epochs=50,
                             randaugment=RANDAUGMENT, crop_scale=(0.08, 1.0), mixup=0.8, cutmix=1.0,
                             reprob=0.25, drop_path=0.1, loader_workers=8),
    # follow-up ImageNet-1K (DeiT-B corrected recipe): lr 1e-3 at batch 1024, warmup 5, min lr 1e-5.
    "imagenet": Recipe(epochs=300, batch_size=1024, lr=1e-3, weight_decay=0.05, warmup_epochs=5, min_lr=1e-5,
                       randaugment=RANDAUGMENT, crop_scale=(0.08, 1.0), mixup=0.8, cutmix=1.0,
                       reprob=0.25, drop_path=0.1, loader_workers=8),
    # digits on a laptop CPU: no flips (digits are not mirror-symmetric), no RandAugment.
    "cpu": Recipe(epochs=50, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_epochs=3, warmup_lr=1e-5,
                  min_lr=1e-5, grad_clip=1.0, hflip=0.0, amp=False),
}

# A recipe that suits each dataset when none is named.
DEFAULT_RECIPE = {"digits": "cpu", "cifar10": "v1_small", "cifar100": "v1_small", "svhn": "v1_small",
                  "mnist": "v1_small", "fashion_mnist": "v1_small", "stl10": "followup_small",
                  "flowers102": "followup_small", "pets": "followup_small", "food101": "followup_small",
                  "imagefolder": "imagenet"}


def replaced(base: Recipe, **changes) -> Recipe:
    """`base` with fields changed. A run no longer than `base`'s warmup (epochs changed, warmup
    not) warms up for epochs - 1 instead, with a warning; a warmup_epochs given is kept (and checked)."""
    epochs = changes.get("epochs")
    if "warmup_epochs" not in changes and isinstance(epochs, int) and 1 <= epochs <= base.warmup_epochs:
        warnings.warn(f"warmup_epochs={base.warmup_epochs} of the recipe clipped to {epochs - 1} to fit "
                      f"epochs={epochs} (set warmup_epochs to choose another)")
        changes["warmup_epochs"] = epochs - 1
    return replace(base, **changes)


def recipe(name: str, **overrides) -> Recipe:
    """A named recipe with fields overridden (unset overrides, None, are dropped; see `replaced`)."""
    choice("recipe", name, sorted(RECIPES))
    known = {f.name for f in fields(Recipe)}
    for key in overrides:
        choice("recipe field", key, sorted(known))
    return replaced(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
