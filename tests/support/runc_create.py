"""The titus runtime as the tests run it: scripts/titus-runc next to native/titus-runc-create.c
built with gcc (as scripts/setup-host.sh installs them), the Python oracle it replaced, and a
private mount namespace with a tmpfs over /run/titus/netns holding bind mounts that stand in for
pinned namespaces (the wrapper only checks that the path is a mount under that root), so nothing
of it is visible to the host or to the engine's users."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FRONT = REPO / "scripts" / "titus-runc"
SOURCE = REPO / "native" / "titus-runc-create.c"
ORACLE = Path(__file__).resolve().parent / "titus_runc_create_oracle.py"

# Inside the private mount namespace: <name> is a mount (so is <name>.user when listed).
NETNS_DIR = "/run/titus/netns/n1"
PINNED = f"{NETNS_DIR}/titus-0123456789abcdef"        # netns + .user both mounts
NO_USER = f"{NETNS_DIR}/titus-00000000000000ab"       # netns mounted, .user a plain file
PLAIN = f"{NETNS_DIR}/titus-00000000000000cd"         # a plain file: not pinned
LINK = f"{NETNS_DIR}/link-to-pinned"                  # a symlink to PINNED

SETUP = f"""set -e
mount --make-rprivate /
mount -t tmpfs titus-unit-test /run/titus/netns
mkdir -p {NETNS_DIR}
for f in {PINNED} {PINNED}.user {NO_USER} {NO_USER}.user {PLAIN}; do : > "$f"; done
for f in {PINNED} {PINNED}.user {NO_USER}; do mount --bind /dev/null "$f"; done
ln -s {PINNED} {LINK}
exec "$@"
"""


def build_runtime(directory: Path) -> Path:
    """The front and the C create side by side in `directory`; returns the front."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                    str(directory / "titus-runc-create"), str(SOURCE)], check=True, timeout=120)
    shutil.copy2(FRONT, directory / "titus-runc")
    return directory / "titus-runc"


def fake_runc(path: Path, out: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"$0 $*\" > {out}\n")
    path.chmod(0o755)
    return path


def in_private_mounts(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """argv run where the stand-in namespaces above exist (root only)."""
    os.makedirs("/run/titus/netns", exist_ok=True)
    return subprocess.run(["unshare", "--mount", "sh", "-c", SETUP, "sh", *argv],
                          capture_output=True, text=True, env=env, timeout=60)


@functools.cache
def built_front() -> Path:
    """One build per test process (removed at exit), for tests that just need a working runtime."""
    directory = Path(tempfile.mkdtemp(prefix="titus-runc-"))
    atexit.register(shutil.rmtree, directory, True)
    return build_runtime(directory)
