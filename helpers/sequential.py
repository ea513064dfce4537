"""The A/B test's decision statistics: a pre-registered mSPRT for a difference of two proportions, the naive
peeking test it replaces, a vectorised simulation harness for both, and the sample-ratio-mismatch check.

Why not a fixed-n test: a two-sided z-test looked at 10 times during a run and stopped at the first
"significant" look declares a winner in about 19 % of A/A runs at a nominal 5 % (the more looks, the worse).
No maintained library in the course's stack has a sequential test for proportions (statsmodels and scipy
are fixed-horizon; spotify-confidence and gbstats are not installed), so the mixture SPRT of Johari et al.
("Always Valid Inference", normal mixture) is written out here -- a few lines, tested by simulation:

    theta = p_v2 - p_v1,  v = p(1-p)(1/n1 + 1/n2) (pooled p, the variance under H0),  tau = min_effect
    Lambda = sqrt(v / (v + tau^2)) * exp(tau^2 theta^2 / (2 v (v + tau^2)))
    stop and reject H0 at the first look with Lambda >= 1/alpha; the always-valid p-value is min_k 1/Lambda_k

Lambda is a (approximate) martingale under H0, so Ville's inequality bounds the chance that it *ever*
crosses 1/alpha by alpha -- at every look schedule, chosen in advance or not. ``simulate`` checks this on
the plan's real look schedule (``aa_check``: false positives <= alpha + 3 standard errors).

Outcomes: "v2 wins", "v1 wins", "continue" (boundary not crossed, max n not reached) and "no decision"
(max n reached without crossing: traffic stays as it is; no "trend" calls).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from .errors import HelpersError

V2_WINS, V1_WINS, CONTINUE, NO_DECISION = "v2 wins", "v1 wins", "continue", "no decision"
SRM_THRESHOLD = 0.001   # the usual SRM alarm level: a split problem, not a 5 % false alarm every 20 checks


class PlanError(HelpersError, ValueError):
    """A pre-registered plan that cannot be run (the message says which field to fix)."""


@dataclass(frozen=True)
class Plan:
    """The pre-registered test: written down (and logged) before the first user arrives.

    ``looks``: cumulative numbers of outcomes (both arms together) at which the test is evaluated; the last
    one is the maximum n. ``min_per_arm``: no look counts before each arm has this many outcomes (the
    normal approximation needs a few).
    """

    metric: str = "refusal_correct"
    alpha: float = 0.05
    min_effect: float = 0.3
    looks: tuple[int, ...] = (20, 40, 60, 80)
    min_per_arm: int = 8

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise PlanError(f"alpha must lie in (0, 1), got {self.alpha}")
        if not 0 < self.min_effect < 1:
            raise PlanError(f"min_effect is a difference of proportions in (0, 1), got {self.min_effect}")
        looks = tuple(int(n) for n in self.looks)
        if not looks or any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] <= 0:
            raise PlanError(f"looks must be increasing positive sample sizes, got {self.looks}")
        object.__setattr__(self, "looks", looks)

    @property
    def max_n(self) -> int:
        return self.looks[-1]

    def as_dict(self) -> dict:
        return {**asdict(self), "looks": list(self.looks), "max_n": self.max_n, "method": "mSPRT (normal mixture)"}


def msprt_lambda(s1, n1, s2, n2, tau: float):
    """The mixture likelihood ratio for p2 - p1 (arrays broadcast); 1.0 where there is no information yet."""
    s1, n1, s2, n2 = (np.asarray(x, dtype=float) for x in (s1, n1, s2, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = s2 / n2 - s1 / n1
        pooled = (s1 + s2) / (n1 + n2)
        v = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
        tau2 = tau * tau
        lam = np.sqrt(v / (v + tau2)) * np.exp(tau2 * theta ** 2 / (2 * v * (v + tau2)))
    return np.where((v > 0) & np.isfinite(lam), lam, 1.0)


def z_stat(s1, n1, s2, n2):
    """Pooled two-proportion z statistic (0 where both rates are 0 or 1): the naive fixed-n test."""
    s1, n1, s2, n2 = (np.asarray(x, dtype=float) for x in (s1, n1, s2, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (s1 + s2) / (n1 + n2)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        z = (s2 / n2 - s1 / n1) / se
    return np.where(se > 0, z, 0.0)


@dataclass
class Decision:
    outcome: str
    n: int
    n_v1: int
    n_v2: int
    rate_v1: float
    rate_v2: float
    diff: float
    lam: float
    p_always_valid: float
    look: int | None = None
    history: list[dict] = field(default_factory=list)

    def as_tags(self, prefix: str = "ab_") -> dict[str, str]:
        """The numbers as MLflow tags (strings)."""
        keys = ("outcome", "n", "n_v1", "n_v2", "rate_v1", "rate_v2", "diff", "lam", "p_always_valid")
        return {f"{prefix}{k}": (f"{getattr(self, k):.6g}" if isinstance(getattr(self, k), float)
                                 else str(getattr(self, k))) for k in keys}


def decide(plan: Plan, v1: Sequence[bool], v2: Sequence[bool]) -> Decision:
    """Evaluate the plan on the outcomes so far (each arm's outcomes in arrival order, interleaving by time).

    ``v1``/``v2`` are per-arm outcome lists; the looks are taken on the *combined* arrival count, so pass
    outcomes as they arrived: ``decide_stream`` does that from one list of (arm, outcome) pairs.
    """
    stream = [("v1", bool(x)) for x in v1] + [("v2", bool(x)) for x in v2]
    return decide_stream(plan, stream)


def decide_stream(plan: Plan, stream: Sequence[tuple[str, bool]]) -> Decision:
    """The plan applied to (arm, outcome) pairs in arrival order: stops at the first look that crosses."""
    arms = np.array([a for a, _ in stream])
    ys = np.array([bool(y) for _, y in stream], dtype=float)
    is2 = arms == "v2"
    c1, c2 = np.cumsum(~is2), np.cumsum(is2)
    s1, s2 = np.cumsum(ys * ~is2), np.cumsum(ys * is2)
    history, p_av = [], 1.0
    last = None
    for k, n in enumerate(plan.looks, 1):
        if n > len(stream):
            break
        i = n - 1
        lam = float(msprt_lambda(s1[i], c1[i], s2[i], c2[i], plan.min_effect))
        counted = c1[i] >= plan.min_per_arm and c2[i] >= plan.min_per_arm
        if counted:
            p_av = min(p_av, 1.0 / lam)
        r1, r2 = s1[i] / max(c1[i], 1), s2[i] / max(c2[i], 1)
        history.append({"look": k, "n": n, "n_v1": int(c1[i]), "n_v2": int(c2[i]), "rate_v1": float(r1),
                        "rate_v2": float(r2), "lambda": lam, "p_always_valid": p_av, "counted": bool(counted)})
        last = (k, n, i, lam, r1, r2)
        if counted and lam >= 1 / plan.alpha:
            outcome = V2_WINS if r2 > r1 else V1_WINS
            return Decision(outcome, n, int(c1[i]), int(c2[i]), float(r1), float(r2), float(r2 - r1), lam, p_av, k,
                            history)
    if last is None:
        n = len(stream)
        return Decision(CONTINUE, n, int(c1[-1]) if n else 0, int(c2[-1]) if n else 0, float("nan"), float("nan"),
                        float("nan"), 1.0, 1.0, None, history)
    k, n, i, lam, r1, r2 = last
    outcome = NO_DECISION if n >= plan.max_n else CONTINUE
    return Decision(outcome, n, int(c1[i]), int(c2[i]), float(r1), float(r2), float(r2 - r1), lam, p_av, k, history)


# --------------------------------------------------------------------------- simulation
def simulate(plan: Plan, p_v1: float, p_v2: float, runs: int = 2000, share_v2: float = 0.5,
             method: str = "msprt", seed: int = 0) -> dict:
    """Run the plan on ``runs`` simulated experiments at once (numpy, no Python loop over runs).

    Each run draws max_n users, each assigned to v2 with probability ``share_v2``, with a Bernoulli outcome
    of its arm's rate. ``method``: "msprt" (the plan) or "naive" (a two-sided z-test at every look, stop at
    the first |z| >= z_(1-alpha/2): what fixed-threshold canary checks do). Returns the rejection rate, its
    standard error, how often each arm was declared the winner and the mean n at stop.
    """
    if method not in ("msprt", "naive"):
        raise PlanError(f"method must be 'msprt' or 'naive', got {method!r}")
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    looks = np.asarray(plan.looks) - 1
    is2 = rng.random((runs, plan.max_n)) < share_v2
    y = rng.random((runs, plan.max_n)) < np.where(is2, p_v2, p_v1)
    c2 = np.cumsum(is2, axis=1)[:, looks]
    s2 = np.cumsum(y & is2, axis=1)[:, looks]
    s1 = np.cumsum(y & ~is2, axis=1)[:, looks]
    c1 = (looks + 1)[None, :] - c2
    counted = (c1 >= plan.min_per_arm) & (c2 >= plan.min_per_arm)
    if method == "msprt":
        cross = counted & (msprt_lambda(s1, c1, s2, c2, plan.min_effect) >= 1 / plan.alpha)
    else:
        cross = counted & (np.abs(z_stat(s1, c1, s2, c2)) >= norm.ppf(1 - plan.alpha / 2))
    rejected = cross.any(axis=1)
    first = np.where(rejected, cross.argmax(axis=1), len(looks) - 1)
    rows = np.arange(runs)
    diff = s2[rows, first] / np.maximum(c2[rows, first], 1) - s1[rows, first] / np.maximum(c1[rows, first], 1)
    rate = float(rejected.mean())
    return {"method": method, "runs": runs, "looks": len(plan.looks), "p_v1": p_v1, "p_v2": p_v2,
            "rejection_rate": rate, "se": math.sqrt(rate * (1 - rate) / runs),
            "v2_wins": float((rejected & (diff > 0)).mean()), "v1_wins": float((rejected & (diff < 0)).mean()),
            "mean_n_at_stop": float(np.asarray(plan.looks)[first].mean())}


def aa_check(plan: Plan, p: float = 0.5, runs: int = 2000, share_v2: float = 0.5, seed: int = 0) -> dict:
    """A/A simulation on the plan's look schedule: false-positive rate, its bound alpha + 3 SE, and the
    naive peeking test on the same simulated data (same seed) for comparison."""
    ours = simulate(plan, p, p, runs, share_v2, "msprt", seed)
    naive = simulate(plan, p, p, runs, share_v2, "naive", seed)
    se_alpha = math.sqrt(plan.alpha * (1 - plan.alpha) / runs)
    bound = plan.alpha + 3 * se_alpha
    return {"runs": runs, "looks": len(plan.looks), "alpha": plan.alpha, "bound": bound,
            "msprt_false_positives": ours["rejection_rate"], "naive_false_positives": naive["rejection_rate"],
            "msprt_ok": ours["rejection_rate"] <= bound}


def peeking_table(looks_list: Sequence[int] = (1, 2, 5, 10, 20), n_per_look: int = 40, p: float = 0.5,
                  runs: int = 2000, alpha: float = 0.05, min_effect: float = 0.2, seed: int = 0):
    """False-positive rate of naive peeking vs the mSPRT in A/A runs, for several numbers of equally spaced
    looks (a DataFrame for the notebook)."""
    import pandas as pd

    rows = []
    for k in looks_list:
        plan = Plan(alpha=alpha, min_effect=min_effect, looks=tuple(n_per_look * i for i in range(1, k + 1)),
                    min_per_arm=1)
        res = aa_check(plan, p, runs, seed=seed)
        rows.append({"Blicke": k, "n max": plan.max_n, "naiv (z-Test)": res["naive_false_positives"],
                     "mSPRT": res["msprt_false_positives"], "Grenze α+3SE": round(res["bound"], 4)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- sample ratio mismatch
def srm_check(counts: dict[str, int], weights: dict[str, int], threshold: float = SRM_THRESHOLD) -> dict:
    """Chi-square goodness of fit of the observed assignment counts against the configured weights.

    An arm with weight 0 that received traffic is a mismatch outright. ``alarm`` is True when p < threshold.
    """
    from scipy.stats import chisquare

    unknown = set(counts) - set(weights)
    if unknown:
        raise PlanError(f"Counts for arms without a weight: {sorted(unknown)}; pass the weights the split used.")
    zero_hit = [a for a, w in weights.items() if w == 0 and counts.get(a, 0) > 0]
    live = [a for a, w in weights.items() if w > 0]
    total = sum(counts.get(a, 0) for a in live)
    if zero_hit:
        return {"p_value": 0.0, "chi2": float("inf"), "alarm": True, "n": total,
                "reason": f"arms with weight 0 received traffic: {zero_hit}"}
    if len(live) < 2 or total == 0:
        return {"p_value": 1.0, "chi2": 0.0, "alarm": False, "n": total, "reason": "fewer than two live arms"}
    wsum = sum(weights[a] for a in live)
    observed = [counts.get(a, 0) for a in live]
    expected = [total * weights[a] / wsum for a in live]
    chi2, p = chisquare(observed, expected)
    return {"p_value": float(p), "chi2": float(chi2), "alarm": bool(p < threshold), "n": total,
            "observed": dict(zip(live, observed)), "expected": dict(zip(live, [round(e, 1) for e in expected])),
            "reason": "split matches the weights" if p >= threshold else f"p={p:.2g} < {threshold}"}
