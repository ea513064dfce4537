"""Checks of the course data in ``data/``: corpus, gold QA, judge labels, planted PII, fact consistency.

Fast (no GPU, no model): the corpus is extracted once per module, the PDFs are re-rendered once into a
temporary folder.
"""

from __future__ import annotations

import collections
import csv
import json
import re
from pathlib import Path

import pytest

from helpers import documents, paths, pdfdocs
from helpers.prompts import REFUSAL

DATA = paths.data_dir()
CORPUS = DATA / "corpus"
CORPUS_SRC = DATA / "corpus_src"
QA_FILE = DATA / "gold" / "qa_eval.jsonl"
JUDGE_FILE = DATA / "gold" / "judge_labels.jsonl"
PII_FILE = DATA / "pii" / "planted_pii.tsv"
FACT_SHEET = CORPUS_SRC / "fact_sheet.md"

LATIN1_DOC = "personal/aushang-kantine.txt"
NEAR_DUP = ("produkte/faq-flowline-f200.html", "produkte/faq-flowline-f200-alt.html")

QA_FIELDS = {"id": str, "doc_id": str, "evidence": str, "context": str, "question": str, "answer": str,
             "type": str}
QA_TYPES = {"factual", "conceptual", "comparison", "unanswerable"}
JUDGE_FIELDS = {"id": str, "doc_id": str, "context": str, "question": str, "answer": str, "label": str,
                "hallucination": bool, "rationale": str, "category": str}
# Rubric: which label each error category implies.
CATEGORY_LABEL = {"correct": "A", "mild_speculation": "B", "incomplete": "B", "overlong": "B",
                  "wrong_number": "C", "wrong_document": "C", "invented_fact": "C"}
PII_TYPES = {"name", "email", "phone", "iban"}


def norm(text: str) -> str:
    return " ".join(text.split())


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:  # pragma: no cover - message for a broken file
                raise AssertionError(f"{path.name}:{n}: invalid JSON: {exc}") from exc
    return rows


# --------------------------------------------------------------------------------------------------
# fixtures (module scope: everything is read once)


@pytest.fixture(scope="module")
def loaded():
    rejects: list[dict] = []
    docs = documents.load_corpus(CORPUS, rejects)
    return docs, rejects


@pytest.fixture(scope="module")
def docs(loaded):
    return {d.doc_id: d for d in loaded[0]}


@pytest.fixture(scope="module")
def norm_texts(docs):
    return {doc_id: norm(d.text) for doc_id, d in docs.items()}


@pytest.fixture(scope="module")
def qa():
    return read_jsonl(QA_FILE)


@pytest.fixture(scope="module")
def judge():
    return read_jsonl(JUDGE_FILE)


@pytest.fixture(scope="module")
def pii():
    with PII_FILE.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        assert reader.fieldnames == ["doc_id", "type", "value"]
        return list(reader)


# --------------------------------------------------------------------------------------------------
# corpus


def test_every_file_loads(loaded):
    docs, rejects = loaded
    assert rejects == []
    n_files = len(documents.iter_files(CORPUS))
    assert len(docs) == n_files


def test_corpus_size(docs):
    assert len(docs) >= 60
    words = sum(len(d.text.split()) for d in docs.values())
    assert words >= 40_000, words


def test_every_format_is_represented(docs):
    counts = collections.Counter(d.format for d in docs.values())
    for fmt in ("markdown", "html", "pdf", "text"):
        assert counts[fmt] >= 5, (fmt, counts)


def test_documents_have_real_text(docs):
    for doc_id, d in docs.items():
        assert len(d.text.split()) >= 100, doc_id
        assert d.title.strip(), doc_id
        assert "\ufffd" not in d.text, f"{doc_id}: replacement character (mis-decoded bytes)"


def test_latin1_file_is_decoded(docs):
    raw = (CORPUS / LATIN1_DOC).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the file really is a legacy 8-bit encoding
    d = docs[LATIN1_DOC]
    assert d.encoding.replace("-", "").replace("_", "").lower() not in ("utf8", "utf8sig")
    assert "ü" in d.text and "ä" in d.text
    assert "Rückfragen" in d.text and "Öffnungszeiten".upper() in d.text
    assert "Ã" not in d.text  # no UTF-8/Latin-1 mojibake
    assert norm(d.text) == norm(raw.decode("latin-1"))


