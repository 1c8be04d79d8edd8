"""The comparison table of a study: per configuration and init, mean ± std and 95 % CI over seeds
of the final and best test accuracy; the paired differences a study declares, e.g. impulse −
mimetic and impulse − default (same configuration, same seed), with paired t-test p-values
Holm-adjusted over the table; the decomposition impulse − baseline = (pe_scaled − baseline) +
(impulse − pe_scaled), each part named for what differs (PE scale, mimetic V/proj, Q/K); per
(embed_dim, num_heads) cell the width conditions and the impulse setting the validation set picks;
the attention through training per arm (mean distance and the mass on the init's taps, at the init
and at the end) and, for a study across training fractions, how much further it moves with more
data; the configurations a grouped scheduler stopped early, apart (where they stopped, their
objective there); parameter importance over configurations (one value each: its declared
objective); failed trials with their reasons; the plots it declares.

A study declares its pairs, plots, objective and metric (Study.pairs, ...); its runner records
them in the study folder (`declare`), where `structinit report STUDY`, which knows the study by
name only, reads them."""
from __future__ import annotations

import json
import math
import os
import textwrap

import numpy as np
import pandas as pd

from structinit import fidelity, results, tracking
from structinit.config import config_ids, label
from structinit.declarations import PAIRS, PLOTS
from structinit.metrics import TEST_TOP1, TOP1
from structinit.paths import StudyPaths
from structinit.rank import conditions
from structinit.stats import (EXACT_BELOW, across_fractions, arms, attention_by_seed, attention_curves,
                              attention_summary, by_seed, ci95, comparisons, configurations, decomposition, holm,
                              importances as importance_views, lost_seeds, paired_test, per_cell, varies_width,
                              vit_conditions, whole_rank)
from structinit.validate import check, sqlite_store, writable

# What b is in a paired difference a - b, as the report names it
BASELINES = {
    "torch_default": "the unstructured init of PyTorch's defaults (the footings' baseline)",
    "default": "timm's unstructured init",
    "pe_scaled": "the control: all impulse writes but its Q/K solve (its PE scale; its V/proj where value_proj is "
                 "mimetic)",
    "mimetic": "mimetic init: Q/K and V/proj (Trockman & Kolter 2023)",
    "mimetic_vo": "mimetic's V/proj alone, Q/K and PE at the base: on the followup footing impulse's V/proj init, "
                  "so impulse - mimetic_vo is impulse's Q/K and PE scale on the same V/proj init",
    "conditioned": "conditioned init: Q/K orthogonal, V = I, condition number 1 (Saratchandran, Lucey et al. 2026)",
    "dct": "DCT init: W_K the orthonormal DCT-II (Pan et al. 2024, arXiv 2405.13901)",
    "learned": "learned ConvMixer filters",
}

def declare(paths: StudyPaths, pairs: tuple, plots: tuple, reference: dict | None = None, objective: str = "mean",
            metric: str = "val_top1") -> None:
    """Record a study's pairs, plots, reference setting, objective and metric in its folder, for
    `structinit report`."""
    with open(paths.report_spec, "w") as f:
        json.dump({"pairs": pairs, "plots": plots, "reference": reference, "objective": objective, "metric": metric},
                  f)


def declared_objective(paths: StudyPaths) -> tuple[str, str]:
    """(objective, metric) a study recorded; the mean of val_top1 where it recorded none."""
    spec = {}
    if os.path.exists(paths.report_spec):
        with open(paths.report_spec) as f:
            try:
                spec = json.load(f)
            except ValueError:
                spec = {}  # `declared` names the damaged file
    return spec.get("objective", "mean"), spec.get("metric", "val_top1")


def declared(paths: StudyPaths) -> tuple[tuple, tuple, dict | None]:
    """(pairs, plots, reference) a study recorded; PAIRS, PLOTS and none where it recorded none."""
    if not os.path.exists(paths.report_spec):
        return PAIRS, PLOTS, None
    with open(paths.report_spec) as f:
        try:
            spec = json.load(f)
            return tuple(tuple(pair) for pair in spec["pairs"]), tuple(spec["plots"]), spec.get("reference")
        except (ValueError, KeyError, TypeError) as err:  # not JSON, or not the pairs and plots `declare` writes
            check("report spec", paths.report_spec, f"the JSON {{\"pairs\": [...], \"plots\": [...]}} a study "
                  f"declares ({type(err).__name__}: {err})", False)


def width_ratio(trial, k: float) -> float:
    """D / (k f^2) of a ConvMixer configuration (NaN for a ViT or without a measured k)."""
    if pd.isna(k) or pd.isna(trial.embed_dim) or pd.isna(trial.kernel_size):
        return math.nan
    return trial.embed_dim / (whole_rank(k) * trial.kernel_size ** 2)


def theory(trial, k: float) -> str:
    """The paper's width conditions for one configuration, with k its measured embedding rank:
    ConvMixer D >= k f^2 (as the ratio D / (k f^2)); ViT h >= f^2 and D/h >= k."""
    if pd.isna(k) or pd.isna(trial.embed_dim):
        return ""
    if not pd.isna(trial.kernel_size):
        return f"k={whole_rank(k)}, D/(k f²)={width_ratio(trial, k):.2f}"
    if pd.isna(trial.num_heads):
        return f"k={whole_rank(k)}"
    heads, width = vit_conditions(trial, k)
    return f"k={whole_rank(k)}, h≥f² {'✓' if heads else '✗'}, D/h≥k {'✓' if width else '✗'}"


def select(trials: pd.DataFrame, history: pd.DataFrame, execution: str | None = None):
    """The trials of one base out of every execution under a study folder: the base of `execution`
    (default: the latest with results), since executions of another base (another preset, epochs,
    `--set`) train other models and would pair with nothing or, under one label, mislead. Returns
    (its trials, their epochs, a note naming the executions left out and how to report them).
    Within it a model counts once (stats.arms); its epochs are its trained trial's."""
    executions = sorted(trials["execution"].dropna().unique())
    check("execution", execution, f"one of this study's executions with results: {executions}",
          execution is None or execution in executions)
    chosen = execution or executions[-1]
    trials = trials.reindex(columns=[*trials.columns, *(c for c in ("study_base", "reused_from")
                                                         if c not in trials.columns)])
    base = trials.loc[trials["execution"] == chosen, "study_base"].iloc[0] if len(trials) else None
    # a null base: tables from before bases were recorded, pooled as they were
    mine = trials[trials["study_base"].isna() if pd.isna(base) else trials["study_base"] == base]
    others = sorted(set(executions) - set(mine["execution"]))
    note = (f"{len(others)} execution(s) of another base left out ({', '.join(others)}): report one of them with "
            f"`structinit report {trials['study'].iloc[0]} --execution NAME`") if others else ""
    sources = set(mine["trial_id"]) | set(mine["reused_from"].dropna())
    return mine, history[history["trial_id"].isin(sources)], note


