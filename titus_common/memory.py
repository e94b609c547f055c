"""Giving memory back to the host after a burst of work has ended (a finished job evicted, a batch of
tasks forgotten): a full collection, then glibc's `malloc_trim(0)`, which returns the freed heap pages
to the kernel (free() alone keeps them in the process: RSS would stay at its high-water mark)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

__all__ = ["freeze_imported", "give_back", "limit_arenas"]

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
M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas (default 8 per core): a daemon whose thread pools grow in a burst
    otherwise keeps one arena per busy thread, each holding freed pages at its own high-water mark
    (the usual MALLOC_ARENA_MAX=2 of Python services). Call before the threads start. False on a
    libc without mallopt (musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, count))


def freeze_imported() -> int:
    """Move every object alive now (the imported code: modules, classes, functions) out of reach of
    the cyclic collector (`gc.freeze`), so a full collection (give_back's, and the automatic ones)
    scans only what the daemon made since. Call once, after the imports and before any state is
    built: frozen cyclic garbage is never collected. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def give_back() -> None:
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
