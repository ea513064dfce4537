"""The course runner: every notebook executed with papermill into ``runs/<timestamp>/``, metrics collected
and checked, and a short report rendered. Also the small API each notebook's first cell uses."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from . import gpumem, io, logs, paths, sovereign
from .profiles import Profile, load_profile
from .errors import HelpersError

NOTEBOOK_DIR = paths.ROOT / "notebooks"
EXPECTATIONS_FILE = Path(__file__).with_name("expectations.yaml")


class CourseError(HelpersError, RuntimeError):
    pass


# --------------------------------------------------------------------------- notebook side
@dataclass
class NotebookContext:
    """What a notebook's first cell gets back: its profile, its output folder and a metrics recorder."""

    nb_id: str
    profile: Profile
    work_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    def save_metrics(self, **values: Any) -> Path:
        """Merge ``values`` into this notebook's metrics JSON (written atomically)."""
        self.metrics.update(values)
        return io.write_json(metrics_path(self.work_dir, self.nb_id), {"notebook": self.nb_id,
                                                                        "profile": self.profile.name,
                                                                        **self.metrics})

    def path(self, name: str) -> Path:
        return self.work_dir / name


def start_notebook(nb_id: str, profile: str = "mini", run_dir: str | None = None) -> NotebookContext:
    """Sovereign mode on, profile loaded and checked, output folder ready."""
    sovereign.activate()
    prof = load_profile(profile)
    prof.require_device()
    work = paths.work_dir(run_dir)
    print(logs.pointer(logs.route(work, f"notebook-{nb_id}")))   # engine/trainer logs to <run>/logs
    _show_whole_text()
    ctx = NotebookContext(nb_id=nb_id, profile=prof, work_dir=work)
    existing = metrics_path(work, nb_id)
    if existing.exists():
        existing.unlink()  # a rerun starts with fresh metrics
    return ctx


def _show_whole_text() -> None:
    """Tables show answers whole (pandas cuts cells at 50 characters by default)."""
    import pandas as pd

    pd.set_option("display.max_colwidth", None)


def metrics_path(run_dir: Path, nb_id: str) -> Path:
    return Path(run_dir) / "metrics" / f"{nb_id}.json"


# --------------------------------------------------------------------------- expectations
@lru_cache(maxsize=1)
def expectations() -> dict:
    with open(EXPECTATIONS_FILE, encoding="utf-8") as fh:
        return {str(k): v for k, v in (yaml.safe_load(fh) or {}).items()}


def check_metrics(nb_id: str, metrics: dict, profile: str = "mini") -> list[str]:
    """Compare a notebook's metrics with its tolerances; returns the violations (empty when fine)."""
    problems = []
    for name, rule in expectations().get(nb_id, {}).items():
        if "profiles" in rule and profile not in rule["profiles"]:
            continue
        if name not in metrics:
            problems.append(f"{nb_id}: metric '{name}' missing")
            continue
        value = metrics[name]
        if "equals" in rule and value != rule["equals"]:
            problems.append(f"{nb_id}: {name} = {value!r}, expected {rule['equals']!r}")
        if "min" in rule and (value is None or value < rule["min"]):
            problems.append(f"{nb_id}: {name} = {value!r} below minimum {rule['min']}")
        if "max" in rule and (value is None or value > rule["max"]):
            problems.append(f"{nb_id}: {name} = {value!r} above maximum {rule['max']}")
    return problems


# --------------------------------------------------------------------------- runner side
def notebook_id(path: str | Path) -> str:
    match = re.match(r"^(\d+(?:\.\d+)?)", Path(path).name)
    if not match:
        raise CourseError(f"Notebook {path} does not start with its post number (e.g. 05.1-...).")
    return match.group(1)


def _order(nb_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in nb_id.split("."))


def list_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    books = [p for p in directory.glob("*.ipynb") if re.match(r"^\d", p.name)]
    return sorted(books, key=lambda p: _order(notebook_id(p)))


def select(notebooks: list[Path], only: list[str] | None = None, start: str | None = None) -> list[Path]:
    ids = [notebook_id(p) for p in notebooks]
    for wanted in (only or []) + ([start] if start else []):
        if wanted not in ids:
            raise CourseError(f"No notebook '{wanted}'. Available: {', '.join(ids)}")
    chosen = [p for p in notebooks if not only or notebook_id(p) in only]
    if start:   # resume: skip what comes before `start` (also within an --only selection)
        chosen = [p for p in chosen if _order(notebook_id(p)) >= _order(start)]
    return chosen


