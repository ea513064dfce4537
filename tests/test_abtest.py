"""The experiment driver of notebook 09: version data, held-out simulated users, the judge hook's blindness,
and one bounded run through the real router and vLLM (the session's `lora_server`)."""

from collections import Counter

import pytest

from helpers import abtest, router, sequential, split


def test_versions_differ_only_by_the_unanswerable_examples():
    train = split.gold_splits()["train"]
    v = abtest.version_records(train)
    assert {r["type"] for r in v["faq-v1"]} == {"factual", "conceptual", "comparison"}
    unanswerable = [r for r in v["faq-v2"] if r["type"] == "unanswerable"]
    assert unanswerable and all(r["answer"] == abtest.prompts.REFUSAL for r in unanswerable)
    assert [r for r in v["faq-v2"] if r["type"] != "unanswerable"] == v["faq-v1"]


def test_simulated_users_ask_only_held_out_questions_with_stable_ids():
    train_ids = {r["id"] for r in split.gold_splits()["train"]}
    users = abtest.simulated_users(400, seed=3)
    assert len({u["user"] for u in users}) == 400 and users == abtest.simulated_users(400, seed=3)
    assert not {u["record"]["id"] for u in users} & train_ids
    share = sum(u["record"]["type"] == "unanswerable" for u in users) / len(users)
    assert 0.4 < share < 0.6


def test_metric_stream_keeps_arrival_order_and_drops_errors_and_non_applicable():
    outcomes = [{"arm": "v1", "status": 200, "refusal_correct": True},
                {"arm": "v2", "status": 502, "refusal_correct": None},
                {"arm": "v2", "status": 200, "refusal_correct": None},
                {"arm": "v2", "status": 200, "refusal_correct": False}]
    assert abtest.metric_stream(outcomes, "refusal_correct") == [("v1", True), ("v2", False)]


def test_the_judge_hook_never_sees_the_arm():
    rec = abtest.held_out_questions()[0]
    outcomes = [{"id": rec["id"], "status": 200, "answer": "Antwort", "arm": "v2", "adapter": "faq-v2",
                 "user": "user-1", "judge_grade": None}, {"id": rec["id"], "status": 502, "arm": "v1"}]
    seen = []

    def grade(*args):
        seen.append(args)
        return True

    graded = abtest.attach_judge_grades(outcomes, grade, {"model": "judge-x", "prompt_version": "1"})
    assert graded[0]["judge_grade"] is True and graded[0]["judge"]["model"] == "judge-x"
    assert "judge_grade" not in graded[1] or graded[1].get("judge_grade") is None
    assert seen == [(rec["question"], rec["context"], "Antwort")]
    assert not any(s in str(seen) for s in ("v2", "faq-v2", "user-1"))


def test_a_bounded_run_through_the_real_router_ends_without_a_decision_and_logs_every_arm(lora_server, tmp_path):
    cfg = router.ABConfig(experiment="t-run", virtual_model="faq", upstream=lora_server.url,
                          arms=(router.Arm("v1", "a", 50), router.Arm("v2", "b", 50)))
    cfg_path = router.write_config(cfg, tmp_path / "ab.yaml")
    plan = sequential.Plan(metric="stopped", looks=(16, 32), min_per_arm=4, min_effect=0.2)
    with router.RouterServer(cfg_path) as r:
        res = abtest.run_experiment(r.url, abtest.simulated_users(60, seed=1), plan, max_tokens=4, concurrency=8,
                                    time_budget_s=120)
    # random adapters never stop within 4 tokens: identical rates, so the plan must not declare a winner
    assert res["outcome"] == sequential.NO_DECISION and res["stop_reason"] == "max n reached"
    assert res["requests"] == 32 and res["decision"].n == 32
    assert all(o["status"] == 200 and o["response_model"] == {"v1": "a", "v2": "b"}[o["arm"]] for o in res["outcomes"])
    table = abtest.arm_summary(res["outcomes"])
    assert set(table["arm"]) == {"v1", "v2"} and table["requests"].sum() == 32
    assert Counter(o["arm"] for o in res["outcomes"]) == dict(zip(table["arm"], table["requests"]))


def _outcome(arm, type_, refused):
    ans = type_ != "unanswerable"
    return {"arm": arm, "adapter": f"faq-{arm}", "status": 200, "latency_s": 0.1, "stopped": True,
            "refusal_correct": None if ans else refused, "false_refusal": refused if ans else None}


def test_tradeoff_reads_correct_and_false_refusals_together():
    blanket = ([_outcome("v1", "unanswerable", False)] * 10 + [_outcome("v1", "factual", False)] * 10
               + [_outcome("v2", "unanswerable", True)] * 10 + [_outcome("v2", "factual", True)] * 10)
    text = abtest.tradeoff(blanket)
    assert "v1 0.00 (n=10), v2 1.00 (n=10)" in text and "auch bei beantwortbaren" in text
    clean = blanket[:30] + [_outcome("v2", "factual", False)] * 10
    assert "ohne deutlich mehr" in abtest.tradeoff(clean)
    assert "kein deutlicher Vorteil" in abtest.tradeoff(blanket[:20] + [_outcome("v2", "unanswerable", False)] * 10
                                                        + [_outcome("v2", "factual", False)] * 10)
