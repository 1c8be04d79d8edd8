"""`structinit fetch DATASET --data-root DIR`: download a dataset in torchvision's layout."""
from __future__ import annotations

import argparse

HELP = "download a dataset in torchvision's layout (the cluster configs run it on every node)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset")
    p.add_argument("--data-root", required=True)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit.data import load_splits

    try:
        train, test = load_splits(args.dataset, args.data_root, download=True)
    except ValueError as err:
        parser.refuse(err)
    print(f"{args.dataset} under {args.data_root}: {len(train)} train, {len(test)} test images")
    return 0
