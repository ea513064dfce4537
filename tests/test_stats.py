"""Every statistic of helpers.stats against a known table: a textbook or hand-computed example each."""

import math

import numpy as np
import pytest

from helpers import stats, textmetrics


def test_wilson_interval_matches_the_textbook_values():
    # 0 of 10: the Wilson upper bound is 0.2775 (Brown, Cai & DasGupta 2001; the bootstrap collapses to 0)
    lo, hi = stats.wilson_ci(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    # 6 of 15 by the closed formula: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z, n, p = 1.959964, 15, 6 / 15
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = stats.wilson_ci(6, 15)
    assert (lo, hi) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)), abs=1e-5)
    assert all(math.isnan(x) for x in stats.wilson_ci(0, 0))


def test_rate_reports_both_intervals_and_the_bootstrap_is_seeded():
    r = stats.rate([True] * 6 + [False] * 9, n_boot=500, seed=1)
    assert r["value"] == pytest.approx(0.4) and r["n"] == 15 and r["successes"] == 6
    assert r["wilson"] == stats.wilson_ci(6, 15)
    assert r["bootstrap"] == stats.rate([True] * 6 + [False] * 9, n_boot=500, seed=1)["bootstrap"]
    lo, hi = r["bootstrap"]
    assert lo < 0.4 < hi


def test_exact_mcnemar_on_a_hand_computed_table():
    # 1 item lost, 9 gained: two-sided p = 2 * P(X <= 1 | n=10, 1/2) = 2 * 11 / 1024
    before = [True] * 10 + [True] * 1 + [False] * 9 + [False] * 10
    after = [True] * 10 + [False] * 1 + [True] * 9 + [False] * 10
    res = stats.mcnemar_exact(before, after)
    assert (res["gained"], res["lost"], res["discordant"]) == (9, 1, 10)
    assert res["p_value"] == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact([True, False], [True, False])["p_value"] == 1.0  # no discordant pair
    with pytest.raises(ValueError, match="equal lengths"):
        stats.mcnemar_exact([True], [True, False])


def test_paired_bootstrap_brackets_a_known_shift():
    before = np.linspace(0, 1, 40)
    res = stats.paired_bootstrap(before, before + 0.1, n_boot=1000)
    assert res["mean_diff"] == pytest.approx(0.1) and res["ci_low"] == pytest.approx(0.1)
    assert res["ci_high"] == pytest.approx(0.1) and res["p_value"] == pytest.approx(1 / 1000)


def _raters(table):
    """Two rating lists from a contingency table (rows: rater A's label, columns: rater B's)."""
    a, b = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            a += [i] * count
            b += [j] * count
    return a, b


def test_cohens_kappa_on_the_textbook_table():
    # Yes/Yes 20, Yes/No 5, No/Yes 10, No/No 15: p_o = 0.7, p_e = 0.5, kappa = 0.4 (Cohen 1960; Wikipedia's
    # worked example). Large-sample SE (Fleiss, Cohen & Everitt 1969) from statsmodels: 0.1270.
    a, b = _raters([[20, 5], [10, 15]])
    k = stats.cohens_kappa(a, b, n_boot=500)
    assert k["value"] == pytest.approx(0.4) and k["n"] == 50
    lo, hi = k["asymptotic"]
    assert (lo + hi) / 2 == pytest.approx(0.4) and (hi - lo) / 2 == pytest.approx(1.959964 * 0.12700, abs=1e-3)
    blo, bhi = k["bootstrap"]
    assert blo < 0.4 < bhi and bhi - blo == pytest.approx(hi - lo, rel=0.35)


def test_quadratic_weighted_kappa_matches_the_closed_formula():
    table = np.array([[5, 2, 0], [1, 6, 1], [0, 2, 3]])
    a, b = _raters(table)
    n = table.sum()
    w = np.array([[(i - j) ** 2 for j in range(3)] for i in range(3)])
    expected = np.outer(table.sum(1), table.sum(0)) / n
    kappa_w = 1 - (w * table).sum() / (w * expected).sum()   # = 0.7222 for this table
    k = stats.cohens_kappa(a, b, weights="quadratic", n_boot=300)
    assert k["value"] == pytest.approx(kappa_w) == pytest.approx(13 / 18)
    lo, hi = k["asymptotic"]
    assert lo < kappa_w < hi and k["bootstrap"][0] < kappa_w < k["bootstrap"][1]


