"""The local runtime of the pipeline: the SAME workflow dict the cluster gets, run offline on this machine.

Hera dropped running DAGs locally in 6.0, and Kubeflow's local mode needs Docker for container steps, so the
course walks the Argo dict itself: ``depends`` gives the order (topological, in pipeline order), each task's
``container.command`` + ``args`` is the command (``python`` becomes this interpreter), ``withSequence`` fans
out, ``when`` and ``{{workflow.parameters.*}}`` are evaluated, and PVC paths are mapped to a run folder
(``/data`` -> ``--run-dir``, ``/data/corpus`` -> the course corpus). The exit handler runs at the end, as in Argo.

Caching like ``dvc repro``: a task is skipped when its key (the container arguments plus the content hash of
every declared input) equals the key of its last successful run AND its outputs still have the hashes that
run recorded. Change one input and only the tasks downstream of it run again. A killed run resumes: finished
tasks are stamped, the interrupted one starts again and keeps its resume state (generate's progress file,
train's checkpoints) unless its inputs changed. A failing task leaves its inputs untouched (checked) and the
run resumable; a missing input names the task that produces it.

Not mirrored locally: GPU placement, retries (a local failure is deterministic), the semaphore (one task at a
time here). The champion in the registry is external state: the gate reads it, but it is not part of the gate's
cache key (``--force gate`` compares a cached candidate with a newer champion).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import io, paths
from .pipeline import (ANN_IN, ANN_OPT, ANN_OUT, ANN_STATE, DATA, PipelineError, annotation, dag_tasks, task_edges,
                       templates, topo_order)

STATE_DIR = ".pipeline"


# --------------------------------------------------------------------------- hashing
def content_hash(path: Path) -> str | None:
    """sha256 of a file, or of a folder's relative paths and file contents; None when missing."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + (content_hash(f) or "").encode() + b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- the plan
@dataclass
class Invocation:
    """One process: a task, or one shard of a fanned-out task."""
    task: str
    label: str
    argv: list[str]                 # container form, parameters substituted
    inputs: list[str]
    optional: list[str]
    outputs: list[str]
    state: list[str]
    when: str | None


def path_map(run_dir: str | Path, corpus: str | Path | None = None) -> list[tuple[str, Path]]:
    """PVC path -> local path, longest prefix first (the corpus: the course's, or ``corpus``)."""
    return [(f"{DATA}/corpus", Path(corpus or paths.corpus_dir()).resolve()), (DATA, Path(run_dir).resolve())]


def to_local(value: str, mapping: list[tuple[str, Path]]) -> str:
    for prefix, local in mapping:
        value = re.sub(rf"(^|=|sqlite:///){re.escape(prefix)}(?=/|$)", lambda m: m.group(1) + str(local), value)
    return value


def _subst(text: str, values: dict[str, str]) -> str:
    def repl(m):
        key = m.group(1).strip()
        if key not in values:
            raise PipelineError(f"unresolved reference {{{{{key}}}}} (known: {', '.join(sorted(values))})")
        return values[key]
    return re.sub(r"\{\{([^}]+)\}\}", repl, text)


