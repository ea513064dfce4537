"""The rubric judge: input checks, keying by id, unparsed outputs, pairwise orders, validation, baseline, probes,
and the 2-GPU profile. The engine tests run the real small instruct model with vLLM (mini profile)."""

import ast
import json
import random
import subprocess
import sys

import pytest

from helpers import judge, judgeprompt, judgeval, paths
from helpers.profiles import load_profile


def _item(i, **kw):
    rec = {"id": f"x{i}", "context": "Laptops werden nach 4 Jahren ersetzt.", "question": "Wann wird getauscht?",
           "answer": "Nach 4 Jahren.", "label": "A", "hallucination": False}
    rec.update(kw)
    return rec


# --------------------------------------------------------------------------- input checks (no engine)
def test_bad_records_are_rejected_with_reasons_and_the_rest_goes_on():
    records = [_item(1), _item(2, id=""), _item(3, id="dup"), _item(4, id="dup"), _item(5, answer="  "),
               _item(6, question=None), _item(7, context="x " * 500), _item(8)]
    ok, rejects = judge.check_records(records, prompt_tokens=lambda r: len(r["context"]), max_prompt_tokens=400)
    assert [r["id"] for r in ok] == ["x1", "x8"]
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert reasons == {"#line2": "missing_id", "dup": "duplicate_id", "x5": "empty_answer", "x6": "empty_question",
                       "x7": "too_long"}
    assert sum(r["reason"] == "duplicate_id" for r in rejects) == 2     # neither copy is judged
    assert all(r["stage"] == "judge" for r in rejects)
    assert set(ok[0]) == {"id", "context", "question", "answer"}         # the gold label never reaches the judge


def test_pairwise_records_need_both_answers():
    ok, rejects = judge.check_records([{"id": "p", "context": "c", "question": "q", "answer_a": "a", "answer_b": ""}],
                                      pairwise=True)
    assert ok == [] and rejects[0]["reason"] == "empty_answer_b"


