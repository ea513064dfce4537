"""Run one function in a fresh process and show its output here, line by line.

On a GPU only a process exit gives everything back to the card: after ``training.train`` in a notebook's kernel
6.1-6.8 GB stayed in use on the l4 dress rehearsal (7B NF4), the engine started next asked for 21.6 of the card's
24 GB, and the card would have refused it. Measured after one training: 0.55 GB of live tensors (the float32
embedding, which the Trainer registers with bitsandbytes' global optimizer manager for its 8-bit optimizers) and
4.29 GB of caching-allocator segments around such survivors; expandable segments still left 2.8 GB after two
trainings. A training process of its own left 0.6 GB in use, as before it started (docs/gpu-regression.md).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

from .errors import HelpersError


class ChildFailed(HelpersError, RuntimeError):
    pass


def _child(log_path: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
    log = open(log_path, "a", buffering=1, encoding="utf-8")
    os.dup2(log.fileno(), 1)          # C-level output (CUDA, bitsandbytes) as well as Python's
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    return fn(*args, **kwargs)


def _echo(path: Path, pos: int) -> int:
    with open(path, "rb") as f:
        f.seek(pos)
        chunk = f.read()
    if chunk:
        sys.stdout.write(chunk.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return pos + len(chunk)


def run(fn: Callable, *args: Any, what: str = "the child process", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a spawned process; its output is echoed while it runs, its result (or its
    exception) comes back. ``fn`` and its arguments must be picklable (module-level function, plain data)."""
    with tempfile.TemporaryDirectory(prefix="child-") as tmp:
        log = Path(tmp) / "output.log"
        log.touch()
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pos = 0
        try:
            future = pool.submit(_child, str(log), fn, args, kwargs)
            while True:
                finished = future.done()
                pos = _echo(log, pos)
                if finished:
                    break
                time.sleep(0.3)
            try:
                return future.result()
            except BrokenProcessPool as exc:
                raise ChildFailed(
                    f"{what} ended without a result (killed, or out of host memory; its last output is above). "
                    "Run it again; a stopped training resumes from its last checkpoint with `--resume`.") from exc
        except BaseException:
            for proc in list(getattr(pool, "_processes", {}).values()):   # an interrupted cell stops the child too
                proc.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            _echo(log, pos)
