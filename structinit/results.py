"""Study results as Parquet: one row per trial, one row per trial-epoch, one row per trial,
measured epoch, block and head of its attention, under explicit schemas.

Each study execution writes its own part (`<study>/results/{trials,history,attention}/<execution>.parquet`),
so executions append and a resumed execution rewrites only its own part; `load` and
`load_attention` read them all. Plain pyarrow: the rows come from Tune's results by way of
record.py, and from the tables themselves (`structinit sync`, the report).
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from structinit.config import field_types
from structinit.metrics import INIT
from structinit.validate import check

# The TrialConfig.flat() keys a trial's row holds, as `column`s. `value_proj`: whether pe_scaled - baseline
# holds impulse's mimetic V/proj besides the PE scale (stats.control_parts). `pe_scale` is the configured factor,
# None (null) where the model's default applies (x18 on a learned PE, x1 on a fixed sin-cos one);
# `init_pe_scale` is the factor that default resolves to, recorded for every init although only impulse and
# pe_scaled multiply the PE by it. Tables written before a column existed read it as null.
CONFIG = ("dataset", "fraction", "model.name", "model.embed_dim", "model.num_heads", "model.depth", "model.patch_size",
          "model.kernel_size", "init.filter_size", "init.pseudo_input", "init.solver", "init.target_mass",
          "init.offsets", "init.distinct_filters", "init.pe_scale", "init.value_proj")
ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}


def column(key: str) -> str:
    """A config field's column: its name without the section (the model's name: `model`)."""
    return "model" if key == "model.name" else key.rpartition(".")[2]


# What a trial is (config.identity, base_key, setting_key; `setting`: its init's fields, JSON), the study's
# base trial it came from (`study_base`), and the trial whose result it reused instead of training (null: it
# trained)
IDENTITY = (("identity", pa.string()), ("weights", pa.string()), ("base_key", pa.string()),
            ("setting_key", pa.string()), ("setting", pa.string()), ("study_base", pa.string()),
            ("reused_from", pa.string()))
TRIALS = pa.schema([
    ("study", pa.string()), ("execution", pa.string()), ("trial_id", pa.string()), ("status", pa.string()),
    ("error", pa.string()), ("config_key", pa.string()), ("init", pa.string()), ("seed", pa.int64()), *IDENTITY,
    ("group", pa.int64()),  # its proposal in its execution (the Repeater's group: every (init, seed) of it)
    ("stopped_at", pa.int64()),  # a STOPPED trial: the epochs it had trained when its scheduler stopped it
    *((column(k), ARROW[t]) for k, t in field_types().items() if k in CONFIG),
    ("epochs_done", pa.int64()), ("final_val_top1", pa.float64()), ("best_val_top1", pa.float64()),
    ("final_test_top1", pa.float64()), ("test_top1_at_best_val", pa.float64()), ("best_val_epoch", pa.int64()),
    *((k, pa.float64()) for k in INIT),
    ("time_total_s", pa.float64()), ("mlflow_run_id", pa.string()), ("params", pa.string()),
    ("trial_config", pa.string()),  # every TrialConfig field (JSON): what `structinit sync` logs as params
])
HISTORY = pa.schema([
    ("study", pa.string()), ("execution", pa.string()), ("trial_id", pa.string()), ("config_key", pa.string()),
    ("init", pa.string()), ("seed", pa.int64()), ("epoch", pa.int64()), ("train_loss", pa.float64()),
    ("val_top1", pa.float64()), ("val_loss", pa.float64()), ("test_top1", pa.float64()),
    ("test_loss", pa.float64()), ("lr", pa.float64()), ("images_per_s", pa.float64()),
    ("epoch_seconds", pa.float64()), ("val_top5", pa.float64()), ("test_top5", pa.float64()),
    ("train_seconds", pa.float64()), ("eval_seconds", pa.float64()), ("attention_seconds", pa.float64()),
    ("setup_seconds", pa.float64()),
    ("startup_seconds", pa.float64()), ("data_from_store", pa.float64()), ("final_test_top1", pa.float64()),
    ("test_top1_at_best_val", pa.float64()), ("best_val_top1", pa.float64()), ("best_val_epoch", pa.float64()),
    *((k, pa.float64()) for k in INIT),
])  # every metric a worker logs per epoch: `structinit sync` replays MLflow from these tables
ATTENTION = pa.schema([
    ("study", pa.string()), ("execution", pa.string()), ("trial_id", pa.string()), ("init", pa.string()),
    ("seed", pa.int64()), ("epoch", pa.int64()), ("block", pa.int64()), ("head", pa.int64()),
    ("distance", pa.float64()), ("entropy", pa.float64()), ("mass", pa.float64()), ("hit", pa.float64()),
])  # attention.py's measures per block and head; `epoch`: the epochs trained when measured (0: the init)


def attention_rows(base: dict, measured: list[dict]) -> list[dict]:
    """A trial's rows of the attention table: its measures (train.watch_attention's rows) with the
    trial's study, execution, id, init and seed (`base`)."""
    return [{**base, **{k: m.get(k) for k in ATTENTION.names if k not in base}} for m in measured]