def test_html_boilerplate_is_dropped(docs):
    from bs4 import BeautifulSoup

    html_docs = [doc_id for doc_id, d in docs.items() if d.format == "html"]
    assert len(html_docs) >= 5
    for doc_id in html_docs:
        raw = (CORPUS / doc_id).read_text(encoding="utf-8")
        text = docs[doc_id].text
        assert "Impressum" in raw and "©" in raw, f"{doc_id}: expected the deliberate footer"
        assert "impressum" not in text.lower(), doc_id
        assert "©" not in text, doc_id
        soup = BeautifulSoup(raw, "html.parser")
        boiler = [s for tag in soup.find_all(["nav", "footer", "header", "aside"]) for s in tag.stripped_strings]
        assert boiler, doc_id
        for s in boiler:
            if len(s) >= 25:  # short menu items ("Datenschutz") may legitimately occur in the content
                assert norm(s) not in norm(text), f"{doc_id}: boilerplate leaked: {s!r}"
        main = soup.find("main") or soup.find(id="main-content") or soup.find("article")
        assert main is not None, doc_id
        first_p = next(p for p in main.find_all("p") if p.get_text(strip=True))
        assert norm(first_p.get_text(" ", strip=True))[:40] in norm(text), doc_id  # content comes through


def test_near_duplicate_is_present(docs):
    def shingles(text: str, k: int = 5) -> set:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}

    a, b = (shingles(docs[d].text) for d in NEAR_DUP)
    jaccard = len(a & b) / len(a | b)
    assert 0.5 <= jaccard < 1.0, jaccard  # near-duplicate, not a byte copy
    others = [shingles(d.text) for doc_id, d in docs.items() if doc_id not in NEAR_DUP]
    assert max(len(a & o) / len(a | o) for o in others) < 0.3


def test_pdfs_have_sources():
    pdfs = {p.relative_to(CORPUS).with_suffix("").as_posix() for p in CORPUS.glob("*/*.pdf")}
    srcs = {p.relative_to(CORPUS_SRC).with_suffix("").as_posix() for p in pdfdocs.sources(CORPUS_SRC)}
    assert pdfs == srcs


def test_pdfs_are_up_to_date(tmp_path_factory):
    out = tmp_path_factory.mktemp("pdfs")
    written = pdfdocs.render_all(CORPUS_SRC, out)
    assert len(written) >= 5
    stale = [p.relative_to(out).as_posix() for p in written
             if p.read_bytes() != (CORPUS / p.relative_to(out)).read_bytes()]
    assert stale == [], "re-render with: python -c 'from helpers import pdfdocs; pdfdocs.render_all()'"


# --------------------------------------------------------------------------------------------------
# gold QA


def test_qa_schema(qa, docs):
    for row in qa:
        assert set(row) == set(QA_FIELDS), row.get("id")
        for key, typ in QA_FIELDS.items():
            assert isinstance(row[key], typ), (row["id"], key)
            if key != "evidence":
                assert row[key].strip(), (row["id"], key)
        assert row["type"] in QA_TYPES, row["id"]
        assert row["doc_id"] in docs, row["id"]
        if row["type"] == "unanswerable":
            assert row["evidence"] == "", row["id"]
        else:
            assert row["evidence"].strip(), row["id"]


def test_qa_ids_unique(qa):
    ids = [row["id"] for row in qa]
    assert len(ids) == len(set(ids))


def test_qa_size_and_spread(qa):
    assert len(qa) >= 200
    types = collections.Counter(row["type"] for row in qa)
    assert set(types) == QA_TYPES, types
    assert types["unanswerable"] / len(qa) >= 0.15, types
    assert len({row["doc_id"] for row in qa}) >= 40


def test_qa_evidence_is_verbatim(qa, norm_texts):
    missing = [row["id"] for row in qa if row["evidence"] and norm(row["evidence"]) not in norm_texts[row["doc_id"]]]
    assert missing == []


def test_qa_refusals(qa):
    for row in qa:
        if row["type"] == "unanswerable":
            assert row["answer"] == REFUSAL, row["id"]
        else:
            assert row["answer"] != REFUSAL and REFUSAL not in row["answer"], row["id"]


def test_qa_questions_not_copied_from_corpus(qa, norm_texts):
    corpus = [t.casefold() for t in norm_texts.values()]
    copied = [row["id"] for row in qa if any(norm(row["question"]).casefold() in t for t in corpus)]
    assert copied == []


# --------------------------------------------------------------------------------------------------
# judge labels


def test_judge_schema(judge, docs):
    for row in judge:
        assert set(row) == set(JUDGE_FIELDS), row.get("id")
        for key, typ in JUDGE_FIELDS.items():
            assert isinstance(row[key], typ), (row["id"], key)
            if typ is str:
                assert row[key].strip(), (row["id"], key)
        assert row["label"] in {"A", "B", "C"}, row["id"]
        assert row["category"] in CATEGORY_LABEL, row["id"]
        assert row["doc_id"] in docs, row["id"]


def test_judge_ids_unique(judge):
    ids = [row["id"] for row in judge]
    assert len(ids) == len(set(ids))