def test_the_judging_code_never_imports_the_gold_labels():
    tree = ast.parse((paths.ROOT / "helpers" / "judge.py").read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not names & {"gold", "judgeval", "stats"}
    assert all("label" not in f for f in judge.FIELDS + judge.PAIR_FIELDS)


@pytest.mark.parametrize("text, finish, reason", [
    ('{"begruendung":"ok","urteil":"B","halluzination":false}', "length", "cut by max_tokens"),
    (judgeprompt.SYSTEM, "stop", "not JSON"),                       # the prompetheus #58 trap: rubric text is no verdict
    ('{"begruendung":"ok","urteil":"D","halluzination":false}', "stop", "urteil must be"),
    ('{"begruendung":"ok","urteil":"A","halluzination":"nein"}', "stop", "halluzination must be"),
    ('{"begruendung":"","urteil":"A","halluzination":true}', "stop", "empty begruendung"),
])
def test_parser_never_coerces(text, finish, reason):
    parsed, why = judgeprompt.parse(text, finish)
    assert parsed is None and why.startswith(reason)


def test_pair_parser():
    assert judgeprompt.parse_pair('{"begruendung":"x","besser":"2"}')[0] == {"rationale": "x", "better": "2"}
    assert judgeprompt.parse_pair('{"begruendung":"x","besser":"beide"}')[0] is None
    assert judgeprompt.parse_pair('{"begruendung":"x","besser":"1"}', "length")[1] == "cut by max_tokens"
    assert judgeprompt.pair_schema()["properties"]["besser"]["enum"] == ["1", "2"]


# --------------------------------------------------------------------------- validation (no engine)
def _judgment(i, grade, halluc=False, status="ok", judge_name="base"):
    return {"id": f"x{i}", "judge": judge_name, "status": status, "grade": grade if status == "ok" else None,
            "hallucination": halluc}


def test_validation_joins_by_id_not_position_and_counts_unparsed():
    labels = {f"x{i}": {"label": g, "hallucination": g == "C", "category": "c"}
              for i, g in enumerate("AABBCCABCA")}
    js = [_judgment(i, g, g == "C") for i, g in enumerate("AABBCCABCB")]
    js[9] = _judgment(9, None, status="unparsed")
    res = judgeval.validate(js, labels, "base", n_boot=200)
    shuffled = js[:]
    random.Random(1).shuffle(shuffled)
    again = judgeval.validate(shuffled, labels, "base", n_boot=200)
    assert res["kappa"]["value"] == again["kappa"]["value"] == pytest.approx(1.0)
    assert res["unparsed"] == 1 and res["n_parsed"] == 9
    assert res["agreement_all"]["value"] == pytest.approx(0.9)           # the unparsed item counts as a miss
    frame = judgeval.confusion_frame(res)
    assert frame.loc["Mensch A", "Judge A"] == 3
    assert judgeval.recheck_from_table(frame)["kappa"] == pytest.approx(res["kappa"]["value"])


def test_category_share_counts_unparsed_as_a_miss_and_ignores_other_judges():
    labels = {f"x{i}": {"label": "C", "hallucination": True, "category": cat}
              for i, cat in enumerate(["wrong_number"] * 4 + ["wrong_document"])}
    js = [_judgment(0, "A", False), _judgment(1, "A", False), _judgment(2, "C", True),
          _judgment(3, None, status="unparsed"), _judgment(4, "C", True),
          {**_judgment(2, "A", False), "judge": "other"}]
    assert judgeval.category_share(js, labels, "base", "wrong_number", "A") == pytest.approx(0.5)
    assert judgeval.category_share(js, labels, "base", "wrong_document", "C") == 1.0
    assert judgeval.category_share(js, labels, "base", "incomplete", "A") != judgeval.category_share(
        js, labels, "base", "incomplete", "A")                                  # no such answers: NaN, not 0
    shares = judgeval.category_shares(js, labels, "base")
    assert list(shares) == ["wrong_document_as_C", "wrong_number_as_A", "incomplete_as_A"]
    assert shares["wrong_number_as_A"] == pytest.approx(0.5) and shares["wrong_document_as_C"] == 1.0


def test_validation_kappa_is_recomputed_from_the_printed_table():
    labels = judgeval.truth()
    res = judgeval.validate(judgeval.baseline_judge(judgeval.items()), labels, "baseline", n_boot=200)
    again = judgeval.recheck_from_table(judgeval.confusion_frame(res))
    assert again["kappa"] == pytest.approx(res["kappa"]["value"], abs=1e-9)
    assert again["qwk"] == pytest.approx(res["qwk"]["value"], abs=1e-9)
    assert res["n_parsed"] == 183 and res["missing"] == 0


def test_baseline_rules():
    ctx = "Laptops werden nach 4 Jahren ersetzt. Der Service Desk meldet sich sechs Wochen vorher."
    g = judgeval.baseline_grade
    assert g(ctx, "q", "Laptops werden nach 4 Jahren ersetzt, der Service Desk meldet sich vorher.")["grade"] == "A"
    assert g(ctx, "q", "Laptops werden nach 5 Jahren ersetzt, der Service Desk meldet sich vorher.") == \
        {"grade": "C", "hallucination": True, "rationale": "Zahl nicht im Kontext: 5"}
    assert g(ctx, "q", "Laptops werden vermutlich nach 4 Jahren ersetzt, der Service Desk meldet sich.")["grade"] == "B"
    assert g(ctx, "q", "Die Kantine öffnet morgens um sieben Uhr für alle Beschäftigten im Werk.")["grade"] == "C"
    assert g(ctx, "q", "Nach 4 Jahren.")["grade"] == "B"


def test_probe_items_and_their_summaries():
    recs = judgeval.items()
    labels = judgeval.truth()
    pairs = judgeval.pair_items(recs, labels)
    assert len(pairs) == sum(v["label"] == "A" for v in labels.values())
    assert all(p["answer_a"] != p["answer_b"] for p in pairs)
    padded = judgeval.padded_items(recs, labels, n=5)
    assert len(padded) == 5 and all(p["id"].endswith(":pad") and labels[p["id"][:-4]]["label"] == "A" for p in padded)
    original = {r["id"]: r["answer"] for r in recs}
    assert all(p["answer"].count(original[p["id"][:-4]]) == 3 for p in padded)
    pj = [{"id": "p1", "judge": "base", "winner": "a", "first_slot": 1},
          {"id": "p2", "judge": "base", "winner": "inconsistent", "first_slot": 2},
          {"id": "p3", "judge": "base", "winner": "inconsistent", "first_slot": 0},
          {"id": "p4", "judge": "base", "winner": None, "first_slot": 1}]
    pos = judgeval.position_bias(pj, "base")
    assert (pos["parsed"], pos["consistent"]) == (3, 1)
    assert pos["first_slot_in_inconsistent"]["successes"] == 1 and pos["first_slot_in_inconsistent"]["n"] == 2
    vj = [_judgment(1, "A"), {**_judgment(1, "B"), "id": "x1:pad"}, _judgment(2, "B"),
          {**_judgment(2, "B"), "id": "x2:pad"}]
    shift = judgeval.verbosity_shift(vj, "base", n_boot=200)
    assert (shift["worse"], shift["same"], shift["better"]) == (1, 1, 0) and shift["mean_diff"] == pytest.approx(-0.5)
    assert shift["worse_share"] == pytest.approx(0.5)                      # 1 of the 2 parsed pairs fell


def test_series_kappa_from_its_own_table():
    s = judgeval.series_kappa()
    assert s["table_kappa"] == pytest.approx(0.054, abs=0.001) and s["table_linear"] == pytest.approx(0.083, abs=0.001)
    assert s["text_kappa"] == pytest.approx(0.027, abs=0.001) and s["table_n"] == 171


# --------------------------------------------------------------------------- profiles: the 70B judge on 2 GPUs
def test_a_judge_adapter_for_another_model_is_not_read(tmp_path, monkeypatch):
    # the committed judge adapter belongs to the mini judge; on l4 it is skipped, even when its weights are missing
    from helpers import roles

    src = roles.committed_dir("judge")
    dst = tmp_path / "judge"
    dst.mkdir()
    (dst / "MANIFEST.json").write_text((src / "MANIFEST.json").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(roles, "committed_dir", lambda role: dst)
    assert judge.default_adapters(load_profile("l4")) == {}
    with pytest.raises(roles.RoleError, match="incomplete"):
        judge.default_adapters(load_profile("mini"))


def test_tensor_parallel_size_reaches_engine_and_server_flags():
    from helpers import inference, manifests, serve

    big = load_profile("judge-70b")
    assert big.vllm.tensor_parallel_size == 2 and "70B" in big.judge_model
    assert inference.engine_kwargs(big, model="-")["tensor_parallel_size"] == 2
    flags = serve.engine_flags(big)
    assert flags[flags.index("--tensor-parallel-size") + 1] == "2"
    mini = load_profile("mini")
    assert "tensor_parallel_size" not in inference.engine_kwargs(mini, model="-")
    assert "--tensor-parallel-size" not in serve.engine_flags(mini)
    docs = manifests.render("l4")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["args"].append("--tensor-parallel-size=2")
    assert any("--tensor-parallel-size" in p for p in manifests.profile_mismatches(docs, load_profile("l4")))


def test_weights_of_a_tensor_parallel_model_are_split_over_the_gpus(tmp_path):
    from helpers import gpumem

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    big = load_profile("judge-70b")
    gpumem.check_weights_fit(big, tmp_path, total_bytes=700)            # 2 x 700 x 0.92 > 1000
    import dataclasses

    one = dataclasses.replace(big, vllm=dataclasses.replace(big.vllm, tensor_parallel_size=1))
    with pytest.raises(gpumem.GPUMemoryError):
        gpumem.check_weights_fit(one, tmp_path, total_bytes=700)


# --------------------------------------------------------------------------- the real judge (vLLM, mini)
@pytest.fixture(scope="module")
def engine():
    eng = judge.make_judge(load_profile("mini"))
    yield eng
    from helpers import inference

    inference.shutdown(eng.llm)


def test_schema_decoding_grades_and_a_cut_output_is_unparsed(engine):
    assert judge.engine_overrides()["structured_outputs_config"]["disable_any_whitespace"] is True
    recs = judgeval.items()[:3]
    js, rejects = judge.grade(engine, recs)
    assert rejects == [] and [j["id"] for j in js] == sorted(r["id"] for r in recs)
    for j in js:
        if j["status"] == "ok":
            assert j["grade"] in "ABC" and isinstance(j["hallucination"], bool) and j["finish_reason"] == "stop"
        else:
            assert j["raw"] is not None and j["reason"]
    cut, _ = judge.grade(engine, recs, max_tokens=4)
    assert [j["status"] for j in cut] == ["unparsed"] * 3
    assert all(j["reason"] == "cut by max_tokens" and j["raw"].startswith('{"') for j in cut)
    assert judge.summarize(cut)["base"]["unparsed_rate"] == 1.0


def test_pairwise_runs_both_orders(engine):
    pairs = judgeval.pair_items(judgeval.items()[:6], judgeval.truth(), n=2)
    js, _ = judge.pairwise(engine, pairs)
    assert len(js) == 2
    for j in js:
        assert {"winner_ab", "winner_ba"} <= set(j) and j["first_slot"] in (0, 1, 2)
        if j["winner"] not in (None, "inconsistent"):
            assert j["winner_ab"] == j["winner_ba"] == j["winner"]


def test_cli_writes_judgments_rejects_and_refuses_an_adapter_of_another_base(tmp_path):
    from helpers import adapters, kursmini

    other = adapters.random_adapter(tmp_path / "kursmini-adapter", model_dir=str(kursmini.ensure()), r=8)
    recs = judgeval.items()[:2] + [{"id": "", "context": "c", "question": "q", "answer": "a"},
                                   {**judgeval.items()[2], "answer": ""}]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs), encoding="utf-8")
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    proc = subprocess.run([sys.executable, "-m", "helpers", "judge", "--input", str(inp), "--output", str(out),
                           "--rejects", str(rej), "--adapter", f"kursmini={other}"],
                          capture_output=True, text=True, cwd=paths.ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    rejected = {r["reason"] for r in map(json.loads, rej.read_text().splitlines())}
    assert [j["id"] for j in judged] == sorted(r["id"] for r in recs[:2]) and {j["judge"] for j in judged} == {"base"}
    assert rejected == {"adapter_mismatch", "missing_id", "empty_answer"}
    assert "base: 2 judged" in proc.stdout
