import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import evaluation as ev
from helpers import evalreport, io, prompts, split, stats, textmetrics

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- text metrics
def test_token_f1_on_hand_made_cases():
    assert textmetrics.token_f1("a b c", "a b d") == pytest.approx(2 / 3)
    assert textmetrics.token_f1("Die Schulung dauert 45 Minuten.", "die schulung dauert 45 minuten") == 1.0
    assert textmetrics.token_f1("x y", "a b") == 0.0
    # repeated words count only as often as they occur in the reference (bag intersection)
    assert textmetrics.token_f1("a a a", "a b") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_rouge_l_uses_the_longest_common_subsequence():
    # LCS of "a b c d" and "a c d" is "a c d" (3): P = 3/4, R = 1
    assert textmetrics.rouge_l("a b c d", "a c d") == pytest.approx(2 * 0.75 / 1.75)
    # word order matters for ROUGE-L but not for token F1
    assert textmetrics.rouge_l("d c b a", "a b c d") == pytest.approx(0.25)
    assert textmetrics.token_f1("d c b a", "a b c d") == 1.0


def test_refusal_detection_ignores_case_and_punctuation_but_needs_the_whole_sentence():
    assert textmetrics.is_refusal(prompts.REFUSAL)
    assert textmetrics.is_refusal("  " + prompts.REFUSAL.upper().rstrip(".") + "!")
    assert textmetrics.is_refusal("Leider: " + prompts.REFUSAL)
    assert not textmetrics.is_refusal("Das geht aus den Dokumenten hervor.")
    assert not textmetrics.is_refusal("")


def test_numbers_are_normalised_and_must_occur_in_the_context():
    assert textmetrics.numbers("1.000 Euro und 45 Minuten") == {"1000", "45"}
    rec = {"id": "q", "type": "factual", "question": "?", "answer": "45 Minuten",
           "context": "Die Schulung dauert etwa 45 Minuten und endet mit einem Abschlusstest."}
    ok = ev.score_item(rec, "Die Schulung dauert etwa 45 Minuten.", "stop", 9)
    assert ok["numbers_grounded"] is True and ok["grounded"] is True
    wrong = ev.score_item(rec, "Die Schulung dauert etwa 90 Minuten.", "stop", 9)
    assert wrong["numbers_grounded"] is False and wrong["grounded"] is False


def test_stopping_comes_from_the_finish_reason_not_from_the_text():
    rec = {"id": "q", "type": "factual", "question": "?", "answer": "Ja.", "context": "Ja."}
    looks_done = ev.score_item(rec, "Ja.", "length", 64)
    assert looks_done["stopped"] is False and looks_done["truncated"] is True
    rambling = ev.score_item(rec, "Ja, und außerdem", "stop", 5)
    assert rambling["stopped"] is True and rambling["truncated"] is False


def test_refusal_metrics_split_by_answerability():
    unans = {"id": "u", "type": "unanswerable", "question": "?", "answer": prompts.REFUSAL, "context": "Text."}
    ans = {"id": "a", "type": "factual", "question": "?", "answer": "Text.", "context": "Text."}
    r = ev.score_item(unans, prompts.REFUSAL, "stop", 10)
    assert (r["refusal_correct"], r["false_refusal"], r["grounded"]) == (True, None, None)
    r = ev.score_item(unans, "Irgendwas erfunden.", "stop", 10)
    assert r["refusal_correct"] is False
    r = ev.score_item(ans, prompts.REFUSAL, "stop", 10)
    assert (r["refusal_correct"], r["false_refusal"], r["grounded"]) == (None, True, False)


