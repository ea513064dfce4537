"""Work units of the ``generate`` step: which chunks, split into units and shards by a stable hash, and the progress
file that makes a run resumable after ``kill -9`` (a unit is done when its line is in the file).

A unit is one ``llm.generate`` call and one progress line; shards are disjoint sets of units, so N processes
(``--shard i/N``, an Indexed Job in the cluster) never redo each other's work, and ``merge`` checks they cover all.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .errors import HelpersError


class GenerationError(HelpersError, ValueError):
    pass


def stable_hash(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16)


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/N"`` → (i, N), checked; None → (0, 1)."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise GenerationError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise GenerationError(f"--shard {spec}: need N ≥ 1 and 0 ≤ i < N")
    return i, n


def select_chunks(chunks: list[dict], min_tokens: int = 0, limit: int | None = None) -> list[dict]:
    """Chunks worth generating from (≥ min_tokens); with ``limit`` a sample spread over all documents
    (the ``limit`` chunks with the smallest stable hash), always in id order."""
    chosen = [c for c in chunks if c.get("token_count", min_tokens) >= min_tokens]
    if limit:
        chosen = sorted(chosen, key=lambda c: stable_hash(c["id"]))[:limit]
    return sorted(chosen, key=lambda c: c["id"])


def work_units(chunks: list[dict], unit_chunks: int) -> dict[int, list[dict]]:
    """Units of about ``unit_chunks`` chunks each, assigned by a stable hash of the chunk id."""
    n_units = max(1, math.ceil(len(chunks) / max(1, unit_chunks)))
    units: dict[int, list[dict]] = {u: [] for u in range(n_units)}
    for chunk in chunks:
        units[stable_hash(chunk["id"]) % n_units].append(chunk)
    return {u: sorted(cs, key=lambda c: c["id"]) for u, cs in units.items() if cs}


def shard_units(units: dict[int, list[dict]], shard: int, n_shards: int) -> dict[int, list[dict]]:
    return {u: cs for u, cs in units.items() if u % n_shards == shard}


# --------------------------------------------------------------------------- progress file
def progress_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".progress.jsonl")


def meta_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".meta.json")


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def read_progress(path: Path) -> tuple[dict | None, dict[int, dict]]:
    """Header and finished units of a progress file; a line cut by kill -9 is removed."""
    if not path.exists():
        return None, {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    good_end, header, units = 0, None, {}
    for i, line in enumerate(lines):
        if not line.strip():
            good_end += len(line) + 1
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if i >= len(lines) - 2:   # the last line, interrupted while being written
                break
            raise GenerationError(f"{path}: line {i + 1} is corrupt (not at the end). Delete the file to "
                                  "start over.") from None
        good_end += len(line) + 1
        if "header" in entry:
            header = entry["header"]
        else:
            units[entry["unit"]] = entry
    if good_end < len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(min(good_end, len(raw)))
    return header, units