def summarize(trials: pd.DataFrame, pairs: tuple = PAIRS, reference: dict | None = None):
    """(per arm statistics, paired differences) of a study's trials (stats.arms: one init at one
    setting on one base, each seed once). n is the seeds with a final test top-1;
    `best_val_top1_mean` is what per_cell selects on. The paired rows are `stats.comparisons`:
    each declared (a, b) between compatible arms of one base, and each setting against the
    study's `reference` setting, same seeds; `lost` counts the seeds that ran but cannot pair (a
    failed or early-stopped side). Each has its two-sided `p`, the `test` that gave it
    (stats.paired_test: "exact" sign flips below stats.EXACT_BELOW seeds or at zero variance, else
    "t", the paired t-test) and `p_holm`, Holm-adjusted over every row of this table with a p
    (stats.holm): the family is the whole study's comparisons. `configs` (both tables): the
    config_keys of the proposals a row stands for (an arm's; a difference's: those both its arms
    ran, else arm a's, as for a setting against the reference setting), space-joined."""
    done = arms(trials)
    rows = []
    for arm, g in done.groupby("arm", sort=True):
        row = {"config": g["config"].iloc[0], "init": g["init"].iloc[0], "arm": arm, "setting": g["label"].iloc[0],
               "requested": g["requested"].iloc[0], "configs": g["configs"].iloc[0],
               "executions": ",".join(sorted(g["execution"].dropna().unique())),
               "reused": int(g["reused_from"].notna().sum())}
        for metric in TOP1:
            m, s, h, n = ci95(g[metric])
            row.update({f"{metric}_mean": m, f"{metric}_std": s, f"{metric}_ci95": h})
        row["n"] = ci95(g["final_test_top1"])[3]
        for measure in ("init_mass_pseudo", "init_mass_data", "init_hit_data", "init_wq_norm"):
            row[measure] = g[measure].mean()
        row["near_chance"] = int(fidelity.near_chance(g["init_hit_data"], g["init_hit_chance"]).sum())
        row["pe_unscaled"] = row["init"] == "pe_scaled" and bool((g["init_pe_scale"] == 1).all()) and bool(
            g["value_proj"].fillna("default").eq("default").all())  # unrecorded: pe_scaled kept the base's V/proj
        row["init_rank_k"] = g["init_rank_k"].mean()
        row["theory"] = theory(g.iloc[0], row["init_rank_k"])
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["config", "init"], kind="stable") if rows else pd.DataFrame(rows)
    paired = []
    for config, pair, a, b in comparisons(done, pairs, reference):
        diff = (by_seed(a) - by_seed(b)).dropna()
        m, s, h, n = ci95(diff)
        p, test = paired_test(diff)
        both = set(a["configs"].iloc[0].split()) & set(b["configs"].iloc[0].split())
        paired.append({"config": config, "pair": pair, "mean": m, "std": s, "ci95": h, "n": n, "p": p, "test": test,
                       "lost": lost_seeds(trials, a, b),
                       "width_ratio": width_ratio(a.iloc[0], a["init_rank_k"].mean()),
                       "configs": " ".join(sorted(both)) or a["configs"].iloc[0]})
    paired = pd.DataFrame(paired, columns=["config", "pair", "mean", "std", "ci95", "n", "p", "test", "lost",
                                           "width_ratio", "configs"])
    paired.insert(7, "p_holm", holm(paired["p"]))
    return table.reset_index(drop=True), paired


def pair_key(pair: str) -> str:
    """A paired row's name in MLflow keys: `impulse-mimetic` for impulse − mimetic, and a setting
    against its init's reference setting (stats.comparisons) `<init>-reference`."""
    a, _, b = pair.partition(" - ")
    return f"{a}-{b}" if " " not in a + b else f"{a.split()[0]}-reference"


def realised(setting: str) -> str:
    """The realised part of an arm's label ("→ mass 0.62", stats.arms), or ""."""
    return "→" + setting.partition("→")[2] if "→" in setting else ""


def by_config(trials: pd.DataFrame, table: pd.DataFrame, paired: pd.DataFrame, pairs: tuple = PAIRS):
    """`summarize`'s tables by configuration: a proposal of the study (its config_key), named by its
    short id (config.config_ids over these `trials`: the id its trial runs carry as tag `config`).
    Each row comes once per proposal it stands for (`configs`: an arm of an init that reads no
    searched field serves every proposal of its base). Returns (cells: `table`'s rows with `id`;
    diffs: `paired`'s rows with `id` and `key` (pair_key); names: id -> the configuration's params
    as a reader names them, ordered by name). Cells come init by init in the order `pairs` names
    them (impulse, then what it is compared with), then the others by name."""
    ids = config_ids(trials["config_key"])
    params = trials.drop_duplicates("config_key").set_index("config_key")["params"].map(lambda p: json.loads(p or "{}"))

    def name(p: dict) -> str:  # as stats.arms names a configuration: the base's fields, then the init's
        parts = [{k: v for k, v in p.items() if k.startswith("init.") == init} for init in (False, True)]
        return " ".join(label(json.dumps(part)) for part in parts if part) or "(base)"

    names = dict(sorted(((ids[k], name(params[k])) for k in ids), key=lambda kv: (kv[1], kv[0])))

    def explode(frame):
        if not len(frame):
            return frame.assign(id=pd.Series(dtype=str))
        return frame.assign(id=frame["configs"].str.split()).explode("id").assign(
            id=lambda f: f["id"].map(ids)).reset_index(drop=True)

    order = [*dict.fromkeys(i for pair in pairs for i in pair), *sorted(set(trials["init"]))]
    rank = {init: order.index(init) for init in set(trials["init"])}
    cells = explode(table)
    cells = cells.sort_values("init", key=lambda s: s.map(rank), kind="stable") if len(cells) else cells
    diffs = explode(paired)
    return cells, diffs.assign(key=diffs["pair"].map(pair_key)), names


def summary_metrics(trials: pd.DataFrame, pairs: tuple = PAIRS, reference: dict | None = None,
                    history: pd.DataFrame | None = None, objective: str = "mean",
                    metric: str = "val_top1") -> tuple[dict, dict]:
    """A study's summary as (metrics, params) for its parent MLflow run, from `summarize`'s tables
    `by_config`, keyed init or pair first, then the configuration's short id (MLflow's chart view
    makes a section of each key up to its last `/`: impulse-mimetic/ce611 holds that difference's
    mean, CI bounds and Holm p side by side, each chart titled in full): per configuration x init
    the mean final test top-1 and test top-1 at best val (`impulse/ce611/final_test_top1`,
    `.../test_top1_at_best_val`);
    per paired difference its mean, 95 % CI bounds and Holm p (`impulse-mimetic/ce611/mean`,
    `.../ci95_low`, `.../ci95_high`, `.../p_holm`: Holm over the pairs of these `trials`); the
    trials finished, failed, stopped early, trained and reused (`trials_*`); the configurations
    finished and stopped (`configurations_*`) and each param's importance over configurations
    (`importance/<param>` over the finished ones, `importance_at_<N>/<param>` over every
    configuration at the N epochs all reached where some stopped: stats.importances on the
    declared `objective` of `metric`; `history` gives a metric without a column in the trials
    table). NaN values (a CI or p of one seed) are left out. Params: each configuration's params by id (`config.ce611`: the same text at every
    resume and sync, as MLflow requires of a param), the pairs declared and the objective; the
    seeds are the run's `seeds` param."""
    return _summary(trials, *by_config(trials, *summarize(trials, pairs, reference), pairs), pairs, history,
                    objective, metric)


