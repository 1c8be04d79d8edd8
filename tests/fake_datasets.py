"""Small datasets written in each dataset's standard on-disk format, as the official archives
unpack; each writer returns the (train, test) images (uint8 HWC) and labels it wrote."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

CLASSES = 3


def _images(rng, n, size, chans=3):
    shape = (n, size, size, chans) if chans == 3 else (n, size, size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _labels(n):
    return np.arange(n) % CLASSES


def cifar(root: Path, rng, n=30, hundred=False):
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    out = []
    names = ["train", "test"] if hundred else ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                                 "data_batch_5", "test_batch"]
    for name in names:
        x, y = _images(rng, n, 32), _labels(n)
        rows = x.transpose(0, 3, 1, 2).reshape(n, 3072)  # R(1024) | G(1024) | B(1024)
        batch = {"data": rows, key: y.tolist()}
        if hundred:
            batch["coarse_labels"] = y.tolist()
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        out.append((x, y))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)]} if hundred else {
        "label_names": [f"c{i}" for i in range(10)]}
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f)
    train = (np.concatenate([o[0] for o in out[:-1]]), np.concatenate([o[1] for o in out[:-1]]))
    return train, out[-1]


def svhn(root: Path, rng, n=30):
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for split in ("train", "test"):
        x, y = _images(rng, n, 32), _labels(n)
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": np.where(y == 0, 10, y)[:, None]})
        out.append((x, y))
    return tuple(out)


def stl10(root: Path, rng, n=12):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = []
    for split in ("train", "test"):
        x, y = _images(rng, n, 96), _labels(n)
        x.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # column-major planes
        (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        out.append((x, y))
    _images(rng, 2, 96).transpose(0, 3, 2, 1).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    return tuple(out)


def _jpegless(path: Path, img: np.ndarray):
    Image.fromarray(img).save(path, format="PNG")  # lossless bytes under the dataset's file name


def flowers102(root: Path, rng, n=12):
    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    x, y = _images(rng, 2 * n, 40), _labels(2 * n)
    for i, img in enumerate(x, 1):
        _jpegless(folder / "jpg" / f"image_{i:05d}.jpg", img)
    savemat(folder / "imagelabels.mat", {"labels": y + 1})
    ids = np.arange(1, 2 * n + 1)
    savemat(folder / "setid.mat", {"trnid": ids[:n], "valid": ids[:0] + 1, "tstid": ids[n:]})
    return (x[:n], y[:n]), (x[n:], y[n:])


def pets(root: Path, rng, n=12):
    folder = root / "oxford-iiit-pet"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    out = []
    breeds = ["Abyssinian", "beagle", "Bengal"]
    for split in ("trainval", "test"):
        x, y = _images(rng, n, 40), _labels(n)
        lines = []
        for i, (img, label) in enumerate(zip(x, y)):
            image_id = f"{breeds[label]}_{split}{i}"
            _jpegless(folder / "images" / f"{image_id}.jpg", img)
            lines.append(f"{image_id} {label + 1} 1 1")
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        out.append((x, y))
    return tuple(out)


def food101(root: Path, rng, n=12):
    folder = root / "food-101"
    (folder / "meta").mkdir(parents=True)
    classes = ["apple_pie", "bibimbap", "churros"]
    out = []
    for split in ("train", "test"):
        x, y = _images(rng, n, 40), _labels(n)
        meta = {c: [] for c in classes}
        for i, (img, label) in enumerate(zip(x, y)):
            (folder / "images" / classes[label]).mkdir(parents=True, exist_ok=True)
            _jpegless(folder / "images" / classes[label] / f"{split}{i}.jpg", img)
            meta[classes[label]].append(f"{classes[label]}/{split}{i}")
        (folder / "meta" / f"{split}.json").write_text(json.dumps(meta))
        order = [i for c in range(CLASSES) for i in range(n) if y[i] == c]  # torchvision lists by class
        out.append((x[order], y[order]))
    (folder / "meta" / "classes.txt").write_text("\n".join(classes))
    return tuple(out)


def _idx(path: Path, array: np.ndarray):
    magic = (0x08 << 8) | array.ndim  # type code 0x08: uint8
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist(root: Path, rng, n=30, folder="MNIST"):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = []
    for prefix in ("train", "t10k"):
        x, y = _images(rng, n, 28, chans=1), _labels(n)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out.append((x, y))
    return tuple(out)


def imagefolder(root: Path, rng, n=12):
    out = []
    for split in ("train", "val"):
        x, y = _images(rng, n, 24), _labels(n)
        for i, (img, label) in enumerate(zip(x, y)):
            (root / split / f"class{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / split / f"class{label}" / f"{i:03d}.png")
        order = sorted(range(n), key=lambda i: (y[i], f"{i:03d}"))  # ImageFolder sorts by class, then name
        out.append((x[order], y[order]))
    return tuple(out)


WRITERS = {
    "cifar10": cifar, "cifar100": lambda root, rng: cifar(root, rng, hundred=True), "svhn": svhn, "stl10": stl10,
    "flowers102": flowers102, "pets": pets, "food101": food101, "mnist": mnist,
    "fashion_mnist": lambda root, rng: mnist(root, rng, folder="FashionMNIST"), "imagefolder": imagefolder,
}
