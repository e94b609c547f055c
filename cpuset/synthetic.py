"""Generated sysfs trees for the topologies of the placement issue (T1-T8).

The layouts follow ``shared/reference/cpu-placement.md`` section 7 (inferred, not captured
from real hardware): physical cores are numbered socket-major, then L3 group, then core;
with "split" numbering thread t of core k is CPU ``k + t * ncores`` (Linux on 2-socket
x86), with "adjacent" numbering it is ``k * threads + t``.

``write_sysfs`` writes only the files the discovery code reads plus a few neighbours
(``offline``, ``possible``, ``core_id``...), so tests exercise the parser, not a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cpuset.topology import Topology, format_cpulist, load_topology, topology_from_layout


@dataclass(frozen=True)
class SyntheticSpec:
    name: str
    sockets: int
    l3_per_socket: int
    cores_per_l3: int
    threads: int
    nodes_per_socket: int = 1
    numbering: str = "split"  # "split" (cpu, cpu + ncores) or "adjacent" (2k, 2k+1)
    offline: tuple[int, ...] = ()
    reserved: tuple[int, ...] = ()
    description: str = ""

    @property
    def ncores(self) -> int:
        return self.sockets * self.l3_per_socket * self.cores_per_l3

    @property
    def ncpus(self) -> int:
        return self.ncores * self.threads

    def rows(self) -> list[tuple[int, int, int, int, int, int]]:
        """``(cpu, socket, node, l3_index, core_index, thread)`` for every CPU id."""
        if self.l3_per_socket % self.nodes_per_socket and self.nodes_per_socket % self.l3_per_socket:
            raise ValueError("L3 groups and NUMA nodes must nest")
        out: list[tuple[int, int, int, int, int, int]] = []
        core_idx = 0
        for s in range(self.sockets):
            for l3 in range(self.l3_per_socket):
                l3_global = s * self.l3_per_socket + l3
                for _ in range(self.cores_per_l3):
                    local_core = core_idx - s * self.l3_per_socket * self.cores_per_l3
                    per_node = self.l3_per_socket * self.cores_per_l3 // self.nodes_per_socket
                    node = s * self.nodes_per_socket + local_core // per_node
                    for t in range(self.threads):
                        if self.numbering == "split":
                            cpu = core_idx + t * self.ncores
                        elif self.numbering == "adjacent":
                            cpu = core_idx * self.threads + t
                        else:
                            raise ValueError(f"unknown numbering {self.numbering!r}")
                        out.append((cpu, s, node, l3_global, core_idx, t))
                    core_idx += 1
        out.sort()
        return out


def _t(name: str, **kw: object) -> SyntheticSpec:
    return SyntheticSpec(name=name, **kw)  # type: ignore[arg-type]


#: The issue's topologies (reference section 7). Reserved CPUs are part of T7 only; the
#: benchmark adds its own reservation.
TOPOLOGIES: dict[str, SyntheticSpec] = {
    "T1": _t("T1", sockets=2, l3_per_socket=1, cores_per_l3=24, threads=2,
             description="Intel 2x24cx2t (96)"),
    "T2": _t("T2", sockets=2, l3_per_socket=1, cores_per_l3=16, threads=2,
             description="Intel 2x16cx2t (64)"),
    "T3": _t("T3", sockets=2, l3_per_socket=8, cores_per_l3=8, threads=2,
             description="AMD 2x8CCXx8cx2t NPS1 (256)"),
    "T4": _t("T4", sockets=2, l3_per_socket=8, cores_per_l3=8, threads=2, nodes_per_socket=4,
             description="AMD 2x8CCXx8cx2t NPS4 (256)"),
    "T5": _t("T5", sockets=2, l3_per_socket=12, cores_per_l3=8, threads=1,
             description="AMD 2x12CCDx8c no SMT (192)"),
    "T6": _t("T6", sockets=1, l3_per_socket=16, cores_per_l3=4, threads=2,
             description="AMD 1x16CCXx4cx2t (128)"),
    # 23+71 (a whole core), 46 (sibling 94 stays alone) and 95 (sibling 47 stays alone)
    "T7": _t("T7", sockets=2, l3_per_socket=1, cores_per_l3=24, threads=2,
             offline=(23, 46, 71, 95), reserved=(0, 1),
             description="T1 with 4 CPUs offline, reserved 0,1"),
    "T8": _t("T8", sockets=2, l3_per_socket=1, cores_per_l3=24, threads=2, numbering="adjacent",
             description="T1 with adjacent sibling numbering"),
}


def _w(path: Path, text: str) -> None:
    """Write one sysfs-like file; the parent directory must exist (see _mkdirs)."""
    with open(path, "w") as fh:
        fh.write(text + "\n")


def _mkdirs(*paths: Path) -> None:
    for p in paths:
        os.makedirs(p, exist_ok=True)


def write_sysfs(spec: SyntheticSpec, root: str | os.PathLike[str]) -> Path:
    """Write a fake ``<root>/devices/system/{cpu,node}`` tree for ``spec``; returns root."""
    root = Path(root)
    cpu_root = root / "devices" / "system" / "cpu"
    node_root = root / "devices" / "system" / "node"
    rows = spec.rows()
    n = len(rows)
    _mkdirs(cpu_root, node_root)
    offline = set(spec.offline)
    online = [r[0] for r in rows if r[0] not in offline]
    _w(cpu_root / "online", format_cpulist(online))
    _w(cpu_root / "offline", format_cpulist(offline))
    _w(cpu_root / "possible", f"0-{n - 1}")
    _w(cpu_root / "present", f"0-{n - 1}")
    _w(cpu_root / "kernel_max", str(max(n - 1, 8191)))
    _w(cpu_root / "isolated", "")
    by_core: dict[int, list[int]] = {}
    by_l3: dict[int, list[int]] = {}
    by_node: dict[int, list[int]] = {}
    by_sock: dict[int, list[int]] = {}
    for cpu, s, node, l3, core, _t_ in rows:
        by_core.setdefault(core, []).append(cpu)
        by_l3.setdefault(l3, []).append(cpu)
        by_node.setdefault(node, []).append(cpu)
        by_sock.setdefault(s, []).append(cpu)
    cores_per_socket = spec.ncores // spec.sockets
    for cpu, s, node, l3, core, _t_ in rows:
        d = cpu_root / f"cpu{cpu}"
        if cpu in offline:
            _mkdirs(d)
        else:
            _mkdirs(d / "topology", *(d / "cache" / f"index{i}" for i in range(4)))
        if cpu != 0:
            _w(d / "online", "0" if cpu in offline else "1")
        if cpu in offline:
            continue  # the kernel removes topology/ and cache/ of offline CPUs

        def live(cpus: list[int]) -> str:
            return format_cpulist(c for c in cpus if c not in offline)

        t = d / "topology"
        _w(t / "physical_package_id", str(s))
        _w(t / "core_id", str(core % cores_per_socket))  # repeats across packages
        _w(t / "core_cpus_list", live(by_core[core]))
        _w(t / "thread_siblings_list", live(by_core[core]))
        _w(t / "package_cpus_list", live(by_sock[s]))
        c = d / "cache"
        for idx, (level, typ, members) in enumerate(
            [(1, "Data", by_core[core]), (1, "Instruction", by_core[core]),
             (2, "Unified", by_core[core]), (3, "Unified", by_l3[l3])]
        ):
            _w(c / f"index{idx}" / "level", str(level))
            _w(c / f"index{idx}" / "type", typ)
            _w(c / f"index{idx}" / "shared_cpu_list", live(members))
    nodes = sorted(by_node)
    _w(node_root / "online", format_cpulist(nodes))
    _w(node_root / "possible", format_cpulist(nodes))
    _w(node_root / "has_cpu", format_cpulist(nodes))
    for node in nodes:
        _mkdirs(node_root / f"node{node}")
        _w(node_root / f"node{node}" / "cpulist", format_cpulist(by_node[node]))
    return root


def load_spec(spec: SyntheticSpec, root: str | os.PathLike[str]) -> Topology:
    """Write the tree for ``spec`` below ``root`` and discover it (reserved from the spec)."""
    write_sysfs(spec, root)
    return load_topology(root, reserved=spec.reserved)


def topology_of(spec: SyntheticSpec) -> Topology:
    """The expected topology of ``spec`` built directly (no files); equals ``load_spec``."""
    offline = set(spec.offline)
    rows = [r for r in spec.rows() if r[0] not in offline]
    core_min: dict[int, int] = {}
    l3_min: dict[int, int] = {}
    for cpu, _s, _n, l3, core, _t_ in rows:
        core_min[core] = min(core_min.get(core, cpu), cpu)
        l3_min[l3] = min(l3_min.get(l3, cpu), cpu)
    return topology_from_layout(
        ((cpu, s, node, l3_min[l3], core_min[core]) for cpu, s, node, l3, core, _t_ in rows),
        num_cpu_ids=spec.ncpus,
        reserved=spec.reserved,
    )