def _summary(trials: pd.DataFrame, cells: pd.DataFrame, diffs: pd.DataFrame, names: dict, pairs: tuple,
             history: pd.DataFrame | None = None, objective: str = "mean", metric: str = "val_top1"):
    statuses = trials["status"].value_counts()
    reused = int(trials["reused_from"].notna().sum()) if "reused_from" in trials else 0
    metrics = {"trials_finished": int(statuses.get("TERMINATED", 0)), "trials_failed": int(statuses.get("ERROR", 0)),
               "trials_stopped": int(statuses.get(results.STOPPED, 0)), "trials_trained": len(trials) - reused,
               "trials_reused": reused}
    for r in cells.itertuples():
        for key in TEST_TOP1:
            metrics[f"{r.init}/{r.id}/{key}"] = getattr(r, f"{key}_mean")
    for r in diffs.itertuples():
        at = f"{r.key}/{r.id}"
        metrics.update({f"{at}/mean": r.mean, f"{at}/ci95_low": r.mean - r.ci95, f"{at}/ci95_high": r.mean + r.ci95,
                        f"{at}/p_holm": r.p_holm})
    configs = configurations(trials, pd.DataFrame() if history is None else history, objective, metric)
    metrics.update({f"configurations_{s}": int((configs["status"] == s).sum()) for s in ("finished", "stopped")})
    for view, (_, found) in importance_views(trials, pd.DataFrame() if history is None else history, objective,
                                             metric).items():
        prefix = "importance" if view == "final" else "importance_" + view.replace(" epochs", "").replace(" ", "_")
        metrics.update({f"{prefix}/{k}": v for k, v in found.items()})
    params = {f"config.{c}": name for c, name in names.items()}
    params["pairs"] = ", ".join(f"{a} - {b}" for a, b in pairs)
    params["objective"] = f"{objective} of {metric}"
    return {k: v for k, v in metrics.items() if not math.isnan(v)}, params


def unformed(trials: pd.DataFrame, paired: pd.DataFrame, pairs: tuple) -> list[tuple[str, str]]:
    """(pair, why) for each declared pair that no row of `paired` forms."""
    formed, ran = set(paired["pair"]), set(trials["init"])
    done = set(trials.loc[trials["status"] == "TERMINATED", "init"])
    out = []
    for a, b in dict.fromkeys(tuple(p) for p in pairs):
        if f"{a} - {b}" in formed:
            continue
        absent = [i for i in (a, b) if i not in ran]
        failed = [i for i in (a, b) if i in ran and i not in done]
        why = "; ".join(filter(None, (absent and f"{' and '.join(absent)} did not run",
                                      failed and f"no trial of {' and '.join(failed)} finished"))) or (
            "no configuration finished both with the settings both read alike")
        out.append((f"{a} - {b}", why))
    return out


# a parent run's plots: named to sort before its report/ and init/ folders
SUMMARY_PLOTS = ("0_paired_differences.png", "1_final_test_top1.png")


def summary_plots(folder: str, cells: pd.DataFrame, diffs: pd.DataFrame, names: dict) -> list[str]:
    """A study execution's answer as two plots in `folder` (`by_config`'s tables), as many as the
    results allow: a forest plot of the paired differences (a row per configuration x pair: mean
    with its 95 % CI, rows with p (Holm) < 0.05 filled and marked), and the final test top-1 per
    configuration x init (mean, 95 % CI). Rows are named by configuration id, and its params."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    wrap = {c: f"{c}: " + "\n".join(textwrap.wrap(n, 40)) for c, n in names.items()}
    ids = [c for c in names if c in set(diffs["id"]) | set(cells["id"])]  # top to bottom
    if len(diffs):
        pairs = list(dict.fromkeys(diffs["pair"]))
        step = 0.8 / len(pairs)
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.3 * len(ids) * max(2, len(pairs))), layout="constrained")
        for k, pair in enumerate(pairs):
            g = diffs[diffs["pair"] == pair].set_index("id")
            for c in g.index:
                r, y = g.loc[c], len(ids) - 1 - ids.index(c) + 0.4 - step * (k + 0.5)
                hit = bool(r["p_holm"] < 0.05)
                ax.errorbar(r["mean"], y, xerr=0 if math.isnan(r["ci95"]) else r["ci95"], fmt="o", capsize=3,
                            color=f"C{k}", mfc=f"C{k}" if hit else "white", label=pair.replace(" - ", " − "))
                ax.annotate(f"{_p(r['p_holm'])}{' *' if hit else ''}", (1.01, y), xycoords=("axes fraction", "data"),
                            va="center", fontsize=7, color=f"C{k}")
        handles, labels = ax.get_legend_handles_labels()
        keep = dict(zip(labels, handles))
        fig.legend(keep.values(), keep.keys(), fontsize=8, loc="outside lower center", ncol=len(keep))
        ax.axvline(0, color="k", lw=0.8)
        _configuration_bands(ax, ids, wrap)
        ax.set(xlabel="difference in final test top-1 (pp), mean ± 95 % CI over seeds (right: p (Holm))",
               title="Paired differences, same configuration and seed (filled, *: p (Holm) < 0.05)")
        made.append(_save(fig, os.path.join(folder, SUMMARY_PLOTS[0])))
    if len(cells):
        inits = list(dict.fromkeys(cells["init"]))
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.3 * len(ids) * max(2, len(inits))), layout="constrained")
        step = 0.8 / len(inits)
        for k, init in enumerate(inits):
            g = cells[cells["init"] == init].set_index("id").reindex(ids)
            y = np.arange(len(ids))[::-1] + 0.4 - step * (k + 0.5)
            ax.errorbar(g["final_test_top1_mean"], y, xerr=g["final_test_top1_ci95"].fillna(0), fmt="o", capsize=3,
                        label=init, color=f"C{k}")
        _configuration_bands(ax, ids, wrap)
        ax.set(xlabel="final test top-1 (%), mean ± 95 % CI over seeds",
               title="Final test top-1 per configuration and init")
        fig.legend(fontsize=8, loc="outside lower center", ncol=len(inits))
        made.append(_save(fig, os.path.join(folder, SUMMARY_PLOTS[1])))
    return made


def _row(cells) -> str:
    """A Markdown table row whose cells MLflow's description shows apart: its tables have no padding,
    so each cell ends in an em space, kept by a zero-width space after it (Markdown trims spaces)."""
    return "| " + " | ".join(f"{c}\u2003\u200b" for c in cells) + " |"


def overview(study: str, trials: pd.DataFrame, cells: pd.DataFrame, diffs: pd.DataFrame, names: dict,
             pairs: tuple, links: dict) -> str:
    """A study execution's answer as its parent run's description (Markdown, at most
    tracking.NOTE_LIMIT characters; `by_config`'s tables): a line per pair (its range over the
    configurations, in how many p (Holm) < 0.05), links to its trials and report, the forest plot,
    the final test top-1 per configuration x init (mean ± CI (n), and a compare link of its runs),
    the final top-1 plot, the paired differences with CI and Holm p, and why each declared pair
    not formed was not. `links`: "trials", "report", "images" ({file: src}) and "compare" ({id:
    path}), paths from tracking. Where the whole would not fit, compare links go first, from the
    last (`structinit report` prints them all), then the tables' last rows."""
    head = overview_head(study, trials, diffs, links)
    images = [f"![{name}]({src})" for name, src in links["images"].items()]
    table, rows = overview_cells(cells, names)
    linked = [c for c in names if c in links["compare"]]
    paired, diff_rows = overview_differences(diffs, names)
    missing = unformed(trials, diffs if len(diffs) else pd.DataFrame({"pair": []}), pairs)
    gaps = ["", "Declared pairs not formed:", "", *(f"- {p.replace(' - ', ' − ')}: {why}" for p, why in missing)] \
        if missing else []
    keep = [len(rows), len(diff_rows), len(linked)]

    def text():
        shown = [[*part[:k], *([f"| … | {len(part) - k} more: report/report.md, the plots |"]
                               if k < len(part) else [])] for part, k in zip((rows, diff_rows), keep)]
        rest = (f"the others: `structinit report {study}` prints them" if keep[2] else
                f"`structinit report {study}` prints a link for each") if keep[2] < len(linked) else ""
        compare = ["", "Compare a configuration's runs (its inits and seeds): " + " · ".join(
            [*(f"[{c}]({links['compare'][c]})" for c in linked[:keep[2]]), *filter(None, [rest])])] if linked else []
        return "\n".join([*head, "", *images[:1], "", *table, *shown[0], *compare, "", *images[1:], *paired,
                          *shown[1], *gaps]) + "\n"

    while len(text()) > tracking.NOTE_LIMIT and keep[2]:  # the compare links first: about 40 characters a run
        keep[2] -= 1
    while len(text()) > tracking.NOTE_LIMIT and sum(keep[:2]) > 4:  # then the longer table's last rows
        keep[keep[1] > keep[0]] -= 1
    return text()[:tracking.NOTE_LIMIT]