# --------------------------------------------------------------------------- statistics
def test_mcnemar_exact_uses_only_discordant_pairs():
    before, after = [False] * 10, [True] * 10
    res = stats.mcnemar_exact(before, after)
    assert (res["gained"], res["lost"], res["discordant"]) == (10, 0, 10)
    assert res["p_value"] == pytest.approx(2 * 0.5 ** 10)
    # 3 gained, 1 lost: two-sided binomial P(X<=1 or X>=3 | n=4) = 10/16
    mixed = stats.mcnemar_exact([False, False, False, True], [True, True, True, False])
    assert mixed["p_value"] == pytest.approx(0.625)
    # concordant pairs carry no information: adding 50 of them changes nothing
    padded = stats.mcnemar_exact([False, False, False, True] + [True] * 25 + [False] * 25,
                              [True, True, True, False] + [True] * 25 + [False] * 25)
    assert padded["p_value"] == pytest.approx(0.625)
    assert stats.mcnemar_exact([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        stats.mcnemar_exact([True], [True, False])


def test_bootstrap_ci_is_seeded_and_close_to_the_normal_approximation():
    values = [0] * 10 + [1] * 10
    lo, hi = stats.bootstrap_ci(values, n_boot=4000, seed=1)
    se = np.sqrt(0.25 / 20)
    assert lo < 0.5 < hi
    assert lo == pytest.approx(0.5 - 1.96 * se, abs=0.06) and hi == pytest.approx(0.5 + 1.96 * se, abs=0.06)
    assert stats.bootstrap_ci(values, n_boot=4000, seed=1) == (lo, hi)
    continuous = list(np.linspace(0, 1, 17) ** 2)
    assert stats.bootstrap_ci(continuous, n_boot=500, seed=1) != stats.bootstrap_ci(continuous, n_boot=500, seed=2)
    # 0 % observed: every resample is 0, the interval collapses (documented, not a bug)
    assert stats.bootstrap_ci([0] * 15) == (0.0, 0.0)


def test_paired_bootstrap_resamples_pairs():
    before = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.4, 0.6]
    shifted = [b + 0.2 for b in before]
    res = stats.paired_bootstrap(before, shifted, n_boot=1000)
    # a constant paired difference has no spread, however spread the values themselves are
    assert res["mean_diff"] == pytest.approx(0.2)
    assert res["ci_low"] == pytest.approx(0.2) and res["ci_high"] == pytest.approx(0.2)
    assert res["p_value"] == pytest.approx(1 / 1000)
    noise = stats.paired_bootstrap(before, [b + d for b, d in zip(before, [0.1, -0.1] * 4)], n_boot=1000)
    assert noise["ci_low"] < 0 < noise["ci_high"] and noise["p_value"] > 0.5


def _items(variant, stopped, tokens):
    return [{"id": f"q{i}", "variant": variant, "type": "factual", "stopped": s, "truncated": not s,
             "refusal_correct": None, "false_refusal": False, "grounded": s, "numbers_grounded": None,
             "answer_tokens": t, "token_f1": 0.5, "rouge_l": 0.5, "context_overlap": 0.5}
            for i, (s, t) in enumerate(zip(stopped, tokens))]


def test_summary_and_paired_comparison_on_hand_made_items():
    base = _items("base", [False] * 8 + [True] * 2, [64] * 10)
    fixed = _items("fixed", [True] * 9 + [False], [20] * 9 + [64])
    rep = ev.report(base + fixed, n_boot=500)
    assert rep["summary"]["base"]["stopped"]["value"] == pytest.approx(0.2)
    assert rep["summary"]["fixed"]["stopped"]["value"] == pytest.approx(0.9)
    assert rep["summary"]["fixed"]["refusal_correct"]["n"] == 0
    cmp_ = rep["comparisons"]["fixed"]
    # q0..q7 gained, q9 lost (base stopped, fixed not), q8 stopped in both
    assert (cmp_["stopped"]["gained"], cmp_["stopped"]["lost"]) == (8, 1)
    assert cmp_["stopped"]["p_value"] == pytest.approx(0.0390625)
    assert cmp_["answer_tokens"]["mean_diff"] == pytest.approx(-39.6)
    assert cmp_["answer_tokens"]["ci_high"] < 0
    table = evalreport.summary_table(rep["summary"])
    assert list(table.columns) == ["metric", "bedeutung", "base", "fixed"]


def test_compare_names_the_variants_it_knows():
    with pytest.raises(ev.EvaluationError, match="Variants in these results: base"):
        ev.compare(_items("base", [True], [1]), "base", "fixd")


# --------------------------------------------------------------------------- data in
def test_bad_eval_records_go_to_rejects_with_a_reason(tmp_path):
    good = {"id": "a", "question": "Q?", "context": "C.", "answer": "A.", "type": "factual"}
    records = [good, {**good, "id": "b", "type": "opinion"}, {**good, "id": "a"}, {**good, "id": "c", "context": ""}]
    rejects = tmp_path / "rejects.jsonl"
    kept = ev.validate_records(records, rejects, "test")
    assert [r["id"] for r in kept] == ["a"]
    reasons = [r["reason"] for r in io.read_jsonl(rejects)]
    assert any("unknown type 'opinion'" in r for r in reasons)
    assert any("duplicate id 'a'" in r for r in reasons)
    assert any("missing or empty field(s): context" in r for r in reasons)
    assert all(r["stage"] == "evaluate" for r in io.read_jsonl(rejects))
    with pytest.raises(ev.EvaluationError, match="No usable evaluation records"):
        ev.validate_records([{"id": "x"}], tmp_path / "r2.jsonl", "test")


def test_default_eval_set_is_the_leak_free_held_out_split():
    records = ev.load_eval(None)
    splits = split.gold_splits()
    assert [r["id"] for r in records] == [r["id"] for r in splits["eval"]]
    assert not ({r["doc_id"] for r in records} & {r["doc_id"] for r in splits["train"]})
    assert {r["type"] for r in records} == set(ev.QA_TYPES)


def test_cli_reports_a_missing_eval_file_before_starting_anything(tmp_path):
    out = tmp_path / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "helpers", "evaluate", "--eval", str(tmp_path / "nope.jsonl"),
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nope.jsonl does not exist" in proc.stderr and "Omit --eval" in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- the real run
def test_cli_evaluates_base_and_adapter_with_real_vllm(tmp_path):
    """End to end: real vLLM, a real (random) peft adapter, the gold split, the written JSON."""
    from helpers import adapters

    adapter = adapters.random_adapter(tmp_path / "rand", r=8, seed=1)
    eval_file = tmp_path / "eval.jsonl"
    io.write_jsonl(eval_file, split.gold_splits()["eval"][:5]
                   + [{"id": "broken", "question": "?", "type": "factual"}])
    out = tmp_path / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "helpers", "evaluate", "--adapter", f"rand={adapter}",
                           "--eval", str(eval_file), "--output", str(out), "--max-tokens", "8", "--no-progress",
                           "--n-boot", "200"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"]["records"] == 5
    assert sorted(result["summary"]) == ["base", "rand"]
    assert len(result["items"]) == 10
    assert {it["finish_reason"] for it in result["items"]} <= {"stop", "length"}
    assert all(it["answer_tokens"] <= 8 for it in result["items"])
    # the random adapter changes the answers: base and adapter differ on at least one item
    by = {(it["variant"], it["id"]): it["answer"] for it in result["items"]}
    assert any(by[("base", i)] != by[("rand", i)] for _, i in by)
    assert result["comparisons"]["rand"]["stopped"]["test"] == "McNemar (exact)"
    rejects = io.read_jsonl(out.parent / "rejects" / "evaluate.jsonl")  # dataset.rejects_file
    assert [r["id"] for r in rejects] == ["broken"]


def test_counterfactual_set_swaps_the_shared_number_and_scores_who_follows_the_context():
    from helpers import evaluation

    recs = [{"id": "a", "type": "factual", "question": "Wie lange?", "context": "Die Frist beträgt 14 Tage (seit 2024).",
             "answer": "14 Tage."},
            {"id": "b", "type": "factual", "question": "Seit wann?", "context": "Gilt seit 2024.", "answer": "Seit 2024."},
            {"id": "c", "type": "unanswerable", "question": "Wer?", "context": "Die Frist beträgt 14 Tage.",
             "answer": "Das geht aus den vorliegenden Dokumenten nicht hervor."}]
    cf = evaluation.counterfactual_records(recs)
    assert [r["id"] for r in cf] == ["a-cf"]          # years and unanswerable items are left out
    r = cf[0]
    assert r["cf_old"] == "14" and r["cf_new"] != "14" and r["cf_new"] in r["context"] and "14" not in r["context"]
    assert "2024" in r["context"] and r["cf_new"] in r["answer"]
    items = [{"variant": "reads", "id": "a-cf", "answer": r["context"]},
             {"variant": "remembers", "id": "a-cf", "answer": "Die Frist beträgt 14 Tage."}]
    out = evaluation.follows_context(items, cf)
    assert out["reads"]["follows_context"] == 1.0 and out["reads"]["keeps_original"] == 0
    assert out["remembers"]["follows_context"] == 0.0 and out["remembers"]["keeps_original"] == 1
    assert 0 < out["reads"]["ci_low"] < 1


def test_example_answers_are_complete_never_cut():
    from helpers import evalreport

    long_answer = "Satz. " * 80
    recs = [{"id": "a", "type": "factual", "question": "Wie?", "context": "K.", "answer": "R."},
            {"id": "b", "type": "unanswerable", "question": "Wer?", "context": "K2.", "answer": "Das geht nicht."}]
    items = [{"id": "a", "variant": "fixed", "answer": long_answer, "finish_reason": "length", "answer_tokens": 128},
             {"id": "b", "variant": "fixed", "answer": "kurz", "finish_reason": "stop", "answer_tokens": 2}]
    text = evalreport.example_answers(items, recs)
    assert long_answer in text and "=== unanswerable: Wer?" in text and "[length, 128 Tokens]" in text
