# The two commands of the README: `make course` (whole course, CPU, offline) and `make test`.
# Both create or refresh the environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.course-env-stamp
PROFILE ?= mini

.PHONY: env course test test-fast bench model clean-runs

env: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints-cpu.txt scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)

course: env
	$(PY) -m helpers course run --profile $(PROFILE)

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
