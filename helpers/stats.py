"""Statistics for small evaluation sets: rates with intervals, paired tests, agreement and Cohen's kappa.

One home for the numbers that evaluation (notebook 05.2) reports now and the judge and A/B steps will
report later. Library functions do the work wherever one exists (statsmodels, scikit-learn, scipy); the
bootstraps are written out because they must resample *items* (pairs, rater pairs) with a fixed seed, so the
same data always give the same interval.

Conventions: ``alpha=0.05`` (95 % intervals), every function is deterministic for a given ``seed``, and an
empty input gives ``nan`` rather than an exception (a variant without a single applicable item).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

N_BOOT = 2000   # bootstrap resamples unless a caller says otherwise


# --------------------------------------------------------------------------- rates
def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion; stays inside [0, 1] and is sensible at 0 % and 100 %."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return (float("nan"), float("nan"))
    lo, hi = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return (float(lo), float(hi))


def bootstrap_ci(values: Sequence[float], n_boot: int = N_BOOT, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so the same data give the same interval).

    Note: for a rate of 0 % or 100 % every resample has the same rate, so the interval collapses to a
    point - that says "n is too small to see a miss", not "certain" (``wilson_ci`` does not collapse).
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return (float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2)))


def rate(outcomes: Sequence[bool], n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = 0) -> dict:
    """A yes/no rate with both intervals: ``{value, n, wilson: (lo, hi), bootstrap: (lo, hi)}``."""
    x = [bool(v) for v in outcomes]
    k, n = sum(x), len(x)
    return {"value": k / n if n else float("nan"), "successes": k, "n": n,
            "wilson": wilson_ci(k, n, alpha), "bootstrap": bootstrap_ci(x, n_boot, alpha, seed)}


# --------------------------------------------------------------------------- paired tests
def _check_paired(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> dict:
    """Exact McNemar test for paired yes/no outcomes (statsmodels, binomial on the discordant pairs).

    ``gained``: items no before and yes after; ``lost``: yes before and no after. Under H0 (no difference)
    each discordant pair goes either way with probability 1/2; concordant pairs carry no information.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    _check_paired(before, after)
    pairs = [(bool(a), bool(b)) for a, b in zip(before, after)]
    gained = sum(1 for a, b in pairs if not a and b)
    lost = sum(1 for a, b in pairs if a and not b)
    both = sum(1 for a, b in pairs if a and b)
    table = [[len(pairs) - gained - lost - both, gained], [lost, both]]
    n = gained + lost
    p = 1.0 if n == 0 else float(min(1.0, mcnemar(table, exact=True).pvalue))
    return {"gained": gained, "lost": lost, "discordant": n, "p_value": p}


def paired_bootstrap(before: Sequence[float], after: Sequence[float], n_boot: int = N_BOOT, alpha: float = 0.05,
                     seed: int = 0) -> dict:
    """Mean of (after - before) over pairs, with a percentile bootstrap interval that resamples *pairs*.

    ``p_value``: two-sided bootstrap p (twice the share of resampled mean differences on the far side of
    zero), floored at 1/n_boot - it is an approximation; the interval is the main result.
    """
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs equal lengths, got {a.size} and {b.size}")
    if a.size == 0:
        nan = float("nan")
        return {"mean_diff": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "n": 0}
    d = b - a
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    side = min(np.mean(means <= 0), np.mean(means >= 0))
    return {"mean_diff": float(d.mean()), "ci_low": float(np.quantile(means, alpha / 2)),
            "ci_high": float(np.quantile(means, 1 - alpha / 2)),
            "p_value": float(min(1.0, max(2 * side, 1 / n_boot))), "n": int(d.size)}


# --------------------------------------------------------------------------- agreement
def agreement(a: Sequence, b: Sequence, alpha: float = 0.05) -> dict:
    """Share of items two raters (judge and human, two judges) label the same, with its Wilson interval."""
    _check_paired(a, b)
    same = sum(x == y for x, y in zip(a, b))
    lo, hi = wilson_ci(same, len(a), alpha)
    return {"value": same / len(a) if len(a) else float("nan"), "n": len(a), "ci_low": lo, "ci_high": hi}


def cohens_kappa(a: Sequence, b: Sequence, weights: str | None = None, n_boot: int = N_BOOT,
                 alpha: float = 0.05, seed: int = 0, labels: Sequence | None = None) -> dict:
    """Cohen's kappa of two raters, plain or ``weights="quadratic"`` (ordinal scores), with two intervals.

    ``value``: scikit-learn's ``cohen_kappa_score``. ``asymptotic``: statsmodels' large-sample interval
    (``cohens_kappa`` on the contingency table). ``bootstrap``: percentile interval over resampled items,
    which needs no normal approximation and suits the small sets of this course.
    """
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import cohens_kappa as sm_kappa

    _check_paired(a, b)
    labels = list(labels) if labels is not None else sorted(set(a) | set(b))
    n = len(a)
    nan = (float("nan"), float("nan"))
    if n == 0 or len(labels) < 2:
        return {"value": float("nan"), "n": n, "weights": weights, "asymptotic": nan, "bootstrap": nan}
    value = float(cohen_kappa_score(a, b, labels=labels, weights=weights))
    index = {label: i for i, label in enumerate(labels)}
    table = np.zeros((len(labels), len(labels)))
    for x, y in zip(a, b):
        table[index[x], index[y]] += 1
    from scipy.stats import norm

    res = sm_kappa(table, wt=weights) if weights else sm_kappa(table)
    half = float(norm.ppf(1 - alpha / 2)) * float(res.std_kappa)   # statsmodels' large-sample SE
    asymptotic = (float(res.kappa) - half, float(res.kappa) + half)
    # bootstrap over items: the same formula as scikit-learn's (1 - sum(w*O) / sum(w*E)), vectorised
    k = len(labels)
    w = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2 if weights == "quadratic"
         else np.abs(np.subtract.outer(np.arange(k), np.arange(k))) if weights == "linear"
         else 1 - np.eye(k))
    codes = np.asarray([index[x] * k + index[y] for x, y in zip(a, b)])
    rng = np.random.default_rng(seed)
    observed = np.stack([np.bincount(codes[rng.integers(0, n, size=n)], minlength=k * k)
                         for _ in range(n_boot)]).reshape(n_boot, k, k) / n
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = 1 - (w * observed).sum(axis=(1, 2)) / (w * expected).sum(axis=(1, 2))
    boots = boots[np.isfinite(boots)]   # a resample with one label only has no kappa
    bootstrap = (float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))) \
        if boots.size else nan
    return {"value": value, "n": n, "weights": weights, "asymptotic": asymptotic, "bootstrap": bootstrap}