def latest_run_dir() -> Path | None:
    root = paths.runs_dir()
    runs = sorted(p for p in root.glob("20*") if p.is_dir()) if root.exists() else []
    return runs[-1] if runs else None


def new_run_dir() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = paths.runs_dir() / stamp
    path.mkdir(parents=True, exist_ok=False)
    return path


def _failure_message(exc: Exception, nb_id: str, out: Path) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    cell = getattr(exc, "exec_count", None)
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return (f"Notebook {nb_id} failed in {where}: {ename}: {evalue}\n"
            f"Executed notebook with the full traceback: {out}\n"
            f"Fix the cause, then resume with: python -m helpers course run --from {nb_id}")


def _peak_entry(peak: "gpumem.PeakMemory") -> dict:
    """The notebook's peak GPU memory for course_state.json (nothing on a machine without NVML)."""
    return {} if peak.peak_bytes is None else {"gpu_peak_gb": round(peak.peak_bytes / 1e9, 2)}


def run_course(profile: str = "mini", only: list[str] | None = None, start: str | None = None,
               run_dir: str | Path | None = None, parameters: dict | None = None,
               progress: bool = True, check: bool = True, notebook_dir: Path | None = None,
               keep_going: bool = False) -> Path:
    """Execute the selected notebooks in order; returns the run folder. Raises CourseError on failure.

    ``keep_going``: a failed notebook is recorded and the next one runs anyway (each post sets up what it needs);
    the error then names every failure at the end. For rehearsals, where each notebook's own result counts."""
    import papermill as pm
    from tqdm.auto import tqdm

    load_profile(profile).require_device()  # unknown profile or no GPU: fail before anything runs
    sovereign.activate()
    books = select(list_notebooks(notebook_dir or NOTEBOOK_DIR), only, start)
    if run_dir is None and start:
        run_dir = latest_run_dir()
        if run_dir is not None:
            print(f"Resuming in {run_dir}")
    run_dir = Path(run_dir) if run_dir else new_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "course_state.json"
    state = io.read_json(state_path) if state_path.exists() else {"profile": profile, "notebooks": {}}
    env_before = os.environ.get("COURSE_RUN_DIR")
    os.environ["COURSE_RUN_DIR"] = str(run_dir)
    bar = tqdm(books, desc="Kurs", unit="Notebook", disable=not progress)
    failures: list[str] = []
    try:
        for book in bar:
            nb_id = notebook_id(book)
            bar.set_postfix_str(book.name)
            out = run_dir / "notebooks" / book.name
            out.parent.mkdir(parents=True, exist_ok=True)
            params = {"profile": profile, "run_dir": str(run_dir), **(parameters or {})}
            os.environ["COURSE_NOTEBOOK"] = nb_id      # engine starts are recorded per notebook (gpumem)
            t0 = time.time()
            peak = gpumem.PeakMemory()
            try:
                with peak:
                    pm.execute_notebook(str(book), str(out), parameters=params, cwd=str(book.parent),
                                        progress_bar=False, kernel_name="python3", log_output=False)
            except Exception as exc:  # papermill wraps cell errors; anything else is reported the same way
                state["notebooks"][nb_id] = {"status": "failed", "seconds": round(time.time() - t0, 1),
                                             **_peak_entry(peak)}
                io.write_json(state_path, state)
                if not keep_going:
                    raise CourseError(_failure_message(exc, nb_id, out)) from exc
                failures.append(_failure_message(exc, nb_id, out))
                print(failures[-1].splitlines()[0], "- going on (keep_going)", file=sys.stderr)
                continue
            seconds = round(time.time() - t0, 1)
            mpath = metrics_path(run_dir, nb_id)
            metrics = io.read_json(mpath) if mpath.exists() else {}
            problems = check_metrics(nb_id, metrics, profile) if check else []
            state["notebooks"][nb_id] = {"status": "failed" if problems else "ok", "seconds": seconds,
                                         "notebook": book.name, **_peak_entry(peak)}
            io.write_json(state_path, state)
            if problems:
                message = (f"Notebook {nb_id} ran, but its metrics are out of tolerance:\n  "
                           + "\n  ".join(problems) + f"\nMetrics: {mpath}")
                if not keep_going:
                    raise CourseError(message)
                failures.append(message)
    finally:
        os.environ.pop("COURSE_NOTEBOOK", None)
        if env_before is None:
            os.environ.pop("COURSE_RUN_DIR", None)
        else:
            os.environ["COURSE_RUN_DIR"] = env_before
        write_report(run_dir)
    if failures:
        raise CourseError(f"{len(failures)} of {len(books)} notebooks failed:\n\n" + "\n\n".join(failures))
    return run_dir


