"""PII scrubbing: e-mail, phone numbers, IBANs and personal names become typed placeholders.

This runs before anything else (chunking, a model, a log file) sees the text. Detection is rule-based and
explainable, which a data-protection officer can review:

- ``email``: RFC-like address pattern.
- ``iban``: country code + check digits + 11-30 alphanumerics (with or without spaces), kept only if the
  ISO 13616 mod-97 checksum holds (so order numbers that merely look like IBANs stay).
- ``phone``: German/Austrian/Swiss formats (``+49 941 78830-4410``, ``0941 / 78830-4413``,
  ``0151 22873410``, ``+49 (0)941 ...``) with at least 7 digits.
- ``name``: a first name from a configurable list (common German-speaking first names) followed by a
  capitalised surname, the ``Surname, Firstname`` form, and initials or ``Herr``/``Frau`` with a surname
  already seen in the same document. Names whose first name is not in the list are missed: the recall
  against ``data/pii/planted_pii.tsv`` shows how many.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDERS = {"email": "[EMAIL]", "iban": "[IBAN]", "phone": "[TELEFON]", "name": "[NAME]"}
PII_TYPES = tuple(PLACEHOLDERS)
PRIORITY = {"email": 0, "iban": 1, "phone": 2, "name": 3}   # overlapping hits: the lower value wins

# Common first names in Germany, Austria and Switzerland (a gazetteer; extend it for your workforce or pass
# your own list, e.g. an export of the HR system's first names).
FIRST_NAMES = frozenset("""
Alexander Alexandra Alina Andrea Andreas Angelika Anja Anna Anne Annika Anton Barbara Bastian Bea Beate
Benedikt Benjamin Bernd Bernhard Birgit Brigitte Carina Carmen Carolin Caroline Christa Christian Christiane
Christina Christine Christoph Claudia Clemens Cornelia Daniel Daniela David Denise Dennis Dieter Dominik
Doris Elena Elias Elisabeth Emil Emilia Emma Erich Erik Erika Ernst Eva Fabian Felix Florian Franz
Franziska Frank Friedrich Gabriele Georg Gerhard Gisela Gregor Günter Günther Hannah Hans Harald Heike
Heinz Helena Helga Helmut Herbert Hermann Ingrid Isabel Isabella Jakob Jan Jana Janina Jens Jessica
Johann Johanna Johannes Jonas Josef Julia Julian Juliane Jürgen Kai Karin Karl Katharina Katja Katrin
Kerstin Kevin Kilian Klaus Konrad Korbinian Kristina Lara Laura Lea Lena Leon Leonie Lisa Lorenz Luca
Lukas Luisa Magdalena Manfred Manuel Manuela Marco Marcel Maria Marie Marina Mario Markus Marlene Martin
Martina Marion Matthias Max Maximilian Melanie Michael Michaela Miriam Monika Nadine Natalie Nicole Niklas
Nina Noah Norbert Olaf Oliver Pascal Patricia Patrick Paul Paula Peter Petra Philipp Rainer Ralf Ramona
Regina Reinhard Renate Richard Robert Roland Rosa Rudolf Sabine Sabrina Sandra Sarah Sebastian Silke
Simon Simone Sophia Sophie Stefan Stefanie Steffen Stephan Susanne Sven Tanja Theresa Thomas Thorsten
Tim Tobias Torsten Ulrich Ulrike Ursula Uwe Valentin Vanessa Verena Veronika Viktoria Walter Werner
Wolfgang Xaver Yvonne
""".split())

_UPPER = "A-ZÄÖÜ"
_LOWER = "a-zäöüß"
_SURNAME = rf"[{_UPPER}][{_LOWER}]+(?:-[{_UPPER}][{_LOWER}]+)?"
# Capitalised words that follow a first name but are not surnames (German nouns are capitalised).
NOT_SURNAMES = frozenset("""Bereich Team Abteilung Leitung Support Service Der Die Das Und Oder Mit Von Für
Tel Telefon Mail Durchwahl Raum Haus Gebäude Straße Platz""".split())
NOUN_ENDINGS = ("ung", "heit", "keit", "schaft", "nummer", "tion", "ität", "ment", "leiter", "leiterin")


def _is_surname(word: str) -> bool:
    return word not in NOT_SURNAMES and not word.lower().endswith(NOUN_ENDINGS)

EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
IBAN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ \t]{0,2}[A-Z0-9]{4}){2,7}(?:[ \t]{0,2}[A-Z0-9]{1,4})?(?![A-Za-z0-9])")
_GAP = r"(?:[ \t]{1,2}|[ \t]*\n[ \t]*)"   # PDF extraction doubles spaces and breaks lines inside values
PHONE_RE = re.compile(
    r"(?<![\w+/.,-])"
    rf"(?:\+\d{{2,3}}{_GAP}?(?:\(0\){_GAP}?)?\d{{1,5}}|0\d{{2,5}})"   # +49 941 / +49 (0)941 / 0941 / 0151
    rf"(?:{_GAP}?/{_GAP}?|{_GAP}|-)?"                              # "0941 / ", "0941 ", "0941-"
    rf"\d{{2,}}(?:(?:{_GAP}|-)\d{{2,}})*"                          # 78830-4410, 22 84 61 73
    r"(?![\w,.]\d)"
)


@dataclass(frozen=True)
class Hit:
    type: str
    start: int
    end: int
    value: str


def iban_is_valid(value: str) -> bool:
    """ISO 13616 mod-97 checksum of an IBAN (spaces ignored)."""
    compact = re.sub(r"\s+", "", value).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        return False
    digits = "".join(str(int(ch, 36)) for ch in compact[4:] + compact[:4])
    return int(digits) % 97 == 1


def _name_hits(text: str, first_names: frozenset[str]) -> list[Hit]:
    hits: list[Hit] = []
    first = "|".join(sorted(first_names, key=len, reverse=True))
    title = r"(?:(?:Dr|Prof)\.[ \t]*(?:(?:med|rer\. nat|-Ing)\.?[ \t]*)?)?"
    full = re.compile(rf"(?<![\w-]){title}(?:{first})(?:[ \t]+(?:{first}))?\s+({_SURNAME})(?![\w-])")
    surnames: set[str] = set()
    for m in full.finditer(text):
        if not _is_surname(m.group(1)):
            continue
        hits.append(Hit("name", m.start(), m.end(), m.group(0)))
        surnames.add(m.group(1))
    inverted = re.compile(rf"(?<![\w-])({_SURNAME}),[ \t]+(?:{first})(?![\w-])(?=[ \t]+({_SURNAME})(?![\w-]))?")
    for m in inverted.finditer(text):
        # "Personalentwicklung, Lena Kagerer" is "unit, first last", not "last, first"
        if _is_surname(m.group(1)) and not (m.group(2) and _is_surname(m.group(2))):
            hits.append(Hit("name", m.start(), m.end(), m.group(0)))
            surnames.add(m.group(1))
    if surnames:  # "J. Rackl", "Herr Riedl": only surnames this document already named in full
        known = "|".join(sorted(map(re.escape, surnames), key=len, reverse=True))
        short = re.compile(rf"(?<![\w-])(?:[{_UPPER}]\.[ \t]?|(?:Herrn?|Frau)[ \t]+)(?:{known})(?![\w-])")
        hits += [Hit("name", m.start(), m.end(), m.group(0)) for m in short.finditer(text)]
    return hits


def find_pii(text: str, first_names: frozenset[str] | None = None) -> list[Hit]:
    """All PII hits in ``text``, non-overlapping (e-mail beats IBAN beats phone beats name), sorted."""
    hits = [Hit("email", m.start(), m.end(), m.group(0)) for m in EMAIL_RE.finditer(text)]
    hits += [Hit("iban", m.start(), m.end(), m.group(0)) for m in IBAN_RE.finditer(text) if iban_is_valid(m.group(0))]
    for m in PHONE_RE.finditer(text):
        value = m.group(0).rstrip(" \t\n-/")
        if sum(ch.isdigit() for ch in value) >= 7:
            hits.append(Hit("phone", m.start(), m.start() + len(value), value))
    hits += _name_hits(text, first_names or FIRST_NAMES)
    chosen: list[Hit] = []
    for hit in sorted(hits, key=lambda h: (PRIORITY[h.type], h.start, -(h.end - h.start))):
        if all(hit.end <= c.start or hit.start >= c.end for c in chosen):
            chosen.append(hit)
    return sorted(chosen, key=lambda h: h.start)


def scrub(text: str, first_names: frozenset[str] | None = None) -> tuple[str, dict[str, int]]:
    """Replace every hit by its typed placeholder; returns the scrubbed text and counts per type."""
    hits = find_pii(text, first_names)
    out, pos = [], 0
    for hit in hits:
        out += [text[pos:hit.start], PLACEHOLDERS[hit.type]]
        pos = hit.end
    out.append(text[pos:])
    counts = Counter(h.type for h in hits)
    return "".join(out), {t: counts.get(t, 0) for t in PII_TYPES}


def scrub_documents(docs: list, first_names: frozenset[str] | None = None) -> list[dict]:
    """Scrub documents (``Document`` objects or dicts); each result dict gets ``pii_counts``."""
    out = []
    for doc in docs:
        rec = doc.to_dict() if hasattr(doc, "to_dict") else dict(doc)
        rec["text"], rec["pii_counts"] = scrub(rec["text"], first_names)
        rec["title"], _ = scrub(rec.get("title", ""), first_names)
        rec["headings"] = [scrub(h, first_names)[0] for h in rec.get("headings", [])]
        out.append(rec)
    return out


def load_planted(path: str | Path | None = None) -> list[dict]:
    """The corpus' planted PII (``doc_id``, ``type``, ``value``) from ``data/pii/planted_pii.tsv``."""
    from . import paths

    path = Path(path) if path else paths.data_dir() / "pii" / "planted_pii.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def planted_recall(docs: list, planted: list[dict] | None = None,
                   first_names: frozenset[str] | None = None) -> dict:
    """Recall per PII type against the planted list (whitespace collapsed, as the data card says).

    A planted value counts as found when every occurrence in its document lies inside a hit of the same
    type. Returns ``{"per_type": {type: {"planted", "found", "recall"}}, "missed": [rows]}``.
    """
    planted = planted if planted is not None else load_planted()
    texts = {}
    for doc in docs:
        rec = doc.to_dict() if hasattr(doc, "to_dict") else doc
        texts[rec["doc_id"]] = _collapse(rec["text"])
    hits_cache: dict[str, list[Hit]] = {}
    per_type = {t: {"planted": 0, "found": 0} for t in PII_TYPES}
    missed = []
    for row in planted:
        text = texts.get(row["doc_id"])
        if text is None:
            continue
        hits = hits_cache.setdefault(row["doc_id"], find_pii(text, first_names))
        value = _collapse(row["value"])
        spans = [(m.start(), m.end()) for m in re.finditer(re.escape(value), text)]
        ok = bool(spans) and all(any(h.type == row["type"] and h.start <= s and e <= h.end for h in hits)
                                 for s, e in spans)
        per_type[row["type"]]["planted"] += 1
        per_type[row["type"]]["found"] += ok
        if not ok:
            missed.append(row)
    for stats in per_type.values():
        stats["recall"] = stats["found"] / stats["planted"] if stats["planted"] else None
    return {"per_type": per_type, "missed": missed}


