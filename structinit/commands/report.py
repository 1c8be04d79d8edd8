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


def preflight(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """What can be checked before the report reads its records (the report then reads and checks
    every one before it writes anything): the study's and execution's names (each one path
    component), the Optuna storage's URL, the MLflow store. Returns the tracking URI."""
    from structinit import tracking
    from structinit.validate import component, database_url

    uri = args.tracking_uri or tracking.default_uri()
    try:
        component("study", args.study)
        if args.execution is not None:
            component("execution", args.execution)
        if args.optuna_url is not None:
            database_url("optuna_url", args.optuna_url)
        tracking.check(uri)
    except ValueError as err:
        parser.refuse(err)
    return uri


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    uri = preflight(args, parser)
    from structinit import tracking
    from structinit.report import report

    try:
        print(report(args.study, storage=args.storage, tracking_uri=uri, optuna_url=args.optuna_url,
                     execution=args.execution))
    except ValueError as err:
        parser.refuse(err)
    from structinit.paths import StudyPaths

    execution = args.execution or StudyPaths(args.storage, args.study).execution()
    run = execution and tracking.latest_run(uri, args.study, "execution", execution)
    for line in tracking.where(uri, args.study, run and run.run_id):  # its trials, a compare link per configuration
        print(line)
    return 0
