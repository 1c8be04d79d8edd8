"""Datasets by name, seeded stratified fractions, and timm transforms.

`digits` (scikit-learn's bundled 8x8 digits) works offline everywhere; every other name reads a
torchvision dataset (or an ImageNet-style folder) from a local root in its standard on-disk
format, downloading only when asked. Files that are not the official archives (re-packed or
generated ones) fail torchvision's md5 checks; `verify=False` checks only that they exist.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image
from sklearn.model_selection import train_test_split
from timm.data import create_transform
from torch.utils.data import Dataset, Subset

from structinit.provenance import files_digest
from structinit.validate import check, choice, writable

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    num_classes: int
    in_chans: int
    img_size: int  # native side, or the side images are resized to
    mean: tuple
    std: tuple
    layout: str  # what is expected under the root, for error messages
    splits: tuple = ()  # torchvision (train, test) split arguments
    tv: str = ""  # torchvision class name
    files: tuple = ()  # what it reads under the root (files or folders): its digest covers these


DATASETS = {
    "digits": DatasetSpec(10, 1, 8, (0.3,), (0.37,), "nothing: scikit-learn ships it"),
    "cifar10": DatasetSpec(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
                           ({"train": True}, {"train": False}), "CIFAR10", files=("cifar-10-batches-py",)),
    "cifar100": DatasetSpec(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            "cifar-100-python/{train,test,meta}", ({"train": True}, {"train": False}), "CIFAR100",
                            files=("cifar-100-python",)),
    "svhn": DatasetSpec(10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        "{train,test}_32x32.mat", ({"split": "train"}, {"split": "test"}), "SVHN",
                        files=("train_32x32.mat", "test_32x32.mat")),
    "stl10": DatasetSpec(10, 3, 224, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713),
                         "stl10_binary/{train,test}_{X,y}.bin, class_names.txt",
                         ({"split": "train"}, {"split": "test"}), "STL10", files=("stl10_binary",)),
    "flowers102": DatasetSpec(102, 3, 224, IMAGENET_MEAN, IMAGENET_STD,
                              "flowers-102/{jpg/,imagelabels.mat,setid.mat}",
                              ({"split": "train"}, {"split": "test"}), "Flowers102", files=("flowers-102",)),
    "pets": DatasetSpec(37, 3, 224, IMAGENET_MEAN, IMAGENET_STD,
                        "oxford-iiit-pet/{images/,annotations/{trainval,test}.txt}",
                        ({"split": "trainval"}, {"split": "test"}), "OxfordIIITPet", files=("oxford-iiit-pet",)),
    "food101": DatasetSpec(101, 3, 224, IMAGENET_MEAN, IMAGENET_STD,
                           "food-101/{images/<class>/*.jpg,meta/{train,test}.json,meta/classes.txt}",
                           ({"split": "train"}, {"split": "test"}), "Food101", files=("food-101",)),
    "mnist": DatasetSpec(10, 1, 28, (0.1307,), (0.3081,), "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                         ({"train": True}, {"train": False}), "MNIST", files=("MNIST/raw",)),
    "fashion_mnist": DatasetSpec(10, 1, 28, (0.2860,), (0.3530,),
                                 "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                                 ({"train": True}, {"train": False}), "FashionMNIST", files=("FashionMNIST/raw",)),
    "imagefolder": DatasetSpec(0, 3, 224, IMAGENET_MEAN, IMAGENET_STD, "{train,val}/<class>/<image>",
                               files=("train", "val")),
}


class Digits(Dataset):
    """scikit-learn's 1797 8x8 digits as 'L' PIL images (values 0..16 scaled to 0..255)."""

    def __init__(self):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        self.images = (bunch.images * 255.0 / 16.0).round().astype(np.uint8)
        self.targets = bunch.target.tolist()
        self.transform = None

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        return (self.transform(img) if self.transform else img), self.targets[i]


