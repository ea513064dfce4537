"""Audit of executed notebooks: does the German text say only what the cells show?

Three checks per executed notebook (``runs/<ts>/notebooks/*.ipynb``):

* **noise** -- lines of third-party logs in the cell outputs (vLLM/torch/transformers log records, Python
  warnings, the libraries' checkpoint-loading bars). The course prints its own lines; engine logs belong in the
  run's log file. The course's own text progress bars are not noise: a saved notebook shows their final state.
* **references** -- every notebook ("Notebook 08", "Post 10") and every repository path in backticks
  (``docs/…``, ``manifests/…``) that the text names must exist.
* **numbers** -- every number in a markdown cell must be printed by an output above it, appear in a code cell
  above it, be a setting of the active profile, appear in a repository file the same cell cites, or be listed
  in ``nbaudit_allow.yaml`` with the source it comes from. Numbers inside headings' notebook ids, identifiers
  (``H100``, ``P1``, ``Mistral-7B``) and small counts (0–10) are not checked.

``python -m helpers course audit RUN_DIR`` prints the findings; the course test fails on any.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from . import paths

ALLOW_FILE = Path(__file__).with_name("nbaudit_allow.yaml")
MAX_NOISE_LINES = 5

_NOISE = [
    re.compile(r"^(INFO|WARNING|DEBUG|ERROR|CRITICAL) \d{2}-\d{2} \d{2}:\d{2}:\d{2}"),   # vLLM log records
    re.compile(r"^\(\w+ pid=\d+\)"),                                                     # vLLM worker prefix
    re.compile(r"^\[[WIE]\d{6,}|^\[W \w+"),                                               # torch c10 logs
    re.compile(r"\b\w*Warning: "),                                                       # Python warnings
    re.compile(r"^\s*warnings\.warn\("),
    re.compile(r"libtcmalloc|oneDNN|OMP: |huggingface/tokenizers|NUMA"),
    re.compile(r"^(INFO|WARNING):\w+(\.\w+)*:"),                                          # logging default format
    re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} (INFO|WARNING|DEBUG|ERROR) "),        # MLflow's format
    re.compile(r"^(Loading weights|Loading safetensors checkpoint shards|Loading checkpoint shards)\b"),   # library bars
]
_NOTEBOOK_REF = re.compile(r"\b(?:Notebooks?|Posts?)\s+(\d{2}(?:\.\d)?)\b")
_PATH_REF = re.compile(r"`((?:docs|manifests|helpers|data|notebooks|scripts|tests|assets|research)/[^`\s]*)`")
_NUMBER = re.compile(r"(?<![\w.,/#:-])(\d+(?:[.,]\d+)*)(?![\w]|[.,]\d)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_URL = re.compile(r"https?://\S+")


@dataclass
class Findings:
    notebook: str
    noise: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return len(self.noise) <= MAX_NOISE_LINES and not self.missing and not self.numbers


def noise_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(p.search(line) for p in _NOISE)]


def readings(token: str) -> set[tuple[float, float]]:
    """Each value a written number can mean, with the rounding tolerance of that reading: "1.800" is 1800 (± 0.5) or
    1.8 (± 0.0005); "0,305" cannot be a thousands group, so it is only 0.305 (± 0.0005)."""
    out: set[tuple[float, float]] = set()
    plain = token.replace(".", "").replace(",", "")
    if plain.isdigit() and (token.isdigit() or re.fullmatch(r"[1-9]\d{0,2}([.,]\d{3})+", token)):
        out.add((float(plain), 0.5))
    for dec, thou in ((",", "."), (".", ",")):
        s = token.replace(thou, "")
        if s.count(dec) == 1 and s.replace(dec, "").isdigit():
            out.add((float(s.replace(dec, ".")), 0.5 * 10 ** -len(s.split(dec)[1])))
    return out


def numbers_in(text: str) -> list[str]:
    text = _URL.sub(" ", text)
    return [m.group(1) for m in _NUMBER.finditer(text)]


def _pool(text: str) -> set[float]:
    pool: set[float] = set()
    for tok in numbers_in(text):
        for v, _ in readings(tok):
            pool.update({v, round(v * 100, 6), round(v / 100, 6)})   # 0.97 printed, "97 %" written
    return pool


def supported(token: str, pool: set[float]) -> bool:
    return any(abs(v - p) <= tol + 1e-9 or (v >= 1000 and abs(v - p) / v < 0.005)
               for v, tol in readings(token) for p in pool)


def _output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            data = out.get("data", {})
            parts.append(data.get("text/plain", "") if "text/html" not in data else data["text/html"])
            parts.append(data.get("text/markdown", ""))
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


@lru_cache(maxsize=8)
def _allow(path: str) -> dict:
    p = Path(path)
    return yaml.safe_load(p.read_text(encoding="utf-8")) or {} if p.exists() else {}


def _profile_numbers(profile) -> set[float]:
    import dataclasses

    def walk(obj):
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                yield from walk(getattr(obj, f.name))
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from walk(v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            yield float(obj)
    return set(walk(profile)) if profile is not None else set()


def audit(path: str | Path, profile=None, repo: Path | None = None, allow_file: Path = ALLOW_FILE) -> Findings:
    """Check one executed notebook; ``profile`` is the ``Profile`` it ran with (its settings count as cited)."""
    import nbformat

    repo = repo or paths.ROOT
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    nb_id = path.name.split("-")[0]
    allow = _allow(str(allow_file))
    allowed = {float(v) for v in (allow.get("all") or {})} | {float(v) for v in (allow.get(nb_id) or {})}
    books = {p.name.split("-")[0] for p in (repo / "notebooks").glob("*.ipynb")}
    found = Findings(path.name)
    pool = _profile_numbers(profile) | allowed | _pool(nb_id)
    for cell in nb.cells:
        if cell.cell_type == "code":
            out = _output_text(cell)
            found.noise += noise_lines(out)
            pool |= _pool(out) | _pool(cell.source)
            continue
        if cell.cell_type != "markdown":
            continue
        text = cell.source
        for ref in _NOTEBOOK_REF.findall(text):
            if ref not in books:
                found.missing.append(f"Notebook {ref}")
        cited = set()
        for ref in _PATH_REF.findall(text):
            target = repo / ref.rstrip("/.,;:")
            if "{" in ref or "*" in ref:
                continue
            if not target.exists():
                found.missing.append(ref)
            elif target.is_file():
                cited |= _pool(target.read_text(encoding="utf-8", errors="replace"))
        prose = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
        prose = _CODE_SPAN.sub(" ", prose)
        for tok in numbers_in(prose):
            if tok in books:                     # "05.2": a notebook id, checked as a reference above
                continue
            if tok.isdigit() and int(tok) <= 10:
                continue
            if not supported(tok, pool | cited):
                line = next((l for l in prose.splitlines() if tok in l), "")
                found.numbers.append(f"{tok}: {line.strip()[:160]}")
    return found


def audit_run(run_dir: str | Path, profile=None) -> list[Findings]:
    return [audit(p, profile) for p in sorted((Path(run_dir) / "notebooks").glob("*.ipynb"))]


def allow_list_problems(allow_file: Path = ALLOW_FILE, repo: Path | None = None) -> list[str]:
    """Allow-list entries whose source is a repository file that does not contain the number."""
    repo = repo or paths.ROOT
    problems = []
    for nb_id, entries in (_allow(str(allow_file)) or {}).items():
        for number, source in (entries or {}).items():
            src = str(source).split()[0]
            if "/" in src and not src.startswith("http"):
                target = repo / src
                if not target.is_file():
                    problems.append(f"{nb_id}: {number}: source {src} does not exist")
                elif not supported(str(number), _pool(target.read_text(encoding="utf-8", errors="replace"))):
                    problems.append(f"{nb_id}: {number}: not found in {src}")
    return problems


def report(findings: list[Findings]) -> str:
    lines = []
    for f in findings:
        status = "ok" if f.ok else "FAIL"
        lines.append(f"{f.notebook}: {status} (noise {len(f.noise)}, missing {len(f.missing)}, "
                     f"unsupported numbers {len(f.numbers)})")
        lines += [f"  missing: {m}" for m in f.missing]
        lines += [f"  number {n}" for n in f.numbers]
        if len(f.noise) > MAX_NOISE_LINES:
            lines += [f"  noise: {n[:140]}" for n in f.noise[:5]]
    return "\n".join(lines)
