"""Build the C core with AddressSanitizer + UndefinedBehaviorSanitizer and run the random
driver (native/cpuset_fuzz.c) over random topologies and call sequences; also check the
strict warning build."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[2] / "native"
CC = os.environ.get("CC", "gcc")
SANFLAGS = ["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fno-omit-frame-pointer",
            "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def _need_cc() -> None:
    if shutil.which(CC) is None:
        pytest.skip(f"no C compiler ({CC})")


def test_strict_warnings() -> None:
    _need_cc()
    r = subprocess.run(
        [CC, "-std=c11", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion",
         "-Werror", "-fsyntax-only", str(NATIVE / "cpuset_core.c")],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr


def test_sanitized_random_driver(tmp_path: Path) -> None:
    _need_cc()
    exe = tmp_path / "cpuset_fuzz_asan"
    r = subprocess.run(
        [CC, *SANFLAGS, str(NATIVE / "cpuset_core.c"), str(NATIVE / "cpuset_fuzz.c"), "-o", str(exe)],
        capture_output=True, text=True,
    )
    if r.returncode != 0 and "sanitize" in r.stderr and "cannot find" in r.stderr:
        pytest.skip(f"sanitizer runtime not installed: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    iters = os.environ.get("CPUSET_FUZZ_ITERS", "400")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    for seed in ("1", "7919"):
        run = subprocess.run([str(exe), iters, seed], capture_output=True, text=True, env=env,
                             timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.startswith("ok:")