def overview_head(study: str, trials: pd.DataFrame, diffs: pd.DataFrame, links: dict) -> list[str]:
    """The overview's first lines: the trials by status, then a line per pair (its range over the
    configurations, in how many p (Holm) < 0.05), then links to its trials and its report."""
    reused = int(trials["reused_from"].notna().sum()) if "reused_from" in trials else 0
    statuses = ", ".join(f"{n} {s.lower()}" for s, n in trials["status"].value_counts().items())
    head = [f"**{study}**: {len(trials)} trials ({statuses}; {len(trials) - reused} trained, {reused} reused), seeds "
            f"{','.join(map(str, sorted(trials['seed'].unique())))}; differences of final test top-1:", ""]
    for pair, g in diffs.groupby("pair", sort=False):
        hits, n = sorted(set(g.loc[g["p_holm"] < 0.05, "id"])), g["id"].nunique()
        spread = (f"{g['mean'].iloc[0]:+.2f} pp" if n == 1 else
                  f"{g['mean'].min():+.2f} to {g['mean'].max():+.2f} pp over {n} configurations")
        tested = (f"p (Holm) < 0.05 in {len(hits)} of {n}" + (f" ({', '.join(hits)})" if hits else "")
                  if g["p_holm"].notna().any() else "no test (one seed)")
        head.append(f"- **{pair.replace(' - ', ' − ')}**: {spread}; {tested}")
    return head + ["", f"[The trials, best final test top-1 first]({links['trials']}) · the full report "
                   f"(decomposition, per cell, failed trials): [report/report.md]({links['report']}), which "
                   f"`structinit report {study}` writes"]


def overview_cells(cells: pd.DataFrame, names: dict) -> tuple[list[str], list[str]]:
    """The overview's table of final test top-1 per configuration x init: (its header, its rows)."""
    inits = list(dict.fromkeys(cells["init"])) if len(cells) else []
    table, rows = [], []
    if len(cells):
        table = ["Final test top-1 (%), mean ± 95 % CI over seeds (n); a configuration's id is the tag `config` of "
                 "its trial runs, its params the param `config.<id>`:", "",
                 _row(["id", "configuration", *inits]), "|---" * (len(inits) + 2) + "|"]
        for c, name in names.items():
            g = cells[cells["id"] == c].set_index("init")
            if len(g):
                mass = " ".join(dict.fromkeys(filter(None, map(realised, g["setting"]))))
                rows.append(_row([c, f"{name} {mass}".strip(), *(
                    f"{_pm(g.at[i, 'final_test_top1_mean'], g.at[i, 'final_test_top1_ci95'])} ({g.at[i, 'n']})"
                    if i in g.index else "–" for i in inits)]))
    return table, rows


def overview_differences(diffs: pd.DataFrame, names: dict) -> tuple[list[str], list[str]]:
    """The overview's table of paired differences, by configuration then pair: (its header, its rows)."""
    paired, rows = [], []
    if len(diffs):
        tested = int(diffs.drop_duplicates(["pair", "config"])["p"].notna().sum())
        paired = ["", "Paired differences of final test top-1 (same configuration and seed): mean ± 95 % CI, "
                  f"p (Holm) over the {tested} comparisons with a p (each p and its test: report.md); **bold**: "
                  "p (Holm) < 0.05:",
                  "", _row(["id", "difference", "n", "mean ± CI", "p (Holm)"]), "|---" * 5 + "|"]
        order = {c: i for i, c in enumerate(names)}
        pair_order = {p: i for i, p in enumerate(dict.fromkeys(diffs["pair"]))}
        for r in diffs.assign(o=diffs["id"].map(order), q=diffs["pair"].map(pair_order)).sort_values(
                ["o", "q"], kind="stable").itertuples():
            shown = _pm(r.mean, r.ci95)
            rows.append(_row([r.id, r.pair.replace(" - ", " − "), r.n,
                              f"**{shown}**" if r.p_holm < 0.05 else shown, _p(r.p_holm)]))
    return paired, rows


def log_summary(run: tracking.Run, trials: list[dict], pairs: tuple, reference: dict | None = None,
                history: list[dict] | None = None, objective: str = "mean", metric: str = "val_top1") -> None:
    """The summary of one study execution's `trials` and `history` (its Parquet rows) on its parent
    run: its metrics and params (summary_metrics, with the study's declared `objective` of
    `metric`), its plots at the top of its artifacts (summary_plots), its description (overview)
    and a saved view of its trials (tracking.save_trials_view)."""
    import tempfile

    if not trials:  # stopped before any trial
        return
    frame = pd.DataFrame(trials)
    cells, diffs, names = by_config(frame, *summarize(frame, pairs, reference), pairs)
    metrics, params = _summary(frame, cells, diffs, names, pairs, None if history is None else pd.DataFrame(history),
                               objective, metric)
    searched = sorted({k for p in frame["params"] for k in json.loads(p or "{}")})
    tracking.save_trials_view(run, f"{frame['execution'].iloc[0]}: trials", searched)
    exp, runs = tracking.study_runs(run) or ("0", {})
    with tempfile.TemporaryDirectory() as folder:
        images = summary_plots(folder, cells, diffs, names)
        text = overview(frame["study"].iloc[0], frame, cells, diffs, names, pairs, {
            "trials": tracking.trials_path(exp, run.run_id),
            "report": tracking.artifact_path(exp, run.run_id, "report/report.md"),
            "images": {os.path.basename(p): tracking.artifact_src(run.run_id, os.path.basename(p)) for p in images},
            "compare": {c: tracking.compare_path(exp, ids) for c, ids in runs.items()}})
        tracking.log_summary(run, metrics, params, text, tuple(images))


