"""cffi (API mode) builder for the cpuset placement core.

Packaging: setup.py passes ``cffi_modules=["native/build_cpuset.py:ffibuilder"]``;
setuptools runs this file from the repository root and compiles the extension
``cpuset._cpuset_core`` into the wheel.

Development: ``python native/build_cpuset.py`` compiles the module in place
(``cpuset/_cpuset_core.<abi>.so``); :func:`build_inplace` does the same from Python
(the tests call it when the module is missing).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from cffi import FFI

NATIVE_DIR = Path(__file__).resolve().parent
REPO_ROOT = NATIVE_DIR.parent
MODULE_NAME = "cpuset._cpuset_core"
EXTRA_COMPILE_ARGS = ["-std=c11", "-O2", "-Wall", "-Wextra"]

CDEF = """
#define CS_MAX_CPUS ...
#define CS_MAX_WORKLOADS ...
#define CS_MAX_THREADS_PER_CORE ...
#define CS_OK ...
#define CS_EINVAL ...
#define CS_ETOOBIG ...
#define CS_ENOSPACE ...
#define CS_EEXIST ...
#define CS_ENOENT ...
#define CS_ECAP ...
#define CS_ETOPO ...
#define CS_ENOMEM ...
#define CS_EBUFSZ ...
#define CS_EBUSY ...
#define CS_STATIC ...
#define CS_BURST ...
#define CS_OWNER_FREE ...
#define CS_OWNER_RESERVED ...
#define CS_OWNER_OFFLINE ...
#define CS_POOL_ALL_IDLE ...
#define CS_POOL_AVOID_STATIC_SIBLINGS ...

typedef struct {
    int32_t online;
    int32_t reserved;
    int32_t socket;
    int32_t node;
    int32_t l3;
    int32_t core;
} cs_cpu_desc;

typedef struct {
    int64_t workload;
    int32_t from_cpu;
    int32_t to_cpu;
} cs_move;

typedef struct cs_state cs_state;

int cs_init(cs_state **out, const cs_cpu_desc *cpus, int32_t ncpus);
void cs_destroy(cs_state *st);
int cs_allocate(cs_state *st, int64_t id, int32_t ncpus, int32_t cls, int32_t *out,
                int32_t cap, int32_t *nout);
int cs_assign(cs_state *st, int64_t id, int32_t cls, const int32_t *cpus, int32_t n);
int cs_release(cs_state *st, int64_t id);
int cs_get(const cs_state *st, int64_t id, int32_t *cls, int32_t *out, int32_t cap,
           int32_t *nout);
int cs_burst_pool(const cs_state *st, int32_t flags, int32_t *out, int32_t cap,
                  int32_t *nout);
int cs_rebalance(cs_state *st, int32_t max_moves, int32_t apply, cs_move *out, int32_t cap,
                 int32_t *nout, int64_t *cost_before, int64_t *cost_after);
int cs_owners(const cs_state *st, int64_t *out, int32_t cap);
int64_t cs_cost(cs_state *st);
int32_t cs_num_cpus(const cs_state *st);
int32_t cs_num_workloads(const cs_state *st);
int32_t cs_free_cpus(const cs_state *st);
int32_t cs_usable_cpus(const cs_state *st);
const char *cs_strerror(int32_t code);
"""


def _source_dir() -> str:
    """native/ relative to the working directory when possible (setuptools prefers
    relative source paths), absolute otherwise."""
    try:
        rel = os.path.relpath(NATIVE_DIR)
    except ValueError:  # different drive (Windows); not expected on Linux
        return str(NATIVE_DIR)
    return str(NATIVE_DIR) if rel.startswith("..") else rel


def make_builder(src: str | None = None) -> FFI:
    """A fresh FFI builder; ``src`` is the directory holding the C sources."""
    if src is None:
        src = _source_dir()
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        MODULE_NAME,
        '#include "cpuset_core.h"',
        sources=[os.path.join(src, "cpuset_core.c")],
        include_dirs=[src],
        extra_compile_args=list(EXTRA_COMPILE_ARGS),
    )
    return builder


ffibuilder = make_builder()


def build_inplace(dest_dir: Path | None = None, verbose: bool = False) -> Path:
    """Compile the extension in a temporary directory and copy it into ``cpuset/``.

    Returns the path of the installed shared object.
    """
    dest = Path(dest_dir) if dest_dir is not None else REPO_ROOT / "cpuset"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cpuset-build-") as tmp:
        # absolute sources: the temporary directory is the compiler's working directory
        builder = make_builder(str(NATIVE_DIR))
        built = Path(builder.compile(tmpdir=tmp, verbose=verbose))
        target = dest / built.name
        tmp_target = target.with_name(target.name + ".tmp")
        shutil.copy2(built, tmp_target)
        os.replace(tmp_target, target)  # atomic: a running process keeps the old inode
    return target


if __name__ == "__main__":
    path = build_inplace(verbose="-v" in sys.argv[1:])
    print(f"built {path}")
