import json

import pytest

from helpers import documents, io


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.jsonl"
    io.write_jsonl(target, [{"a": 1}])

    def broken():
        yield {"a": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        io.write_jsonl(target, broken())
    assert io.read_jsonl(target) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{broken\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        io.read_jsonl(path)


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_markdown_headings_and_doc_id(tmp_path):
    _write(tmp_path, "it/a.md", "# Titel\n\nText über Backups.\n\n## Abschnitt\n\nMehr Text hier.".encode())
    doc = documents.load_document(tmp_path / "it/a.md", tmp_path)
    assert doc.doc_id == "it/a.md" and doc.title == "Titel" and doc.headings == ["Titel", "Abschnitt"]


def test_html_drops_navigation_and_footer_keeps_tables(tmp_path):
    html = """<html><head><title>Seite</title></head><body><nav><a>Startseite</a><a>Menü</a></nav>
    <div class="breadcrumb">Wiki / IT</div><main><h1>Backup</h1><p>Vollbackup am Samstag.</p>
    <table><tr><th>Typ</th><th>Zeit</th></tr><tr><td>inkrementell</td><td>22:30</td></tr></table></main>
    <footer>Impressum | Datenschutz</footer></body></html>"""
    _write(tmp_path, "p.html", html.encode())
    doc = documents.load_document(tmp_path / "p.html", tmp_path)
    assert "Vollbackup am Samstag." in doc.text and "inkrementell | 22:30" in doc.text
    assert "Impressum" not in doc.text and "Startseite" not in doc.text and "Wiki / IT" not in doc.text
    assert doc.headings == ["Backup"]


def test_latin1_and_cp1252_text_is_decoded(tmp_path):
    _write(tmp_path, "l.txt", "Größe der Bürotür: 2,10 m. Öffnungszeiten der Kantine ändern sich.".encode("latin-1"))
    doc = documents.load_document(tmp_path / "l.txt", tmp_path)
    assert "Größe der Bürotür" in doc.text and doc.encoding != "utf-8"
    _write(tmp_path, "c.txt", "Preis: 4,50 € – „Menü“ für alle Mitarbeitenden heute.".encode("cp1252"))
    assert "4,50 € – „Menü“" in documents.load_document(tmp_path / "c.txt", tmp_path).text


@pytest.mark.parametrize("name,data,reason", [
    ("empty.md", b"", "empty"),
    ("blank.txt", b"   \n\n ", "empty"),
    ("junk.txt", bytes(range(256)) * 8, "binary"),
    ("broken.pdf", b"%PDF-1.4\n garbage without objects", "corrupt_pdf"),
    ("fake.pdf", b"this is not a pdf at all", "corrupt_pdf"),
    ("data.xlsx", b"PK\x03\x04", "unsupported_format"),
])
def test_bad_files_are_rejected_with_reason(tmp_path, name, data, reason):
    _write(tmp_path, name, data)
    with pytest.raises(documents.DocumentError) as err:
        documents.load_document(tmp_path / name, tmp_path)
    assert err.value.reason == reason


def test_load_corpus_records_every_reject(tmp_path):
    _write(tmp_path, "ok.md", "# Gut\n\nEin ordentliches Dokument mit genug Text.".encode())
    _write(tmp_path, "empty.txt", b"")
    rejects = []
    docs = documents.load_corpus(tmp_path, rejects)
    assert [d.doc_id for d in docs] == ["ok.md"]
    assert rejects == [{"doc_id": "empty.txt", "stage": "load", "reason": "empty", "detail": "file is empty"}]
    json.dumps(rejects)


def test_pdf_roundtrip_keeps_text_and_outline(tmp_path):
    from helpers import pdfdocs

    src = _write(tmp_path, "src/a.md", "# Richtlinie\n\n## Fristen\n\nMeldung binnen 72 Stunden an die Behörde.\n\n"
                 "- Punkt eins\n\n| Spalte | Wert |\n| A | 1 |\n".encode())
    out = pdfdocs.render(src, tmp_path / "corpus/a.pdf")
    doc = documents.load_document(out, tmp_path / "corpus")
    assert "Meldung binnen 72 Stunden an die Behörde." in " ".join(doc.text.split())
    assert doc.headings[:2] == ["Richtlinie", "Fristen"] and doc.title == "Richtlinie"
    again = pdfdocs.render(src, tmp_path / "corpus/b.pdf")
    assert again.read_bytes() == out.read_bytes()  # reproducible
