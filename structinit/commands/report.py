"""`structinit report STUDY`: a study's comparison table, paired differences and plots (report.py)."""
from __future__ import annotations

import argparse

from structinit.commands.options import add_study

HELP = "comparison table, paired differences and plots of a study's results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_study(p)
    p.add_argument("--optuna-url", help="the study's Optuna storage URL (default sqlite in its folder)")
    p.add_argument("--execution", help="report the executions of this one's base (default: the latest's); "
                                       "executions of another base (preset, epochs, --set) are never pooled")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit.report import report

    from structinit import tracking

    uri = args.tracking_uri or tracking.default_uri()
    try:
        tracking.check(uri)
        print(report(args.study, storage=args.storage, tracking_uri=uri, optuna_url=args.optuna_url,
                     execution=args.execution))
    except ValueError as err:
        parser.refuse(err)
    link = tracking.where(uri, args.study)
    if link:
        print(link)
    return 0
