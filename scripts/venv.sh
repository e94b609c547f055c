#!/usr/bin/env bash
# Create/refresh the project virtualenv in .venv (editable install with the
# test extras). Idempotent: pip runs only when .venv is new or pyproject.toml
# (setup.py, setup.cfg) changed since the last successful install.
#
# Environment:
#   TITUS_PYTHON   interpreter used to create .venv (default: python3 on PATH)
#   TITUS_VENV     virtualenv directory            (default: <repo>/.venv)
#   TITUS_EXTRAS   extras to install               (default: test,journald)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

PYTHON=${TITUS_PYTHON:-python3}
VENV=${TITUS_VENV:-$REPO_ROOT/.venv}
EXTRAS=${TITUS_EXTRAS:-test,journald}
STAMP="$VENV/.installed-stamp"

log() { printf 'venv: %s\n' "$*" >&2; }
die() { printf 'venv: ERROR: %s\n' "$*" >&2; exit 1; }

[ -f pyproject.toml ] || [ -f setup.py ] || die "no pyproject.toml or setup.py in $REPO_ROOT"

# A venv whose interpreter is gone (e.g. pyenv version removed) is rebuilt.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "$VENV is broken, recreating it"
    rm -rf "$VENV"
fi

if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found on PATH"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$("$PYTHON" -V 2>&1) is too old, need >= 3.11 (set TITUS_PYTHON)"
    log "creating $VENV with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

need_install=0
if [ ! -f "$STAMP" ]; then
    need_install=1
else
    for f in pyproject.toml setup.py setup.cfg; do
        if [ -f "$f" ] && [ "$f" -nt "$STAMP" ]; then
            need_install=1
        fi
    done
fi

if [ "$need_install" = 1 ]; then
    target="."
    [ -n "$EXTRAS" ] && target=".[$EXTRAS]"
    log "pip install -e '$target'"
    rm -f "$STAMP"   # a failed or interrupted install is retried next time
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$target"
    touch "$STAMP"
    log "installed ($("$VENV/bin/python" -V 2>&1))"
else
    log "up to date ($VENV)"
fi
