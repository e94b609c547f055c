"""Retiring hosts remediation gave up on (scheduler/retire.py): only remediation's finished drains,
never during a fleet-wide freeze, once; aws terminates the instance (against moto in server mode)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.config import SchedulerConfig
from scheduler.core import Scheduler
from scheduler.engine import Engine
from scheduler.metrics import SchedulerMetrics
from scheduler.records import DrainState
from scheduler.retire import RETRY_AFTER, make_ec2
from scheduler.store import SQLiteStore
from tests.moto_server import moto_server
from tests.unit.test_scheduler_core import Clock
from tests.unit.test_scheduling_passes import node


def cell(tmp_path: Path, provider: str = "local", endpoint: str = "") -> tuple[Scheduler, Clock]:
    clock = Clock()
    config = SchedulerConfig(retire_provider=provider, retire_aws_endpoint_url=endpoint)  # type: ignore[arg-type]
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), Engine(), SchedulerMetrics(), config, clock=clock)
    return s, clock


def drained(s: Scheduler, name: str, by: str = "remediation", finished: bool = True, **labels: str) -> None:
    node(s, name)
    n = s.nodes[name]
    n.labels.update(labels)
    n.drain = DrainState(started_at=s.clock() - 100, by=by, reason="engine failed", batch_deadline=s.clock(),
                         finished_at=s.clock() - 1 if finished else None)


def audit_events(s: Scheduler) -> list[dict[str, Any]]:
    return [e for e in s.reconciler.audit.recent if e["event"] == "host.retire"]


def test_local_marks_only_remediations_finished_drains_retired_once(tmp_path: Path) -> None:
    s, _ = cell(tmp_path)
    drained(s, "bad")
    drained(s, "by-operator", by="alice")
    drained(s, "still-draining", finished=False)
    assert asyncio.run(s.retirer.run_pass()) == 1
    assert s.nodes["bad"].drain.retired_at is not None  # type: ignore[union-attr]
    assert s.nodes["by-operator"].drain.retired_at is None  # type: ignore[union-attr]
    assert s.nodes["still-draining"].drain.retired_at is None  # type: ignore[union-attr]
    assert asyncio.run(s.retirer.run_pass()) == 0  # once
    assert [e["node"] for e in audit_events(s)] == ["bad"]
    reloaded, _ = cell(tmp_path)  # recorded in the store
    assert reloaded.nodes["bad"].drain.retired_at is not None  # type: ignore[union-attr]


def test_nothing_is_retired_during_a_fleet_wide_freeze_or_with_none(tmp_path: Path) -> None:
    s, _ = cell(tmp_path)
    drained(s, "bad")
    s.remediation_frozen = True
    assert asyncio.run(s.retirer.run_pass()) == 0
    none, _ = cell(tmp_path / "n", provider="none")
    drained(none, "bad")
    assert asyncio.run(none.retirer.run_pass()) == 0


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


def test_aws_terminates_the_instance_and_a_failure_is_retried_later(tmp_path: Path, moto: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(k, v)
    ec2 = make_ec2("us-east-1", moto)
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="m5.large")[
        "Instances"][0]["InstanceId"]
    s, clock = cell(tmp_path, provider="aws", endpoint=moto)
    drained(s, "bad", instanceId=instance)
    drained(s, "unknown")  # no instance id: refused, recorded, retried later
    assert asyncio.run(s.retirer.run_pass()) == 1
    state = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")
    unknown = s.nodes["unknown"].drain
    assert unknown is not None and unknown.retired_at is None and "no EC2 instance id" in unknown.retire_error
    assert asyncio.run(s.retirer.run_pass()) == 0  # in its back-off
    clock.now += RETRY_AFTER + 1
    assert asyncio.run(s.retirer.run_pass()) == 0 and len(audit_events(s)) == 3  # tried again, still refused


def test_aws_refuses_an_instance_id_two_nodes_report(tmp_path: Path, moto: str) -> None:
    s, _ = cell(tmp_path, provider="aws", endpoint=moto)
    drained(s, "bad", instanceId="i-0123456789abcdef0")
    node(s, "twin")
    s.nodes["twin"].labels["instanceId"] = "i-0123456789abcdef0"
    assert asyncio.run(s.retirer.run_pass()) == 0
    d = s.nodes["bad"].drain
    assert d is not None and d.retired_at is None and "also reported by twin" in d.retire_error
