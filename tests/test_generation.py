"""QA generation: output validation, work partition, progress file, and a real vLLM run (one engine)."""

import dataclasses
import json

import pytest

from helpers import chunking, generation, io, profiles, prompts, workunits
from helpers.profiles import load_profile


# --------------------------------------------------------------------------- validation (no engine)
def test_non_json_output_is_rejected_with_reason():
    assert generation.parse_output("Hier ist die Frage: Wie lange?", "factual")[1] == "invalid_json"
    assert generation.parse_output('{"question": "Wie lange dauert', "factual", "length")[1] == "truncated"


def test_schema_violations_are_rejected():
    fields, reason, detail = generation.parse_output('{"question": "Kurz?", "answer": "x"}', "factual")
    assert fields is None and reason == "schema_violation" and "question" in detail
    _, reason, detail = generation.parse_output('{"question": "Wie lange dauert das?", "answer": "x", "y": 1}',
                                                "factual")
    assert reason == "schema_violation" and "y" in detail


def test_unanswerable_gets_the_refusal():
    fields, reason, _ = generation.parse_output('{"question": "Wie viele Parkplätze gibt es in Cham?"}',
                                                "unanswerable")
    assert reason == "" and fields["answer"] == prompts.REFUSAL


def test_schema_per_type():
    assert generation.schema("unanswerable")["required"] == ["question"]
    s = generation.schema("factual")
    assert s["required"] == ["question", "answer"] and s["additionalProperties"] is False


def test_string_lengths_are_bounded_in_the_grammar_only_where_the_profile_says_so():
    mini, h100 = load_profile("mini").dataset, load_profile("h100").dataset
    bounded = generation.schema("factual", mini)["properties"]
    assert bounded["question"]["maxLength"] == mini.question_max_chars
    assert bounded["answer"]["maxLength"] == mini.answer_max_chars
    free = generation.schema("factual", h100)["properties"]
    assert "maxLength" not in free["question"] and "maxLength" not in free["answer"]
    assert free["question"]["minLength"] == 10  # the lower bound stays in the grammar everywhere


# --------------------------------------------------------------------------- partition
CHUNKS = [{"id": f"doc{d}.md#c{i:04d}", "doc_id": f"doc{d}.md", "token_count": 100} for d in range(7) for i in range(9)]


def test_shards_partition_all_chunks_deterministically():
    units = workunits.work_units(CHUNKS, 4)
    assert sorted(c["id"] for cs in units.values() for c in cs) == sorted(c["id"] for c in CHUNKS)
    shards = [workunits.shard_units(units, i, 3) for i in range(3)]
    ids = [{c["id"] for cs in s.values() for c in cs} for s in shards]
    assert set.union(*ids) == {c["id"] for c in CHUNKS} and sum(map(len, ids)) == len(CHUNKS)
    assert workunits.work_units(list(reversed(CHUNKS)), 4) == units   # order of the file does not matter


def test_limit_samples_across_documents():
    chosen = workunits.select_chunks(CHUNKS, min_tokens=50, limit=10)
    assert len(chosen) == 10 and len({c["doc_id"] for c in chosen}) >= 4
    assert chosen == sorted(chosen, key=lambda c: c["id"])
    assert workunits.select_chunks(CHUNKS, min_tokens=101) == []


@pytest.mark.parametrize("spec", ["2/2", "a/b", "1", "-1/3", "0/0"])
def test_bad_shard_specs_are_explained(spec):
    with pytest.raises(generation.GenerationError, match="shard"):
        workunits.parse_shard(spec)


def test_progress_file_drops_a_line_cut_by_kill(tmp_path):
    path = tmp_path / "gen.jsonl.progress.jsonl"
    good = [json.dumps({"header": {"a": 1}}), json.dumps({"unit": 0, "records": [], "rejects": []})]
    path.write_text("\n".join(good) + "\n" + '{"unit": 1, "records": [{"id": "x", "que')
    header, units = workunits.read_progress(path)
    assert header == {"a": 1} and list(units) == [0]
    assert path.read_text() == "\n".join(good) + "\n"     # the torn line is gone; appends continue cleanly
    path.write_text(good[0] + "\nnot json\n" + good[1] + "\n")
    with pytest.raises(generation.GenerationError, match="corrupt"):
        workunits.read_progress(path)