def collect_metrics(run_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((Path(run_dir) / "metrics").glob("*.json"), key=lambda p: _order(p.stem)):
        out[path.stem] = io.read_json(path)
    return out


def write_report(run_dir: str | Path) -> Path:
    """Markdown report with the notebook durations (plot) and every notebook's metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    state_path = run_dir / "course_state.json"
    state = io.read_json(state_path) if state_path.exists() else {"notebooks": {}}
    metrics = collect_metrics(run_dir)
    lines = [f"# Kursbericht {run_dir.name}", "", f"Profil: `{state.get('profile', '?')}`", "",
             "| Notebook | Status | Sekunden |", "|---|---|---|"]
    nbs = state.get("notebooks", {})
    for nb_id in sorted(nbs, key=_order):
        info = nbs[nb_id]
        lines.append(f"| {info.get('notebook', nb_id)} | {info['status']} | {info['seconds']} |")
    total = sum(i["seconds"] for i in nbs.values())
    lines += ["", f"Gesamtdauer: {total:.0f} s", ""]
    if nbs:
        ids = sorted(nbs, key=_order)
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(ids) + 1.2))
        colors = ["tab:green" if nbs[i]["status"] == "ok" else "tab:red" for i in ids]
        ax.barh(ids[::-1], [nbs[i]["seconds"] for i in ids][::-1], color=colors[::-1])
        ax.set_xlabel("Sekunden")
        ax.set_title("Laufzeit pro Notebook")
        fig.tight_layout()
        fig.savefig(run_dir / "durations.png", dpi=100)
        plt.close(fig)
        lines += ["![Laufzeit pro Notebook](durations.png)", ""]
    for nb_id, values in metrics.items():
        lines += [f"## Notebook {nb_id}", "", "| Metrik | Wert |", "|---|---|"]
        for key, value in values.items():
            if key in ("notebook", "profile"):
                continue
            shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False)
            lines.append(f"| {key} | {shown} |")
        lines.append("")
    return io.write_text(run_dir / "report.md", "\n".join(lines))


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg, progress_arg

    p = sub.add_parser("course", help="run the notebooks with papermill and write the report")
    p.add_argument("action", choices=["run", "list", "report", "audit"],
                   help="audit: check a run's executed notebooks (log noise, references, unsupported numbers)")
    profile_arg(p, profile)
    p.add_argument("--only", nargs="+", default=None, help="notebook ids, e.g. 02 05.1")
    p.add_argument("--from", dest="start", default=None, help="resume from this notebook id")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<timestamp>)")
    p.add_argument("--keep-going", action="store_true",
                   help="run the remaining notebooks after a failure (all failures are reported at the end)")
    p.add_argument("--airgap", action="store_true",
                   help="run inside a new network namespace with only loopback (no way out; `make airgap`)")
    progress_arg(p)
    p.set_defaults(func=cmd_course)


def cmd_course(args) -> int:
    if args.action == "list":
        for book in list_notebooks():
            print(f"{notebook_id(book):>5}  {book.name}")
        return 0
    if args.action == "report":
        print(write_report(args.run_dir or latest_run_dir()))
        return 0
    if args.action == "audit":
        from . import nbaudit

        findings = nbaudit.audit_run(args.run_dir or latest_run_dir(), args.profile)
        print(nbaudit.report(findings))
        return 0 if all(f.ok for f in findings) else 1
    if args.airgap:   # re-run this very command inside a namespace whose only interface is loopback
        import subprocess

        from . import airgap

        reason = airgap.unavailable_reason()
        if reason:
            print(f"error: --airgap is not possible here: {reason}", file=sys.stderr)
            return 2
        argv = [a for a in sys.argv[1:] if a != "--airgap"]
        print("Air-gapped run: a new network namespace with only loopback; nothing can leave this machine.")
        return subprocess.call(airgap.command([sys.executable, "-m", "helpers", *argv]))
    # papermill passes the profile on by name: each notebook resolves it again at its own edge
    run_dir = run_course(profile=args.profile.name, only=args.only, start=args.start, run_dir=args.run_dir,
                         progress=not args.no_progress, keep_going=args.keep_going)
    print(f"Course run complete: {run_dir}\nReport: {run_dir / 'report.md'}")
    return 0
