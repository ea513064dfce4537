"""Access to the course's gold data: QA pairs and judge labels (schemas in data/README.md)."""

from __future__ import annotations

import random

from . import io, paths

QA_TYPES = ("factual", "conceptual", "comparison", "unanswerable")


def load_qa(types: tuple[str, ...] | None = None) -> list[dict]:
    records = io.read_jsonl(paths.data_dir() / "gold" / "qa_eval.jsonl")
    return [r for r in records if types is None or r["type"] in types]


def load_judge_labels() -> list[dict]:
    return io.read_jsonl(paths.data_dir() / "gold" / "judge_labels.jsonl")


def sample(records: list[dict], n: int | None, seed: int = 0) -> list[dict]:
    """A seeded sample of ``n`` records (all of them when ``n`` is None or larger than the list)."""
    if n is None or n >= len(records):
        return list(records)
    return random.Random(seed).sample(records, n)