def planted_precision(docs: list, planted: list[dict] | None = None,
                      first_names: frozenset[str] | None = None) -> dict:
    """Precision per PII type against the planted list: a hit is correct when it overlaps an occurrence of a
    planted value of the same type in the same document.

    The list holds every planted personal value (data/pii/README.md); it leaves out functional contacts
    (service desk mail, hotlines) on purpose, so replacing those counts as a false positive here — an
    over-redaction that costs content, not privacy. Returns ``{"per_type": {type: {"hits", "correct",
    "precision"}}, "false_positives": [{"doc_id", "type", "value"}]}``.
    """
    planted = planted if planted is not None else load_planted()
    by_doc: dict[str, list[dict]] = {}
    for row in planted:
        by_doc.setdefault(row["doc_id"], []).append(row)
    per_type = {t: {"hits": 0, "correct": 0} for t in PII_TYPES}
    false_positives = []
    for doc in docs:
        rec = doc.to_dict() if hasattr(doc, "to_dict") else doc
        text = _collapse(rec["text"])
        spans = [(row["type"], m.start(), m.end()) for row in by_doc.get(rec["doc_id"], [])
                 for m in re.finditer(re.escape(_collapse(row["value"])), text)]
        for hit in find_pii(text, first_names):
            ok = any(t == hit.type and s < hit.end and hit.start < e for t, s, e in spans)
            per_type[hit.type]["hits"] += 1
            per_type[hit.type]["correct"] += ok
            if not ok:
                false_positives.append({"doc_id": rec["doc_id"], "type": hit.type, "value": hit.value})
    for stats in per_type.values():
        stats["precision"] = stats["correct"] / stats["hits"] if stats["hits"] else None
    return {"per_type": per_type, "false_positives": false_positives}


def recall_table(report: dict):
    """The recall (or precision) report as a DataFrame (one row per PII type)."""
    import pandas as pd

    return pd.DataFrame([{"typ": t, **s} for t, s in report["per_type"].items()])