# --------------------------------------------------------------------------- judge validation
def confusion(truth: Sequence, predicted: Sequence, labels: Sequence) -> np.ndarray:
    """Confusion matrix (rows: truth, e.g. the human label; columns: predicted, e.g. the judge), scikit-learn."""
    from sklearn.metrics import confusion_matrix

    _check_paired(truth, predicted)
    return confusion_matrix(list(truth), list(predicted), labels=list(labels))


def kappa_from_table(table, weights: str | None = None, alpha: float = 0.05) -> dict:
    """Cohen's kappa recomputed from a printed confusion matrix (statsmodels), with its asymptotic interval.

    ``weights``: None (nominal) or "linear"/"quadratic" (ordinal categories in the table's order). The check the
    original series lacked: a kappa reported beside a table must be what the table gives.
    """
    from scipy.stats import norm
    from statsmodels.stats.inter_rater import cohens_kappa as sm_kappa

    t = np.asarray(table, dtype=float)
    res = sm_kappa(t, wt=weights) if weights else sm_kappa(t)
    half = float(norm.ppf(1 - alpha / 2)) * float(res.std_kappa)
    n = t.sum()
    return {"value": float(res.kappa), "asymptotic": (float(res.kappa) - half, float(res.kappa) + half),
            "n": int(n), "agreement": float(np.trace(t) / n) if n else float("nan")}


def kappa_from_marginals(rows: Sequence[int], cols: Sequence[int], agreements: int,
                         claimed: float | None = None) -> dict:
    """Unweighted kappa from two raters' marginal counts and the number of agreements alone.

    ``pe`` (chance agreement) follows from the marginals, so ``kappa = (po - pe) / (1 - pe)`` needs no table;
    ``max_kappa`` uses the most agreement the marginals allow (sum of min(row_i, col_i)), and
    ``needed_for_claimed`` answers "how many agreements would the ``claimed`` kappa need?".
    """
    r, c = np.asarray(rows, dtype=float), np.asarray(cols, dtype=float)
    n = r.sum()
    if n != c.sum() or n == 0:
        raise ValueError(f"both raters must label the same items, got {r.sum():g} and {c.sum():g}")
    pe = float((r * c).sum() / n ** 2)
    max_agree = int(np.minimum(r, c).sum())

    def kappa(agree: float) -> float:
        return float((agree / n - pe) / (1 - pe))

    out = {"n": int(n), "po": agreements / n, "pe": pe, "value": kappa(agreements),
           "max_agreements": max_agree, "max_kappa": kappa(max_agree)}
    if claimed is not None:
        out["needed_for_claimed"] = float(n * (pe + claimed * (1 - pe)))
    return out


def flag_quality(truth: Sequence[bool], predicted: Sequence[bool], alpha: float = 0.05) -> dict:
    """Precision and recall of a yes/no flag (the hallucination flag) with Wilson intervals, and the counts."""
    _check_paired(truth, predicted)
    t, p = [bool(x) for x in truth], [bool(x) for x in predicted]
    tp = sum(a and b for a, b in zip(t, p))
    fp = sum(b and not a for a, b in zip(t, p))
    fn = sum(a and not b for a, b in zip(t, p))
    nan = float("nan")
    return {"tp": tp, "fp": fp, "fn": fn, "tn": len(t) - tp - fp - fn,
            "precision": tp / (tp + fp) if tp + fp else nan, "precision_ci": wilson_ci(tp, tp + fp, alpha),
            "recall": tp / (tp + fn) if tp + fn else nan, "recall_ci": wilson_ci(tp, tp + fn, alpha)}


def binomial_test(successes: int, n: int, p: float = 0.5) -> dict:
    """Exact two-sided binomial test (scipy), e.g. "the first slot wins more often than half of the time"."""
    from scipy.stats import binomtest

    if n == 0:
        return {"successes": 0, "n": 0, "share": float("nan"), "p_value": float("nan"), "ci": (float("nan"),) * 2}
    res = binomtest(successes, n, p)
    return {"successes": successes, "n": n, "share": successes / n, "p_value": float(res.pvalue),
            "ci": wilson_ci(successes, n)}


def two_proportions(a_successes: int, a_n: int, b_successes: int, b_n: int) -> dict:
    """Two independent shares compared with Fisher's exact test (scipy), each with its Wilson interval."""
    from scipy.stats import fisher_exact

    table = [[a_successes, a_n - a_successes], [b_successes, b_n - b_successes]]
    return {"a": a_successes / a_n, "a_ci": wilson_ci(a_successes, a_n), "b": b_successes / b_n,
            "b_ci": wilson_ci(b_successes, b_n), "diff": a_successes / a_n - b_successes / b_n,
            "p_value": float(fisher_exact(table).pvalue)}