def _pm(m, h) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.2f}" if math.isnan(h) else f"{m:.2f} ± {h:.2f}"


def _p(p) -> str:
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _diff(r) -> str:
    """A difference's cell: mean ± CI and its Holm p."""
    return f"{_pm(r.mean, r.ci95)} (p_holm {_p(r.p_holm)})"


def markdown(study: str, table: pd.DataFrame, paired: pd.DataFrame, trials: pd.DataFrame, note: str = "",
             attention: pd.DataFrame | None = None, configs: pd.DataFrame | None = None,
             importances: dict | None = None, objective: str = "mean", metric: str = "val_top1") -> str:
    """The report's Markdown; `attention`: the attention rows (results.ATTENTION) of `trials`' models,
    for its sections on the attention through training (none where it is None or empty); `configs`:
    stats.configurations of `trials`, for its configurations stopped early, `importances` the
    parameter importance over them (stats.importances' views), of the declared `objective` of
    `metric`."""
    lines = table_lines(study, table, trials, note) + paired_lines(paired)
    done = arms(trials)
    lines += decomposition_lines(decomposition(done, paired))
    lines += cell_lines(per_cell(done, table, paired), paired)
    _, summary, fractions = attention_tables(done, attention)
    lines += attention_lines(summary) + fraction_lines(fractions)
    lines += stopped_lines(configs, objective, metric)
    lines += importance_lines(importances or {}, objective, metric)
    lines += failed_lines(trials)
    return "\n".join(lines) + "\n"


