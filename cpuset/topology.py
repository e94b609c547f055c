"""CPU topology model and discovery from a sysfs tree.

The sysfs root is configurable (default ``/sys``) so tests and the benchmark load
generated or recorded trees. Discovery starts from ``devices/system/cpu/online``,
intersects every mask with it, and tolerates missing ``topology/`` directories for
offline CPUs (the kernel removes them on hot-unplug). Core identity is the lowest online
sibling id, never ``core_id`` (which repeats across packages) and never arithmetic on CPU
numbers. Missing or contradictory files raise :class:`TopologyError` naming the path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cpuset.errors import TopologyError

MAX_CPUS = 1024  # same cap as the C core (CS_MAX_CPUS)


# --------------------------------------------------------------------------- cpulist


def parse_cpulist(text: str, *, what: str = "cpulist") -> list[int]:
    """Parse the kernel cpulist format (``"0-3,8,10-11"``; empty string = no CPU)."""
    out: set[int] = set()
    text = text.strip()
    if not text:
        return []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise TopologyError(f"{what}: empty element in {text!r}")
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise TopologyError(f"{what}: not a cpulist: {text!r}") from None
        if lo < 0 or hi < lo:
            raise TopologyError(f"{what}: bad range {part!r}")
        if hi >= MAX_CPUS:
            raise TopologyError(f"{what}: CPU {hi} exceeds the cap of {MAX_CPUS} CPUs")
        out.update(range(lo, hi + 1))
    return sorted(out)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPU ids as a kernel cpulist (``[0,1,2,5] -> "0-2,5"``)."""
    ids = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class CpuInfo:
    """One online hardware thread."""

    cpu: int
    socket: int
    node: int
    l3: int  # lowest online CPU id of the L3 domain
    core: int  # lowest online CPU id of the physical core (unique host-wide)


