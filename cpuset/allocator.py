"""Typed Python API over the C placement core.

>>> alloc = CpuAllocator(load_topology("/sys", reserved="0,48"))
>>> alloc.allocate("task-1", 4).cpus            # static: whole cores, one L3/NUMA node
>>> alloc.allocate("batch-7", 2, WorkloadClass.BURST)
>>> alloc.cpuset("batch-7")                      # its minimum + every idle CPU
>>> plan = alloc.rebalance(max_moves=8)          # moves at most 8 CPUs, only if better
>>> text = alloc.checkpoint(); CpuAllocator.restore(topology, text)

Every C return code becomes an exception from :mod:`cpuset.errors`. Workload ids are
strings (container ids); the core sees stable integer handles. Instances are not
thread-safe; the agent serialises calls.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from cpuset.errors import (
    CapacityExceeded,
    CheckpointError,
    CpuBusy,
    CpusetError,
    DuplicateWorkload,
    InsufficientCpus,
    InvalidRequest,
    NativeUnavailable,
    RequestTooLarge,
    TopologyError,
    UnknownWorkload,
)
from cpuset.topology import Topology, format_cpulist, parse_cpulist

CHECKPOINT_VERSION = 1


def load_native() -> Any:
    """Import the compiled core (``cpuset._cpuset_core``) or raise NativeUnavailable."""
    try:
        return importlib.import_module("cpuset._cpuset_core")
    except ImportError as exc:
        raise NativeUnavailable(
            "cpuset._cpuset_core is not built; run `python native/build_cpuset.py` "
            f"or `pip install .` ({exc})"
        ) from exc


class WorkloadClass(str, Enum):
    STATIC = "static"
    BURST = "burst"


class Placement(NamedTuple):
    workload: str
    cls: WorkloadClass
    cpus: tuple[int, ...]  # exclusive CPUs (the guaranteed minimum for burst)

    @property
    def cpulist(self) -> str:
        return format_cpulist(self.cpus)


class Move(NamedTuple):
    workload: str
    from_cpu: int
    to_cpu: int


@dataclass(frozen=True)
class RebalancePlan:
    moves: tuple[Move, ...]
    cost_before: int
    cost_after: int
    applied: bool

    @property
    def cpus_moved(self) -> int:
        return len(self.moves)

    @property
    def workloads(self) -> tuple[str, ...]:
        return tuple(sorted({m.workload for m in self.moves}))

    @property
    def improves(self) -> bool:
        return self.cost_after < self.cost_before


def _cls_code(lib: Any, cls: WorkloadClass | str) -> tuple[WorkloadClass, int]:
    try:
        wc = WorkloadClass(cls)
    except ValueError:
        raise InvalidRequest(f"unknown workload class {cls!r}") from None
    return wc, (lib.CS_STATIC if wc is WorkloadClass.STATIC else lib.CS_BURST)


class CpuAllocator:
    """Placement state for one host."""

    def __init__(self, topology: Topology) -> None:
        mod = load_native()
        self._ffi: Any = mod.ffi
        self._lib: Any = mod.lib
        self.topology = topology
        n = topology.num_cpu_ids
        if n > int(self._lib.CS_MAX_CPUS):
            raise TopologyError(f"{n} CPU ids exceed the core's cap of {self._lib.CS_MAX_CPUS}")
        descs = self._ffi.new("cs_cpu_desc[]", n)
        for cpu, info in topology.cpus.items():
            d = descs[cpu]
            d.online = 1
            d.reserved = 1 if cpu in topology.reserved else 0
            d.socket = info.socket
            d.node = info.node
            d.l3 = info.l3
            d.core = info.core
        pp = self._ffi.new("cs_state **")
        rc = self._lib.cs_init(pp, descs, n)
        if rc != 0:
            raise TopologyError(f"placement core rejected the topology: {self._err(rc)}")
        self._st: Any = self._ffi.gc(pp[0], self._lib.cs_destroy)
        self._n = n
        self._usable = len(topology.usable)
        self._cls_map: dict[object, tuple[WorkloadClass, int]] = {
            WorkloadClass.STATIC: (WorkloadClass.STATIC, int(self._lib.CS_STATIC)),
            WorkloadClass.BURST: (WorkloadClass.BURST, int(self._lib.CS_BURST)),
        }
        self._unpack = self._ffi.unpack
        self._buf: Any = self._ffi.new("int32_t[]", n)
        self._nout: Any = self._ffi.new("int32_t *")
        self._cls_out: Any = self._ffi.new("int32_t *")
        self._handles: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._classes: dict[str, WorkloadClass] = {}
        self._next_handle = 0

    # ------------------------------------------------------------------ helpers
    def _err(self, rc: int) -> str:
        return str(self._ffi.string(self._lib.cs_strerror(rc)).decode())

    def _raise(self, rc: int, what: str) -> None:
        lib = self._lib
        msg = f"{what}: {self._err(rc)}"
        by_code: dict[int, type[CpusetError]] = {
            lib.CS_ETOOBIG: RequestTooLarge,
            lib.CS_ENOSPACE: InsufficientCpus,
            lib.CS_EEXIST: DuplicateWorkload,
            lib.CS_ENOENT: UnknownWorkload,
            lib.CS_ECAP: CapacityExceeded,
            lib.CS_EBUSY: CpuBusy,
            lib.CS_ETOPO: TopologyError,
            lib.CS_EINVAL: InvalidRequest,
        }
        exc = by_code.get(rc, CpusetError)
        raise exc(msg)

    @staticmethod
    def _check_id(workload: str) -> None:
        if not isinstance(workload, str) or not workload:
            raise InvalidRequest(f"workload id must be a non-empty string, got {workload!r}")

    @staticmethod
    def _check_count(ncpus: int) -> None:
        if not isinstance(ncpus, int) or isinstance(ncpus, bool):
            raise InvalidRequest(f"CPU count must be an integer, got {ncpus!r}")
        if ncpus <= 0:
            raise InvalidRequest(f"CPU count must be positive, got {ncpus}")

    def _handle_for_new(self, workload: str) -> int:
        if workload in self._handles:
            raise DuplicateWorkload(f"workload {workload!r} already holds CPUs")
        return self._next_handle

    def _commit(self, workload: str, handle: int, wc: WorkloadClass) -> None:
        self._handles[workload] = handle
        self._names[handle] = workload
        self._classes[workload] = wc
        self._next_handle = max(self._next_handle, handle + 1)

    # ------------------------------------------------------------------ API
    def allocate(
        self, workload: str, ncpus: int, cls: WorkloadClass | str = WorkloadClass.STATIC
    ) -> Placement:
        """Place a new workload. For burst, ``ncpus`` is its guaranteed minimum."""
        # hot path (placement latency is measured through this method): cheap checks first
        if type(workload) is not str or not workload:
            self._check_id(workload)
        if type(ncpus) is not int or ncpus <= 0:
            self._check_count(ncpus)
        entry = self._cls_map.get(cls)  # str-Enum members hash like their values
        if entry is None:
            wc, code = _cls_code(self._lib, cls)
        else:
            wc, code = entry
        usable = self._usable
        if ncpus > usable:
            raise RequestTooLarge(
                f"allocate {workload!r}: {ncpus} CPUs requested, the host has {usable} usable"
            )
        if workload in self._handles:
            raise DuplicateWorkload(f"workload {workload!r} already holds CPUs")
        handle = self._next_handle
        rc = self._lib.cs_allocate(self._st, handle, ncpus, code, self._buf, self._n, self._nout)
        if rc != 0:
            self._raise(rc, f"allocate {workload!r} ({ncpus} CPUs)")
        self._handles[workload] = handle
        self._names[handle] = workload
        self._classes[workload] = wc
        self._next_handle = handle + 1
        return Placement(workload, wc, tuple(self._unpack(self._buf, ncpus)))

    def assign(
        self, workload: str, cpus: Iterable[int], cls: WorkloadClass | str = WorkloadClass.STATIC
    ) -> Placement:
        """Record an exact placement (restore, or adopt what a container already has)."""
        self._check_id(workload)
        wc, code = _cls_code(self._lib, cls)
        ids = list(cpus)
        if not ids:
            raise InvalidRequest(f"assign {workload!r}: empty CPU list")
        for c in ids:
            if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < self._n:
                raise InvalidRequest(f"assign {workload!r}: {c!r} is not a CPU id of this host")
        handle = self._handle_for_new(workload)
        arr = self._ffi.new("int32_t[]", ids)
        rc = self._lib.cs_assign(self._st, handle, code, arr, len(ids))
        if rc != 0:
            self._raise(rc, f"assign {workload!r} ({format_cpulist(ids)})")
        self._commit(workload, handle, wc)
        return Placement(workload, wc, tuple(sorted(ids)))

    def release(self, workload: str) -> None:
        handle = self._handles.get(workload)
        if handle is None:
            raise UnknownWorkload(f"release: unknown workload {workload!r}")
        rc = self._lib.cs_release(self._st, handle)
        if rc != 0:  # pragma: no cover - the maps and the core agree
            self._raise(rc, f"release {workload!r}")
        del self._handles[workload]
        del self._names[handle]
        del self._classes[workload]

    def get(self, workload: str) -> Placement:
        handle = self._handles.get(workload)
        if handle is None:
            raise UnknownWorkload(f"unknown workload {workload!r}")
        rc = self._lib.cs_get(self._st, handle, self._cls_out, self._buf, self._n, self._nout)
        if rc != 0:  # pragma: no cover
            self._raise(rc, f"get {workload!r}")
        return Placement(workload, self._classes[workload], tuple(self._buf[0 : self._nout[0]]))

    def __contains__(self, workload: object) -> bool:
        return workload in self._handles

    def __len__(self) -> int:
        return len(self._handles)

    def workloads(self) -> list[Placement]:
        """All placements, sorted by workload id."""
        owners = self.owners()
        held: dict[str, list[int]] = {}
        for cpu, w in owners.items():
            if w is not None:
                held.setdefault(w, []).append(cpu)
        return [
            Placement(w, self._classes[w], tuple(sorted(held.get(w, []))))
            for w in sorted(self._handles)
        ]

    def burst_pool(self, *, avoid_static_siblings: bool = False) -> tuple[int, ...]:
        """Idle CPUs (online, not reserved, not held) shared by all burst workloads."""
        flags = (
            self._lib.CS_POOL_AVOID_STATIC_SIBLINGS
            if avoid_static_siblings
            else self._lib.CS_POOL_ALL_IDLE
        )
        rc = self._lib.cs_burst_pool(self._st, flags, self._buf, self._n, self._nout)
        if rc != 0:  # pragma: no cover
            self._raise(rc, "burst pool")
        return tuple(self._buf[0 : self._nout[0]])

    def cpuset(self, workload: str, *, avoid_static_siblings: bool = False) -> tuple[int, ...]:
        """The cpuset to apply to the container: its CPUs, plus the burst pool for burst."""
        p = self.get(workload)
        if p.cls is WorkloadClass.STATIC:
            return p.cpus
        pool = self.burst_pool(avoid_static_siblings=avoid_static_siblings)
        return tuple(sorted(set(p.cpus) | set(pool)))

    def owners(self) -> dict[int, str | None]:
        """Online, non-reserved CPUs -> holding workload (None = free)."""
        out = self._ffi.new("int64_t[]", self._n)
        rc = self._lib.cs_owners(self._st, out, self._n)
        if rc != 0:  # pragma: no cover
            self._raise(rc, "owners")
        res: dict[int, str | None] = {}
        for cpu in range(self._n):
            o = int(out[cpu])
            if o >= 0:
                res[cpu] = self._names[o]
            elif o == self._lib.CS_OWNER_FREE:
                res[cpu] = None
        return res

    def free_cpus(self) -> frozenset[int]:
        return frozenset(c for c, w in self.owners().items() if w is None)

    def held_cpus(self) -> frozenset[int]:
        return frozenset(c for c, w in self.owners().items() if w is not None)

    def cost(self) -> int:
        """Rebalance objective (lower is better; 0 = every workload ideally placed)."""
        return int(self._lib.cs_cost(self._st))

    def rebalance(self, max_moves: int, *, apply: bool = True) -> RebalancePlan:
        """Move at most ``max_moves`` CPUs to lower the objective (socket excess, then NUMA
        excess, then L3 excess, then SMT sharing). A workload moves only when the objective
        strictly improves. With ``apply=False`` the state is left unchanged."""
        if not isinstance(max_moves, int) or isinstance(max_moves, bool) or max_moves < 0:
            raise InvalidRequest(f"max_moves must be a non-negative integer, got {max_moves!r}")
        cap = min(max_moves, 4 * self._n)
        moves = self._ffi.new("cs_move[]", max(cap, 1))
        before = self._ffi.new("int64_t *")
        after = self._ffi.new("int64_t *")
        rc = self._lib.cs_rebalance(
            self._st, cap, 1 if apply else 0, moves, cap, self._nout, before, after
        )
        if rc != 0:  # pragma: no cover
            self._raise(rc, "rebalance")
        out = tuple(
            Move(self._names[int(moves[i].workload)], int(moves[i].from_cpu), int(moves[i].to_cpu))
            for i in range(self._nout[0])
        )
        return RebalancePlan(out, int(before[0]), int(after[0]), apply and bool(out))

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self) -> str:
        """JSON document of the current assignments (restore with :meth:`restore`)."""
        doc = {
            "version": CHECKPOINT_VERSION,
            "topology": self.topology.fingerprint(),
            "online": format_cpulist(self.topology.online),
            "reserved": format_cpulist(self.topology.reserved),
            "next_handle": self._next_handle,
            "workloads": [
                {
                    "id": p.workload,
                    "class": p.cls.value,
                    "cpus": p.cpulist,
                    "handle": self._handles[p.workload],
                }
                for p in self.workloads()
            ],
        }
        return json.dumps(doc, sort_keys=True, indent=1)

    @classmethod
    def restore(
        cls, topology: Topology, data: str | Mapping[str, Any], *, strict_topology: bool = True
    ) -> CpuAllocator:
        """Rebuild an allocator from :meth:`checkpoint` output.

        With ``strict_topology`` the checkpoint must come from the same topology; without
        it, entries are re-validated against the new one (offline/reserved/overlapping CPUs
        raise CheckpointError).
        """
        try:
            doc = json.loads(data) if isinstance(data, str) else dict(data)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError("unsupported checkpoint version")
        if strict_topology and doc.get("topology") != topology.fingerprint():
            raise CheckpointError("checkpoint was taken on a different CPU topology")
        entries = doc.get("workloads")
        if not isinstance(entries, list):
            raise CheckpointError("checkpoint has no workload list")
        alloc = cls(topology)
        try:
            for e in sorted(entries, key=lambda e: int(e["handle"])):
                wid, wcls, cpus, handle = e["id"], e["class"], e["cpus"], int(e["handle"])
                if not isinstance(wid, str) or not isinstance(cpus, str) or handle < 0:
                    raise CheckpointError(f"malformed checkpoint entry {e!r}")
                if wid in alloc._handles or handle in alloc._names:
                    raise CheckpointError(f"duplicate checkpoint entry {wid!r}")
                alloc._next_handle = handle
                alloc.assign(wid, parse_cpulist(cpus, what=f"checkpoint {wid}"), wcls)
            alloc._next_handle = max(alloc._next_handle, int(doc.get("next_handle", 0)))
        except CheckpointError:
            raise
        except (CpusetError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not apply: {exc}") from None
        return alloc
