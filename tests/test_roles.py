"""The small instruct model's roles: derived training examples, the committed adapters, the judge's contract."""

import json
import shutil

import pytest

from helpers import generation, judgeprompt, prompts, roles, split
from helpers.profiles import ProfileError, load_profile

MINI = load_profile("mini")


@pytest.fixture(scope="module")
def train_split():
    return roles.gold_train("train")


def test_role_examples_never_come_from_the_eval_split(train_split):
    with pytest.raises(roles.RoleError, match="eval split"):
        roles.gold_train("eval")
    eval_docs = {r["doc_id"] for r in split.gold_splits()["eval"]}
    for role in roles.ROLES:
        assert not {r["doc_id"] for r in roles.examples(role, MINI)} & eval_docs


def test_writer_examples_use_the_generation_prompt_and_the_schema(train_split):
    ex = roles.writer_examples(train_split, MINI)
    assert len(ex) > 100
    for rec in ex[:40]:
        chunk_text = rec["messages"][1]["content"].split("Text:\n", 1)[1].split("\n\nAufgabe:")[0]
        chunk = {"doc_id": rec["doc_id"], "text": chunk_text, "headings": []}
        assert rec["messages"] == generation.messages(chunk, rec["type"])
        fields, reason, _ = generation.parse_output(rec["answer"], rec["type"])
        assert fields is not None, reason
        assert len(fields["question"]) <= MINI.dataset.question_max_chars


def test_judge_examples_mirror_the_rubric_and_parse(train_split):
    ex = roles.judge_examples(train_split, seed=0)
    kinds = {r["kind"] for r in ex}
    assert {"correct", "overlong", "speculation", "invented", "wrong_document"} <= kinds
    grades = [r["grade"] for r in ex]
    assert grades.count("A") == grades.count("B") == grades.count("C")   # one of each per gold pair
    for rec in ex:
        parsed, reason = judgeprompt.parse(rec["answer"])
        assert parsed is not None, reason
        assert (parsed["grade"], parsed["hallucination"]) == (rec["grade"], rec["hallucination"])
    by_id = {r["id"]: r for r in ex}
    wrong = [r for r in ex if r["kind"] == "wrong_number"]
    assert wrong, "some gold answers carry numbers"
    for rec in wrong[:10]:   # the changed answer differs from the reference only in one number
        ref = by_id[rec["id"].rsplit(":", 1)[0] + ":correct"]
        assert rec["messages"][1]["content"] != ref["messages"][1]["content"]
    assert roles.judge_examples(train_split, seed=0) == ex          # seeded: the same data hash every time


def test_judge_parse_never_coerces_a_grade():
    ok = judgeprompt.completion("Passt.", "B", True)
    assert judgeprompt.parse(ok)[0] == {"rationale": "Passt.", "grade": "B", "hallucination": True}
    assert judgeprompt.parse(ok, "length") == (None, "cut by max_tokens")
    assert judgeprompt.parse('{"begruendung":"x","urteil":"5","halluzination":false}')[0] is None
    assert judgeprompt.parse('{"begruendung":"x","urteil":"A","halluzination":"nein"}')[0] is None
    assert judgeprompt.parse('{"begruendung":"x","urteil":"A","halluzination":false,"score":5}')[0] is None
    assert judgeprompt.parse('{"begruendung":"x","urteil":"A"')[1].startswith("not JSON")
    schema = judgeprompt.schema()
    assert schema["additionalProperties"] is False and schema["properties"]["urteil"]["enum"] == ["A", "B", "C"]


def test_committed_role_adapters_verify_and_a_corrupt_copy_names_the_rebuild(tmp_path):
    for role in roles.ROLES:
        manifest = roles.verify(role)
        assert manifest["role"] == role and manifest["base_model"] == MINI.generator_model
        assert manifest["data_sha256"] == roles.data_hash(roles.examples(role, MINI))   # recipe reproducible
        info = json.loads((roles.committed_dir(role) / "training_info.json").read_text())
        assert info["base_model_id"] == MINI.generator_model
    copy = tmp_path / "judge"
    shutil.copytree(roles.committed_dir("judge"), copy)
    with open(copy / "adapter_model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(roles.RoleError, match="roles build --role judge"):
        roles.verify("judge", copy)


def test_profiles_name_instruct_models_and_views():
    assert MINI.generator_adapter == "writer" and MINI.judge_adapter == "judge"
    view = MINI.instruct_view("generator")
    assert view.model == view.train_model == view.serving_base == MINI.generator_model
    assert view.chat_template is None
    for name in ("t4", "l4", "h100"):
        p = load_profile(name)
        assert "Instruct" in p.generator_model and "Instruct" in p.judge_model
        assert p.generator_adapter is None and p.instruct_view("judge").model == p.judge_model
    with pytest.raises(ProfileError):
        MINI.instruct_view("writer")


def test_an_unknown_adapter_spec_fails_with_the_fix(tmp_path):
    import dataclasses

    bad = dataclasses.replace(MINI, generator_adapter=str(tmp_path / "nothing"))
    with pytest.raises(roles.RoleError, match="neither a role"):
        roles.adapter_for(bad, "generator")
    assert roles.adapter_for(dataclasses.replace(MINI, generator_adapter=None), "generator") is None


def test_a_role_adapter_on_another_model_is_refused_with_the_fix():
    import dataclasses

    from helpers import judge

    assert judge.default_adapters(MINI) == {"judge": str(roles.committed_dir("judge"))}
    other = dataclasses.replace(MINI, judge_model="meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(roles.RoleError, match="trained on 'smollm2-135m-instruct'.*judge_adapter to null"):
        judge.default_adapters(other)
    assert judge.default_adapters(dataclasses.replace(other, judge_adapter=None)) == {}


def test_refusal_is_the_course_sentence_in_unanswerable_writer_examples(train_split):
    un = [r for r in roles.writer_examples(train_split, MINI) if r["type"] == "unanswerable"]
    assert un and all(set(json.loads(r["answer"])) == {"question"} for r in un)
    assert prompts.REFUSAL   # the QC adds the refusal sentence; the writer only asks
