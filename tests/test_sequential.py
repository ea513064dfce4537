"""The A/B decision statistics: mSPRT on known numbers, the A/A simulation bound on the real look schedule,
naive peeking's inflation from the same harness, the three outcomes, and the SRM check on known tables."""

import math

import numpy as np
import pytest

from helpers import sequential as seq

PLAN = seq.Plan()   # the plan notebook 09 pre-registers


def test_msprt_lambda_matches_the_closed_formula_by_hand():
    # 30/100 vs 45/100: pooled 0.375, v = 0.375*0.625*(2/100) = 0.0046875, theta = 0.15, tau = 0.2
    v, tau2, theta = 0.0046875, 0.04, 0.15
    expected = math.sqrt(v / (v + tau2)) * math.exp(tau2 * theta ** 2 / (2 * v * (v + tau2)))
    assert float(seq.msprt_lambda(30, 100, 45, 100, 0.2)) == pytest.approx(expected, rel=1e-12)
    assert float(seq.msprt_lambda(0, 10, 0, 10, 0.2)) == 1.0        # no variance yet: no evidence
    # symmetric in the direction of the difference
    assert float(seq.msprt_lambda(45, 100, 30, 100, 0.2)) == pytest.approx(expected, rel=1e-12)


def test_naive_z_matches_statsmodels_pooled_z_test():
    from statsmodels.stats.proportion import proportions_ztest

    z, _ = proportions_ztest([45, 30], [100, 100])
    assert float(seq.z_stat(30, 100, 45, 100)) == pytest.approx(z, rel=1e-9)


def test_aa_simulation_keeps_false_positives_within_alpha_plus_3se_on_the_real_look_schedule():
    for p in (0.5, 0.15):   # a balanced and a rare outcome (refusals of a weak adapter are rare)
        res = seq.aa_check(PLAN, p=p, runs=2000, seed=1)
        assert res["runs"] >= 2000 and res["looks"] == len(PLAN.looks)
        assert res["msprt_false_positives"] <= res["bound"], res
        # the same harness, naive z-test at every look: well above alpha (about 14 % at 5 looks)
        assert res["naive_false_positives"] > 0.10, res


def test_naive_peeking_inflation_grows_with_the_number_of_looks_as_the_classic_table_says():
    one = seq.Plan(looks=(400,), min_per_arm=1)
    ten = seq.Plan(looks=tuple(40 * i for i in range(1, 11)), min_per_arm=1)
    fp1 = seq.simulate(one, 0.5, 0.5, runs=4000, method="naive", seed=2)["rejection_rate"]
    fp10 = seq.simulate(ten, 0.5, 0.5, runs=4000, method="naive", seed=2)["rejection_rate"]
    assert abs(fp1 - 0.05) < 0.015          # one look: the nominal level
    assert 0.16 < fp10 < 0.23               # Armitage et al.: 19.3 % at 10 looks
    assert seq.simulate(ten, 0.5, 0.5, runs=4000, seed=2)["rejection_rate"] <= 0.05


def test_the_plan_finds_a_real_difference_and_names_the_right_winner():
    res = seq.simulate(PLAN, 0.1, 0.7, runs=2000, seed=3)   # the size of effect the plan is built for
    assert res["v2_wins"] > 0.95 and res["v1_wins"] == 0.0
    assert res["mean_n_at_stop"] < PLAN.max_n      # stops early when the effect is large
    flipped = seq.simulate(PLAN, 0.7, 0.1, runs=500, seed=3)
    assert flipped["v1_wins"] > 0.95


def _stream(rate1, rate2, n, seed=0):
    rng = np.random.default_rng(seed)
    arms = np.where(np.arange(n) % 2 == 0, "v1", "v2")
    return [(a, bool(rng.random() < (rate2 if a == "v2" else rate1))) for a in arms]


def test_decide_gives_each_of_the_outcomes():
    win = seq.decide_stream(PLAN, _stream(0.1, 0.9, PLAN.max_n))
    assert win.outcome == seq.V2_WINS and win.look < len(PLAN.looks) and win.n == PLAN.looks[win.look - 1]
    assert win.lam >= 1 / PLAN.alpha and win.p_always_valid <= PLAN.alpha
    assert seq.decide_stream(PLAN, _stream(0.9, 0.1, PLAN.max_n)).outcome == seq.V1_WINS
    same = [(a, i % 4 < 2) for i, (a, _) in enumerate(_stream(0, 0, PLAN.max_n))]   # identical rates, exactly
    nodec = seq.decide_stream(PLAN, same)
    assert nodec.outcome == seq.NO_DECISION and nodec.n == PLAN.max_n and len(nodec.history) == len(PLAN.looks)
    assert seq.decide_stream(PLAN, same[:PLAN.looks[-2] + 1]).outcome == seq.CONTINUE
    assert seq.decide_stream(PLAN, same[:5]).outcome == seq.CONTINUE
    tags = win.as_tags()
    assert tags["ab_outcome"] == seq.V2_WINS and all(isinstance(v, str) for v in tags.values())


def test_looks_before_min_per_arm_never_stop_the_test():
    plan = seq.Plan(looks=(16, 200), min_per_arm=10, min_effect=0.5)
    stream = [("v1", False)] * 8 + [("v2", True)] * 8 + _stream(0.5, 0.5, 184, seed=4)
    d = seq.decide_stream(plan, stream)
    assert d.history[0]["counted"] is False and d.history[0]["lambda"] > 1 / plan.alpha
    assert d.look != 1


@pytest.mark.parametrize("bad", [dict(alpha=0), dict(min_effect=1.5), dict(looks=(50, 40)), dict(looks=())])
def test_a_broken_plan_is_refused(bad):
    with pytest.raises(seq.PlanError):
        seq.Plan(**bad)


def test_srm_check_on_known_tables():
    # 5200/4800 at 50/50: chi2 = 2 * 200^2 / 5000 = 16, p = 6.3e-5 -> alarm
    res = seq.srm_check({"v1": 5200, "v2": 4800}, {"v1": 50, "v2": 50})
    assert res["chi2"] == pytest.approx(16.0) and res["p_value"] == pytest.approx(6.334e-5, rel=1e-3)
    assert res["alarm"]
    assert not seq.srm_check({"v1": 5030, "v2": 4970}, {"v1": 50, "v2": 50})["alarm"]
    assert not seq.srm_check({"v1": 9010, "v2": 990}, {"v1": 90, "v2": 10})["alarm"]
    assert seq.srm_check({"v1": 10, "v2": 3}, {"v1": 100, "v2": 0})["alarm"]     # weight 0 got traffic
    with pytest.raises(seq.PlanError):
        seq.srm_check({"v3": 1}, {"v1": 1, "v2": 1})
