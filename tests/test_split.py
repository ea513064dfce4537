"""Leak-free splits: no eval/val document or context in train; the per-pair split of the series leaks."""

import pytest

from helpers import pii, gold, io, split


def _generated(n_per_doc=4):
    docs = sorted({r["doc_id"] for r in gold.load_qa()}) + ["produkte/ohne-gold.md"]
    out = []
    for d in docs:
        for k in range(n_per_doc):
            t = ("factual", "conceptual", "comparison", "unanswerable")[k % 4]
            out.append({"id": f"{d}#c0000:{t}", "chunk_id": f"{d}#c0000", "doc_id": d, "type": t,
                        "context": f"Chunk-Text von {d}", "question": f"Frage {k} zu {d}?", "answer": "A",
                        "source": "generated"})
    return out


def test_training_splits_never_put_eval_or_val_context_into_train():
    splits, rejects = split.training_splits(_generated(), seed=0)
    assert split.context_leaks(splits) == set()
    assert split.leaked_groups(splits, "doc_id") == set()
    assert {r["source"] for r in splits["eval"]} == {"gold"}             # eval stays gold-only
    eval_docs = {r["doc_id"] for r in splits["eval"]}
    assert rejects and {r["doc_id"] for r in rejects} <= eval_docs and all(r["reason"] == "eval_document" for r in rejects)
    assert any(r["doc_id"] == "produkte/ohne-gold.md" for r in splits["train"])
    for name in ("train", "val", "eval"):                                # stratified: every type everywhere
        assert {r["type"] for r in splits[name]} == set(gold.QA_TYPES)


def test_training_split_is_seeded_and_deterministic():
    a, _ = split.training_splits(_generated(), seed=3)
    b, _ = split.training_splits(_generated(), seed=3)
    assert {k: [r["id"] for r in v] for k, v in a.items()} == {k: [r["id"] for r in v] for k, v in b.items()}


def test_every_split_is_scrubbed_since_a_reading_model_copies_its_context():
    splits, _ = split.training_splits([], seed=0)
    for name in ("train", "val", "eval"):
        text = " ".join(r["question"] + r["context"] + r["answer"] for r in splits[name])
        assert "@donautal-mt.de" not in text and "78830-" not in text, name
    originals = {r["id"]: r for r in gold.load_qa()}
    raw_eval = " ".join(originals[r["id"]]["context"] for r in splits["eval"])
    scrubbed_eval = " ".join(r["context"] for r in splits["eval"])
    planted = [p["value"] for p in pii.load_planted() if len(p["value"]) >= 6]
    assert [v for v in planted if v in raw_eval]          # the gold eval contexts do hold planted PII ...
    assert [v for v in planted if v in scrubbed_eval] == []   # ... which no model gets to see
    as_seen = {r["id"]: r["context"] for r in split.gold_eval()}
    assert as_seen == {r["id"]: r["context"] for r in splits["eval"]}


def test_per_pair_split_leaks_and_group_split_does_not():
    records = _generated(8)
    pairs = split.pair_split(records, seed=0)
    assert split.leak_share(pairs) > 0.5                                 # the blog series' mistake
    assert split.context_leaks(pairs)
    grouped = split.group_split(records, "chunk_id", seed=0)
    assert split.context_leaks(grouped) == set() and split.leak_share(grouped) == 0.0


def test_split_file_refuses_to_write_a_leaking_split(tmp_path):
    recs = _generated(4)
    for r in recs:
        r["context"] = "Derselbe Text in allen Dokumenten"               # e.g. an undetected duplicate
    io.write_jsonl(tmp_path / "in.jsonl", recs)
    with pytest.raises(ValueError, match="leak"):
        split.split_file(tmp_path / "in.jsonl", tmp_path / "splits", tmp_path / "rej.jsonl", with_gold=False)
    assert not (tmp_path / "splits").exists()


def test_split_file_writes_three_files(tmp_path):
    io.write_jsonl(tmp_path / "in.jsonl", _generated(4))
    summary = split.split_file(tmp_path / "in.jsonl", tmp_path / "splits", tmp_path / "rej.jsonl")
    assert set(summary["counts"]) == {"train", "val", "eval"}
    assert sum(summary["counts"].values()) + summary["rejects"] == 294 + len(_generated(4))
    for name in ("train", "val", "eval"):
        assert len(io.read_jsonl(tmp_path / "splits" / f"{name}.jsonl")) == summary["counts"][name]
