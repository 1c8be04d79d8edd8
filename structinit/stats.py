"""The statistics a study's report rests on, as plain functions: of numbers (the 95 % t-interval
of a mean over seeds, the paired test of per-seed differences: exact sign flips for few seeds or
equal differences, else the t-test; Holm's step-down adjustment for the many comparisons one
study makes at once), and of a study's trials (the decomposition of a gain into PE scale and
attention structure, the impulse setting each heads x dim cell's validation accuracy picks).
report.py builds its tables from these and presents them."""
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


# Below this many seeds the paired t-test is not used: its p rests on the differences being normal,
# which nothing checks at n = 2..5, and an exact test exists that assumes only that the null makes
# each difference's sign a fair coin. The exact sign-flip test enumerates the 2^n sign vectors, so
# its p is a multiple of 1/2^n: at n = 5 the smallest two-sided p is 2/32 = 0.0625 (n = 3, 4:
# 0.25, 0.125), and with fewer than 6 seeds no difference reaches p < 0.05, adjusted or not.
EXACT_BELOW = 6
# Differences whose spread is at most this fraction of their largest magnitude count as equal
# (zero variance): per-seed differences of accuracies that moved by the same number of test
# images differ in the last bits (100*814/900 - 100*804/900 != 100*813/900 - 100*803/900), and a
# t-test on them gives t ~ 1e14, p ~ 1e-72. Test sets of up to 10^6 images move in steps far above it.
EQUAL_RTOL = 1e-9
# permutation_test holds every sign vector at once (2^n x n floats): up to n = 16 that is 8 MiB.
# Equal non-zero differences at larger n have their exact p in closed form (see _sign_flip_p).
ENUMERATE_UP_TO = 16


def ci95(values) -> tuple[float, float, float, int]:
    """mean, std, half-width of the 95 % t-interval, n (NaN where n < 2):
    mean ± t_{0.975, n-1} · s / √n, s the sample std (ddof 1), from scipy.stats.t.interval
    (half-width 0 where every value is equal: scipy's interval is NaN at scale 0)."""
    v = finite(values)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, math.nan, 1
    mean, std = float(v.mean()), float(v.std(ddof=1))
    if std == 0:
        return mean, 0.0, 0.0, n
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n))
    return mean, std, float(high - low) / 2, n


def _sign_flip_p(d: np.ndarray) -> float:
    """Two-sided p of the exact paired sign-flip permutation test of mean(d) = 0: under the null each
    difference's sign is a fair coin, so the 2^n sign vectors are equally likely and p is the share
    of them whose |mean| is at least the observed (scipy.stats.permutation_test with one sample and
    permutation_type="samples" flips signs; with n_resamples >= 2^n it enumerates them all and is
    exact; its two-sided p, 2·min of the one-sided, equals that share since the null is symmetric).
    Equal non-zero differences beyond ENUMERATE_UP_TO: only the all-+ and all-− vectors reach the
    observed |mean|, p = 2/2^n."""
    n = len(d)
    if n > ENUMERATE_UP_TO:
        return 2.0 / 2 ** n
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=2 ** n,
                                 alternative="two-sided", vectorized=True, axis=-1)
    return float(res.pvalue)


def paired_test(diffs) -> tuple[float, str]:
    """(two-sided p, the test that gave it) for per-seed differences d_1..d_n (a − b, same
    configuration and seed) under the null mean 0:
    - "none", p NaN: n < 2, nothing to test;
    - "exact": the exact sign-flip permutation test (_sign_flip_p) where n < EXACT_BELOW or the
      differences are equal (zero variance, up to EQUAL_RTOL), where the t-test's p means nothing
      (at zero variance t is ±∞ and its p 0). All-zero differences (arms that agree seed for seed,
      e.g. an init bit-identical to another) give p = 1; equal non-zero ones 2/2^n, never 0;
    - "t": the paired t-test otherwise, scipy.stats.ttest_1samp(d, 0) (= ttest_rel(a, b))."""
    d = finite(diffs)
    n = len(d)
    if n < 2:
        return math.nan, "none"
    top = float(np.abs(d).max())
    if top == 0:
        return 1.0, "exact"
    if n < EXACT_BELOW or float(np.ptp(d)) <= EQUAL_RTOL * top:
        return _sign_flip_p(d), "exact"
    return float(stats.ttest_1samp(d, 0.0).pvalue), "t"


def paired_p(diffs) -> float:
    """The two-sided p of paired_test (exact sign-flip test below EXACT_BELOW seeds or at zero
    variance, paired t-test otherwise); NaN where n < 2."""
    return paired_test(diffs)[0]


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


def decomposition(trials: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Per configuration where impulse, pe_scaled and a baseline b (`baseline`) finished, the gain
    split seed by seed: impulse − b = (pe_scaled − b) + (impulse − pe_scaled), the part the PE
    scale gives (pe_scaled is b's base with impulse's PE scale) plus the part the attention
    structure gives on top of it. Means and 95 % CIs (ci95) over the seeds where all three
    finished, so the parts' means sum to the total's exactly (their CIs do not add); `p_holm` and
    `n_paired` are the paired table's row of the same pair (its seeds, its Holm family), NaN and 0
    where the study did not declare that pair."""
    rows = []
    for (key, config), g in finished(trials).groupby(["config_key", "config"], sort=True):
        by, base = by_seed(g), baseline(set(g["init"]))
        if base is None or "impulse" not in by or "pe_scaled" not in by or base not in by:
            continue
        common = by[["impulse", "pe_scaled", base]].dropna()
        for part, a, b in (("PE scale", "pe_scaled", base), ("structure", "impulse", "pe_scaled"),
                           ("total", "impulse", base)):
            m, s, h, n = ci95(common[a] - common[b])
            row = paired[(paired["config"] == config) & (paired["pair"] == f"{a} - {b}")]
            rows.append({"config": config, "baseline": base, "part": part, "pair": f"{a} - {b}", "mean": m,
                         "ci95": h, "n": n, "p_holm": row["p_holm"].iloc[0] if len(row) else math.nan,
                         "n_paired": int(row["n"].iloc[0]) if len(row) else 0})
    return pd.DataFrame(rows, columns=["config", "baseline", "part", "pair", "mean", "ci95", "n", "p_holm",
                                       "n_paired"])


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