def workflow_params(doc: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    params = {p["name"]: str(p.get("value", "")) for p in doc["spec"].get("arguments", {}).get("parameters", [])}
    for k, v in (overrides or {}).items():
        if k not in params:
            raise PipelineError(f"unknown workflow parameter {k!r}; this workflow has {sorted(params)}")
        params[k] = v
    return {f"workflow.parameters.{k}": v for k, v in params.items()}


def expand(doc: dict, params: dict[str, str]) -> dict[str, list[Invocation]]:
    """Each DAG task as its invocations (one per shard), parameters substituted (still PVC paths)."""
    tpl = templates(doc)
    out: dict[str, list[Invocation]] = {}
    for task in dag_tasks(doc):
        t = tpl[task["template"]]
        seq = task.get("withSequence")
        items = [str(i) for i in range(int(seq["count"]))] if seq else [None]
        invs = []
        for item in items:
            values = dict(params)
            for arg in task.get("arguments", {}).get("parameters", []):
                val = str(arg.get("value", ""))
                values[f"inputs.parameters.{arg['name']}"] = _subst(val, {**values, "item": item or ""})
            sub = lambda s: _subst(s, values)  # noqa: E731
            c = t["container"]
            invs.append(Invocation(
                task=task["name"], label=task["name"] + (f"[{item}]" if item is not None else ""),
                argv=[sub(a) for a in c["command"] + c.get("args", [])],
                inputs=[sub(p) for p in annotation(t, ANN_IN)], optional=[sub(p) for p in annotation(t, ANN_OPT)],
                outputs=[sub(p) for p in annotation(t, ANN_OUT)], state=[sub(p) for p in annotation(t, ANN_STATE)],
                when=sub(task["when"]) if task.get("when") else None))
        out[task["name"]] = invs
    return out


def plan(doc: dict) -> list[str]:
    """The order the local runner uses: a topological sort of the DAG's ``depends``."""
    return topo_order(task_edges(doc))


def evaluate_when(expr: str) -> bool:
    m = re.fullmatch(r"\s*(\S+)\s*(==|!=)\s*(\S+)\s*", expr)
    if not m:
        raise PipelineError(f"`when: {expr}`: the local runner understands `a == b` and `a != b` only")
    return (m.group(1) == m.group(3)) == (m.group(2) == "==")


def _registered_subcommands() -> set[str]:
    from .cli import build_parser

    parser = build_parser()
    return set(next(a for a in parser._actions if a.dest == "command").choices)


# --------------------------------------------------------------------------- running
@dataclass
class RunResult:
    run_dir: Path
    records: list[dict] = field(default_factory=list)
    ok: bool = True
    failed: str | None = None
    message: str = ""

    def summary(self, steps: bool = True) -> str:
        """One line per task (``steps``) and a total; a failure with the first line of its message (the log
        path), not the log's tail."""
        lines = [f"{r['task']:<14} {r['status']:<22} {r['seconds']:6.1f} s" for r in self.records] if steps else []
        ran = sum(r["status"] == "ran" for r in self.records)
        cached = sum(r["status"].startswith("cached") for r in self.records)
        failed = f"; FAILED at {self.failed}: {self.message.splitlines()[0]}" if not self.ok else ""
        lines.append(f"{ran} ran, {cached} cached{failed} (run folder {self.run_dir})")
        return "\n".join(lines)


class Runner:
    def __init__(self, doc: dict, run_dir: str | Path, params: dict[str, str] | None = None, echo: bool = True,
                 corpus: str | Path | None = None):
        self.doc, self.run_dir = doc, Path(run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.mapping = path_map(self.run_dir, corpus)
        self.params = workflow_params(doc, params)
        self.invocations = expand(doc, self.params)
        self.order = plan(doc)
        self.state_dir = self.run_dir / STATE_DIR / "steps"
        self.log_dir = self.run_dir / "logs" / "pipeline"
        self.echo = echo
        producers = {}
        for name, invs in self.invocations.items():
            for inv in invs:
                for out in inv.outputs:
                    producers[out] = name
        self.producers = producers
        self._subcommands: set[str] | None = None

    def local(self, p: str) -> Path:
        return Path(to_local(p, self.mapping))

    def key(self, inv: Invocation) -> str:
        ins = {p: content_hash(self.local(p)) for p in inv.inputs + inv.optional}
        return hashlib.sha256(json.dumps({"argv": inv.argv, "inputs": ins}, sort_keys=True).encode()).hexdigest()

    def _stamp(self, inv: Invocation) -> Path:
        return self.state_dir / f"{inv.label}.json"

    def cached(self, inv: Invocation, key: str) -> bool:
        stamp = self._stamp(inv)
        if not stamp.exists():
            return False
        old = io.read_json(stamp)
        return old.get("key") == key and all(content_hash(self.local(p)) == h for p, h in old["outputs"].items())

    def check_inputs(self, inv: Invocation) -> None:
        for p in inv.inputs:
            if not self.local(p).exists():
                src = self.producers.get(p)
                how = (f"it is produced by step `{src}`: run `python -m helpers pipeline run --until {src}` "
                       "(or the whole pipeline)" if src else "it is a source of the pipeline: put it there")
                raise PipelineError(f"step `{inv.task}`: input {p} (here {self.local(p)}) is missing; {how}.")

    def _check_subcommand(self, inv: Invocation) -> None:
        if inv.argv[:3] != ["python", "-m", "helpers"] or len(inv.argv) < 4:
            return
        if self._subcommands is None:
            self._subcommands = _registered_subcommands()
        if inv.argv[3] not in self._subcommands:
            hint = (" The gate can decide without it only through the explicit, logged setting "
                    "`--set judge=skip`." if inv.argv[3] == "judge" else "")
            raise PipelineError(f"step `{inv.task}` runs `python -m helpers {inv.argv[3]}`, but this checkout has no "
                                f"subcommand `{inv.argv[3]}` (not registered in helpers/cli.py).{hint}")

    def execute(self, inv: Invocation, key: str) -> float:
        self.check_inputs(inv)
        self._check_subcommand(inv)
        attempt = self.state_dir / f"{inv.label}.attempt"
        if attempt.exists() and attempt.read_text() != key:       # inputs changed since the interrupted try
            for p in inv.state:
                local = self.local(p)
                if local.is_dir():
                    import shutil

                    shutil.rmtree(local)
                elif local.exists():
                    local.unlink()
        io.write_text(attempt, key)
        before = {p: content_hash(self.local(p)) for p in inv.inputs + inv.optional}
        argv = [sys.executable if i == 0 and a == "python" else to_local(a, self.mapping)
                for i, a in enumerate(inv.argv)]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{inv.label}.log"
        t0 = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            fh.write("$ " + " ".join(argv) + "\n")
            fh.flush()
            rc = subprocess.run(argv, cwd=paths.ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        seconds = time.perf_counter() - t0
        after = {p: content_hash(self.local(p)) for p in before}
        touched = [p for p in before if before[p] != after[p]]
        if touched:
            raise PipelineError(f"step `{inv.task}` changed its input(s) {touched}; steps must only write outputs.")
        if rc != 0:
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
            raise PipelineError(f"step `{inv.task}` exited with {rc} (log: {log}); its inputs are unchanged, rerun "
                                f"the same command to resume.\n{tail}")
        missing = [p for p in inv.outputs if not self.local(p).exists()]
        if missing:
            raise PipelineError(f"step `{inv.task}` succeeded but did not write {missing} (log: {log})")
        io.write_json(self._stamp(inv), {"key": key, "argv": inv.argv, "seconds": round(seconds, 2),
                                         "outputs": {p: content_hash(self.local(p)) for p in inv.outputs}})
        attempt.unlink()
        return seconds

    def selected(self, until: str | None, only: str | None) -> list[str]:
        for name in (until, only):
            if name and name not in self.invocations:
                raise PipelineError(f"no step {name!r}; the steps are {', '.join(self.order)}")
        if only:
            return [only]
        if until:
            graph = task_edges(self.doc)
            keep, stack = {until}, [until]
            while stack:
                for dep in graph[stack.pop()]:
                    if dep not in keep:
                        keep.add(dep)
                        stack.append(dep)
            return [n for n in self.order if n in keep]
        return list(self.order)

    def run(self, until: str | None = None, only: str | None = None, force: list[str] | None = None) -> RunResult:
        result = RunResult(self.run_dir)
        force = set(force or [])
        for name in self.selected(until, only):
            for inv in self.invocations[name]:
                t0 = time.perf_counter()
                try:
                    if inv.when is not None and not evaluate_when(inv.when):
                        status = f"skipped (when {inv.when})"
                    else:
                        key = self.key(inv)
                        if name not in force and self.cached(inv, key):
                            status = "cached"
                        else:
                            self.execute(inv, key)
                            status = "ran"
                except PipelineError as exc:
                    result.records.append({"task": inv.label, "status": "failed", "seconds": time.perf_counter() - t0})
                    result.ok, result.failed, result.message = False, inv.label, str(exc)
                    self._say(f"{inv.label:<14} FAILED\n{exc}")
                    break
                result.records.append({"task": inv.label, "status": status, "seconds": time.perf_counter() - t0})
                self._say(f"{inv.label:<14} {status:<22} {result.records[-1]['seconds']:6.1f} s")
            if not result.ok:
                break
        io.write_json(self.run_dir / STATE_DIR / "last-run.json",
                      {"ok": result.ok, "failed": result.failed, "message": result.message,
                       "records": result.records, "params": self.params})
        if not only and not until:
            self.exit_handler("Succeeded" if result.ok else "Failed")
        return result

    def exit_handler(self, status: str) -> None:
        """Argo's onExit: the same template, with {{workflow.status}}."""
        name = self.doc["spec"].get("onExit")
        if not name:
            return
        c = templates(self.doc)[name]["container"]
        values = {**self.params, "workflow.status": status}
        argv = [_subst(a, values) for a in c["command"] + c.get("args", [])]
        argv = [sys.executable if i == 0 and a == "python" else to_local(a, self.mapping) for i, a in enumerate(argv)]
        rc = subprocess.run(argv, cwd=paths.ROOT, capture_output=True, text=True)
        self._say(f"{'exit handler':<14} {'ran' if rc.returncode == 0 else 'FAILED: ' + rc.stderr[-300:]}")

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)


def run(doc: dict, run_dir: str | Path, params: dict[str, str] | None = None, until: str | None = None,
        only: str | None = None, force: list[str] | None = None, echo: bool = True,
        corpus: str | Path | None = None) -> RunResult:
    return Runner(doc, run_dir, params, echo=echo, corpus=corpus).run(until=until, only=only, force=force)


# --------------------------------------------------------------------------- the run report
def _read(path: Path):
    try:
        return io.read_json(path) if path.exists() else None
    except (OSError, ValueError):
        return None


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def report_markdown(run_dir: str | Path, status: str) -> str:
    """The run in Markdown: steps, train, evaluate, judge, gate decision, registry (what exists of it)."""
    from . import gate

    run_dir = Path(run_dir)
    lines = [f"# Pipeline-Lauf: {status}", ""]
    last = _read(run_dir / STATE_DIR / "last-run.json")
    if last:
        lines += ["## Schritte", "", "| Schritt | Status | Sekunden |", "|---|---|---|"]
        lines += [f"| {r['task']} | {r['status']} | {r['seconds']:.1f} |" for r in last["records"]]
        if last.get("failed"):
            lines += ["", f"Abgebrochen bei `{last['failed']}`: {last['message'].splitlines()[0]}"]
        lines.append("")
    info = _read(run_dir / "adapters" / "candidate" / "training_info.json")
    if info:
        lines += ["## Training", "", "| Kennzahl | Wert |", "|---|---|"]
        lines += [f"| {k} | {_fmt(info.get(k))} |" for k in ("max_steps", "train_examples", "loss_first", "loss_last",
                                                             "eval_loss_last", "seconds")]
        lines.append("")
    metrics = _read(run_dir / "eval" / "metrics.json")
    if metrics:
        variants = list(metrics["summary"])
        lines += ["## Evaluation", "", "| Kennzahl | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        for m in ("stopped", "refusal_correct", "false_refusal", "grounded", "token_f1"):
            lines.append(f"| {m} | " + " | ".join(f"{_fmt(metrics['summary'][v][m]['value'])} "
                                                    f"(n={metrics['summary'][v][m]['n']})" for v in variants) + " |")
        lines.append("")
    judge_path = run_dir / "eval" / "judge.jsonl"
    if judge_path.exists():
        share = gate.judge_grade_share(judge_path)
        lines += ["## Judge", "", f"Anteil Note A: {_fmt(share['value'])} (n={share['n']}, "
                                  f"nicht auswertbar: {share['unparsed']})", ""]
    decision = _read(run_dir / "gate.json")
    if decision:
        lines += ["## Gate", "", f"Entscheidung: **{decision['decision']}** (Judge: {decision['judge_policy']})", ""]
        lines += gate.table_markdown(decision) + [""]
    champion = _read(run_dir / "registry" / "champion.json")
    if champion:
        lines += ["## Registry", "", f"`{champion['name']}` Version {champion['version']} trägt den Alias "
                                     f"`{champion['alias']}` ({champion['path']})", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, status: str, output: str | Path) -> Path:
    return io.write_text(output, report_markdown(run_dir, status))
