# The two commands of the README: `make course` (whole course, CPU, offline) and `make test`.
# Both create or refresh the environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.course-env-stamp
PROFILE ?= mini

.PHONY: env course airgap test test-fast bench model clean-runs gpu-regression gpu-rehearsal bench-gpu

# GPU targets run with the Python of a GPU environment (`pip install -e ".[gpu,dev]"`), not the CPU venv.
GPU_PYTHON ?= python3

env: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints-cpu.txt scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)

course: env
	$(PY) -m helpers course run --profile $(PROFILE)

# the same course inside a network namespace with only loopback: leaving the machine is impossible
airgap: env
	$(PY) -m helpers course run --profile $(PROFILE) --airgap

test: env
	$(PY) -m pytest

test-fast: env
	$(PY) -m pytest -m "not course"

bench: env
	$(PY) -m helpers bench

model: env
	$(PY) -m helpers model build

clean-runs:
	rm -rf runs/

gpu-regression:
	$(GPU_PYTHON) -m helpers course run --profile gpu-smoke
	$(GPU_PYTHON) -m pytest tests/test_gpumem.py   # real out-of-memory failures (skipped without CUDA)

# Dress rehearsal of the workshop profiles: 7B shape, random weights, inside the card's memory (docs/gpu-regression.md)
gpu-rehearsal:
	$(GPU_PYTHON) -m helpers rehearsal run --profile l4
	$(GPU_PYTHON) -m helpers rehearsal run --profile t4

bench-gpu:
	$(GPU_PYTHON) -m helpers bench-gpu