# --------------------------------------------------------------------------- real vLLM (one engine)
@pytest.fixture(scope="module")
def llm():
    from helpers import inference

    engine = generation.make_generator(load_profile("mini"))
    yield engine
    inference.shutdown(engine)


@pytest.fixture(scope="module")
def chunks_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chunks")
    chunking.chunk_corpus("data/corpus", tmp / "chunks.jsonl", tmp / "rejects.jsonl", load_profile("mini"), progress=False)
    return tmp / "chunks.jsonl"


def test_every_request_becomes_a_record_or_a_reject(llm, chunks_file, tmp_path):
    out, rej = tmp_path / "gen.jsonl", tmp_path / "rej.jsonl"
    summary = generation.generate_file(chunks_file, out, rej, load_profile("mini"), limit=3, llm=llm, progress=False,
                                       max_tokens=48)
    records, rejects = io.read_jsonl(out), io.read_jsonl(rej)
    assert summary["requests"] == 12 == len(records) + len(rejects)
    ids = [r["id"] for r in records + rejects]
    assert len(set(ids)) == 12
    for r in records:
        assert {"id", "chunk_id", "doc_id", "context", "question", "answer", "type"} <= set(r)
        assert r["source"] == "generated" and r["id"] == f"{r['chunk_id']}:{r['type']}"
    for r in rejects:
        assert r["stage"] == "generate" and r["reason"] in ("truncated", "invalid_json", "schema_violation")
        assert "raw" in r and r["raw"] is not None
    assert not workunits.progress_path(out).exists() and workunits.meta_path(out).exists()


def test_too_few_tokens_make_real_truncation_rejects(llm, chunks_file, tmp_path):
    summary = generation.generate_file(chunks_file, tmp_path / "g.jsonl", tmp_path / "r.jsonl", load_profile("mini"), limit=1,
                                       llm=llm, progress=False, max_tokens=4)
    rejects = io.read_jsonl(tmp_path / "r.jsonl")
    assert summary["records"] == 0 and len(rejects) == 4
    assert {r["reason"] for r in rejects} == {"truncated"} and all(r["raw"].startswith("{") for r in rejects)


def test_leftover_progress_needs_resume_and_same_settings(llm, chunks_file, tmp_path):
    out = tmp_path / "g.jsonl"
    prog = workunits.progress_path(out)
    prog.write_text(json.dumps({"header": {"limit": 99}}) + "\n")
    with pytest.raises(generation.GenerationError, match="--resume"):
        generation.generate_file(chunks_file, out, tmp_path / "r.jsonl", load_profile("mini"), limit=1, llm=llm, progress=False)
    with pytest.raises(generation.GenerationError, match="other settings"):
        generation.generate_file(chunks_file, out, tmp_path / "r.jsonl", load_profile("mini"), limit=1, llm=llm, progress=False,
                                 resume=True)


@pytest.mark.parametrize("name", profiles.profile_names())
def test_every_profile_can_hold_a_schema_valid_answer(name):
    """A bounded grammar may fill both strings to maxLength at one character per token: the budget must fit."""
    cfg = profiles.load_profile(name).dataset
    generation.check_budget(cfg, name)


def test_a_budget_that_cuts_every_long_answer_is_refused():
    cfg = dataclasses.replace(profiles.load_profile("mini").dataset, qa_max_tokens=128, question_max_chars=160,
                              answer_max_chars=320)
    with pytest.raises(generation.GenerationError, match="qa_max_tokens=128 cannot hold"):
        generation.check_budget(cfg, "mini")
    assert generation.token_budget(dataclasses.replace(cfg, length_in_schema=False)) is None
