"""Clean notebook output: third-party logs go to a log file in the run folder, the notebook keeps the course's lines.

A vLLM engine start alone prints dozens of INFO/WARNING records (one of them a 3,000-character config line),
plus warnings from torch, transformers, MLflow and C libraries (oneDNN, tcmalloc). ``route(work_dir)`` -- called
by every notebook's first cell through ``course.start_notebook`` -- sends all of that to
``<run>/logs/notebook-<id>.log``:

* Python logging (vLLM, transformers, MLflow, peft, httpx, ...): one file handler on the root logger; the
  libraries' own console handlers are removed, vLLM's is never installed (``VLLM_CONFIGURE_LOGGING=0``).
* ``warnings.warn``: captured into the same file (``logging.captureWarnings``).
* C-level writes to file descriptor 2 (oneDNN, tcmalloc, torch's C++ warnings): fd 2 points at the log file;
  Python's ``sys.stderr`` in a notebook is the kernel's own stream, so deliberate messages still show.
* Library progress bars (transformers' "Loading weights", vLLM's checkpoint-shard bar) are switched off; the
  course's own bars (generation, training steps) stay.
* Progress bars: in a papermill run (no live frontend) ``tqdm.auto`` is switched to text bars, which a saved
  notebook shows in their final state instead of a frozen "0%" widget.

``pointer()`` returns the one line a notebook prints to say where the log is.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Libraries that attach their own console handlers; their records go to the log file instead.
NOISY = ("vllm", "transformers", "mlflow", "peft", "accelerate", "bitsandbytes", "torch", "httpx", "urllib3",
         "alembic", "datasets", "huggingface_hub", "pypdf", "numba", "xgrammar", "openai", "filelock")
_STATE: dict[str, object] = {}


def log_path(work_dir: str | Path, name: str) -> Path:
    path = Path(work_dir) / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _papermill() -> bool:
    """True inside a papermill/nbclient execution (the course runner sets COURSE_RUN_DIR for its kernels)."""
    return bool(os.environ.get("COURSE_RUN_DIR")) or "papermill" in sys.modules


def text_progress_bars() -> None:
    """Make ``tqdm.auto`` plain text bars (before the libraries import it), for saved notebooks."""
    import tqdm
    import tqdm.auto
    import tqdm.std

    tqdm.auto.tqdm = tqdm.std.tqdm
    tqdm.auto.trange = tqdm.std.trange
    try:
        import tqdm.autonotebook as autonb

        autonb.tqdm = tqdm.std.tqdm
    except ImportError:  # pragma: no cover - part of tqdm
        pass


def route(work_dir: str | Path, name: str, fd_level: bool = True) -> Path:
    """Send third-party logs, warnings and C-level stderr of this process to ``<work_dir>/logs/<name>.log``."""
    path = log_path(work_dir, name)
    os.environ["VLLM_CONFIGURE_LOGGING"] = "0"          # vLLM: no console handler of its own
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"    # MLflow: likewise (records reach the root logger)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")   # its own console handler: errors only
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"    # transformers' "Loading weights" bar (read at import)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old = _STATE.get("handler")
    if isinstance(old, logging.Handler):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _STATE["handler"] = handler
    for lib in NOISY:
        logger = logging.getLogger(lib)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        logger.propagate = True
    _quiet_transformers()
    logging.captureWarnings(True)
    if fd_level:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    if _papermill():
        text_progress_bars()
    _STATE["path"] = path
    return path


def _quiet_transformers() -> None:
    """transformers keeps a console handler of its own; hand its records to the root logger instead."""
    mod = sys.modules.get("transformers")
    if mod is None:
        return
    try:
        from transformers.utils import logging as tlog

        tlog.disable_default_handler()
        tlog.enable_propagation()
        tlog.disable_progress_bar()       # already imported: the environment variable came too late
    except Exception:  # noqa: BLE001 - older/newer transformers: nothing to quiet
        pass


def pointer(path: Path | None = None) -> str:
    """The one line a notebook prints: where the third-party logs of this notebook go."""
    path = path or _STATE.get("path")
    return f"Logs von vLLM, transformers & Co.: {path}" if path else "(keine Log-Datei eingerichtet)"
