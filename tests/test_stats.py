"""stats.py's statistics of plain numbers, against hand-worked values and scipy: the paired test
(exact sign flips for few seeds or equal differences, else the t-test), ci95's t-interval, Holm,
the decomposition of impulse - base and the per-cell pick."""
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from structinit.config import config_key
from structinit.report import markdown, summarize, summary_metrics
from structinit.stats import EXACT_BELOW, arms, ci95, decomposition, holm, paired_p, paired_test, per_cell
from tests.helpers import arm_rows


def enumerated_p(d) -> float:
    """The exact two-sided sign-flip p by brute force: the share of the 2^n sign vectors s whose
    |sum s_i |d_i|| reaches the observed |sum d_i| (sums: the mean's n cancels)."""
    d = np.asarray(d, dtype=float)
    observed = abs(d.sum())
    sums = [abs(np.dot(signs, np.abs(d))) for signs in itertools.product((1, -1), repeat=len(d))]
    return sum(s >= observed - 1e-9 for s in sums) / 2 ** len(d)


def test_two_equal_differences_get_the_exact_p_not_zero():
    """The bug: [1.11, 1.11] had zero variance, t = ∞, p = 0 ("<0.001", surviving Holm). Exact:
    of the 4 sign vectors ++ and -- reach |mean| 1.11, p = 2/4."""
    assert paired_test([1.11, 1.11]) == (0.5, "exact")
    assert paired_p([1.11, 1.11]) == 0.5


def test_an_exact_case_with_ties_by_hand():
    """d = 3, 2, 1, -1 (sum 5). ±3±2 is 5, 1, -1, -5 and ±1±1 is 2, 0, 0, -2, so the 16 sums are
    7 5 5 3 | 3 1 1 -1 | 1 -1 -1 -3 | -3 -5 -5 -7: six with |sum| >= 5, p = 6/16."""
    p, test = paired_test([3.0, 2.0, 1.0, -1.0])
    assert test == "exact" and p == pytest.approx(6 / 16) == enumerated_p([3.0, 2.0, 1.0, -1.0])
    for d in ([1.0, 1.0, 2.0], [0.5, -0.5, 0.5, 1.5, 0.0], [2.0, -1.0, 2.0, 2.0, 1.0]):  # ties, a zero, n = 3..5
        assert paired_test(d) == (pytest.approx(enumerated_p(d)), "exact")


@pytest.mark.parametrize("n,smallest", [(3, 0.25), (4, 0.125), (5, 0.0625)])
def test_the_smallest_exact_p_below_six_seeds_cannot_reach_005(n, smallest):
    assert n < EXACT_BELOW and paired_test([1.0 + i for i in range(n)]) == (pytest.approx(smallest), "exact")


def test_six_or_more_varying_differences_get_scipys_paired_t_test():
    a = [90.0, 92.0, 88.0, 91.0, 89.5, 93.0, 90.5]
    b = [85.0, 86.0, 87.0, 86.5, 88.0, 85.5, 87.0]
    for n in (EXACT_BELOW, len(a)):
        p, test = paired_test([x - y for x, y in zip(a[:n], b[:n])])
        assert test == "t" and p == pytest.approx(stats.ttest_rel(a[:n], b[:n]).pvalue)


def test_equal_differences_at_six_or_more_seeds_get_the_exact_test():
    """Seven equal non-zero differences: only the all-+ and all-- sign vectors reach them, p = 2/2^7,
    also where the floats differ in the last bits (the same test-image step computed per seed: a
    t-test would give p ~ 1e-72) and beyond what is enumerated (closed form)."""
    assert paired_test([1.11] * 7) == (pytest.approx(2 / 2 ** 7), "exact")
    steps = [100 * (810 + s) / 900 - 100 * (800 + s) / 900 for s in range(7)]
    assert np.ptp(steps) > 0 and paired_test(steps) == (pytest.approx(2 / 2 ** 7), "exact")
    assert paired_test([-0.5] * 20) == (pytest.approx(2 / 2 ** 20), "exact")


def test_all_zero_differences_give_one_and_one_seed_none():
    for n in (2, 3, 7, 30):
        assert paired_test([0.0] * n) == (1.0, "exact")
    p, test = paired_test([2.0])
    assert math.isnan(p) and test == "none"
    assert math.isnan(paired_p([])) and math.isnan(paired_p([1.0, math.nan]))  # NaN is no seed


def test_ci95_is_scipys_t_interval():
    v = [90.0, 92.0, 88.0, 91.0]
    m, s, h, n = ci95(v)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(v), scale=stats.sem(v))
    assert (m, s, n) == (pytest.approx(90.25), pytest.approx(np.std(v, ddof=1)), 4)
    assert (m - h, m + h) == (pytest.approx(low), pytest.approx(high))
    assert h == pytest.approx(stats.ttest_1samp(v, 0).confidence_interval(0.95).high - m)
    assert ci95([1.11, 1.11, 1.11]) == (pytest.approx(1.11), 0.0, 0.0, 3)  # equal values: no width
    m, s, h, n = ci95([1.0])
    assert m == 1.0 and math.isnan(s) and math.isnan(h) and n == 1
    assert ci95([])[3] == 0 and math.isnan(ci95([None, math.nan])[0])


