"""The judge's contract: rubric prompt, output schema and parsing (one place, used by the judge step and by the
judge adapter's training examples, so both see exactly the same text).

The judge writes a short German rationale *before* its verdict (``begruendung`` → ``urteil`` → ``halluzination``).
An output that is cut by ``max_tokens`` or fails validation is never coerced into a grade: ``parse`` returns
``None`` with the reason, and the caller records the item as ``unparsed`` with its raw text.
"""

from __future__ import annotations

import json

GRADES = ("A", "B", "C")
RATIONALE_MAX_CHARS = 160

SYSTEM = (
    "Du prüfst Antworten des internen Assistenten der Donautal Messtechnik GmbH. Bewerte nur anhand des Kontexts. "
    "A: korrekt, vollständig und knapp. B: im Kern richtig, aber unvollständig, aufgebläht oder mit einer nicht "
    "belegten Vermutung. C: falsch, erfunden, aus einem anderen Dokument oder an der Frage vorbei. "
    "halluzination ist true, wenn die Antwort etwas behauptet, das nicht im Kontext steht. "
    "Schreibe zuerst eine kurze Begründung, dann das Urteil."
)

SHAPE = '{"begruendung": "...", "urteil": "A|B|C", "halluzination": true|false}'


def messages(context: str, question: str, answer: str) -> list[dict]:
    """The rubric prompt for one (context, question, answer) item."""
    user = (f"Kontext:\n{context}\n\nFrage: {question}\n\nAntwort:\n{answer}\n\n"
            f"Antworte nur mit JSON der Form {SHAPE}.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def schema() -> dict:
    """JSON schema for structured decoding: bounded rationale, enum verdict, boolean flag, nothing else."""
    return {"type": "object",
            "properties": {"begruendung": {"type": "string", "minLength": 1, "maxLength": RATIONALE_MAX_CHARS},
                           "urteil": {"type": "string", "enum": list(GRADES)},
                           "halluzination": {"type": "boolean"}},
            "required": ["begruendung", "urteil", "halluzination"], "additionalProperties": False}


def completion(rationale: str, grade: str, hallucination: bool) -> str:
    """The judgment as the model should write it (compact JSON, keys in the order of the schema)."""
    if grade not in GRADES:
        raise ValueError(f"grade must be one of {GRADES}, got {grade!r}")
    return json.dumps({"begruendung": rationale[:RATIONALE_MAX_CHARS], "urteil": grade,
                       "halluzination": bool(hallucination)}, ensure_ascii=False, separators=(",", ":"))


def parse(text: str, finish_reason: str = "stop") -> tuple[dict | None, str]:
    """``({"rationale", "grade", "hallucination"}, "")`` or ``(None, reason)``; never guesses a grade."""
    if finish_reason == "length":
        return None, "cut by max_tokens"
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return None, f"not JSON: {exc.msg}"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    extra = sorted(set(obj) - {"begruendung", "urteil", "halluzination"})
    if extra:
        return None, f"unexpected keys: {', '.join(extra)}"
    grade, flag, why = obj.get("urteil"), obj.get("halluzination"), obj.get("begruendung")
    if grade not in GRADES:
        return None, f"urteil must be one of {'/'.join(GRADES)}, got {grade!r}"
    if not isinstance(flag, bool):
        return None, f"halluzination must be true or false, got {flag!r}"
    if not isinstance(why, str) or not why.strip():
        return None, "empty begruendung"
    return {"rationale": why.strip(), "grade": grade, "hallucination": flag}, ""


# --------------------------------------------------------------------------- pairwise mode
# Which of two answers to the same question is better. The judge writes its rationale first, then "1" or "2"
# (no tie: an order-dependent verdict shows up as disagreement between the two orders, which the caller runs).
PAIR_SYSTEM = (
    "Du vergleichst zwei Antworten des internen Assistenten der Donautal Messtechnik GmbH auf dieselbe Frage. "
    "Bewerte nur anhand des Kontexts: Welche Antwort ist korrekter, vollständiger und knapper, ohne Angaben, die "
    "nicht im Kontext stehen? Schreibe zuerst eine kurze Begründung, dann die Nummer der besseren Antwort."
)
PAIR_SHAPE = '{"begruendung": "...", "besser": "1|2"}'
PAIR_CHOICES = ("1", "2")


def pair_messages(context: str, question: str, first: str, second: str) -> list[dict]:
    """The pairwise prompt: the same context and question, two answers in the given order."""
    user = (f"Kontext:\n{context}\n\nFrage: {question}\n\nAntwort 1:\n{first}\n\nAntwort 2:\n{second}\n\n"
            f"Antworte nur mit JSON der Form {PAIR_SHAPE}.")
    return [{"role": "system", "content": PAIR_SYSTEM}, {"role": "user", "content": user}]


def pair_schema() -> dict:
    return {"type": "object",
            "properties": {"begruendung": {"type": "string", "minLength": 1, "maxLength": RATIONALE_MAX_CHARS},
                           "besser": {"type": "string", "enum": list(PAIR_CHOICES)}},
            "required": ["begruendung", "besser"], "additionalProperties": False}


def parse_pair(text: str, finish_reason: str = "stop") -> tuple[dict | None, str]:
    """``({"rationale", "better": "1"|"2"}, "")`` or ``(None, reason)``; never guesses a winner."""
    if finish_reason == "length":
        return None, "cut by max_tokens"
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return None, f"not JSON: {exc.msg}"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    extra = sorted(set(obj) - {"begruendung", "besser"})
    if extra:
        return None, f"unexpected keys: {', '.join(extra)}"
    better, why = obj.get("besser"), obj.get("begruendung")
    if better not in PAIR_CHOICES:
        return None, f"besser must be 1 or 2, got {better!r}"
    if not isinstance(why, str) or not why.strip():
        return None, "empty begruendung"
    return {"rationale": why.strip(), "better": better}, ""