def _trusting(cls):
    """`cls` with its md5 lists emptied, so torchvision checks only that the files exist."""
    attrs = {}
    for name in ("train_list", "test_list"):
        if hasattr(cls, name):
            attrs[name] = [[f, None] for f, *_ in getattr(cls, name)]
    if isinstance(getattr(cls, "meta", None), dict):
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {k: [v[0], v[1], None] for k, v in cls.split_list.items()}
    if hasattr(cls, "_file_dict"):
        attrs["_file_dict"] = {k: (v[0], None) for k, v in cls._file_dict.items()}
    return type(cls.__name__, (cls,), attrs)


def labels_of(ds) -> list[int]:
    if isinstance(ds, Subset):
        labels = labels_of(ds.dataset)
        return [labels[i] for i in ds.indices]
    for attr in ("targets", "labels", "_labels"):
        if hasattr(ds, attr):
            return [int(y) for y in getattr(ds, attr)]
    raise TypeError(f"{type(ds).__name__} exposes no labels")


def load_splits(name: str, root: str | None, download: bool = False, verify: bool = True):
    """(train pool, test set) for a dataset name; a clear ValueError if the files are not there."""
    choice("dataset", name, sorted(DATASETS))
    spec = DATASETS[name]
    if name == "digits":
        full = Digits()
        pool, test = train_test_split(np.arange(len(full)), test_size=0.5, stratify=full.targets, random_state=0)
        return Subset(full, pool.tolist()), Subset(full, test.tolist())
    check("data_root", root, f"a directory holding {spec.layout} for dataset={name!r}",
          root is not None and (download or os.path.isdir(root)))
    if download:  # where torchvision would write the archives, checked before it does
        writable("data_root", root, folder=True)
    try:
        if name == "imagefolder":
            return tvd.ImageFolder(os.path.join(root, "train")), tvd.ImageFolder(os.path.join(root, "val"))
        cls = getattr(tvd, spec.tv)
        cls = cls if verify or download else _trusting(cls)
        return tuple(cls(root, download=download, **split) for split in spec.splits)
    except Exception as err:  # any failure to read user files becomes one clear message
        hint = "" if download else "; pass download=True (--download) to fetch it"
        hint += ", or verify=False (--no-verify) for files that are not the official archives" if verify else ""
        raise ValueError(f"dataset={name!r} under data_root={root!r} is missing or corrupt ({err}): "
                         f"expected {spec.layout}{hint}") from err


def fingerprint(name: str, root: str | None, pool) -> str:
    """A digest of what a dataset is (16 hex digits): digits' pixels and labels, which scikit-learn
    generates in memory (`pool`: its training pool), else the names and sizes of its files under
    `root` (`DatasetSpec.files`, provenance.files_digest)."""
    if name == "digits":
        full = pool.dataset
        h = hashlib.sha256(full.images.tobytes())
        h.update(np.asarray(full.targets, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]
    return files_digest(root, DATASETS[name].files)


def num_classes(name: str, train) -> int:
    return len(train.classes) if name == "imagefolder" else DATASETS[name].num_classes


def split_indices(labels: list[int], fraction: float, val_fraction: float, seed: int, val_size: int | None = None):
    """Stratified and seeded: a validation share of the pool (at most `val_size` images of it, a
    stratified subset), then `fraction` of the rest for training. The cap leaves the training
    share as it was: only how much of the held-out share is evaluated changes."""
    idx = np.arange(len(labels))
    labels = np.asarray(labels)
    train, val = idx, np.array([], dtype=int)
    if val_fraction > 0:
        train, val = train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)
        if val_size is not None and len(val) > val_size:
            val, _ = train_test_split(val, train_size=val_size, stratify=labels[val], random_state=seed)
    if fraction < 1:
        train, _ = train_test_split(train, train_size=fraction, stratify=labels[train], random_state=seed)
    return sorted(train.tolist()), sorted(val.tolist())


