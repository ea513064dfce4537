"""PII scrubbing: recall per type against the corpus' planted PII list, placeholders, checksum, limits."""

import re

import pytest

from helpers import documents, paths, pii


@pytest.fixture(scope="module")
def corpus_docs():
    return documents.load_corpus(paths.corpus_dir())


def test_recall_per_type_against_planted_list(corpus_docs):
    report = pii.planted_recall(corpus_docs)
    per_type = report["per_type"]
    assert {t: s["planted"] for t, s in per_type.items()} == {"email": 101, "iban": 14, "phone": 126, "name": 307}
    for pii_type in ("email", "iban", "phone"):
        assert per_type[pii_type]["recall"] == 1.0, report["missed"]
    assert per_type["name"]["recall"] >= 0.95, report["missed"][:10]


def test_scrubbed_corpus_contains_no_planted_value(corpus_docs):
    scrubbed = {d["doc_id"]: re.sub(r"\s+", " ", d["text"]) for d in pii.scrub_documents(corpus_docs)}
    leftovers = [row for row in pii.load_planted() if row["type"] != "name"
                 and re.sub(r"\s+", " ", row["value"]) in scrubbed[row["doc_id"]]]
    assert leftovers == []
    assert all(set(d["pii_counts"]) == set(pii.PII_TYPES) for d in pii.scrub_documents(corpus_docs[:3]))


def test_typed_placeholders_and_counts():
    text = ("Ansprechpartnerin ist Julia Rackl (J. Rackl), julia.rackl@donautal-mt.de, Tel. +49 (0)941 78830-4421 "
            "oder 0151 / 22 84 61 73. Erstattung auf DE35 7502 0073 2895 7422 88. Vertretung: Obermeier, Lukas.")
    out, counts = pii.scrub(text)
    assert counts == {"email": 1, "iban": 1, "phone": 2, "name": 3}
    assert "Rackl" not in out and "4421" not in out and "DE35" not in out and "Obermeier" not in out
    assert "[EMAIL]" in out and "[TELEFON]" in out and "[IBAN]" in out and "[NAME]" in out


def test_iban_checksum_decides():
    assert pii.iban_is_valid("DE35 7502 0073 2895 7422 88")
    assert not pii.iban_is_valid("DE35 7502 0073 2895 7422 89")
    out, counts = pii.scrub("Konto DE35 7502 0073 2895 7422 89 (Tippfehler)")
    assert counts["iban"] == 0 and "[IBAN]" not in out


def test_no_false_name_on_unit_and_noun():
    out, counts = pii.scrub("Zuständig: Personalentwicklung, Lena Kagerer. Feld: Fischer, Maximilian Personalnummer 30417")
    assert "Personalentwicklung" in out and "Personalnummer 30417" in out and "Fischer" not in out
    assert counts["name"] == 2


def test_gazetteer_limit_is_visible_and_configurable():
    text = "Rückfragen an Xenia Obermayr."
    assert pii.scrub(text)[1]["name"] == 0            # first name not in the list: missed (documented)
    names = pii.FIRST_NAMES | {"Xenia"}
    assert pii.scrub(text, names)[0] == "Rückfragen an [NAME]."


def test_planted_precision_counts_over_redaction_as_false_positive():
    docs = [{"doc_id": "a.md", "text": "Frage an Julia Rackl (julia.rackl@donautal-mt.de) oder an security@donautal-mt.de."},
            {"doc_id": "b.md", "text": "Kein Name hier, nur die IBAN DE35 7502 0073 2895 7422 88."}]
    planted = [{"doc_id": "a.md", "type": "name", "value": "Julia Rackl"},
               {"doc_id": "a.md", "type": "email", "value": "julia.rackl@donautal-mt.de"},
               {"doc_id": "b.md", "type": "iban", "value": "DE35 7502 0073 2895 7422 88"}]
    report = pii.planted_precision(docs, planted)
    assert report["per_type"]["name"] == {"hits": 1, "correct": 1, "precision": 1.0}
    assert report["per_type"]["email"] == {"hits": 2, "correct": 1, "precision": 0.5}
    assert report["per_type"]["iban"]["precision"] == 1.0 and report["per_type"]["phone"]["precision"] is None
    assert report["false_positives"] == [{"doc_id": "a.md", "type": "email", "value": "security@donautal-mt.de"}]
    # a planted value in another document does not make a hit correct
    assert pii.planted_precision([docs[1]], [dict(planted[2], doc_id="a.md")])["per_type"]["iban"]["correct"] == 0
