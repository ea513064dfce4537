"""Render the corpus' PDF documents from their plain sources in ``data/corpus_src/<area>/<name>.md``.

The source markup is deliberately small: ``#``/``##``/``###`` headings, paragraphs, ``- `` bullets and
``| a | b |`` table rows (first row = header). Output is reproducible (fixed creation date, embedded
DejaVu font shipped with matplotlib), so ``python -m helpers data pdfs`` regenerates identical files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from . import io, paths

FIXED_DATE = dt.datetime(2026, 1, 15, 9, 0, 0, tzinfo=dt.timezone.utc)


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _blocks(source: str):
    """Yield (kind, payload) blocks: heading (level, text), para text, bullet text, table rows."""
    lines = source.splitlines()
    para: list[str] = []
    table: list[list[str]] = []

    def flush():
        nonlocal para, table
        if para:
            yield ("para", " ".join(s.strip() for s in para))
            para = []
        if table:
            yield ("table", table)
            table = []

    for line in lines:
        stripped = line.strip()
        if not stripped:
            yield from flush()
        elif stripped.startswith("#"):
            yield from flush()
            level = len(stripped) - len(stripped.lstrip("#"))
            yield ("heading", (level, stripped[level:].strip()))
        elif stripped.startswith("|"):
            if para:
                yield from flush()
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                table.append(cells)
        elif stripped.startswith("- "):
            yield from flush()
            yield ("bullet", stripped[2:].strip())
        else:
            if table:
                yield from flush()
            para.append(stripped)
    yield from flush()


def render(source_path: str | Path, out_path: str | Path) -> Path:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    source = Path(source_path).read_text(encoding="utf-8")
    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    fonts = _font_dir()
    pdf.add_font("DejaVu", "", str(fonts / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(fonts / "DejaVuSans-Bold.ttf"))
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(True, margin=20)
    pdf.add_page()
    title = None
    for kind, payload in _blocks(source):
        if kind == "heading":
            level, text = payload
            title = title or text
            pdf.start_section(text, level=level - 1)
            pdf.set_font("DejaVu", "B", {1: 16, 2: 13}.get(level, 11))
            pdf.ln(2)
            pdf.multi_cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "para":
            pdf.set_font("DejaVu", "", 10)
            pdf.multi_cell(0, 5, payload, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        elif kind == "bullet":
            pdf.set_font("DejaVu", "", 10)
            pdf.multi_cell(0, 5, f"• {payload}", new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "table":
            pdf.set_font("DejaVu", "", 9)
            width = max(len(r) for r in payload)
            rows = [r + [""] * (width - len(r)) for r in payload]
            with pdf.table(headings_style=FontFace(emphasis="BOLD"), line_height=5) as table:
                for row in rows:
                    cells = table.row()
                    for cell in row:
                        cells.cell(cell)
            pdf.ln(2)
    pdf.set_title(title or Path(source_path).stem)
    pdf.set_author("Donautal Messtechnik GmbH (fiktiv)")
    with io.atomic_path(out_path) as tmp:
        pdf.output(str(tmp))
    return Path(out_path)


def sources(src_root: str | Path | None = None) -> list[Path]:
    src_root = Path(src_root or paths.data_dir() / "corpus_src")
    return sorted(p for p in src_root.glob("*/*.md"))


def render_all(src_root: str | Path | None = None, corpus_root: str | Path | None = None) -> list[Path]:
    """Render every source to ``<corpus>/<area>/<name>.pdf``; returns the written paths."""
    src_root = Path(src_root or paths.data_dir() / "corpus_src")
    corpus_root = Path(corpus_root or paths.corpus_dir())
    out = []
    for src in sources(src_root):
        rel = src.relative_to(src_root).with_suffix(".pdf")
        out.append(render(src, corpus_root / rel))
    return out


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile) -> None:
    p = sub.add_parser("data", help="render the corpus PDFs from data/corpus_src")
    p.add_argument("action", choices=["pdfs"])
    p.set_defaults(func=cmd_data)


def cmd_data(args) -> int:
    for path in render_all():
        print(path)
    return 0
