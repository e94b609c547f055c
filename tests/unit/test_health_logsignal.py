"""The log-signal rule engine: NPD kernel-monitor.json compatibility, the shipped rules against
real kernel lines, temporary events vs permanent conditions, clearing, rate limits on a flood."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from health.kmsg import kmsg_message
from health.logsignal import MAX_LINE, SHIPPED_RULES, LogSignals, load_rules
from titus_common.errors import ConfigError
from titus_common.protocol import HealthStatus as S


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# NPD's own config/kernel-monitor.json (abridged, as published): loads unchanged.
NPD_FILE = {
    "plugin": "kmsg", "logPath": "/dev/kmsg", "lookback": "5m", "bufferSize": 10, "source": "kernel-monitor",
    "conditions": [
        {"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"},
        {"type": "ReadonlyFilesystem", "reason": "FilesystemIsNotReadOnly", "message": "Filesystem is not read-only"},
    ],
    "rules": [
        {"type": "temporary", "reason": "OOMKilling",
         "pattern": "Killed process \\d+ (.+) total-vm:\\d+kB, anon-rss:\\d+kB, file-rss:\\d+kB.*"},
        {"type": "temporary", "reason": "TaskHung", "pattern": "task [\\S ]+:\\w+ blocked for more than \\w+ seconds\\."},
        {"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung",
         "pattern": "task docker:\\w+ blocked for more than \\w+ seconds\\."},
        {"type": "permanent", "condition": "ReadonlyFilesystem", "reason": "FilesystemIsReadOnly",
         "pattern": "Remounting filesystem read-only"},
    ],
}


def write(tmp_path: Path, doc: Any) -> Path:
    p = tmp_path / "rules.json"
    p.write_text(json.dumps(doc))
    return p


def test_npd_file_loads(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, NPD_FILE))
    assert rules.source == "kernel-monitor" and len(rules.rules) == 4
    assert rules.conditions == {"KernelDeadlock": "KernelHasNoDeadlock", "ReadonlyFilesystem": "FilesystemIsNotReadOnly"}


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"rules": [{"type": "sometimes", "reason": "X", "pattern": "a"}]}, "temporary or permanent"),
        ({"rules": [{"type": "temporary", "reason": "not camel", "pattern": "a"}]}, "CamelCase"),
        ({"rules": [{"type": "temporary", "reason": "X", "pattern": "("}]}, "pattern"),
        ({"rules": [{"type": "permanent", "condition": "Nope", "reason": "X", "pattern": "a"}]}, "not declared"),
        ([], "JSON object"),
    ],
)
def test_bad_rule_files_are_refused(tmp_path: Path, doc: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_rules(write(tmp_path, doc))


# Real kernel lines (as /dev/kmsg gives the message) → the shipped rule's reason.
LINES = [
    ("Out of memory: Killed process 4242 (dockerd) total-vm:1234kB, anon-rss:100kB, file-rss:0kB, shmem-rss:0kB",
     "SystemOOMKilling"),
    ("Memory cgroup out of memory: Killed process 777 (python3) total-vm:1234kB, anon-rss:100kB, file-rss:0kB, "
     "shmem-rss:0kB, UID:100000 pgtables:44kB oom_score_adj:0", "OOMKilling"),
    ("INFO: task jbd2/nvme0n1p1-:412 blocked for more than 120 seconds.", "TaskHung"),
    ("INFO: task dockerd:1234 blocked for more than 120 seconds.", "DockerHung"),
    ("watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:1234]", "SoftLockup"),
    ("EXT4-fs error (device nvme1n1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
     "Ext4Error"),
    ("EXT4-fs (nvme1n1): Remounting filesystem read-only", "FilesystemIsReadOnly"),
    ("XFS (nvme2n1): Corruption of in-memory data detected. Shutting down filesystem", "XfsHasShutdown"),
    ("NETDEV WATCHDOG: eth0 (ena): transmit queue 2 timed out", "NetworkInterfaceReset"),
    ("ena 0000:00:05.0 eth0: Trigger reset is on", None),
    ("ixgbe 0000:01:00.0 eth1: Reset adapter", "NetworkInterfaceReset"),
    ("unregister_netdevice: waiting for eth0 to become free. Usage count = 1", "UnregisterNetDevice"),
    ("Buffer I/O error on dev nvme1n1, logical block 0, async page read", "IOError"),
    ("docker0: port 1(veth12) entered forwarding state", None),
]


@pytest.mark.parametrize(("line", "reason"), LINES)
def test_shipped_rules(line: str, reason: str | None) -> None:
    signals = LogSignals(load_rules(SHIPPED_RULES))
    hit = signals.feed(line)
    assert (hit.reason if hit else None) == reason


def test_permanent_condition_fails_with_the_line_and_clears_after_quiet() -> None:
    clock = Clock()
    s = LogSignals(load_rules(SHIPPED_RULES), clock=clock, clear_after=600)
    assert s.observe().status is S.OK
    s.feed("EXT4-fs (sdb): Remounting filesystem read-only")
    obs = s.observe()
    assert (obs.status, obs.reason) == (S.FAILED, "FilesystemIsReadOnly")
    assert obs.evidence["ReadonlyFilesystem.line"] == "EXT4-fs (sdb): Remounting filesystem read-only"
    clock.now += 599
    assert s.observe().status is S.FAILED
    clock.now += 2
    assert s.observe().status is S.OK


def test_temporary_events_degrade_only_as_a_storm() -> None:
    clock = Clock()
    s = LogSignals(load_rules(SHIPPED_RULES), clock=clock, event_degraded_count=3, window=60)
    line = "INFO: task kworker/0:1:12 blocked for more than 120 seconds."
    for _ in range(2):
        s.feed(line)
        clock.now += 1
    obs = s.observe()
    assert obs.status is S.OK and obs.evidence["events.TaskHung"] == 2
    s.feed(line)
    obs = s.observe()
    assert (obs.status, obs.reason) == (S.DEGRADED, "TaskHung") and "3 TaskHung events" in obs.message
    clock.now += 61
    assert s.observe().status is S.OK


def test_flood_is_rate_limited_and_bounded() -> None:
    clock = Clock()
    hits: list[str] = []
    s = LogSignals(load_rules(SHIPPED_RULES), clock=clock, max_hits_per_second=20, on_hit=hits.append)
    line = "Out of memory: Killed process 1 (sshd) total-vm:1kB, anon-rss:1kB, file-rss:0kB"
    for _ in range(100_000):
        s.feed(line)
    assert len(hits) == 20 and s.dropped == 100_000 - 20 and s.lines == 100_000
    assert all(len(r) <= 64 for r in s._events.values())
    clock.now += 1
    s.feed(line)
    assert len(hits) == 21  # the bucket refills


def test_long_lines_are_cut_before_matching() -> None:
    s = LogSignals(load_rules(SHIPPED_RULES))
    assert s.feed("x" * (MAX_LINE * 10) + "Remounting filesystem read-only") is None


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("6,1016,893443628,-;hello world\n", "hello world"),
        ("3,7,1,c;EXT4-fs error x\n SUBSYSTEM=block\n DEVICE=b8:0\n", "EXT4-fs error x"),
        ("no header", "no header"),
    ],
)
def test_kmsg_message(record: str, message: str) -> None:
    assert kmsg_message(record) == message
