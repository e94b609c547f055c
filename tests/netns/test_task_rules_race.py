"""The re-add of deleted task rules (netns/taskrules.py) against teardowns, on the real kernel: a
thread re-adds in a tight loop (its adds slowed a little, as on a loaded host) while each task, its
`from` rule deleted from outside just before, is torn down as TaskNetworks.teardown does (mark,
delete, done). No rule of a torn-down task may remain (a re-add from a snapshot taken before a
teardown once put them back). The exact interleavings are tests/unit/test_task_rules.py's; this
one is the kernel's own. Run under the engine lock."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from netns.taskrules import RuleHost, TaskRule, WiredTask, WiredTasks, readd_in, readd_missing
from netns.wiring import ContainerNetSpec, Wiring, eni_table, host_ifname, iproute_in
from tests.netns.world import World, ns_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

TASKS = 40


@pytest.fixture
def world() -> Iterator[World]:
    w = World(prefix=f"ttr{os.getpid() % 10000}-")
    try:
        yield w.build(("a",))
    finally:
        w.close()


class SlowAdd(RuleHost):
    """A loaded host: the add comes a few milliseconds after the check, so a teardown's deletions
    often land in between (without the re-check after the add, its rules are left behind)."""

    def add(self, rule: TaskRule) -> None:
        time.sleep(0.005)
        super().add(rule)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        done.wait(0.001)
    return True


def our_rules(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-4", "rule", "show"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "proto 122" in line]


def test_re_adds_racing_teardowns_leave_no_rule_of_a_torn_down_task(world: World) -> None:
    h = world.hosts["a"]
    host = ns_path(h.name)
    wiring = Wiring(host)
    wiring.ensure_eni_table(h.eni)
    table = eni_table(h.eni.device_index)
    wired = WiredTasks()
    records = {}
    for i in range(TASKS):
        task, address = f"r{i}", f"10.30.1.{20 + i}"
        records[task] = wiring.setup(ContainerNetSpec(task, world.container(task), address, h.eni))
        wired.wired(WiredTask(task, address, table, host_ifname(task)))
    assert len(our_rules(h.name)) == 3 * TASKS

    stop = threading.Event()
    readded: list[int] = []

    def readd_loop() -> None:
        with iproute_in(host) as ipr:
            while not stop.is_set():
                readded.append(len(readd_missing(wired, SlowAdd(ipr))))

    loop = threading.Thread(target=readd_loop)
    loop.start()
    try:
        for task, record in records.items():
            delete = ["ip", "-n", h.name, "rule", "del", "from", str(record["address"]), "lookup", str(table),
                      "priority", "1536"]
            rule = f"from {record['address']} lookup {table} proto 122"
            subprocess.run(delete, check=True, timeout=20)  # deleted from outside...
            assert wait_until(lambda: any(rule in line for line in our_rules(h.name))), "not re-added"  # ...and back
            subprocess.run(delete, check=True, timeout=20)  # again, the teardown right behind it
            wired.teardown_begins(task)
            wiring.teardown(record)
            wired.teardown_done(task)
    finally:
        stop.set()
        loop.join(30)
    assert sum(readded) >= TASKS
    assert our_rules(h.name) == []
    assert readd_in(host, wired) == [] and our_rules(h.name) == []
