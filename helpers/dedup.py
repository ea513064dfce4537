"""Duplicate documents: exact copies and near-duplicates (5-word shingles, Jaccard similarity).

A duplicate left in the corpus produces the same QA pairs twice and, worse, can put one copy into training
and the other into evaluation. Of each duplicate pair one document is kept; the other goes to the rejects
with the reason and the document it duplicates. Which one is kept: the shorter ``doc_id`` (copies tend to
get suffixes such as ``-alt``, ``-kopie``, ``(1)``), ties broken alphabetically.
"""

from __future__ import annotations

import hashlib
import re

NEAR_DUPLICATE_JACCARD = 0.8


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def shingles(text: str, n: int = 5) -> set[str]:
    words = _words(text)
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def deduplicate(docs: list[dict], threshold: float = NEAR_DUPLICATE_JACCARD,
                rejects: list[dict] | None = None) -> list[dict]:
    """Drop exact and near-duplicate documents (dicts with ``doc_id`` and ``text``); rejects get a reason."""
    order = sorted(docs, key=lambda d: (len(d["doc_id"]), d["doc_id"]))
    kept: list[dict] = []
    seen_hash: dict[str, str] = {}
    kept_shingles: list[tuple[str, set]] = []
    dropped: set[str] = set()
    for doc in order:
        digest = hashlib.sha256(" ".join(_words(doc["text"])).encode()).hexdigest()
        if digest in seen_hash:
            dropped.add(doc["doc_id"])
            if rejects is not None:
                rejects.append({"doc_id": doc["doc_id"], "stage": "dedup", "reason": "duplicate",
                                "detail": f"same text as {seen_hash[digest]}"})
            continue
        sh = shingles(doc["text"])
        best = max(((jaccard(sh, other), other_id) for other_id, other in kept_shingles), default=(0.0, ""))
        if best[0] >= threshold:
            dropped.add(doc["doc_id"])
            if rejects is not None:
                rejects.append({"doc_id": doc["doc_id"], "stage": "dedup", "reason": "near_duplicate",
                                "detail": f"5-word-shingle Jaccard {best[0]:.2f} with {best[1]}"})
            continue
        seen_hash[digest] = doc["doc_id"]
        kept_shingles.append((doc["doc_id"], sh))
        kept.append(doc)
    return [d for d in docs if d["doc_id"] not in dropped]
