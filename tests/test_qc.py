"""QC filters: each check rejects what it should (with its reason), and good gold pairs pass."""

import pytest

from helpers import gold, prompts, qc
from helpers.profiles import load_profile

CONTEXT = ("Bei einer P1-Störung meldet sich die IT spätestens nach 30 Minuten. Das Lösungsziel liegt bei "
           "4 Stunden. Tickets werden im Portal „DMT-Service“ angelegt.")


def _rec(**kw):
    rec = {"id": "d.md#c0000:factual", "chunk_id": "d.md#c0000", "doc_id": "d.md", "context": CONTEXT,
           "question": "Wie schnell meldet sich die IT bei einer P1-Störung?",
           "answer": "Spätestens nach 30 Minuten.", "type": "factual", "source": "generated"}
    rec.update(kw)
    return rec


def test_good_pair_passes_with_qa_schema_fields():
    accepted, rejects = qc.run_qc([_rec()])
    assert rejects == []
    assert list(accepted[0]) == list(qc.QA_FIELDS) and accepted[0]["source"] == "generated"


@pytest.mark.parametrize("change,reason", [
    ({"answer": "Spätestens nach 45 Minuten."}, "ungrounded_number"),
    ({"answer": "Im Portal „ServiceNow“ anlegen."}, "ungrounded_quote"),
    ({"answer": "Die Kantine serviert montags Schnitzel mit Pommes."}, "ungrounded"),
    ({"question": "How fast does IT respond to a P1 incident?"}, "not_german"),
    ({"question": "Wie schnell meldet sich die IT bei einer P1-Störung"}, "question_form"),
    ({"question": "Wann?"}, "question_length"),
    ({"answer": "Die IT die IT die IT meldet sich nach 30 Minuten."}, "repetitive"),
    ({"answer": "Thomas Riedl meldet sich nach 30 Minuten."}, "pii"),
    ({"answer": prompts.REFUSAL}, "refusal_form"),
    ({"type": "unanswerable", "answer": "Nach 30 Minuten."}, "refusal_form"),
    ({"answer": "x" * 400}, "answer_length"),
])
def test_each_check_rejects_with_its_reason(change, reason):
    accepted, rejects = qc.run_qc([_rec(**change)])
    assert accepted == []
    assert reason in rejects[0]["reasons"] and rejects[0]["stage"] == "qc" and rejects[0]["reason"]


def test_unanswerable_with_refusal_passes():
    rec = _rec(type="unanswerable", question="Wie viele Tickets wurden im Jahr 2019 angelegt?", answer=prompts.REFUSAL)
    assert qc.run_qc([rec])[1] == []


def test_near_duplicate_questions_keep_the_first():
    a = _rec()
    b = _rec(id="d.md#c0001:factual", question="Wie schnell meldet sich die IT bei einer P1 Störung?")
    c = _rec(id="d.md#c0002:factual", question="Wie lange ist das Lösungsziel bei P1-Störungen?",
             answer="4 Stunden.")
    accepted, rejects = qc.run_qc([a, b, c])
    assert [r["id"] for r in accepted] == [a["id"], c["id"]]
    assert rejects[0]["reason"] == "near_duplicate_question" and a["id"] in rejects[0]["detail"]


def test_gold_pairs_mostly_pass_after_scrubbing():
    records = [qc.scrub_record(r) for r in gold.load_qa()]
    accepted, rejects = qc.run_qc(records)
    assert len(accepted) / len(records) >= 0.8
    assert all(r["reason"] in ("ungrounded", "ungrounded_number", "not_german", "near_duplicate_question")
               for r in rejects)


def test_qc_file_writes_both_files(tmp_path):
    from helpers import io

    io.write_jsonl(tmp_path / "in.jsonl", [_rec(), _rec(id="x", answer="Nach 99 Minuten.")])
    summary = qc.qc_file(tmp_path / "in.jsonl", tmp_path / "ok.jsonl", tmp_path / "rej.jsonl", load_profile("mini"))
    assert summary == {"input": 2, "accepted": 1, "rejected": 1, "reasons": {"ungrounded_number": 1}}
    assert io.read_jsonl(tmp_path / "rej.jsonl")[0]["id"] == "x"