def test_holm_by_hand():
    """Holm on four p-values worked by hand (a NaN is no comparison: m = 4), and its clip at 1."""
    # sorted 0.005 0.01 0.03 0.04, times m - i + 1 = 4 3 2 1: 0.02 0.03 0.06 0.04, running max 0.02 0.03 0.06 0.06
    got = holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert got[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(got[4])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0] and holm([]).size == 0


def test_the_report_says_which_test_gave_each_p():
    """summarize's paired table carries each row's test and markdown prints it: 3 seeds exact, 7 varying seeds t,
    and two equal differences get p = 0.5 where they got "<0.001"."""
    import json

    import pandas as pd

    from structinit.report import markdown, summarize

    runs = {32: [(90.0, 85.0), (92.0, 86.0), (88.0, 87.0)],  # (impulse, mimetic) per seed
            64: [(90.0 + s % 3, 85.0 + s % 2) for s in range(7)], 96: [(91.11, 90.0), (91.11, 90.0)]}
    rows = []
    for dim, accs in runs.items():
        for seed, (imp, mim) in enumerate(accs):
            rows += [dict(status="TERMINATED", config_key=f"k{dim}", params=json.dumps({"model.embed_dim": dim}),
                          init=init, seed=seed, final_test_top1=acc, test_top1_at_best_val=acc, init_mass_pseudo=0.9,
                          init_mass_data=0.1) for init, acc in (("impulse", imp), ("mimetic", mim))]
    table, paired = summarize(pd.DataFrame(rows))
    assert paired.test.tolist() == ["exact", "t", "exact"] and paired.n.tolist() == [3, 7, 2]
    assert paired.p.iloc[0] == pytest.approx(enumerated_p([5.0, 6.0, 1.0])) == 0.25 and paired.p.iloc[2] == 0.5
    assert paired.p_holm.tolist() == pytest.approx(holm(paired.p).tolist())
    text = markdown("s", table, paired, pd.DataFrame(rows))
    assert "| p | test | p (Holm) |" in text and "| 0.500 | exact | 0.500 |" in text and "| t |" in text
    assert f"where n >= {EXACT_BELOW} and the differences vary" in text


def test_report_statistics_by_hand():
    rows = []
    for seed, (imp, mim) in enumerate([(90.0, 85.0), (92.0, 86.0), (88.0, 87.0)]):
        for init, acc in (("impulse", imp), ("mimetic", mim)):
            rows.append(dict(status="TERMINATED", config_key="k", params=json.dumps({"model.embed_dim": 64}),
                             init=init, seed=seed, final_test_top1=acc, test_top1_at_best_val=acc + 1,
                             init_mass_pseudo=0.9, init_mass_data=0.1))
    table, paired = summarize(pd.DataFrame(rows))
    imp = table[table.init == "impulse"].iloc[0]
    assert imp.final_test_top1_mean == pytest.approx(90.0) and imp.final_test_top1_std == pytest.approx(2.0)
    assert imp.final_test_top1_ci95 == pytest.approx(stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3))
    diff = paired[paired.pair == "impulse - mimetic"].iloc[0]
    assert diff.n == 3 and diff["mean"] == pytest.approx((5 + 6 + 1) / 3)
    assert math.isnan(ci95([1.0])[2]) and ci95([])[3] == 0