def test_judge_balance(judge):
    assert len(judge) >= 150
    labels = collections.Counter(row["label"] for row in judge)
    for label in "ABC":
        assert labels[label] / len(judge) >= 0.20, labels
    assert set(row["category"] for row in judge) == set(CATEGORY_LABEL)


def test_judge_labels_follow_rubric(judge):
    for row in judge:
        assert row["label"] == CATEGORY_LABEL[row["category"]], row["id"]
        if row["label"] == "A":
            assert row["hallucination"] is False, row["id"]
        if row["category"] in ("wrong_number", "invented_fact"):
            assert row["hallucination"] is True, row["id"]


# --------------------------------------------------------------------------------------------------
# planted PII


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}", s):
        return False
    digits = "".join(str(int(ch, 36)) for ch in s[4:] + s[:4])
    return int(digits) % 97 == 1


def test_iban_checksum_function():
    assert iban_ok("DE89 3704 0044 0532 0130 00")  # the well-known example IBAN
    assert not iban_ok("DE88 3704 0044 0532 0130 00")


def test_pii_schema(pii, docs):
    assert pii
    for row in pii:
        assert row["doc_id"] in docs, row
        assert row["type"] in PII_TYPES, row
        assert row["value"] == row["value"].strip() and row["value"], row
    assert len({(r["doc_id"], r["type"], r["value"]) for r in pii}) == len(pii), "duplicate rows"
    assert {r["type"] for r in pii} == PII_TYPES


def test_pii_values_occur_in_documents(pii, norm_texts):
    missing = [r for r in pii if norm(r["value"]) not in norm_texts[r["doc_id"]]]
    assert missing == []


def test_pii_ibans_are_valid_and_from_fact_sheet(pii):
    sheet = norm(FACT_SHEET.read_text(encoding="utf-8"))
    allowed = set(re.findall(r"DE\d{2}(?: \d{4}){4} \d{2}", sheet))
    assert len(allowed) == 14
    ibans = [r["value"] for r in pii if r["type"] == "iban"]
    for iban in ibans:
        assert iban_ok(iban), iban
        assert iban in allowed, iban
    assert len(ibans) == len(set(ibans)), "fact sheet: each IBAN at most once"


def test_pii_emails_and_phones_look_right(pii):
    for r in pii:
        if r["type"] == "email":
            assert re.fullmatch(r"[\w.+-]+@[\w-]+(\.[\w-]+)+", r["value"]), r
        elif r["type"] == "phone":
            assert sum(ch.isdigit() for ch in r["value"]) >= 7, r


# --------------------------------------------------------------------------------------------------
# cross-document facts (fact sheet)


def _matches(norm_texts, pattern: str) -> list[tuple[str, str]]:
    rx = re.compile(pattern)
    return [(doc_id, m.group(1)) for doc_id, t in norm_texts.items() for m in rx.finditer(t)]


def test_fact_vacation_days(norm_texts):
    found = _matches(norm_texts, r"(?:Jahresurlaub|Urlaubsanspruch)[^.\d]{0,40}?(\d+) (?:Arbeitstage|Urlaubstage|Tage)")
    assert found, "the annual leave is stated somewhere"
    assert {v for _, v in found} == {"30"}, found


def test_fact_sev1_bridge(norm_texts):
    not_other = r"(?:(?!SEV ?[2-4])[^.])"
    found = _matches(norm_texts, rf"SEV ?1\b{not_other}{{0,40}}?(?:innerhalb von|Bridge \()\s*(\d+) Minuten")
    assert len({d for d, _ in found}) >= 2, found
    assert {v for _, v in found} == {"15"}, found
    sev2 = _matches(norm_texts, rf"SEV ?2\b(?:(?!SEV ?[134])[^.]){{0,40}}?(?:innerhalb von|Bridge \()\s*(\d+) Minuten")
    assert sev2 and {v for _, v in sev2} == {"30"}, sev2


def test_fact_service_desk_extension(norm_texts):
    found = _matches(norm_texts, r"Service ?[Dd]esk[^.|]{0,25}?(?:\| )?(?:Durchwahl|intern|unter der Durchwahl)\s+(\d{4})")
    assert len({d for d, _ in found}) >= 3, found
    assert {v for _, v in found} == {"4400"}, found
    assert any("servicedesk@donautal-mt.de" in t for t in norm_texts.values())


def test_fact_hotlines(norm_texts):
    security = _matches(norm_texts, r"Security-Hotline[^0-9+.]{0,20}(\+49 941 78830-\d{4})")
    support = _matches(norm_texts, r"Support-Hotline[^0-9+.]{0,20}(\+49 941 78830-\d{4})")
    assert len(security) >= 5 and {v for _, v in security} == {"+49 941 78830-4999"}, security
    assert len(support) >= 3 and {v for _, v in support} == {"+49 941 78830-5500"}, support
