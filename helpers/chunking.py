"""Token-aware chunking: recursive on paragraph → line → sentence → word, with overlap and section paths.

- Sizes are counted with the profile's tokenizer (Kurs-Mini's on ``mini``), so "256 tokens" means what the
  model sees. No chunk exceeds ``max_tokens``; a 40 KB line without any separator is cut on token
  boundaries as the last resort.
- Markdown headings (``#`` lines, also produced by the HTML loader) and, for PDFs, lines equal to an entry
  of the PDF outline open a section; each chunk carries its section path as ``headings``.
- Ids are ``<doc_id>#c<position>`` (e.g. ``it-betrieb/backup-und-restore-richtlinie.md#c0003``): unique
  because ``doc_id`` is the path below the corpus root, stable as long as the document and the settings
  stay the same. (The original series took the first word of a folder name: 57 ids collided.)
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path

from . import dataset, io
from .profiles import Profile
from .errors import HelpersError

STAGE = "chunk"
SEPARATORS = [
    re.compile(r"\n[ \t]*\n\s*"),                                  # paragraphs
    re.compile(r"\n"),                                             # lines
    re.compile(r"(?<=[.!?…:;])[ \t]+(?=[\"„(\[A-ZÄÖÜ0-9-])"),     # sentences
    re.compile(r"[ \t]+"),                                         # words
]
HEADING_RE = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


class ChunkingError(HelpersError, ValueError):
    pass


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def get_tokenizer(profile: Profile):
    """The tokenizer of the profile's model (Kurs-Mini on ``mini``)."""
    from . import models

    return _tokenizer(models.resolve(profile))


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- sections
def _pdf_heading_level(heading: str) -> int:
    m = re.match(r"^(\d+(?:\.\d+)*)\.?\s", heading)
    return 1 + len(m.group(1).split(".")) if m else 1


def sections(text: str, headings: list[str] | None = None, fmt: str = "markdown") -> list[tuple[list[str], int, int]]:
    """Split a document into ``(section path, body start, body end)``; heading lines are not in the body."""
    marks: list[tuple[int, int, int, str]] = []   # (line start, line end, level, title)
    for m in HEADING_RE.finditer(text):
        marks.append((m.start(), m.end(), len(m.group(1)), m.group(2).strip()))
    if not marks and headings:   # PDF: outline entries that appear as a line of their own
        wanted = {re.sub(r"\s+", " ", h).strip(): h for h in headings}
        pos = 0
        for line in text.split("\n"):
            key = re.sub(r"\s+", " ", line).strip()
            if key in wanted:
                marks.append((pos, pos + len(line), _pdf_heading_level(key), key))
            pos += len(line) + 1
    out: list[tuple[list[str], int, int]] = []
    path: list[tuple[int, str]] = []
    body_start = 0
    for start, end, level, title in marks:
        out.append(([t for _, t in path], body_start, start))
        path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
        body_start = end
    out.append(([t for _, t in path], body_start, len(text)))
    return [(p, s, e) for p, s, e in out if text[s:e].strip()]