def test_agreement_is_a_rate_with_a_wilson_interval():
    a, b = _raters([[20, 5], [10, 15]])
    res = stats.agreement(a, b)
    assert res["value"] == pytest.approx(0.7) and (res["ci_low"], res["ci_high"]) == stats.wilson_ci(35, 50)


def test_token_f1_has_one_definition_for_empty_input():
    assert textmetrics.token_f1("", "") == 1.0               # SQuAD: both empty agree
    assert textmetrics.token_f1("", "Antwort") == 0.0
    assert textmetrics.token_f1("Antwort", "") == 0.0
    # "die antwort ist 42" vs "antwort 42": common 2, precision 2/4, recall 2/2 -> F1 = 2/3
    assert textmetrics.token_f1("Die Antwort ist 42.", "Antwort: 42") == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- judge validation
def test_kappa_from_table_on_the_hand_checkable_two_by_two():
    # [[20, 5], [10, 15]], n=50: po = 0.70, pe = (25*30 + 25*20)/50² = 0.50, kappa = 0.40 exactly
    res = stats.kappa_from_table([[20, 5], [10, 15]])
    assert res["value"] == pytest.approx(0.40, abs=1e-12) and res["agreement"] == pytest.approx(0.70)
    a, b = _raters([[20, 5], [10, 15]])
    assert stats.cohens_kappa(a, b, n_boot=200)["value"] == pytest.approx(res["value"], abs=1e-9)  # sklearn = statsmodels
    lo, hi = res["asymptotic"]
    assert 0.1 < lo < 0.40 < hi < 0.7


def test_quadratic_kappa_from_table_matches_sklearn_on_a_three_class_table():
    table = [[10, 3, 1], [2, 8, 4], [0, 3, 9]]
    a, b = _raters(table)
    from sklearn.metrics import cohen_kappa_score

    assert stats.kappa_from_table(table, "quadratic")["value"] == pytest.approx(
        cohen_kappa_score(a, b, weights="quadratic"), abs=1e-9)


def test_the_series_kappa_is_what_its_own_counts_give():
    # Post 8: Claude A/B/C 111/50/10, Llama 167/3/1, 111 agreements; chance agreement 0.639, kappa about 0.027,
    # at most 115 agreements (kappa 0.092); 0.30 would need about 128 (shared/research/series-posts-6-8.md)
    res = stats.kappa_from_marginals([111, 50, 10], [167, 3, 1], 111, claimed=0.30)
    assert res["pe"] == pytest.approx((111 * 167 + 50 * 3 + 10 * 1) / 171 ** 2)
    assert res["value"] == pytest.approx(0.027, abs=0.001)
    assert res["max_agreements"] == 115 and res["max_kappa"] == pytest.approx(0.092, abs=0.001)
    assert 127 < res["needed_for_claimed"] < 129
    with pytest.raises(ValueError, match="same items"):
        stats.kappa_from_marginals([1, 2], [1, 1], 1)


def test_confusion_rows_are_truth_and_flag_quality_counts():
    cm = stats.confusion(["A", "A", "B", "C"], ["A", "B", "B", "A"], ["A", "B", "C"])
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    q = stats.flag_quality([True, True, True, False, False], [True, False, False, True, False])
    assert (q["tp"], q["fp"], q["fn"], q["tn"]) == (1, 1, 2, 1)
    assert q["precision"] == pytest.approx(0.5) and q["recall"] == pytest.approx(1 / 3)
    assert q["recall_ci"] == stats.wilson_ci(1, 3)
    assert math.isnan(stats.flag_quality([False], [False])["precision"])


def test_binomial_test_on_a_hand_computed_case():
    # 9 of 10 first-slot wins: two-sided p = 2 * (C(10,9) + C(10,10)) / 1024 = 22/1024
    res = stats.binomial_test(9, 10)
    assert res["p_value"] == pytest.approx(22 / 1024) and res["share"] == pytest.approx(0.9)
    assert stats.binomial_test(5, 10)["p_value"] == pytest.approx(1.0)
