"""stats.py's statistics of plain numbers, against hand-worked values and scipy: the paired test
(exact sign flips for few seeds or equal differences, else the t-test), ci95's t-interval, Holm."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from structinit.stats import EXACT_BELOW, ci95, holm, paired_p, paired_test


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