# --------------------------------------------------------------------------- recursive splitting
def _strip_span(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def _hard_split(text: str, s: int, e: int, tokenizer, max_tokens: int) -> list[tuple[int, int]]:
    """Last resort (no separator left): cut on token boundaries using the tokenizer's offsets."""
    enc = tokenizer(text[s:e], add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    out, i = [], 0
    while i < len(offsets):
        j = min(i + max_tokens, len(offsets))
        while True:
            a, b = s + offsets[i][0], s + offsets[j - 1][1]
            if j - i <= 1 or count_tokens(tokenizer, text[a:b]) <= max_tokens:
                break
            j -= 1
        out.append((a, b))
        i = j
    return out


def _split(text: str, s: int, e: int, tokenizer, max_tokens: int, level: int = 0) -> list[tuple[int, int]]:
    if count_tokens(tokenizer, text[s:e]) <= max_tokens:
        return [(s, e)]
    if level >= len(SEPARATORS):
        return _hard_split(text, s, e, tokenizer, max_tokens)
    cuts = [m.end() for m in SEPARATORS[level].finditer(text, s, e) if s < m.start() and m.end() < e]
    if not cuts:
        return _split(text, s, e, tokenizer, max_tokens, level + 1)
    out: list[tuple[int, int]] = []
    for a, b in zip([s] + cuts, cuts + [e]):   # separators stay attached to the piece before them
        out += _split(text, a, b, tokenizer, max_tokens, level + 1)
    return out


def _merge(text: str, pieces: list[tuple[int, int]], tokenizer, max_tokens: int,
           overlap: int) -> list[tuple[int, int]]:
    """Greedily pack consecutive pieces into chunks ≤ max_tokens; the next chunk repeats ≤ overlap tokens."""
    sizes = [count_tokens(tokenizer, text[a:b]) for a, b in pieces]
    chunks: list[tuple[int, int]] = []
    i = 0
    while i < len(pieces):
        j, total = i, sizes[i]
        while j + 1 < len(pieces) and total + sizes[j + 1] <= max_tokens:
            j += 1
            total += sizes[j]
        while j > i and count_tokens(tokenizer, text[pieces[i][0]:pieces[j][1]]) > max_tokens:
            j -= 1   # BPE merges across a boundary can make the whole longer than the sum of its parts
        chunks.append((pieces[i][0], pieces[j][1]))
        if j + 1 >= len(pieces):
            break
        k, carried = j + 1, 0
        while k - 1 > i and carried + sizes[k - 1] <= overlap and carried + sizes[k - 1] + sizes[j + 1] <= max_tokens:
            k -= 1
            carried += sizes[k]
        i = k
    return chunks


def chunk_text(text: str, tokenizer, max_tokens: int = 256, overlap: int = 32,
               headings: list[str] | None = None, fmt: str = "markdown") -> list[dict]:
    """Chunks of one document text: ``text, start, end, token_count, headings`` (no ids yet)."""
    if max_tokens < 8:
        raise ChunkingError(f"max_tokens={max_tokens} is too small; use at least 8 (the course uses 256).")
    if not 0 <= overlap < max_tokens:
        raise ChunkingError(f"overlap={overlap} must be ≥ 0 and smaller than max_tokens={max_tokens}.")
    out = []
    for path, s, e in sections(text, headings, fmt):
        s, e = _strip_span(text, s, e)
        pieces = [_strip_span(text, a, b) for a, b in _split(text, s, e, tokenizer, max_tokens)]
        pieces = [(a, b) for a, b in pieces if b > a]
        for a, b in _merge(text, pieces, tokenizer, max_tokens, overlap):
            a, b = _strip_span(text, a, b)
            piece = text[a:b]
            out.append({"text": piece, "start": a, "end": b, "token_count": count_tokens(tokenizer, piece),
                        "headings": path})
    return out


def chunk_id(doc_id: str, position: int) -> str:
    return f"{doc_id}#c{position:04d}"


def chunk_documents(docs: list[dict], tokenizer, max_tokens: int = 256, overlap: int = 32,
                    rejects: list[dict] | None = None, progress: bool = True) -> list[dict]:
    """Chunk document dicts; a document that yields no chunk is appended to ``rejects`` with a reason."""
    from tqdm.auto import tqdm

    chunks: list[dict] = []
    for doc in tqdm(docs, desc="Chunking", unit="Dok", disable=not progress):
        pieces = chunk_text(doc["text"], tokenizer, max_tokens, overlap, doc.get("headings"), doc.get("format", ""))
        if not pieces:
            if rejects is not None:
                rejects.append({"doc_id": doc["doc_id"], "stage": "chunk", "reason": "no_chunks",
                                "detail": "no text left to chunk"})
            continue
        title = re.sub(r"\s+", " ", doc.get("title") or "").strip()
        for pos, piece in enumerate(pieces):
            if title and piece["headings"][:1] != [title]:   # the path always starts with the document title
                piece["headings"] = [title] + piece["headings"]
            chunks.append({"id": chunk_id(doc["doc_id"], pos), "doc_id": doc["doc_id"],
                           "title": doc.get("title", ""), **piece})
    ids = [c["id"] for c in chunks]
    if len(ids) != len(set(ids)):
        raise ChunkingError("Duplicate chunk ids: two documents share a doc_id. Check the input folder.")
    return chunks


def chunk_corpus(source: str | Path, output: str | Path, rejects_path: str | Path,
                 profile: Profile, max_tokens: int | None = None,
                 overlap: int | None = None, progress: bool = True) -> dict:
    """The ``chunk`` step: load (or read documents JSONL) → PII scrub → dedup → chunk → write files."""
    cfg = profile.dataset
    max_tokens = max_tokens or cfg.chunk_max_tokens
    overlap = cfg.chunk_overlap if overlap is None else overlap
    rejects: list[dict] = []
    source = Path(source)
    docs = dataset.prepare_documents(source, rejects, scrub=source.is_dir(), dedup=source.is_dir())
    chunks = chunk_documents(docs, get_tokenizer(profile), max_tokens, overlap, rejects, progress)
    io.write_jsonl(rejects_path, rejects)
    if chunks:
        io.write_jsonl(output, chunks)
    return {"documents": len(docs), "chunks": len(chunks), "rejects": len(rejects),
            "max_token_count": max((c["token_count"] for c in chunks), default=0),
            "max_tokens": max_tokens, "overlap": overlap}


def ensure_chunks(profile: Profile, work_dir: str | Path | None = None) -> Path:
    """``chunks.jsonl`` of this run: found, or created (documents first, then chunks)."""
    out = dataset.files(work_dir)
    if out.chunks.exists():
        return out.chunks
    docs_path = dataset.ensure_documents(profile, work_dir)
    summary = chunk_corpus(docs_path, out.chunks, out.rejects(STAGE), profile, progress=False)
    if not summary["chunks"]:
        raise ChunkingError(f"No chunks from {docs_path}; see {out.rejects('chunk')}")
    print(f"{summary['chunks']} Chunks aus {summary['documents']} Dokumenten → {out.chunks}", file=sys.stderr)
    return out.chunks


def stats_table(chunks: list[dict]):
    """Per-document chunk counts and token statistics (DataFrame)."""
    import pandas as pd

    df = pd.DataFrame(chunks)
    return df.groupby("doc_id")["token_count"].agg(chunks="count", tokens="sum", max="max").reset_index()


def plot_token_histogram(chunks: list[dict], max_tokens: int | None = None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist([c["token_count"] for c in chunks], bins=30, color="tab:blue")
    if max_tokens:
        ax.axvline(max_tokens, color="tab:red", linestyle="--", label=f"max_tokens = {max_tokens}")
        ax.legend()
    ax.set_xlabel("Tokens pro Chunk")
    ax.set_ylabel("Anzahl Chunks")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg, progress_arg, rejects_arg

    p = sub.add_parser("chunk", help="load, PII-scrub, dedup and chunk documents (token-aware, with overlap)")
    p.add_argument("--input", required=True, help="corpus folder (or a documents JSONL from `pii`)")
    p.add_argument("--output", required=True, help="chunks JSONL (id, doc_id, text, token_count, headings, ...)")
    rejects_arg(p, STAGE, ": every file that yields no chunk, with reason")
    p.add_argument("--max-tokens", type=int, default=profile.dataset.chunk_max_tokens,
                   help="tokens per chunk (default: the profile's dataset.chunk_max_tokens, %(default)s)")
    p.add_argument("--overlap", type=int, default=profile.dataset.chunk_overlap,
                   help="overlap tokens (default: the profile's dataset.chunk_overlap, %(default)s)")
    profile_arg(p, profile)
    progress_arg(p)
    p.set_defaults(func=cmd_chunk)


def cmd_chunk(args) -> int:
    rejects = args.rejects or dataset.rejects_file(args.output, STAGE)
    summary = chunk_corpus(args.input, args.output, rejects, args.profile, args.max_tokens, args.overlap,
                           progress=not args.no_progress)
    if not summary["chunks"]:
        print(f"error: no chunk was written: {summary['documents']} usable documents, {summary['rejects']} "
              f"rejected files (reasons in {rejects}). Check the input folder {args.input}.", file=sys.stderr)
        return 1
    print(f"{summary['chunks']} chunks from {summary['documents']} documents -> {args.output} (max "
          f"{summary['max_token_count']} of {summary['max_tokens']} tokens, overlap {summary['overlap']}); "
          f"{summary['rejects']} rejects -> {rejects}")
    return 0
