"""The statistics a study's report rests on, as plain functions: of numbers (the 95 % t-interval
of a mean over seeds, the paired t-test of per-seed differences, Holm's step-down adjustment for the
many comparisons one study makes at once), and of a study's trials (the decomposition of a gain
into what pe_scaled adds, PE scale and V/proj, and Q/K structure, the impulse setting each heads x
dim cell's validation accuracy picks). report.py builds its tables from these and presents them."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats

from structinit import results
from structinit.config import label


def finite(values) -> np.ndarray:
    """The values that are numbers (None and NaN dropped), as floats."""
    return np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)


def ci95(values) -> tuple[float, float, float, int]:
    """mean, std, half-width of the 95 % t-interval, n (NaN where n < 2):
    mean ± t_{0.975, n-1} · s / √n, s the sample std (ddof 1)."""
    v = finite(values)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, math.nan, 1
    std = float(v.std(ddof=1))
    return float(v.mean()), std, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)), n


def paired_p(diffs) -> float:
    """Two-sided p of the paired t-test on per-seed differences d_1..d_n (a − b, same configuration
    and seed): t = mean(d) / (s_d / √n) on n − 1 degrees of freedom, p = 2 P(T > |t|) (what
    scipy.stats.ttest_rel(a, b) gives). NaN where n < 2. Where every d_i is equal (s_d = 0) the
    t statistic is 0/0 or ±∞: p = 1 when they are all 0 (the arms agreed seed for seed, e.g. an
    init bit-identical to another), 0 otherwise (the test's limit)."""
    d = finite(diffs)
    n = len(d)
    if n < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    if sd == 0:
        return 1.0 if float(d.mean()) == 0 else 0.0
    t = float(d.mean()) / (sd / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def holm(p) -> np.ndarray:
    """Holm's step-down adjustment of m p-values, in their input order. With p_(1) ≤ … ≤ p_(m)
    sorted ascending, p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) · p_(j)). Rejecting every p̃ ≤ α
    keeps the chance of any false rejection among the m at most α, whatever their dependence
    (they share seeds and arms); it is uniformly less conservative than Bonferroni (m · p).
    NaN entries (a comparison of one seed) are no comparisons: they stay NaN and do not count in m.
    scipy.stats has no Holm adjustment (false_discovery_control is Benjamini-Hochberg/-Yekutieli)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if m:
        order = tested[np.argsort(p[tested], kind="stable")]
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


# ---- a study's trials ------------------------------------------------------------------------

BASELINES = ("torch_default", "default")  # the unstructured init a decomposition starts from: the first that ran


CELL = ("model.embed_dim", "model.num_heads")
KNOBS = ("init.target_mass", "init.pe_scale", "init.pseudo_input")  # what an impulse setting names


def whole_rank(k: float) -> int:
    """A mean measured rank as the integer the conditions use (its ceiling)."""
    return math.ceil(k - 1e-9)


def vit_conditions(trial, k: float) -> tuple[bool, bool] | None:
    """(h >= f^2, D/h >= k) of a ViT configuration, k its measured embedding rank (None for a
    ConvMixer or without a measured k)."""
    if pd.isna(k) or pd.isna(trial.embed_dim) or pd.isna(trial.num_heads) or not pd.isna(trial.kernel_size):
        return None
    h = trial.num_heads
    return bool(h >= trial.filter_size ** 2), bool(trial.embed_dim // h >= whole_rank(k))


def varies_width(done: pd.DataFrame) -> bool:
    """Whether a study's finished ViT trials vary embed_dim or num_heads (a heads-vs-dim grid)."""
    vit = done[done["num_heads"].notna()]
    return len(vit) > 0 and (vit["embed_dim"].nunique() > 1 or vit["num_heads"].nunique() > 1)


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The TERMINATED trials with every schema column (NaN where absent) and their `config` label."""
    done = trials[trials["status"] == "TERMINATED"].reindex(columns=[*trials.columns, *(
        c for c in results.TRIALS.names if c not in trials.columns)])
    return done.assign(config=done["params"].map(label))


def by_seed(g: pd.DataFrame) -> pd.DataFrame:
    """One configuration's final test top-1 as seed x init (the pairing every difference uses)."""
    return g.pivot_table(index="seed", columns="init", values="final_test_top1", aggfunc="mean")


def baseline(inits) -> str | None:
    """The unstructured init a decomposition starts from: torch_default where it ran, else default."""
    return next((b for b in BASELINES if b in inits), None)


def control_parts(g: pd.DataFrame) -> tuple[str | None, str, str]:
    """(value_proj, what pe_scaled − baseline is, what impulse − pe_scaled is) in one configuration's
    trials. pe_scaled writes what impulse writes but its Q/K solve: the PE scale, and V/proj as
    value_proj says. So pe_scaled − baseline is "PE scale" where pe_scaled's recorded
    init_pe_scale is not 1 (unrecorded counts as scaled), "+ mimetic V/proj" where value_proj is
    mimetic, and impulse − pe_scaled is the Q/K structure. value_proj None: not recorded (tables
    from before its column, when pe_scaled kept the base's V/proj) or differing between the arms:
    where the V/proj went is then named as unknown."""
    arms = g[g["init"].isin(["impulse", "pe_scaled"])]
    recorded = set(arms["value_proj"].dropna())
    value_proj = recorded.pop() if len(recorded) == 1 else None
    scales = g.loc[g["init"] == "pe_scaled", "init_pe_scale"]
    parts = [] if len(scales) and (scales == 1).all() else ["PE scale"]
    if value_proj is None:
        return None, " + ".join(parts) or "nothing", "structure (value_proj unrecorded: Q/K, maybe V/proj)"
    if value_proj != "default":
        parts.append(f"{value_proj} V/proj")
    return value_proj, " + ".join(parts) or "nothing (pe_scaled is the baseline)", "Q/K structure"


def decomposition(trials: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Per configuration where impulse, pe_scaled and a baseline b (`baseline`) finished, the gain
    split seed by seed: impulse − b = (pe_scaled − b) + (impulse − pe_scaled), what pe_scaled
    adds to b (the PE scale, and impulse's V/proj where value_proj is mimetic) plus what the
    solved Q/K add on top of it; `part` names each by what differs in its trials
    (`control_parts`), `pair` is the stable key. Means and 95 % CIs (ci95) over the seeds where all
    three finished, so the parts' means sum to the total's exactly (their CIs do not add); `p_holm`
    and `n_paired` are the paired table's row of the same pair (its seeds, its Holm family), NaN
    and 0 where the study did not declare that pair."""
    rows = []
    for (key, config), g in finished(trials).groupby(["config_key", "config"], sort=True):
        by, base = by_seed(g), baseline(set(g["init"]))
        if base is None or "impulse" not in by or "pe_scaled" not in by or base not in by:
            continue
        common = by[["impulse", "pe_scaled", base]].dropna()
        value_proj, control, structure = control_parts(g)
        for part, a, b in ((control, "pe_scaled", base), (structure, "impulse", "pe_scaled"),
                           ("total", "impulse", base)):
            m, s, h, n = ci95(common[a] - common[b])
            row = paired[(paired["config"] == config) & (paired["pair"] == f"{a} - {b}")]
            rows.append({"config": config, "baseline": base, "value_proj": value_proj, "part": part,
                         "pair": f"{a} - {b}", "mean": m, "ci95": h, "n": n,
                         "p_holm": row["p_holm"].iloc[0] if len(row) else math.nan,
                         "n_paired": int(row["n"].iloc[0]) if len(row) else 0})
    return pd.DataFrame(rows, columns=["config", "baseline", "value_proj", "part", "pair", "mean", "ci95", "n",
                                       "p_holm", "n_paired"])


def setting(trial) -> str:
    """An impulse trial's setting: target_mass, pe_scale, pseudo_input as they applied, then any
    other searched param besides the cell's. pe_scale is the configured factor; where it is
    None (the model's default) the factor impulse applied (`init_pe_scale`), marked "(default)"."""
    def text(v):
        return "None" if v is None or (isinstance(v, float) and math.isnan(v)) else (
            f"{v:.3g}" if isinstance(v, float) else str(v))

    scale = text(trial.pe_scale) if not pd.isna(trial.pe_scale) else (
        f"{text(trial.init_pe_scale)} (default)" if not pd.isna(trial.init_pe_scale) else "default")
    shown = {"target_mass": text(trial.target_mass), "pe_scale": scale, "pseudo_input": text(trial.pseudo_input)}
    params = json.loads(trial.params)
    shown.update({k.split(".")[-1]: text(v) for k, v in sorted(params.items()) if k not in (*CELL, *KNOBS)})
    return " ".join(f"{k}={v}" for k, v in shown.items())


def per_cell(trials: pd.DataFrame, table: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Per (embed_dim, num_heads) cell of a ViT study that varies them (`varies_width`; else an
    empty table): the width conditions h >= f² and D/h >= k (`vit_conditions`, `theory`, on the
    picked impulse row's measured k) and the impulse setting (`setting`: the cell's
    configurations differ in target_mass, pe_scale, pseudo_input) with the highest mean best
    validation top-1 over seeds (ties: the first by label); the test set never selects. For the
    pick: its final test top-1 mean ± 95 % CI; `config` names its rows in the paired table (its
    differences impulse − b)."""
    done = finished(trials)
    out = []
    if varies_width(done):
        impulse = table[table["init"] == "impulse"].set_index("config")
        for (dim, heads), g in done[(done["init"] == "impulse") & done["num_heads"].notna()].groupby(
                ["embed_dim", "num_heads"], sort=True):
            rows = impulse.loc[sorted(g["config"].unique())]
            scored = rows[rows["best_val_top1_mean"].notna()]
            if not len(scored):
                continue
            best = scored["best_val_top1_mean"].idxmax()
            r, trial = rows.loc[best], g[g["config"] == best].iloc[0]
            met = vit_conditions(trial, r["init_rank_k"]) or (None, None)
            out.append({"embed_dim": int(dim), "num_heads": int(heads), "h_ge_f2": met[0], "head_dim_ge_k": met[1],
                        "theory": r["theory"], "config": best, "setting": setting(trial), "settings": len(rows),
                        "best_val_top1_mean": r["best_val_top1_mean"], "final_test_top1_mean":
                        r["final_test_top1_mean"], "final_test_top1_ci95": r["final_test_top1_ci95"], "n": r["n"]})
    return pd.DataFrame(out, columns=["embed_dim", "num_heads", "h_ge_f2", "head_dim_ge_k", "theory", "config",
                                      "setting", "settings", "best_val_top1_mean", "final_test_top1_mean",
                                      "final_test_top1_ci95", "n"])
