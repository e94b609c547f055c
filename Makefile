# titus-node: host set-up, local run, tests.
#
#   make setup      host packages, dockerd, local registry + test image, .venv
#   make run        setup, then scheduler + agent in the foreground (Ctrl-C stops)
#   make test       setup, then pytest  (extra arguments: PYTEST_ARGS='-k foo -x')
#   make typecheck  mypy (strict, settings in pyproject.toml)
#   make bench      setup, then bench/launch.py --quick  (BENCH_ARGS to add more)
#   make clean      remove .venv and build artefacts (not /var/lib/titus*)
#
# TITUS_SKIP_APT=1 skips the apt part of setup (see scripts/setup-host.sh).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: help setup setup-host venv run test typecheck bench clean

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

setup:
	bash scripts/setup-host.sh
	bash scripts/venv.sh

setup-host:
	bash scripts/setup-host.sh

venv:
	bash scripts/venv.sh

run: setup
	bash scripts/run-local.sh

test: setup
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

typecheck: venv
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/launch.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist .mypy_cache .pytest_cache .hypothesis .eggs
	find . -path ./.git -prune -o -name '*.egg-info' -prune -exec rm -rf {} +
	find . -path ./.git -prune -o -name __pycache__ -prune -exec rm -rf {} +
	find . -path ./.git -prune -o -type f \( -name '*.so' -o -name '*.o' -o -name '*.a' \) -exec rm -f {} +
	rm -rf native/build
