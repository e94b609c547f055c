"""Topology discovery on generated sysfs trees (T1-T8), including broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cpuset.errors import TopologyError
from cpuset.synthetic import TOPOLOGIES, load_spec, topology_of, write_sysfs
from cpuset.topology import format_cpulist, load_topology, parse_cpulist


@pytest.mark.parametrize("text,expected", [
    ("", []), ("0", [0]), ("0-3,8", [0, 1, 2, 3, 8]), (" 4-5 ,1\n", [1, 4, 5]),
    ("0-23,48-71", list(range(24)) + list(range(48, 72))),
])
def test_parse_cpulist(text: str, expected: list[int]) -> None:
    assert parse_cpulist(text) == expected
    assert parse_cpulist(format_cpulist(expected)) == expected


@pytest.mark.parametrize("text", ["a", "1-", "3-1", "-1", "1,,2", "0-5000", "1.5"])
def test_parse_cpulist_rejects(text: str) -> None:
    with pytest.raises(TopologyError):
        parse_cpulist(text)


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_generated_trees_parse_to_expected_layout(name: str, sysfs_dir: Path) -> None:
    spec = TOPOLOGIES[name]
    topo = load_spec(spec, sysfs_dir)
    assert dict(topo.cpus) == dict(topology_of(spec).cpus)
    assert topo.reserved == frozenset(spec.reserved)
    assert len(topo.online) == spec.ncpus - len(spec.offline)


# (topology, node -> expected cpulist of node 0, L3 of cpu0, siblings of cpu0)
LAYOUTS = [
    ("T1", "0-23,48-71", "0-23,48-71", (0, 48), 2, 2),
    ("T2", "0-15,32-47", "0-15,32-47", (0, 32), 2, 2),
    ("T3", "0-63,128-191", "0-7,128-135", (0, 128), 2, 16),
    ("T4", "0-15,128-143", "0-7,128-135", (0, 128), 8, 16),
    ("T5", "0-95", "0-7", (0,), 2, 24),
    ("T6", "0-127", "0-3,64-67", (0, 64), 1, 16),
    ("T8", "0-47", "0-47", (0, 1), 2, 2),
]


@pytest.mark.parametrize("name,node0,l3_0,sib0,nnodes,nl3", LAYOUTS)
def test_reference_layouts(name: str, node0: str, l3_0: str, sib0: tuple[int, ...],
                           nnodes: int, nl3: int, sysfs_dir: Path) -> None:
    topo = load_spec(TOPOLOGIES[name], sysfs_dir)
    assert format_cpulist(topo.nodes()[0]) == node0
    assert format_cpulist(topo.l3_groups()[0]) == l3_0
    assert topo.siblings(0) == sib0
    assert len(topo.nodes()) == nnodes
    assert len(topo.l3_groups()) == nl3


def test_offline_cpus_and_lone_threads(sysfs_dir: Path) -> None:
    topo = load_spec(TOPOLOGIES["T7"], sysfs_dir)
    assert not {23, 46, 71, 95} & topo.online
    assert topo.siblings(47) == (47,)  # sibling 95 offline: looks like a non-SMT core
    assert topo.siblings(94) == (94,)
    assert topo.siblings(0) == (0, 48)
    assert topo.reserved == {0, 1}
    assert topo.usable == topo.online - {0, 1}


def test_reserved_from_config_and_isolated(sysfs_dir: Path) -> None:
    root = write_sysfs(TOPOLOGIES["T2"], sysfs_dir)
    topo = load_topology(root, reserved="0,32")
    assert topo.reserved == {0, 32}
    (root / "devices/system/cpu/isolated").write_text("5-6\n")
    topo = load_topology(root, reserved=[0], include_isolated=True)
    assert topo.reserved == {0, 5, 6}
    with pytest.raises(TopologyError, match="do not exist"):
        load_topology(root, reserved="100")
    with pytest.raises(TopologyError):
        load_topology(root, reserved=[-1])
    with pytest.raises(TopologyError, match="every online CPU"):
        load_topology(root, reserved="0-63")


def test_reserved_offline_cpu_is_ignored_with_a_note(sysfs_dir: Path) -> None:
    root = write_sysfs(TOPOLOGIES["T7"], sysfs_dir)
    topo = load_topology(root, reserved="0,23")
    assert topo.reserved == {0}
    assert any("offline" in n for n in topo.notes)


def _cpu(root: Path, n: int) -> Path:
    return root / "devices" / "system" / "cpu" / f"cpu{n}"


BROKEN = {
    "missing online": (lambda r: (r / "devices/system/cpu/online").unlink(), "missing file"),
    "garbage online": (lambda r: (r / "devices/system/cpu/online").write_text("zero\n"),
                       "not a cpulist"),
    "online cpu without dir": (lambda r: shutil.rmtree(_cpu(r, 5)), "no .*cpuN directory"),
    "online cpu without topology": (lambda r: shutil.rmtree(_cpu(r, 5) / "topology"),
                                    "has no .*topology"),
    "missing package id": (lambda r: (_cpu(r, 3) / "topology/physical_package_id").unlink(),
                           "missing file"),
    "garbage package id": (lambda r: (_cpu(r, 3) / "topology/physical_package_id")
                           .write_text("x\n"), "expected an integer"),
    "asymmetric siblings": (lambda r: (_cpu(r, 0) / "topology/core_cpus_list")
                            .write_text("0,33\n"), "contradictory SMT siblings"),
    "siblings without self": (lambda r: (_cpu(r, 0) / "topology/core_cpus_list")
                              .write_text("32\n"), "does not contain CPU 0"),
    "siblings across packages": (lambda r: (_cpu(r, 32) / "topology/physical_package_id")
                                 .write_text("1\n"), "different packages"),
    "contradictory L3": (lambda r: (_cpu(r, 1) / "cache/index3/shared_cpu_list")
                         .write_text("0-7\n"), "contradictory L3"),
    "partial L3 info": (lambda r: shutil.rmtree(_cpu(r, 4) / "cache"), "no L3 cache"),
    "cpu in two nodes": (lambda r: (r / "devices/system/node/node1/cpulist")
                         .write_text("0,16-31,48-63\n"), "NUMA nodes 0 and 1"),
    "cpu in no node": (lambda r: (r / "devices/system/node/node0/cpulist")
                       .write_text("0-14,32-47\n"), "belong to no NUMA node"),
    "siblings across nodes": (lambda r: [
        (r / "devices/system/node/node0/cpulist").write_text("0-15,33-47\n"),
        (r / "devices/system/node/node1/cpulist").write_text("16-32,48-63\n")],
        "different NUMA nodes"),
    "missing sysfs": (lambda r: shutil.rmtree(r / "devices"), "missing directory"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_trees_raise_clear_errors(case: str, sysfs_dir: Path) -> None:
    root = write_sysfs(TOPOLOGIES["T2"], sysfs_dir)
    breaker, pattern = BROKEN[case]
    breaker(root)
    with pytest.raises(TopologyError, match=pattern):
        load_topology(root)


def test_missing_cache_and_node_info_falls_back(sysfs_dir: Path) -> None:
    root = write_sysfs(TOPOLOGIES["T2"], sysfs_dir)
    for n in range(64):
        shutil.rmtree(_cpu(root, n) / "cache")
    shutil.rmtree(root / "devices/system/node")
    topo = load_topology(root)
    assert len(topo.nodes()) == 1
    assert len(topo.l3_groups()) == 2  # one per package
    assert len(topo.notes) == 2


def test_legacy_thread_siblings_and_cache_without_level(sysfs_dir: Path) -> None:
    root = write_sysfs(TOPOLOGIES["T2"], sysfs_dir)
    for n in range(64):
        (_cpu(root, n) / "topology/core_cpus_list").unlink()
        for i in range(4):
            (_cpu(root, n) / f"cache/index{i}/level").unlink()
    topo = load_topology(root)
    assert dict(topo.cpus) == dict(topology_of(TOPOLOGIES["T2"]).cpus)


def test_l3_found_by_level_not_by_index_name(sysfs_dir: Path) -> None:
    root = write_sysfs(TOPOLOGIES["T3"], sysfs_dir)
    for n in range(256):
        cache = _cpu(root, n) / "cache"
        (cache / "index3").rename(cache / "index7")
        (cache / "index3").mkdir()
        (cache / "index3/level").write_text("2\n")
        (cache / "index3/type").write_text("Unified\n")
        (cache / "index3/shared_cpu_list").write_text(f"{n}\n")
    topo = load_topology(root)
    assert len(topo.l3_groups()) == 16
