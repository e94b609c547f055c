# titus-node: host set-up, local run, tests.
#
#   make setup      host packages, dockerd, local registry + test image, .venv
#   make run        setup, then scheduler + agent in the foreground (Ctrl-C stops)
#   make test       setup, then pytest  (extra arguments: PYTEST_ARGS='-k foo -x')
#   make typecheck  mypy (strict, settings in pyproject.toml)
#   make bench      setup, then bench/launch.py --quick  (BENCH_ARGS to add more)
#   make wheels     build/wheelhouse from packaging/*.lock (the only networked packaging step)
#   make deb        dist/titus-node_*.deb, built offline with dpkg-buildpackage, lintian clean
#   make deb-cycle  install/reinstall/remove/purge the .deb in a clean Debian 12 tree
#   make image      dist/titus-node-host.raw: Debian 12 + kernel + docker.io + the .deb, GRUB for BIOS and UEFI
#   make vm-test    boot that image from its disk under QEMU (TCG): READY, a job, watchdog, live-restore, upgrade
#   make vm-smoke   the CI stage: boot it, agent READY, one batch job normal, poweroff (hard timeout)
#   make lock       regenerate packaging/requirements.lock from pyproject.toml
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

.PHONY: help setup setup-host venv run test typecheck bench clean wheels deb deb-cycle lock image vm-test vm-smoke

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

wheels:
	bash scripts/wheels.sh

deb:
	bash scripts/build-deb.sh

deb-cycle: deb
	bash scripts/deb-cycle.sh

lock:
	rm -rf build/lock-venv && /usr/bin/python3.11 -m venv build/lock-venv
	build/lock-venv/bin/pip install -q . systemd-python
	{ sed -n '1,2p' packaging/requirements.lock; build/lock-venv/bin/pip freeze --exclude titus-node; } > build/requirements.lock
	mv build/requirements.lock packaging/requirements.lock

image:
	bash scripts/build-image.sh

vm-test:
	flock /tmp/titus-vm.lock bash scripts/vm-test.sh

# QEMU itself runs under `timeout TITUS_VM_LIMIT` (600 s for the smoke); this outer one also bounds
# the script's own waits, and SIGKILLs it 20 s later.
vm-smoke:
	flock /tmp/titus-vm.lock timeout -k 20 660 bash scripts/vm-test.sh --smoke
