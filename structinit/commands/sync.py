"""`structinit sync STUDY`: write what MLflow lacks of a study's executions from its Parquet
tables, and record the run ids in them (after MLflow was unreachable during a study)."""
from __future__ import annotations

import argparse
import os

from structinit.commands.options import add_study

HELP = ("write what MLflow lacks of a study (runs, metrics, statuses, the parent's summary) from its Parquet tables: "
        "after MLflow was unreachable during the study")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_study(p)
    p.add_argument("--execution", help="one execution (default: all of the study's)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from structinit import report, results, tracking
    from structinit.paths import StudyPaths
    from structinit.validate import check, component, writable

    uri = args.tracking_uri or tracking.default_uri()
    try:  # every input read and checked before anything is written
        component("study", args.study)
        paths = StudyPaths(args.storage, args.study)
        folder = paths.folder
        names = results.executions(folder)
        check("study", args.study, f"a study with results under {folder}/results", bool(names))
        if args.execution:
            check("execution", args.execution, f"one of {names}", args.execution in names)
            names = [args.execution]
        tables = {execution: (*results.read(folder, execution), results.read_attention(folder, execution))
                  for execution in names}  # all read before any write
        pairs, _, reference = report.declared(paths)
        objective, metric = report.declared_objective(paths)
        for execution in tables:  # the tables it rewrites with the run ids
            writable("results file", os.path.join(folder, "results", "trials", f"{execution}.parquet"))
            writable("results file", os.path.join(folder, "results", "history", f"{execution}.parquet"))
        tracking.check(uri)
    except ValueError as err:
        parser.refuse(err)
    for execution, (trials, history, attention) in tables.items():
        ids = tracking.sync(uri, args.study, execution, trials, history, attention)
        report.log_summary(tracking.latest_run(uri, args.study, "execution", execution), trials, pairs, reference,
                           history, objective, metric)
        for t in trials:
            t["mlflow_run_id"] = ids.get(t["trial_id"])
        results.write(folder, execution, trials, history)
        print(f"{execution}: {len(ids)} trial runs, {len(history)} epochs checked in MLflow at {uri}")
    return 0
