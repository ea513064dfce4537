"""Chunking: token limits, stable unique ids, section paths, overlap, and the `chunk` CLI on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import chunking, dataset, io, paths
from helpers.profiles import load_profile

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    return chunking.get_tokenizer(load_profile("mini"))


@pytest.fixture(scope="module")
def docs():
    return dataset.prepare_documents(paths.corpus_dir(), [])


@pytest.mark.parametrize("max_tokens,overlap", [(256, 32), (64, 16)])
def test_corpus_chunks_respect_limit_and_are_consistent(docs, tok, max_tokens, overlap):
    chunks = chunking.chunk_documents(docs, tok, max_tokens, overlap, progress=False)
    assert len(chunks) > len(docs)
    by_doc = {d["doc_id"]: d for d in docs}
    for c in chunks:
        assert c["token_count"] == chunking.count_tokens(tok, c["text"]) <= max_tokens
        assert by_doc[c["doc_id"]]["text"][c["start"]:c["end"]] == c["text"]
        assert c["id"].startswith(c["doc_id"] + "#c")
    assert len({c["id"] for c in chunks}) == len(chunks)
    assert {c["doc_id"] for c in chunks} == set(by_doc)   # every document yields chunks


def test_ids_are_stable_and_positional(docs, tok):
    a = chunking.chunk_documents(docs[:5], tok, 128, 16, progress=False)
    b = chunking.chunk_documents(docs[:5], tok, 128, 16, progress=False)
    assert [c["id"] for c in a] == [c["id"] for c in b]
    first = [c for c in a if c["doc_id"] == docs[0]["doc_id"]]
    assert [c["id"] for c in first] == [f"{docs[0]['doc_id']}#c{i:04d}" for i in range(len(first))]


def test_section_paths_for_markdown_and_pdf(docs, tok):
    chunks = chunking.chunk_documents(docs, tok, 256, 32, progress=False)
    md = [c for c in chunks if c["doc_id"] == "it-betrieb/backup-und-restore-richtlinie.md"]
    pdf = [c for c in chunks if c["doc_id"] == "personal/reisekostenrichtlinie.pdf"]
    assert any(len(c["headings"]) >= 2 for c in md)
    assert any("3.1 Bahn" in c["headings"] for c in pdf)
    assert all(c["headings"][0] == "Reisekostenrichtlinie der Donautal Messtechnik GmbH" for c in pdf if c["headings"])


def test_overlap_repeats_the_end_of_the_previous_chunk(tok):
    text = "\n".join(f"Satz Nummer {i} beschreibt eine Regel für das Backup." for i in range(60))
    chunks = chunking.chunk_text(text, tok, max_tokens=64, overlap=20)
    assert len(chunks) > 3
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt["start"] < prev["end"]   # overlapping spans
        assert nxt["start"] > prev["start"]
    no_overlap = chunking.chunk_text(text, tok, max_tokens=64, overlap=0)
    assert all(n["start"] >= p["end"] for p, n in zip(no_overlap, no_overlap[1:]))


def test_line_without_separators_is_cut_on_tokens(tok):
    text = "x" * 40_000
    chunks = chunking.chunk_text(text, tok, max_tokens=100, overlap=10)
    assert max(c["token_count"] for c in chunks) <= 100
    assert "".join(c["text"] for c in chunks) == text


def test_bad_settings_are_explained(tok):
    with pytest.raises(chunking.ChunkingError, match="overlap"):
        chunking.chunk_text("Text " * 10, tok, max_tokens=64, overlap=64)


def _run_chunk(input_dir, out_dir, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "helpers", "chunk", "--input", str(input_dir), "--output",
                           str(out_dir / "chunks.jsonl"), "--rejects", str(out_dir / "rejects.jsonl"),
                           "--no-progress", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_chunk_cli_on_bad_input(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "leer.md").write_text("")
    (src / "kaputt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ntruncated")
    (src / "muell.txt").write_bytes(bytes(range(256)) * 20)
    (src / "lange-zeile.txt").write_text("Zeichen" * 6000)   # 42 KB, no separator at all
    original = (ROOT / "data/corpus/personal/urlaub-und-sonderurlaub.md").read_text(encoding="utf-8")
    (src / "urlaub.md").write_text(original, encoding="utf-8")
    (src / "urlaub-kopie.md").write_text(original, encoding="utf-8")
    out = tmp_path / "out"
    proc = _run_chunk(src, out, "--max-tokens", "96", "--overlap", "16")
    assert proc.returncode == 0, proc.stderr
    rejects = {r["doc_id"]: r for r in io.read_jsonl(out / "rejects.jsonl")}
    assert rejects["leer.md"]["reason"] == "empty"
    assert rejects["kaputt.pdf"]["reason"] == "corrupt_pdf"
    assert rejects["muell.txt"]["reason"] == "binary"
    assert rejects["urlaub-kopie.md"]["reason"] == "duplicate" and "urlaub.md" in rejects["urlaub-kopie.md"]["detail"]
    assert all(r["stage"] and r["reason"] for r in rejects.values())
    chunks = io.read_jsonl(out / "chunks.jsonl")
    assert {c["doc_id"] for c in chunks} == {"urlaub.md", "lange-zeile.txt"}
    assert max(c["token_count"] for c in chunks) <= 96
    assert all({"id", "doc_id", "text", "token_count", "headings"} <= set(c) for c in chunks)
    assert "[NAME]" in " ".join(c["text"] for c in chunks if c["doc_id"] == "urlaub.md")  # scrubbed first


def test_chunk_cli_fails_clearly_when_nothing_is_usable(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "leer.txt").write_text("   \n")
    (src / "kaputt.pdf").write_bytes(b"not a pdf at all")
    out = tmp_path / "out"
    proc = _run_chunk(src, out)
    assert proc.returncode != 0
    assert "no chunk was written" in proc.stderr and "rejects.jsonl" in proc.stderr
    assert not (out / "chunks.jsonl").exists()
    assert len(io.read_jsonl(out / "rejects.jsonl")) == 2


def test_ensure_chunks_builds_the_run_files(tmp_path):
    path = chunking.ensure_chunks(load_profile("mini"), tmp_path)
    files = dataset.files(tmp_path)
    assert path == files.chunks and files.documents.exists()
    load_rejects = io.read_jsonl(files.rejects("load"))
    assert [r["doc_id"] for r in load_rejects] == ["produkte/faq-flowline-f200-alt.html"]   # the near-duplicate
    first = json.loads(path.read_text().splitlines()[0])
    assert first["id"].endswith("#c0000")
    assert chunking.ensure_chunks(load_profile("mini"), tmp_path) == path   # found, not rebuilt
