#!/usr/bin/env bash
# make wheels: build/wheelhouse with exactly the pinned wheels of packaging/*.lock (downloaded from
# PyPI, or built here when PyPI only has an sdist, e.g. systemd-python against libsystemd-dev),
# with Debian's own python3.11 so the wheels match the package's interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# PyPI only: no host pip config, no local wheel caches (they may hold wheels built elsewhere).
export PIP_CONFIG_FILE=/dev/null PIP_NO_CACHE_DIR=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_INDEX_URL
rm -rf build/wheelhouse build/wheel-venv
/usr/bin/python3.11 -m venv build/wheel-venv
# sdists (systemd-python) are built with the pinned backend, not whatever PyPI has today
build/wheel-venv/bin/python -m pip install -q -r packaging/build-requirements.lock
build/wheel-venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w build/wheelhouse \
    -r packaging/requirements.lock -r packaging/build-requirements.lock
touch build/wheelhouse/.complete
ls build/wheelhouse | wc -l | xargs echo "wheelhouse:"
