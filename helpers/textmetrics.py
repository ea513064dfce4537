"""Text metrics for generated answers: one definition each, used by notebooks 03 and 05.2 and by QC-style checks.

* ``tokens``: lowercase word tokens (``\\w+``), the normalisation every metric here shares.
* ``token_f1``: SQuAD-style unigram F1 (bag of words). Definition for empty input, as the official SQuAD
  script: if either side has no tokens, the score is 1.0 when both are empty and 0.0 otherwise.
* ``rouge_l``: ROUGE-L F-measure (longest common subsequence of word tokens, beta = 1), same empty rule.
* grounding: ``context_overlap`` (share of the answer's content words found in the context) and
  ``numbers`` (numbers as written, separators normalised away); ``is_refusal`` spots the course's fixed
  refusal sentence.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from . import prompts

_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def tokens(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def numbers(text: str) -> set[str]:
    """Numbers as written, with thousands/decimal separators normalised away ("1.000" and "1000" match)."""
    return {re.sub(r"[.,]", "", n) for n in _NUMBER.findall(text or "")}


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 (bag of lowercase words); 1.0 when both are empty, 0.0 when only one is."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of lowercase words, beta = 1)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_refusal(answer: str, refusal: str = prompts.REFUSAL) -> bool:
    """The answer is (or contains) the course's fixed refusal sentence, ignoring case and punctuation."""
    norm = " ".join(tokens(refusal))
    return bool(norm) and norm in " ".join(tokens(answer))


def context_overlap(answer: str, context: str, min_len: int = 4) -> float | None:
    """Share of the answer's content words (>= min_len characters, or numbers) that occur in the context."""
    ctx = set(tokens(context))
    words = [w for w in tokens(answer) if len(w) >= min_len or w.isdigit()]
    if not words:
        return None
    return sum(w in ctx for w in words) / len(words)
