"""Giving memory back to the host after a burst of work has ended (a finished job evicted, a batch of
tasks forgotten): a full collection, then glibc's `malloc_trim(0)`, which returns the freed heap pages
to the kernel (free() alone keeps them in the process: RSS would stay at its high-water mark)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

__all__ = ["give_back"]

log = logging.getLogger("titus.memory")


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim with
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def give_back() -> None:
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