def check_split(labels: list[int], fraction: float, val_fraction: float, val_size: int | None) -> int:
    """The splits `split_indices` draws from `labels` (their sizes do not depend on the seed) keep
    every class in the training split: checked before any worker draws them. A ValueError names
    the value that breaks them; returns the size of the training split."""
    labels = np.asarray(labels)
    classes = len(set(labels.tolist()))
    for name, value, share, held_out, cap in (("val_fraction", val_fraction, 1.0, val_fraction, None),
                                              ("val_size", val_size, 1.0, val_fraction, val_size),
                                              ("fraction", fraction, fraction, val_fraction, val_size)):
        try:  # one value more at each step: the first that fails is named
            train, _ = split_indices(labels, share, held_out, 0, cap)
            reason = "" if len(set(labels[train].tolist())) == classes else "a class has no training image"
        except ValueError as err:  # scikit-learn's stratified split refused the sizes
            reason = str(err).splitlines()[0]
        check(name, value, f"a split of the {len(labels)}-image pool that keeps each of its {classes} classes in "
              f"every part ({reason})", not reason)
    return len(train)


class Transformed(Dataset):
    """A view of `base[indices]` with its own transform."""

    def __init__(self, base, indices, transform):
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        img, label = self.base[self.indices[i]]
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        return self.transform(img), label


@dataclass
class Data:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int


def build(name: str, root: str | None, *, img_size: int | None, fraction: float, val_fraction: float, seed: int,
          recipe, download: bool = False, verify: bool = True, val_size: int | None = None, splits=None) -> Data:
    """Train/val/test datasets with timm transforms (RandAugment, random erasing, flips from the
    recipe), from `splits` (the (pool, test) `load_splits` gives, read once by a study and shared)
    or read from the files."""
    spec = DATASETS[name]
    pool, test = splits or load_splits(name, root, download, verify)
    train_idx, val_idx = split_indices(labels_of(pool), fraction, val_fraction, seed, val_size)
    size = img_size or spec.img_size
    norm = dict(mean=spec.mean, std=spec.std, crop_pct=1.0)
    train_tf = create_transform((spec.in_chans, size, size), is_training=True, auto_augment=recipe.randaugment,
                                hflip=recipe.hflip, re_prob=recipe.reprob, scale=recipe.crop_scale,
                                color_jitter=recipe.color_jitter,
                                ratio=(1.0, 1.0) if recipe.crop_scale == (1.0, 1.0) else (3 / 4, 4 / 3), **norm)
    eval_tf = create_transform((spec.in_chans, size, size), is_training=False, **norm)
    return Data(train=Transformed(pool, train_idx, train_tf), val=Transformed(pool, val_idx, eval_tf),
                test=Transformed(test, list(range(len(test))), eval_tf),
                num_classes=num_classes(name, pool))


def _order(size: int, seed: int) -> list[int]:
    """A seeded permutation of range(size)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()


def _plain(d: Data) -> Transformed:
    """The training split under the evaluation transform (no augmentation)."""
    return Transformed(d.train.base, d.train.indices, d.val.transform)


def init_images(d: Data, n: int, seed: int) -> torch.Tensor:
    """(min(n, |train|), C, H, W): a seeded draw of training images under the evaluation transform
    (no augmentation): the batch a data-aware init (pseudo_input `data`) solves on, the head of
    the seed's permutation of the training split."""
    plain = _plain(d)
    return torch.stack([plain[i][0] for i in _order(len(plain), seed)[:n]])


def held_out(d: Data, n: int = 64, seed: int = 0) -> torch.Tensor:
    """(min(n, |split|), C, H, W): the images measures outside training read (the epoch-0 rank k,
    the attention's fidelity on real images and the near-chance warning, `inspect-init --dataset`,
    `structinit rank`), never test images: the test set is read only at the end of a run.

    A seeded draw of validation images (their evaluation transform), the same for every init at a
    seed so that arms are compared on the same images; none of them is a training image, so none
    is in the batch a data-aware init solves on. Without a validation split (val_fraction=0), the
    tail of the seed's permutation of the training split (evaluation transform), whose head
    `init_images` draws: the two are disjoint while data_images + n <= |train|."""
    if len(d.val):
        return torch.stack([d.val[i][0] for i in _order(len(d.val), seed)[:n]])
    plain = _plain(d)
    order = _order(len(plain), seed)
    return torch.stack([plain[i][0] for i in order[max(len(order) - n, 0):]])
