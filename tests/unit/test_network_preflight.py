"""Host pre-flight rules (agent/host/preflight.py) and the start-up refusals they cause (the agent
no longer pulls a sandbox image: tasks join prepared namespaces)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.host import preflight
from agent.host.network import NetworkResource
from agent.host.preflight import HostFacts, judge
from agent.metrics import AgentMetrics
from titus_common.errors import EXIT_HOST_REFUSED, HostRefused, exit_code_for

DOCKERD_FORWARD = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\n"
GOOD = HostFacts(ip_forward="1", rp_filter_all="2", forward_rules="-P FORWARD ACCEPT\n", live_restore=True)


def checks(facts: HostFacts) -> list[tuple[str, bool]]:
    return [(f.check, f.refuse) for f in judge(facts)]


def test_a_good_host_passes() -> None:
    assert judge(GOOD) == []


def test_ip_forward_off_refuses() -> None:
    assert checks(HostFacts("0", "2", None, True)) == [("ip_forward", True)]
    assert checks(HostFacts(None, "2", None, True)) == [("ip_forward", True)]


def test_dockerd_forward_drop_refuses_unless_task_links_are_accepted() -> None:
    facts = HostFacts("1", "2", DOCKERD_FORWARD, True)
    (finding,) = judge(facts)
    assert finding.check == "forward_policy" and finding.refuse and "iptables -I FORWARD -i tn+" in finding.message
    fixed = DOCKERD_FORWARD + "-A FORWARD -i tn+ -j ACCEPT\n-A FORWARD -o tn+ -j ACCEPT\n"
    assert judge(HostFacts("1", "2", fixed, True)) == []


def test_strict_rp_filter_and_no_live_restore_warn() -> None:
    assert checks(HostFacts("1", "1", None, False)) == [("rp_filter", False), ("docker_live_restore", False)]


def test_gather_reads_proc(tmp_path: Path) -> None:
    (tmp_path / "sys/net/ipv4/conf/all").mkdir(parents=True)
    (tmp_path / "sys/net/ipv4/ip_forward").write_text("0\n")
    (tmp_path / "sys/net/ipv4/conf/all/rp_filter").write_text("1\n")
    facts = preflight.gather(tmp_path, {"LiveRestoreEnabled": False})
    assert (facts.ip_forward, facts.rp_filter_all, facts.live_restore) == ("0", "1", False)


class FakeDocker:
    def __init__(self, has_image: bool) -> None:
        self.has_image, self.pulled = has_image, []  # type: ignore[var-annotated]

    async def info(self) -> dict[str, Any]:
        return {"LiveRestoreEnabled": True}

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return {"Id": "x"} if self.has_image else None

    async def pull(self, ref: str) -> None:
        self.pulled.append(ref)


class NoTasks:
    sandbox_image = "registry.example/titus/pause:1"


def resource(provider: str, docker: FakeDocker) -> NetworkResource:
    config = load_config(["--network-provider", "local"], environ={}).model_copy(
        update={"network_provider": provider})
    return NetworkResource(config, docker, AgentMetrics(), lambda *_: None, tasks=NoTasks())  # type: ignore[arg-type]


def test_aws_host_that_cannot_forward_refuses_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "gather", lambda *_: HostFacts("0", "2", DOCKERD_FORWARD, True))
    net = resource("aws", FakeDocker(True))
    with pytest.raises(HostRefused, match="host pre-flight: ip_forward: .*; forward_policy: ") as e:
        asyncio.run(net._preflight())
    assert exit_code_for(e.value) == EXIT_HOST_REFUSED
    local = resource("local", FakeDocker(True))
    asyncio.run(local._preflight())  # a development host: warnings only
    assert [f.check for f in local.preflight_findings] == ["ip_forward", "forward_policy"]
