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


def _fake_adapter(folder, profile, records, **overrides):
    from helpers import io, training

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    info = {**training.recipe(profile, records), "train_examples": len(records), "seconds": 1.0, "loss_last": 0.1,
            **overrides}
    io.write_json(folder / "training_info.json", info)
    return folder


def test_same_recipe_compares_data_and_settings(tmp_path):
    from helpers import training
    from helpers.profiles import load_profile

    mini = load_profile("mini")
    records = abtest.version_records(split.gold_splits()["train"])["faq-v2"]
    assert training.same_recipe(_fake_adapter(tmp_path / "a", mini, records), mini, records)
    assert not training.same_recipe(tmp_path / "a", mini, records[1:])              # other data
    assert not training.same_recipe(tmp_path / "a", mini, records, pad_as_eos=True)  # other pad setting
    assert not training.same_recipe(_fake_adapter(tmp_path / "b", mini, records, learning_rate=1.0), mini, records)
    (tmp_path / "a" / "adapter_config.json").unlink()
    assert not training.same_recipe(tmp_path / "a", mini, records)                  # no adapter weights


def test_train_versions_copies_an_adapter_of_the_same_recipe_and_keeps_a_trained_version(tmp_path, monkeypatch):
    from helpers import training
    from helpers.profiles import load_profile

    mini = load_profile("mini")
    gold = [r for r in training.training_records(tmp_path)[0] if r["source"] == "gold"]
    versions = abtest.version_records(gold)
    _fake_adapter(tmp_path / "adapters" / "fixed", mini, versions["faq-v2"], seconds=7.0)
    _fake_adapter(tmp_path / "adapters" / "faq-v1", mini, versions["faq-v1"])
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("nothing needs training here"))
    out = abtest.train_versions(mini, tmp_path)
    assert out["faq-v1"]["source"] == "trained" and out["faq-v2"]["source"] == "copy of fixed"
    v2 = tmp_path / "adapters" / "faq-v2"
    assert (v2 / "adapter_model.safetensors").read_bytes() == b"weights" and out["faq-v2"]["seconds"] == 7.0
    assert training.same_recipe(v2, mini, versions["faq-v2"])
    assert out["faq-v2"]["unanswerable"] == sum(r["type"] == "unanswerable" for r in versions["faq-v2"]) > 0
