"""Load the corpus: Markdown, HTML (main content only), PDF and plain text in any common encoding.

Every file either becomes a :class:`Document` or raises :class:`DocumentError` with a reason that the
caller writes to a rejects file. Nothing is dropped silently.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator
from .errors import HelpersError

FORMATS = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".pdf": "pdf",
           ".txt": "text", ".text": "text"}
BOILERPLATE_TAGS = ("nav", "header", "footer", "aside", "script", "style", "noscript", "form", "button")
BOILERPLATE_MARKERS = ("nav", "menu", "footer", "sidebar", "breadcrumb", "cookie", "banner", "toolbar")


class DocumentError(HelpersError, ValueError):
    """A file that yields no usable text; ``reason`` is short and machine-friendly."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Document:
    doc_id: str
    text: str
    title: str
    headings: list[str] = field(default_factory=list)
    format: str = "text"
    source: str = ""
    encoding: str = "utf-8"

    def to_dict(self) -> dict:
        return asdict(self)


def _decode(raw: bytes) -> tuple[str, str]:
    """Decode bytes: UTF-8 first, then the best guess of charset-normalizer (Latin-1, cp1252, ...)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None:
        raise DocumentError("undecodable", "no text encoding fits these bytes")
    encoding = best.encoding
    # cp1252 is a superset of Latin-1 for printable text; prefer it so that 0x80-0x9f map to € „ “ etc.
    if encoding in ("latin_1", "iso8859_1", "iso-8859-1"):
        encoding = "cp1252"
    try:
        return raw.decode(encoding), encoding
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def _check_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        raise DocumentError("binary", "NUL bytes in a file with a text extension")
    control = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\n\t\f")
    if text and control / len(text) > 0.01:
        raise DocumentError("binary", f"{control} control characters: not a text file")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:
        raise DocumentError("empty", "no text after extraction")
    letters = sum(ch.isalpha() for ch in text)
    if letters < 20:
        raise DocumentError("no_text", f"only {letters} letters")
    return text


def _markdown(text: str) -> tuple[str, list[str], str]:
    headings = [m.group(2).strip() for m in re.finditer(r"^(#{1,6})\s+(.+)$", text, flags=re.M)]
    title = headings[0] if headings else ""
    return text, headings, title


def _html(raw_text: str) -> tuple[str, list[str], str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw_text, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(BOILERPLATE_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        if tag.attrs is None:
            continue
        marks = " ".join([tag.get("id") or ""] + list(tag.get("class") or []) + [tag.get("role") or ""]).lower()
        if marks.strip() and any(m in marks for m in BOILERPLATE_MARKERS) and tag.name not in ("main", "body"):
            tag.decompose()
    main = soup.find("main") or soup.find(id="main-content") or soup.find("article") or soup.body or soup
    lines: list[str] = []
    headings: list[str] = []
    for el in main.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "tr", "pre", "dt", "dd"]):
        if el.name == "tr":
            cells = [c.get_text(" ", strip=True) for c in el.find_all(["td", "th"])]
            if any(cells):
                lines.append(" | ".join(cells))
            continue
        if el.name in ("p", "li", "dd", "dt") and el.find_parent(["li", "td", "th"]) is not None and el.name != "li":
            continue  # text already contained in its list item or table cell
        if el.name == "li" and el.find(["ul", "ol"]):
            own = "".join(t for t in el.find_all(string=True, recursive=False)).strip()
            if own:
                lines.append(f"- {own}")
            continue
        text = el.get_text(" ", strip=True)
        if not text:
            continue
        if el.name[0] == "h":
            level = int(el.name[1])
            headings.append(text)
            lines.append(f"\n{'#' * level} {text}")
        elif el.name == "li":
            lines.append(f"- {text}")
        else:
            lines.append(text)
    text = "\n".join(lines)
    text = re.sub(r"[ \u00a0]+", " ", text)
    if not title and headings:
        title = headings[0]
    return text, headings, title


def _pdf(path: Path) -> tuple[str, list[str], str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentError("corrupt_pdf", str(exc)[:200]) from exc
    text = "\n\n".join(pages)
    headings: list[str] = []
    try:
        def walk(items):
            for item in items:
                if isinstance(item, list):
                    walk(item)
                else:
                    headings.append(str(item.title))
        walk(reader.outline)
    except Exception:  # an outline is optional; a broken one must not reject the text
        headings = []
    meta_title = (reader.metadata.title if reader.metadata else None) or ""
    title = meta_title or (headings[0] if headings else text.strip().split("\n", 1)[0][:120])
    return text, headings, title


def load_document(path: str | Path, root: str | Path) -> Document:
    """Load one file; ``doc_id`` is its path relative to ``root`` (stable and unique)."""
    path, root = Path(path), Path(root)
    doc_id = path.relative_to(root).as_posix()
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DocumentError("unsupported_format", f"extension {path.suffix!r}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DocumentError("unreadable", str(exc)) from exc
    if not raw.strip():
        raise DocumentError("empty", "file is empty")
    encoding = "binary"
    if fmt == "pdf":
        if not raw.startswith(b"%PDF"):
            raise DocumentError("corrupt_pdf", "missing %PDF header")
        text, headings, title = _pdf(path)
    else:
        if b"\x00" in raw[:4096]:
            raise DocumentError("binary", "NUL bytes in a file with a text extension")
        decoded, encoding = _decode(raw)
        if fmt == "html":
            text, headings, title = _html(decoded)
        elif fmt == "markdown":
            text, headings, title = _markdown(decoded)
        else:
            text, headings, title = decoded, [], ""
    text = _check_text(text)
    if not title:
        title = text.split("\n", 1)[0].strip()[:120]
    return Document(doc_id=doc_id, text=text, title=title, headings=headings, format=fmt,
                    source=str(path), encoding=encoding)


def iter_files(root: str | Path) -> list[Path]:
    """All regular files below ``root`` in a stable order (hidden files skipped)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                        p.relative_to(root).parts))


def load_corpus(root: str | Path, rejects: list[dict] | None = None) -> list[Document]:
    """Load every file below ``root``; files that fail are appended to ``rejects`` with their reason."""
    docs = []
    for path in iter_files(root):
        try:
            docs.append(load_document(path, root))
        except DocumentError as exc:
            if rejects is not None:
                rejects.append({"doc_id": path.relative_to(root).as_posix(), "stage": "load",
                                "reason": exc.reason, "detail": exc.detail})
    return docs


def iter_corpus_text(root: str | Path) -> Iterator[str]:
    for doc in load_corpus(root):
        yield doc.text
