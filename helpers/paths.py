"""Where the course keeps its files: repository root, data, built models and run folders."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The course data (corpus, gold sets); ``COURSE_DATA_DIR`` overrides it."""
    return Path(os.environ.get("COURSE_DATA_DIR", ROOT / "data"))


def corpus_dir() -> Path:
    return data_dir() / "corpus"


def models_dir() -> Path:
    """Models the course builds itself (Kurs-Mini) and adapters it trains; ``COURSE_MODELS_DIR`` overrides it."""
    return Path(os.environ.get("COURSE_MODELS_DIR", ROOT / "models"))


def runs_dir() -> Path:
    """Parent folder of all course runs; ``COURSE_RUNS_DIR`` overrides it."""
    return Path(os.environ.get("COURSE_RUNS_DIR", ROOT / "runs"))


def work_dir(run_dir: str | os.PathLike | None = None) -> Path:
    """Folder for a notebook's outputs: the runner's run folder, or ``runs/interactive`` in JupyterLab."""
    if run_dir:
        path = Path(run_dir)
    elif os.environ.get("COURSE_RUN_DIR"):
        path = Path(os.environ["COURSE_RUN_DIR"])
    else:
        path = runs_dir() / "interactive"
    path.mkdir(parents=True, exist_ok=True)
    return path
