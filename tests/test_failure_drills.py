"""Failure drills with real processes: a run killed with SIGKILL loses nothing and resumes where it stopped.

(`kill -9` of `generate --resume` mid-unit is drilled in tests/test_generation_resume.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import course, io, split

ROOT = Path(__file__).resolve().parent.parent


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "helpers", *args], cwd=ROOT, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the process ended before it could be killed"
        assert time.time() < deadline, "the process never reached the point to kill it"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)   # the whole process group, as an OOM killer or a node loss would
    proc.wait(timeout=60)


def test_kill_9_of_train_resumes_from_the_last_checkpoint(tmp_path):
    train_file = tmp_path / "train.jsonl"
    io.write_jsonl(train_file, split.gold_splits()["train"][:32])
    out = tmp_path / "adapters" / "drill"
    ckpts = out.parent / "drill.checkpoints"
    args = ["train", "--train", str(train_file), "--output", str(out), "--max-steps", "12", "--no-tracking"]
    first = _start(args, tmp_path / "first.log")
    _kill_when(first, lambda: any(p.name == "checkpoint-4" and (p / "trainer_state.json").exists()
                                  for p in ckpts.glob("checkpoint-*")))
    assert not (out / "adapter_config.json").exists()          # killed before the end: no adapter yet
    second = subprocess.run([sys.executable, "-m", "helpers", *args, "--resume"], cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    info = json.loads((out / "training_info.json").read_text())
    assert info["resumed_from"] and Path(info["resumed_from"]).name.startswith("checkpoint-")
    assert int(Path(info["resumed_from"]).name.split("-")[1]) >= 4 and info["global_step"] == 12


def test_a_course_run_killed_mid_notebook_resumes_with_from(tmp_path):
    run_dir = tmp_path / "run"
    state = run_dir / "course_state.json"
    first = _start(["course", "run", "--only", "01", "04", "--run-dir", str(run_dir), "--no-progress"],
                   tmp_path / "course.log")
    _kill_when(first, lambda: state.exists() and "01" in io.read_json(state)["notebooks"]
               and (run_dir / "logs" / "notebook-04.log").exists())
    done = io.read_json(state)["notebooks"]
    assert done["01"]["status"] == "ok" and "04" not in done            # 01 finished, 04 was cut off
    before = (run_dir / "notebooks" / "01-warum-self-hosting.ipynb").read_bytes()
    resumed = subprocess.run([sys.executable, "-m", "helpers", "course", "run", "--only", "01", "04", "--from", "04",
                              "--run-dir", str(run_dir), "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    notebooks = io.read_json(state)["notebooks"]
    assert notebooks["01"]["status"] == notebooks["04"]["status"] == "ok"
    assert (run_dir / "notebooks" / "01-warum-self-hosting.ipynb").read_bytes() == before   # not re-run
    assert course.check_metrics("04", io.read_json(run_dir / "metrics" / "04.json"), "mini") == []