@dataclass(frozen=True)
class Topology:
    """Online CPUs with their socket / NUMA node / L3 group / core, plus reserved CPUs."""

    cpus: Mapping[int, CpuInfo]
    num_cpu_ids: int
    reserved: frozenset[int] = frozenset()
    source: str = "synthetic"
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.cpus:
            raise TopologyError("topology has no online CPU")
        if self.num_cpu_ids > MAX_CPUS or max(self.cpus) >= self.num_cpu_ids:
            raise TopologyError(f"CPU ids must be < {min(self.num_cpu_ids, MAX_CPUS)}")
        bad = self.reserved - set(self.cpus)
        if bad:
            raise TopologyError(f"reserved CPUs are not online: {format_cpulist(bad)}")
        by_core: dict[int, CpuInfo] = {}
        for info in self.cpus.values():
            first = by_core.setdefault(info.core, info)
            if (first.socket, first.node, first.l3) != (info.socket, info.node, info.l3):
                raise TopologyError(
                    f"CPUs {first.cpu} and {info.cpu} share core {info.core} but not "
                    "socket/NUMA node/L3"
                )

    # --- views ---------------------------------------------------------------
    @property
    def online(self) -> frozenset[int]:
        return frozenset(self.cpus)

    @property
    def usable(self) -> frozenset[int]:
        """Online CPUs that are not reserved for the agent and system."""
        return frozenset(self.cpus) - self.reserved

    def _group(self, attr: str) -> dict[int, tuple[int, ...]]:
        groups: dict[int, list[int]] = {}
        for cpu in sorted(self.cpus):
            groups.setdefault(getattr(self.cpus[cpu], attr), []).append(cpu)
        return {k: tuple(v) for k, v in sorted(groups.items())}

    def sockets(self) -> dict[int, tuple[int, ...]]:
        return self._group("socket")

    def nodes(self) -> dict[int, tuple[int, ...]]:
        return self._group("node")

    def l3_groups(self) -> dict[int, tuple[int, ...]]:
        return self._group("l3")

    def cores(self) -> dict[int, tuple[int, ...]]:
        return self._group("core")

    def siblings(self, cpu: int) -> tuple[int, ...]:
        core = self.cpus[cpu].core
        return tuple(c for c in sorted(self.cpus) if self.cpus[c].core == core)

    @property
    def threads_per_core(self) -> int:
        return max(len(v) for v in self.cores().values())

    def describe(self) -> str:
        return (
            f"{len(self.cpus)} online CPUs ({self.num_cpu_ids} ids), "
            f"{len(self.sockets())} socket(s), {len(self.nodes())} NUMA node(s), "
            f"{len(self.l3_groups())} L3 group(s), {len(self.cores())} cores, "
            f"reserved {format_cpulist(self.reserved) or '-'}"
        )

    def fingerprint(self) -> str:
        """Stable hash of the layout (used to validate checkpoints)."""
        doc = {
            "n": self.num_cpu_ids,
            "cpus": [
                [i.cpu, i.socket, i.node, i.l3, i.core]
                for i in (self.cpus[c] for c in sorted(self.cpus))
            ],
            "reserved": sorted(self.reserved),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def with_reserved(self, reserved: Iterable[int]) -> Topology:
        return Topology(
            cpus=self.cpus,
            num_cpu_ids=self.num_cpu_ids,
            reserved=frozenset(reserved),
            source=self.source,
            notes=self.notes,
        )


# --------------------------------------------------------------------------- discovery


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise TopologyError(f"missing file {path}") from None
    except OSError as exc:
        raise TopologyError(f"cannot read {path}: {exc}") from None


def _read_int(path: Path) -> int:
    text = _read(path).strip()
    try:
        return int(text)
    except ValueError:
        raise TopologyError(f"{path}: expected an integer, got {text!r}") from None


def _cpu_dirs(cpu_root: Path) -> list[int]:
    ids: list[int] = []
    try:
        entries = os.listdir(cpu_root)
    except OSError as exc:
        raise TopologyError(f"cannot list {cpu_root}: {exc}") from None
    for name in entries:
        if name.startswith("cpu") and name[3:].isdigit():
            ids.append(int(name[3:]))
    return sorted(ids)


def _l3_list(cpu_dir: Path) -> str | None:
    """shared_cpu_list of the level-3 unified cache, or None if the CPU has no cache info."""
    cache = cpu_dir / "cache"
    if not cache.is_dir():
        return None
    indexes = sorted(
        (p for p in cache.iterdir() if p.name.startswith("index") and p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    for idx in indexes:
        level_f = idx / "level"
        if level_f.exists():
            if _read(level_f).strip() != "3":
                continue
            type_f = idx / "type"
            if type_f.exists() and _read(type_f).strip() not in ("Unified", "unified"):
                continue
            return _read(idx / "shared_cpu_list")
        if idx.name == "index3":  # no level file: assume the common x86 layout
            return _read(idx / "shared_cpu_list")
    return None


def load_topology(
    sysfs_root: str | os.PathLike[str] = "/sys",
    reserved: Iterable[int] | str | None = None,
    *,
    include_isolated: bool = False,
) -> Topology:
    """Discover the CPU topology below ``sysfs_root`` (``<root>/devices/system/...``).

    ``reserved`` (cpulist string or ids) are CPUs kept for the agent and system; offline
    reserved CPUs are ignored (noted in ``Topology.notes``), ids that do not exist are an
    error. ``include_isolated`` also reserves the kernel's ``isolcpus`` (``cpu/isolated``).
    """
    root = Path(sysfs_root)
    cpu_root = root / "devices" / "system" / "cpu"
    node_root = root / "devices" / "system" / "node"
    if not cpu_root.is_dir():
        raise TopologyError(f"missing directory {cpu_root}")
    online = set(parse_cpulist(_read(cpu_root / "online"), what=str(cpu_root / "online")))
    if not online:
        raise TopologyError(f"{cpu_root / 'online'}: no online CPU")
    present_dirs = set(_cpu_dirs(cpu_root))
    missing = online - present_dirs
    if missing:
        raise TopologyError(
            f"CPUs {format_cpulist(missing)} are online but have no {cpu_root}/cpuN directory"
        )
    num_ids = max(present_dirs | online) + 1
    if num_ids > MAX_CPUS:
        raise TopologyError(f"{num_ids} CPU ids exceed the cap of {MAX_CPUS}")
    notes: list[str] = []

    # --- per CPU: package and SMT siblings
    package: dict[int, int] = {}
    sibs: dict[int, frozenset[int]] = {}
    for cpu in sorted(online):
        tdir = cpu_root / f"cpu{cpu}" / "topology"
        if not tdir.is_dir():
            raise TopologyError(f"online CPU {cpu} has no {tdir} directory")
        pkg = _read_int(tdir / "physical_package_id")
        if pkg < -1:
            raise TopologyError(f"{tdir / 'physical_package_id'}: invalid id {pkg}")
        package[cpu] = max(pkg, 0)  # -1 = unknown: one package
        sib_file = tdir / "core_cpus_list"
        if not sib_file.exists():
            sib_file = tdir / "thread_siblings_list"
        s = frozenset(parse_cpulist(_read(sib_file), what=str(sib_file))) & online
        if cpu not in s:
            raise TopologyError(f"{sib_file} does not contain CPU {cpu} itself")
        sibs[cpu] = s
    for cpu, s in sibs.items():
        for other in s:
            if sibs[other] != s:
                raise TopologyError(
                    f"contradictory SMT siblings: cpu{cpu} lists {format_cpulist(s)}, "
                    f"cpu{other} lists {format_cpulist(sibs[other])}"
                )
            if package[other] != package[cpu]:
                raise TopologyError(
                    f"SMT siblings cpu{cpu} and cpu{other} are in different packages"
                )

    # --- L3 groups
    l3: dict[int, frozenset[int]] = {}
    without_l3: list[int] = []
    for cpu in sorted(online):
        text = _l3_list(cpu_root / f"cpu{cpu}")
        if text is None:
            without_l3.append(cpu)
            continue
        grp = frozenset(parse_cpulist(text, what=f"cpu{cpu} L3 shared_cpu_list")) & online
        if cpu not in grp:
            raise TopologyError(f"cpu{cpu}: L3 shared_cpu_list does not contain the CPU")
        l3[cpu] = grp
    if without_l3 and l3:
        raise TopologyError(
            f"CPUs {format_cpulist(without_l3)} have no L3 cache information while "
            f"others do"
        )
    if not l3:
        notes.append("no L3 cache information: using the package as the L3 group")
        for cpu in online:
            l3[cpu] = frozenset(c for c in online if package[c] == package[cpu])
    for cpu, grp in l3.items():
        for other in grp:
            if l3[other] != grp:
                raise TopologyError(
                    f"contradictory L3 groups: cpu{cpu} lists {format_cpulist(grp)}, "
                    f"cpu{other} lists {format_cpulist(l3[other])}"
                )
        if not sibs[cpu] <= grp:
            raise TopologyError(f"cpu{cpu}: SMT siblings are not in its L3 group")

    # --- NUMA nodes
    node_of: dict[int, int] = {}
    node_dirs: list[int] = []
    if node_root.is_dir():
        for name in os.listdir(node_root):
            if name.startswith("node") and name[4:].isdigit():
                node_dirs.append(int(name[4:]))
    if not node_dirs:
        notes.append("no NUMA information: one node")
        node_of = dict.fromkeys(online, 0)
    else:
        for nid in sorted(node_dirs):
            f = node_root / f"node{nid}" / "cpulist"
            for cpu in parse_cpulist(_read(f), what=str(f)):
                if cpu not in online:
                    continue
                if cpu in node_of:
                    raise TopologyError(f"cpu{cpu} is in NUMA nodes {node_of[cpu]} and {nid}")
                node_of[cpu] = nid
        lost = online - set(node_of)
        if lost:
            raise TopologyError(f"online CPUs {format_cpulist(lost)} belong to no NUMA node")
    for cpu, s in sibs.items():
        if any(node_of[o] != node_of[cpu] for o in s):
            raise TopologyError(f"cpu{cpu}: SMT siblings are in different NUMA nodes")
    node_members: dict[int, set[int]] = {}
    for cpu, nid in node_of.items():
        node_members.setdefault(nid, set()).add(cpu)
    for grp in set(l3.values()):
        touched = {node_of[o] for o in grp}
        # either the L3 group lies in one node (AMD CCX, Intel without SNC) or it holds
        # whole nodes (Intel SNC); anything else does not nest
        if len(touched) > 1 and not all(node_members[t] <= grp for t in touched):
            raise TopologyError(
                f"L3 group {format_cpulist(grp)} and NUMA nodes {sorted(touched)} "
                "overlap without nesting"
            )

    # --- reserved CPUs
    res: set[int] = set()
    if isinstance(reserved, str):
        res.update(parse_cpulist(reserved, what="reserved CPUs"))
    elif reserved is not None:
        for c in reserved:
            if not isinstance(c, int) or isinstance(c, bool) or c < 0:
                raise TopologyError(f"reserved CPU {c!r} is not a CPU id")
            res.add(c)
    if include_isolated and (cpu_root / "isolated").exists():
        res.update(parse_cpulist(_read(cpu_root / "isolated"), what="cpu/isolated"))
    unknown = res - present_dirs - online
    if unknown:
        raise TopologyError(f"reserved CPUs {format_cpulist(unknown)} do not exist")
    offline_res = res - online
    if offline_res:
        notes.append(f"reserved CPUs {format_cpulist(offline_res)} are offline: ignored")
        res -= offline_res
    if res >= online:
        raise TopologyError("every online CPU is reserved")

    cpus = {
        cpu: CpuInfo(
            cpu=cpu,
            socket=package[cpu],
            node=node_of[cpu],
            l3=min(l3[cpu]),
            core=min(sibs[cpu]),
        )
        for cpu in sorted(online)
    }
    return Topology(
        cpus=cpus,
        num_cpu_ids=num_ids,
        reserved=frozenset(res),
        source=str(root),
        notes=tuple(notes),
    )


def topology_from_layout(
    layout: Iterable[tuple[int, int, int, int, int]],
    *,
    num_cpu_ids: int | None = None,
    reserved: Iterable[int] = (),
) -> Topology:
    """Build a topology from ``(cpu, socket, node, l3, core)`` rows (online CPUs only)."""
    cpus: dict[int, CpuInfo] = {}
    for cpu, sock, node, l3, core in layout:
        if cpu in cpus:
            raise TopologyError(f"CPU {cpu} listed twice")
        if min(cpu, sock, node, l3, core) < 0:
            raise TopologyError(f"negative id in layout row for CPU {cpu}")
        cpus[cpu] = CpuInfo(cpu=cpu, socket=sock, node=node, l3=l3, core=core)
    if not cpus:
        raise TopologyError("empty layout")
    n = num_cpu_ids if num_cpu_ids is not None else max(cpus) + 1
    return Topology(cpus=cpus, num_cpu_ids=n, reserved=frozenset(reserved))