def table_lines(study: str, table: pd.DataFrame, trials: pd.DataFrame, note: str = "") -> list[str]:
    """The report's title, what its trials are, and its table of test top-1 and init fidelity per
    configuration x init (`summarize`'s table)."""
    executions = sorted(trials["execution"].dropna().unique()) if "execution" in trials else []
    reused = int(trials["reused_from"].notna().sum()) if "reused_from" in trials else 0
    lines = [f"# {study}", "", f"{len(trials)} trials: " + ", ".join(
        f"{n} {s.lower()}" for s, n in trials["status"].value_counts().items()) + f"; {len(trials) - reused} trained, "
        f"{reused} reused a model another trial had trained (same identity); from {len(executions)} execution(s) "
        f"of one base ({', '.join(executions)}). A model counts once: an arm is one init at one setting, each "
        "seed once, and settings that gave bit-identical initial weights are one arm (their settings joined by "
        "|); table.csv names each row's executions." + (f" {note}." if note else ""), "",
        "Test top-1 (%), mean ± 95 % CI over seeds (t-interval), std in brackets: of the final model, and of "
        "the epoch with the best validation accuracy (the test set never selects).", "",
        "Init: forward-pass attention mass on the target (pseudo input / real images), argmax hit on real "
        "images, mean per-head ||W_q||_F; ⚠ counts runs whose real-image hit is under twice chance.", "",
        "| configuration | init | n | final | at best val | init mass (pseudo / data) | hit (data) | ‖W_q‖ | theory |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        std = "" if math.isnan(r.final_test_top1_std) else f" ({r.final_test_top1_std:.2f})"
        flag = f" ⚠ {r.near_chance}/{r.n} near chance" if r.near_chance else ""
        lines.append(f"| {r.config} | {r.init} | {r.n} | {_pm(r.final_test_top1_mean, r.final_test_top1_ci95)}"
                     f"{std} | {_pm(r.test_top1_at_best_val_mean, r.test_top1_at_best_val_ci95)} | "
                     f"{_pm(r.init_mass_pseudo, math.nan)} / {_pm(r.init_mass_data, math.nan)} | "
                     f"{_pm(r.init_hit_data, math.nan)}{flag} | {_pm(r.init_wq_norm, math.nan)} | {r.theory} |")
    if len(table) and table["pe_unscaled"].any():
        lines += ["", "`pe_scaled` ran with a PE scale of 1 (a fixed sin-cos PE) and value_proj default: it is its "
                  "base init bit for bit, no PE-scale control; its differences are differences to the base init."]
    return lines


def paired_lines(paired: pd.DataFrame) -> list[str]:
    """The report's paired differences (`summarize`'s), each with its test and Holm p, what each
    is measured against, and the seeds that ran but could not pair."""
    lines = []
    if len(paired):
        lines += ["", "Paired differences of final test top-1 (same configuration and seed), mean ± 95 % CI; p: "
                  f"two-sided, of the row's test: t, the paired t-test, where n >= {EXACT_BELOW} and the differences "
                  "vary; else exact, the exact sign-flip test over the 2^n sign vectors (its p is at least 2/2^n, "
                  f"so with n < {EXACT_BELOW} never under 0.05); p (Holm): adjusted for the "
                  f"{int(paired['p'].notna().sum())} comparisons of this table at once (Holm's step-down; read a "
                  "difference as shown where p (Holm) < 0.05, which keeps the chance of any false one under 5 %):",
                  "", "| configuration | difference | n | mean ± CI | p | test | p (Holm) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r.config} | {r.pair} | {r.n} | {_pm(r.mean, r.ci95)} | {_p(r.p)} | {r.test} | {_p(r.p_holm)} |"
                  for r in paired.itertuples()]
        against = dict.fromkeys(pair.partition(" - ")[2] for pair in paired["pair"])
        lines += ["", "What each difference a − b is measured against (b):", ""]
        lines += [f"- {b}: {BASELINES.get(b, 'another setting of the same init')}" for b in against]
        lost = paired[paired["lost"] > 0]
        if len(lost):
            lines += ["", f"{int(lost['lost'].sum())} seed(s) in {len(lost)} comparison(s) ran but cannot pair (a side "
                      "failed or was stopped early): those comparisons use their complete pairs only (n): "
                      + "; ".join(f"{r.config} {r.pair}: {r.lost} lost" for r in lost.itertuples())]
    return lines


def failed_lines(trials: pd.DataFrame) -> list[str]:
    """A line per trial that failed (not finished, not stopped early), with its error."""
    lines = []
    failed = trials[~trials["status"].isin(["TERMINATED", results.STOPPED])]
    if len(failed):
        lines += ["", "Failed trials:", ""]
        lines += [f"- {r.trial_id} ({r.init}, seed {r.seed}, {label(r.params)}): {r.status}: {r.error}"
                  for r in failed.itertuples()]
    return lines


def stopped_lines(configs: pd.DataFrame | None, objective: str, metric: str) -> list[str]:
    """The configurations a scheduler stopped early, apart from the tables above (which hold
    finished trials only), with where they stopped and their objective there."""
    if configs is None or not (configs["status"] == "stopped").any():
        return []
    stopped = configs[configs["status"] == "stopped"].sort_values(["stopped_at", "objective"], ascending=[False, False])
    finished = int((configs["status"] == "finished").sum())
    lines = ["", "## Stopped early", "",
             f"{len(stopped)} of {len(configs)} configurations were stopped before their last epoch ({finished} "
             "finished). Their stopped trials keep their epochs (status STOPPED) and enter no table or pair above; "
             "a trial of theirs that finished does, paired where both sides finished (the paired table counts the "
             "rest as lost). A grouped scheduler stops a configuration's whole group at one rung, and its objective "
             f"({objective} of {metric}) there is what the search received; a per-trial one stops some of its "
             "trials, each where it was (stopped at: the latest).", "",
             "| configuration | stopped at (epochs) | objective there | trials stopped | members |",
             "|---|---|---|---|---|"]
    lines += [f"| {label(r.params)} | {int(r.stopped_at)} | {_pm(r.objective, math.nan)} | {r.stopped} | {r.members} |"
              for r in stopped.itertuples()]
    return lines


def importance_lines(importances: dict, objective: str, metric: str) -> list[str]:
    """Parameter importance over configurations (stats.importances: by view, (n, {param: value})),
    as a table with a column per view."""
    if not importances:
        return []
    views = list(importances)
    params = list(dict.fromkeys(k for _, found in importances.values() for k in found))
    lines = ["", "## Parameter importance", "",
             f"fANOVA (Optuna's FanovaImportanceEvaluator, seed 0) over configurations, one observation each: its "
             f"objective ({objective} of {metric}), never single trials. *final*: the finished configurations at "
             "their last epoch; *at N epochs*, where some were stopped early: every configuration at the epochs all "
             "of them reached (one fidelity; the finished ones are only the search's survivors). Params some "
             "configurations lack are left out. Each column sums to 1; with few configurations they are rough.", "",
             "| param | " + " | ".join(f"{v} (n={importances[v][0]})" for v in views) + " |",
             "|---" * (len(views) + 1) + "|"]
    lines += [f"| {p} | " + " | ".join(f"{importances[v][1][p]:.3f}" if p in importances[v][1] else "–"
                                       for v in views) + " |" for p in params]
    return lines


def decomposition_lines(parts: pd.DataFrame) -> list[str]:
    """The decomposition's Markdown section (`stats.decomposition`); none where no configuration ran its arms."""
    if not len(parts):
        return []
    lines = ["", "## Decomposition: PE scale, V/proj and Q/K structure", "",
             "impulse − baseline = (pe_scaled − baseline) + (impulse − pe_scaled), seed by seed (final test top-1, "
             "pp). pe_scaled is everything impulse writes but its Q/K solve: the baseline's base init with impulse's "
             "PE scale and, where value_proj is mimetic, impulse's mimetic V/proj. So impulse − pe_scaled is what "
             "the solved Q/K give alone, and pe_scaled − baseline what the PE scale (and the mimetic V/proj) give; "
             "each cell names what differs in its trials. Means ± 95 % CI over the n seeds where all three "
             "finished: the two parts sum to the total exactly, their CIs do not add. p_holm is the paired table's "
             "(its n seeds, its Holm family). A part whose CI holds 0 is not shown to be non-zero; on a fixed PE of "
             "scale 1 with value_proj default, pe_scaled is the baseline bit for bit and everything is Q/K "
             "structure.", "",
             "| configuration | baseline | value_proj | n | pe_scaled − baseline | impulse − pe_scaled | "
             "total: impulse − baseline |", "|---|---|---|---|---|---|---|"]
    for (config, base), g in parts.groupby(["config", "baseline"], sort=False):
        by = {r.pair: r for r in g.itertuples()}
        control, structure, total = by[f"pe_scaled - {base}"], by["impulse - pe_scaled"], by[f"impulse - {base}"]
        value_proj = "unrecorded" if pd.isna(total.value_proj) else total.value_proj
        lines.append(f"| {config} | {base} | {value_proj} | {total.n} | {control.part}: "
                     f"{_diff(control)} | {structure.part}: {_diff(structure)} | {_diff(total)} |")
    uneven = parts[parts["n"] != parts["n_paired"]]
    if len(uneven):
        lines += ["", f"In {uneven['config'].nunique()} configuration(s) an arm lacks seeds the others have (a failed "
                  "trial) or a pair was not declared: n is the common seeds, p_holm the paired table's over its own."]
    return lines


def attention_tables(done: pd.DataFrame, attention: pd.DataFrame | None):
    """(curves, per-arm summary, across fractions) of the attention through training of the arms
    `done` (stats.attention_curves, attention_summary, across_fractions); empty without attention rows."""
    curves = attention_curves(done, attention if attention is not None else pd.DataFrame())
    seeds = attention_by_seed(curves)
    return curves, attention_summary(seeds), across_fractions(seeds)


def _span(r, key: str) -> str:
    """A measure at the init and at the end, mean ± CI each."""
    return (f"{_pm(getattr(r, f'{key}_init_mean'), getattr(r, f'{key}_init_ci95'))} → "
            f"{_pm(getattr(r, f'{key}_final_mean'), getattr(r, f'{key}_final_ci95'))}")


def attention_lines(summary: pd.DataFrame) -> list[str]:
    """The Markdown section of the attention through training per arm; none without measures."""
    if not len(summary):
        return []
    lines = ["", "## Attention through training", "",
             "Each run's attention on its fixed batch of 64 held-out validation images, at the init (0 epochs) and "
             "at the end: the mean attention distance in patches (over the patch queries, the attention-weighted "
             "grid distance to the keys; a class token's share left out and the rest renormalised) and the mass on "
             "the init's taps (impulse's solved taps; for every other init those an impulse head would have had, "
             "the `cover` offsets), block means over heads; mean ± 95 % CI over seeds. A head at one tap of a 3×3 "
             "window looks 0 (centre), 1 or √2 patches away; uniform attention 2.0 on a 4×4 grid, 8.3 on 16×16. "
             "attention.png draws the distance at every checkpoint; attention.csv adds entropy and argmax hit.", "",
             "| configuration | init | n | distance, block 0 | distance, last block | tap mass, all blocks |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.config} | {r.init} | {r.n} | {_span(r, 'distance_b0')} | {_span(r, 'distance_last')} | "
              f"{_span(r, 'mass_all')} |" for r in summary.itertuples()]
    return lines


def _moved(mean: float, ci: float, more: str, less: str, none: str) -> str:
    """What a difference's 95 % CI shows: `more` (all above 0), `less` (all below), else `none`."""
    if math.isnan(ci):
        return "one seed: no CI"
    return more if mean - ci > 0 else less if mean + ci < 0 else none


def fraction_lines(fractions: pd.DataFrame) -> list[str]:
    """The Markdown section on the attention across training fractions; none where no fraction varies."""
    if not len(fractions):
        return []
    lines = ["", "## Attention across training fractions", "",
             "Does an init's attention leave its initial taps more when it trains on more data? Each fraction "
             "against the smallest, seed by seed: same init, setting and seed, so the same initial weights (but a "
             "data-aware impulse's, solved on its own split's images), trained on more data. Differences (this "
             "fraction − the smallest) of the final mean attention distance over all blocks (patches; > 0: it "
             "reaches further), in block 0 and in the last block, and of the final mass on the init's taps over all "
             "blocks (< 0: less of it stays there); mean ± 95 % CI; p of the all-block distance from its test (as "
             "in the paired table), p (Holm) over this table's rows.", "",
             "| init | setting | fraction − smallest | n | final distance (smallest → this) | "
             "Δ distance, all blocks | p (Holm) | Δ block 0 | Δ last block | Δ tap mass |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in fractions.itertuples():
        lines.append(f"| {r.init} | {r.setting} | {r.fraction:g} − {r.against:g} | {r.n} | "
                     f"{r.against_distance_final:.2f} → {r.distance_final:.2f} | "
                     f"{_pm(r.distance_all_final_mean, r.distance_all_final_ci95)} | {_p(r.p_holm)} | "
                     f"{_pm(r.distance_b0_final_mean, r.distance_b0_final_ci95)} | "
                     f"{_pm(r.distance_last_final_mean, r.distance_last_final_ci95)} | "
                     f"{_pm(r.mass_all_final_mean, r.mass_all_final_ci95)} |")
    largest = fractions[fractions["fraction"] == fractions.groupby(["init", "setting"])["fraction"].transform("max")]
    for r in largest[largest["init"] == "impulse"].itertuples():
        reach = _moved(r.distance_all_final_mean, r.distance_all_final_ci95, "reaches further",
                       "stays closer", "shows no difference in reach (the CI holds 0)")
        taps = _moved(r.mass_all_final_mean, r.mass_all_final_ci95, "keeps more on its initial taps",
                      "keeps less on its initial taps", "shows no difference in its tap mass")
        lines += ["", f"impulse{f' ({r.setting})' if r.setting != '(base)' else ''} at fraction {r.fraction:g} "
                  f"against {r.against:g}: with more data its attention {reach} (final mean distance over all blocks "
                  f"{r.against_distance_final:.2f} → {r.distance_final:.2f} patches, {r.distance_init:.2f} at the "
                  f"init; difference {_pm(r.distance_all_final_mean, r.distance_all_final_ci95)}, p (Holm) "
                  f"{_p(r.p_holm)}) and {taps} (mass {_pm(r.mass_all_final_mean, r.mass_all_final_ci95)})."]
    return lines


def cell_lines(cells: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """The per-cell Markdown section (`stats.per_cell`); none for a study that does not vary embed_dim/num_heads."""
    if not len(cells):
        return []
    lines = ["", "## Per cell", "",
             "Per (embed_dim, num_heads): the paper's conditions h ≥ f² and D/h ≥ k (k the measured embedding rank "
             "of the picked impulse runs), and the impulse setting (target_mass, pe_scale, pseudo_input) with the "
             "best mean validation top-1 over seeds among the cell's settings; the test set never selects. Its final "
             "test top-1 (mean ± 95 % CI) and its paired differences to the other arms of the same configuration "
             "(mean ± CI, p_holm from the paired table). The pick is the best of the cell's settings and the other "
             "arms are not picked, so its differences lean in impulse's favour, the more so the more settings "
             "(column 'of'); the paired table holds every setting's.", "",
             "| embed_dim | heads | theory | best impulse setting (by val) | of | val top-1 | test top-1 | n | "
             "paired differences |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cells.itertuples():
        diffs = paired[(paired["config"] == c.config) & paired["pair"].str.startswith("impulse - ")]
        lines.append(f"| {c.embed_dim} | {c.num_heads} | {c.theory} | {c.setting} | {c.settings} | "
                     f"{_pm(c.best_val_top1_mean, math.nan)} | {_pm(c.final_test_top1_mean, c.final_test_top1_ci95)} "
                     f"| {c.n} | " + "; ".join(f"{d.pair}: {_diff(d)}" for d in diffs.itertuples()) + " |")
    return lines


def plots(folder: str, trials: pd.DataFrame, history: pd.DataFrame, paired: pd.DataFrame, importances: dict,
          wanted: tuple = PLOTS, attention: pd.DataFrame | None = None) -> list:
    """The `wanted` plots (of PLOTS) the results allow, as PNGs in `folder`; returns their paths.
    `importances`: the parameter importance over configurations (stats.importance,
    `param_importances`); `attention`: the attention rows of the trials' models
    (results.ATTENTION), for `attention`."""
    import matplotlib
    matplotlib.use("Agg")

    made = []
    done = trials[trials["status"] == "TERMINATED"]
    if "curves" in wanted and len(history):
        made.append(curves_plot(history, os.path.join(folder, "curves.png")))
    if "heads_vs_dim" in wanted and varies_width(done):
        made.append(heads_vs_dim_plot(done, os.path.join(folder, "heads_vs_dim.png")))
    gaps = (paired[paired["pair"].str.endswith(" - learned") & paired["width_ratio"].notna()]
            if "filter_gap" in wanted and len(paired) else [])
    if len(gaps):
        made.append(filter_gap_plot(gaps, os.path.join(folder, "filter_gap.png")))
    curves = attention_tables(arms(trials), attention)[0] if "attention" in wanted else []
    if len(curves):
        made.append(attention_plot(curves, os.path.join(folder, "attention.png")))
    if "param_importances" in wanted and importances:
        made.append(importances_plot(importances, os.path.join(folder, "param_importances.png")))
    return made


def curves_plot(history: pd.DataFrame, path: str) -> str:
    """Top-1 per epoch per init, mean ± std over runs: of the test set where every epoch was tested
    (test_every_epoch), else of the validation split."""
    import matplotlib.pyplot as plt

    split = "test" if history["test_top1"].notna().all() else "val"
    fig, ax = plt.subplots(figsize=(6, 4))
    for init, g in history.groupby("init"):
        curve = g.groupby("epoch")[f"{split}_top1"].agg(["mean", "std"])
        ax.plot(curve.index, curve["mean"], label=init)
        ax.fill_between(curve.index, curve["mean"] - curve["std"], curve["mean"] + curve["std"], alpha=0.2)
    ax.set(xlabel="epoch", ylabel=f"{split} top-1 (%)", title="accuracy per init (mean ± std over runs)")
    ax.legend()
    return _save(fig, path)


def heads_vs_dim_plot(done: pd.DataFrame, path: str) -> str:
    """Final test top-1 over (heads, embed dim), a panel per init on one colour scale; * marks the
    cells where the theory's conditions (h >= f^2, D/h >= k) hold."""
    import matplotlib
    import matplotlib.pyplot as plt

    inits = sorted(done["init"].unique())
    fig, axes = plt.subplots(1, len(inits), figsize=(4 * len(inits) + 1, 3.5), squeeze=False, layout="constrained")
    means = done.groupby(["init", "num_heads", "embed_dim"])["final_test_top1"].mean()
    scale = matplotlib.colors.Normalize(means.min(), means.max())  # one colour scale: inits compare by colour
    for ax, init in zip(axes[0], inits):
        cells = done[done["init"] == init]
        grid = cells.pivot_table(index="num_heads", columns="embed_dim", values="final_test_top1", aggfunc="mean")
        ks = cells.pivot_table(index="num_heads", columns="embed_dim", values="init_rank_k",
                               aggfunc="mean").reindex(index=grid.index, columns=grid.columns).values
        f = int(cells["filter_size"].iloc[0])
        im = ax.imshow(grid.values, cmap="viridis", norm=scale, aspect="auto")
        ax.set_xticks(range(len(grid.columns)), grid.columns)
        ax.set_yticks(range(len(grid.index)), grid.index)
        for (i, j), v in np.ndenumerate(grid.values):
            if not math.isnan(v):
                h, dim = grid.index[i], grid.columns[j]
                k = ks[i, j]
                met = not math.isnan(k) and all(conditions(dim, whole_rank(k), f, h)[c]
                                                 for c in ("h_ge_f2", "head_dim_ge_k"))
                ax.text(j, i, f"{v:.1f}{'*' if met else ''}", ha="center", va="center", fontsize=8,
                        color="k" if scale(v) > 0.6 else "w")  # viridis turns light from about 0.6
        ax.set(xlabel="embed dim", ylabel="heads", title=f"{init} (* h≥f², D/h≥k)")
    fig.colorbar(im, ax=axes[0].tolist(), label="final test top-1 (%), mean over seeds")
    return _save(fig, path)


def filter_gap_plot(gaps: pd.DataFrame, path: str) -> str:
    """Each frozen - learned gap against D / (k f^2), with its CI; the theory closes it at 1."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for pair, g in gaps.sort_values("width_ratio").groupby("pair"):
        ax.errorbar(g["width_ratio"], g["mean"], yerr=g["ci95"].fillna(0), marker="o", capsize=3,
                    label=pair.replace(" - ", " − "))
    ax.axvline(1, ls="--", c="gray")
    ax.axhline(0, c="k", lw=0.5)
    ax.set_xscale("log")
    ax.set(xlabel="D / (k f²)", ylabel="final test top-1 gap (pp), 95 % CI",
           title="frozen minus learned filters (theory: gap closes at D ≥ k f²)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def importances_plot(importances: dict, path: str) -> str:
    """The parameter importance of the first view (the finished configurations' where there are enough)."""
    import matplotlib.pyplot as plt

    view, (n, found) = next(iter(importances.items()))
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(found)))
    ax.barh(list(found)[::-1], list(found.values())[::-1])
    ax.set(xlabel=f"importance (fANOVA over {n} configurations, {view})", title="parameter importance")
    return _save(fig, path)


def attention_plot(curves: pd.DataFrame, path: str) -> str:
    """The mean attention distance against the epochs trained, per arm (mean ± std over seeds),
    in block 0 (top) and the last block (bottom), one column per base configuration (e.g. each
    training fraction); `curves`: stats.attention_curves' rows."""
    import matplotlib.pyplot as plt

    names = {arm: " ".join(x for x in (g["init"].iloc[0], g["label"].iloc[0]) if x) for arm, g in curves.groupby("arm")}
    colors = {name: f"C{i % 10}" for i, name in enumerate(sorted(set(names.values())))}
    bases = sorted(curves["base_label"].unique())
    fig, axes = plt.subplots(2, len(bases), figsize=(5 * len(bases), 7), squeeze=False, sharey="row")
    for col, base in enumerate(bases):
        for row, (where, pick) in enumerate((("block 0", curves["block"] == 0), ("last block", curves["last"]))):
            ax = axes[row][col]
            for arm, g in curves[(curves["base_label"] == base) & pick].groupby("arm", sort=True):
                c = g.groupby("epoch")["distance"].agg(["mean", "std"]).fillna(0)
                ax.plot(c.index, c["mean"], marker="o", ms=3, color=colors[names[arm]], label=names[arm])
                ax.fill_between(c.index, c["mean"] - c["std"], c["mean"] + c["std"], color=colors[names[arm]],
                                alpha=0.15)
            ax.set(xlabel="epochs trained (0: the init)", ylabel="mean attention distance (patches)",
                   title=f"{base}: {where}" if base != "(base)" else where)
        axes[0][col].legend(fontsize=7)
    fig.suptitle("attention distance on held-out images per init (mean ± std over seeds)")
    return _save(fig, path)


def _configuration_bands(ax, ids: list, wrap: dict) -> None:
    """One row band per configuration, the first at the top, each labelled with its wrapped name."""
    for y in np.arange(len(ids) - 1) + 0.5:
        ax.axhline(y, color="0.9", lw=0.8)
    ax.set_yticks(np.arange(len(ids))[::-1], [wrap[c] for c in ids], fontsize=8)
    ax.set_ylim(-0.5, len(ids) - 0.5)


def _save(fig, path: str) -> str:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def report(study: str, storage: str = "runs", tracking_uri: str | None = None, optuna_url: str | None = None,
           execution: str | None = None) -> str:
    """Build the report of a study's results -- of the executions that share the base of
    `execution` (default: the latest; `select`): print-ready Markdown; also written as report.md,
    table.csv, paired.csv, decomposition.csv, cells.csv, attention.csv, fractions.csv,
    configurations.csv (each configuration's objective, finished or where it stopped),
    importance.csv and plots under <storage>/<study>/report/, and logged to the MLflow run of that
    execution. Every input (results, report spec, the Optuna and MLflow records, the report
    folder) is read and checked before anything is written."""
    paths = StudyPaths(storage, study, optuna_url=optuna_url)
    pooled, history = results.load(paths.folder)
    trials, history, note = select(pooled, history, execution)
    attention = results.load_attention(paths.folder)
    attention = attention[attention["trial_id"].isin(set(history["trial_id"]))]  # the selected models' own
    pairs, wanted, reference = declared(paths)
    objective, metric = declared_objective(paths)
    sqlite_store("optuna storage", paths.optuna)
    execution = execution or paths.execution()
    run = execution and tracking.latest_run(tracking_uri or tracking.default_uri(), study, "execution", execution)
    out = paths.report
    writable("report folder", out, folder=True)
    table, paired = summarize(trials, pairs, reference)
    configs = configurations(trials, history, objective, metric)
    importances = importance_views(trials, history, objective, metric)
    text = markdown(study, table, paired, trials, note, attention, configs, importances, objective, metric)
    done = arms(trials)
    _, summary, fractions = attention_tables(done, attention)
    tables = {"table.csv": table, "paired.csv": paired, "decomposition.csv": decomposition(done, paired),
              "cells.csv": per_cell(done, table, paired), "attention.csv": summary, "fractions.csv": fractions,
              "configurations.csv": configs,
              "importance.csv": pd.DataFrame([{"view": view, "configurations": n, "param": k, "importance": v}
                                              for view, (n, found) in importances.items() for k, v in found.items()],
                                             columns=["view", "configurations", "param", "importance"])}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    for name, frame in tables.items():
        frame.to_csv(os.path.join(out, name), index=False)
    plots(out, trials, history, paired, importances, wanted, attention)
    if run:
        tracking.log_folder(run, out, "report")
    return text