STOPPED = "STOPPED"  # a trial a scheduler stopped before its last epoch (Tune says TERMINATED); `stopped_at`: where


def _write(rows: list[dict], schema: pa.Schema, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, path)
    return path


def write(folder: str, execution: str, trials: list[dict], history: list[dict],
          attention: list[dict] | None = None) -> dict:
    """Write one execution's parts under a study folder (its attention part where given: `sync`
    rewrites only the trials and history it holds); returns their paths and how many trials ended
    in each status."""
    from collections import Counter

    folder = os.path.join(folder, "results")
    out = {"trials": _write(trials, TRIALS, os.path.join(folder, "trials", f"{execution}.parquet")),
           "history": _write(history, HISTORY, os.path.join(folder, "history", f"{execution}.parquet"))}
    if attention is not None:
        out["attention"] = _write(attention, ATTENTION, os.path.join(folder, "attention", f"{execution}.parquet"))
    return {**out, "statuses": dict(Counter(t["status"] for t in trials))}


def _table(path: str, schema: pa.Schema) -> pa.Table:
    """One results file under today's schema; a damaged or foreign file is refused naming it."""
    try:
        return pads.dataset(path, schema=schema, format="parquet").to_table()
    except (pa.ArrowException, OSError) as err:
        check("results file", path, f"a Parquet table of a study's results (pyarrow: {str(err).splitlines()[0]})",
              False)


def load(folder: str):
    """(trials, history) of every execution under a study folder, as pandas DataFrames."""
    out = []
    for name, schema in (("trials", TRIALS), ("history", HISTORY)):
        path = os.path.join(folder, "results", name)
        if not os.path.isdir(path):
            raise ValueError(f"study folder={folder!r} has no results: expected {path}/<execution>.parquet "
                             f"(run the study first)")
        tables = [_table(os.path.join(path, f), schema) for f in sorted(os.listdir(path)) if f.endswith(".parquet")]
        out.append((pa.concat_tables(tables) if tables else schema.empty_table()).to_pandas())
    return tuple(out)


def load_attention(folder: str):
    """The attention table of every execution under a study folder, as a pandas DataFrame (empty,
    with its columns, for a study whose executions measured none: written before runs measured
    attention, or of ConvMixers)."""
    path = os.path.join(folder, "results", "attention")
    files = sorted(f for f in os.listdir(path) if f.endswith(".parquet")) if os.path.isdir(path) else []
    tables = [_table(os.path.join(path, f), ATTENTION) for f in files]
    return (pa.concat_tables(tables) if tables else ATTENTION.empty_table()).to_pandas()


def read_attention(folder: str, execution: str) -> list[dict]:
    """The attention rows of one execution (none where it has no attention part)."""
    path = os.path.join(folder, "results", "attention", f"{execution}.parquet")
    return _table(path, ATTENTION).to_pylist() if os.path.exists(path) else []


def trained(folder: str) -> list[tuple[dict, dict, list[dict]]]:
    """(trial row, its last epoch's metrics, every epoch's) of every trial that trained to its end
    under a study folder, in any execution (none before its first): what a later trial of the same
    identity reuses."""
    if not os.path.isdir(os.path.join(folder, "results", "trials")):
        return []
    trials, history = load(folder)
    done = trials[(trials["status"] == "TERMINATED") & trials["reused_from"].isna() & trials["identity"].notna()]
    epochs = {k: g.to_dict("records") for k, g in history.sort_values("epoch").groupby("trial_id")}
    out = []
    for row in done.to_dict("records"):
        if row["trial_id"] in epochs:
            metrics = {k: v for k, v in epochs[row["trial_id"]][-1].items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
            out.append((row, {**metrics, "identity": row["identity"], "weights": row["weights"]},
                        epochs[row["trial_id"]]))
    return out


def executions(folder: str) -> list[str]:
    """The executions that have results under a study folder, oldest first."""
    path = os.path.join(folder, "results", "trials")
    return sorted(f[:-len(".parquet")] for f in os.listdir(path) if f.endswith(".parquet")) if os.path.isdir(
        path) else []


def read(folder: str, execution: str) -> tuple[list[dict], list[dict]]:
    """(trials, history) rows of one execution, under today's schemas."""
    return tuple(_table(os.path.join(folder, "results", name, f"{execution}.parquet"), schema).to_pylist()
                 for name, schema in (("trials", TRIALS), ("history", HISTORY)))
