"""Fixtures for the cpuset tests.

The compiled core is built on demand (native/build_cpuset.py) when it is missing; tests
that need it skip with the build error as the reason only if that build fails.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cpuset.errors import NativeUnavailable  # noqa: E402

_build_error: str | None = None


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_cpuset_builder", REPO_ROOT / "native" / "build_cpuset.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ensure_native() -> Any:
    global _build_error
    from cpuset.allocator import load_native

    try:
        return load_native()
    except NativeUnavailable:
        pass
    if _build_error is not None:
        pytest.skip(f"cpuset._cpuset_core cannot be built: {_build_error}")
    try:
        load_builder().build_inplace()
        importlib.invalidate_caches()
        return load_native()
    except Exception as exc:  # compiler missing, cffi missing, ...
        _build_error = f"{type(exc).__name__}: {exc}"
        pytest.skip(f"cpuset._cpuset_core cannot be built: {_build_error}")


@pytest.fixture(scope="session")
def native() -> Any:
    """The compiled module (built if missing; skip if it cannot be built)."""
    return _ensure_native()


def _fast_tmp_root() -> str | None:
    """/dev/shm when usable: generated sysfs trees are thousands of tiny files, and
    creating them on a disk-backed /tmp can take seconds per tree."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


@pytest.fixture
def sysfs_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory for a generated sysfs tree (memory-backed when possible)."""
    root = _fast_tmp_root()
    if root is None:
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="cpuset-sysfs-", dir=root)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