def test_decomposition_splits_the_gain_into_pe_scale_and_structure():
    """All four arms over 5 seeds: (pe_scaled - base) + (impulse - pe_scaled) = impulse - base in
    the seed mean, base = torch_default where it ran (else default); on the seeds all three share
    when an arm lost one. Every pair is one row of the paired table, with its p and Holm p. Each
    part is named for what differs: the PE scale plus mimetic V/proj where value_proj is mimetic
    (digits), value_proj unrecorded (mnist: a table from before its column)."""
    scores = {"impulse": lambda s: (80.0 + s + 0.5 * s * s, 70.0), "pe_scaled": lambda s: (75.0 + 0.3 * s, 70.0),
            "mimetic": lambda s: (74.0 + s, 70.0), "torch_default": lambda s: (70.0 - 0.7 * s, 70.0),
            "default": lambda s: (60.0, 70.0)}
    rows = arm_rows({"dataset": "digits"}, scores, value_proj="mimetic", init_pe_scale=18.0)
    other = arm_rows({"dataset": "mnist"}, {k: v for k, v in scores.items() if k != "torch_default"})
    other[next(i for i, r in enumerate(other) if r["init"] == "pe_scaled" and r["seed"] == 4)].update(
        status="ERROR", error="NonFiniteLossError", final_test_top1=None)  # pe_scaled lost seed 4 there
    trials = pd.DataFrame(rows + other)
    table, paired = summarize(trials)
    assert not paired.duplicated(["config", "pair"]).any()
    assert {"pe_scaled - torch_default", "pe_scaled - default", "impulse - pe_scaled"} <= set(paired.pair)
    assert paired.p_holm.tolist() == pytest.approx(holm(paired.p).tolist(), nan_ok=True)
    assert (paired.p_holm >= paired.p).all()
    parts = decomposition(arms(trials), paired)
    named = {"dataset=digits": ("PE scale + mimetic V/proj", "Q/K structure"),
             "dataset=mnist": ("PE scale", "structure (value_proj unrecorded: Q/K, maybe V/proj)")}
    for config, base, n in (("dataset=digits", "torch_default", 5), ("dataset=mnist", "default", 4)):
        got = parts[parts.config == config].set_index("pair")
        control, structure, total = f"pe_scaled - {base}", "impulse - pe_scaled", f"impulse - {base}"
        assert set(got.baseline) == {base} and set(got.n) == {n}
        assert tuple(got.loc[[control, structure, total], "part"]) == (*named[config], "total")
        assert got.loc[control, "mean"] + got.loc[structure, "mean"] == pytest.approx(got.loc[total, "mean"])
        seeds = range(n)
        imp, pe, b = ([scores[i](s)[0] for s in seeds] for i in ("impulse", "pe_scaled", base))
        assert got.loc[total, "mean"] == pytest.approx(sum(x - y for x, y in zip(imp, b)) / n)
        assert got.loc[control, "mean"] == pytest.approx(sum(x - y for x, y in zip(pe, b)) / n)
    mnist = parts[parts.config == "dataset=mnist"].set_index("pair")
    assert mnist.loc["impulse - default", "n_paired"] == 5 and mnist.loc["impulse - pe_scaled", "n_paired"] == 4
    row = paired[(paired.config == "dataset=digits") & (paired.pair == "impulse - pe_scaled")].iloc[0]
    structure = parts[(parts.config == "dataset=digits") & (parts.pair == "impulse - pe_scaled")]
    assert structure.p_holm.iloc[0] == row.p_holm
    text = markdown("s", table, paired, trials)
    assert "## Decomposition" in text
    assert "| dataset=digits | torch_default | mimetic | 5 | PE scale + mimetic V/proj: " in text
    assert "| dataset=mnist | default | unrecorded | 4 | PE scale: " in text and "| Q/K structure: " in text
    assert "p (Holm)" in text and "## Per cell" not in text  # no embed_dim/num_heads varied
    metrics, params = summary_metrics(trials)
    digits = "c" + config_key({"dataset": "digits"})[:4]  # the configuration's short id (config.config_ids)
    assert params[f"config.{digits}"] == "dataset=digits"
    assert metrics[f"impulse-pe_scaled/{digits}/p_holm"] == pytest.approx(row.p_holm)


def test_per_cell_picks_the_impulse_setting_by_validation_not_test():
    """Two settings per (embed_dim, num_heads) cell; in the first cell the better-validating setting
    is the worse on test: the pick follows validation. Conditions with k = 7, f = 3."""
    cell = dict(filter_size=3, init_rank_k=7.0, pseudo_input="pe", pe_scale=None, init_pe_scale=18.0)
    rows = []
    for dim, heads, sharp_val, sharp_test in ((32, 2, 60.0, 90.0), (144, 9, 80.0, 70.0)):
        for mass, val, test in ((0.3, 70.0, 80.0), (0.9, sharp_val, sharp_test)):
            params = {"model.embed_dim": dim, "model.num_heads": heads, "init.target_mass": mass}
            rows += arm_rows(params, {"impulse": lambda s, t=test, v=val: (t + s, v + s),
                                      "torch_default": lambda s: (60.0 + s, 50.0)},
                             embed_dim=dim, num_heads=heads, target_mass=mass, **cell)
    trials = pd.DataFrame(rows)
    table, paired = summarize(trials)
    cells = per_cell(arms(trials), table, paired).set_index(["embed_dim", "num_heads"])
    first, second = cells.loc[(32, 2)], cells.loc[(144, 9)]
    assert first.setting == "target_mass=0.3"  # val 70 > 60, test 80 < 90
    assert first.final_test_top1_mean == pytest.approx(82.0) and first.settings == 2
    assert second.setting.startswith("target_mass=0.9") and second.best_val_top1_mean == pytest.approx(82.0)
    assert (first.h_ge_f2, first.head_dim_ge_k) == (False, True)  # 2 < 9 heads; 32 / 2 = 16 >= 7
    assert (second.h_ge_f2, second.head_dim_ge_k) == (True, True) and "h≥f² ✓, D/h≥k ✓" in second.theory
    text = markdown("s", table, paired, trials)
    assert "## Per cell" in text
    line = next(x for x in text.splitlines() if x.startswith("| 32 | 2 |"))
    assert "target_mass=0.3" in line and "impulse - torch_default: 20.00 ± 0.00" in line
