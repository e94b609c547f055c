"""Pure logic of the datapath checks (eni, forward, the imds probe verdict) and of the "logs
collected" contract (the tail captured at teardown, the container kept, the scheduler storing it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent import logtail
from agent.checkpoint import TaskCheckpoint
from agent.steps.base import LaunchContext
from agent.steps.container import ContainerStep
from health.checks.eni import EniCheck, EniLink
from health.checks.forward import ForwardCheck, ForwardFacts, forward_verdicts
from health.checks.network import MetadataCheck, MetadataFacts
from titus_common.protocol import MAX_LOG_TAIL, ContainerSpec, HealthStatus, TaskAssignment, TaskUpdate
from titus_common.states import FinishReason, TaskState

# ---- forward: nft -j output shapes (as iptables-nft and nft print them) ------------------------------


def chain(name: str, hook: str | None = "forward", policy: str | None = "accept", family: str = "ip",
          table: str = "filter") -> dict[str, Any]:
    c: dict[str, Any] = {"family": family, "table": table, "name": name}
    if hook:
        c |= {"type": "filter", "hook": hook, "prio": 0, "policy": policy}
    return {"chain": c}


def rule(chain_name: str, *expr: dict[str, Any], family: str = "ip", table: str = "filter") -> dict[str, Any]:
    return {"rule": {"family": family, "table": table, "chain": chain_name, "expr": list(expr)}}


def iface(key: str, name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": name}}


ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}
COUNTER: dict[str, Any] = {"counter": {"packets": 0, "bytes": 0}}


def jump(target: str) -> dict[str, Any]:
    return {"jump": {"target": target}}


def ruleset(*items: dict[str, Any]) -> dict[str, Any]:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]}


DOCKERD = [
    chain("FORWARD", policy="drop"), chain("DOCKER-USER", hook=None),
    rule("FORWARD", COUNTER, jump("DOCKER-USER")),
    rule("FORWARD", iface("oifname", "docker0"), {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                                            "right": ["established", "related"]}}, ACCEPT),
    rule("FORWARD", iface("iifname", "docker0"), ACCEPT),
    rule("DOCKER-USER", COUNTER, {"return": None}),
]


@pytest.mark.parametrize(("items", "want"), [
    ([], []),
    ([chain("FORWARD")], [("accept", "accept")]),
    (DOCKERD, [("drop", "drop")]),
    # accepted in DOCKER-USER, reached through the unconditional jump
    ([*DOCKERD[:2], rule("DOCKER-USER", iface("iifname", "tn*"), ACCEPT),
      rule("DOCKER-USER", iface("oifname", "tn*"), COUNTER, ACCEPT), *DOCKERD[2:]], [("accept", "accept")]),
    # one direction only
    ([chain("FORWARD", policy="drop"), rule("FORWARD", iface("iifname", "tn*"), ACCEPT)], [("accept", "drop")]),
    # a drop before the accept wins
    ([chain("FORWARD"), rule("FORWARD", iface("iifname", "tn*"), DROP),
      rule("FORWARD", iface("iifname", "tn*"), ACCEPT)], [("drop", "accept")]),
    # selective drops (addresses, other links) are not a drop of tasks' traffic
    ([chain("forward", family="inet", table="titus_isolation"),
      rule("forward", iface("iifname", "tn*"), {"match": {"op": "==", "left": {"payload": {"protocol": "ip",
           "field": "daddr"}}, "right": "169.254.169.254"}}, DROP, family="inet", table="titus_isolation"),
      rule("forward", iface("iifname", "eth0"), DROP, family="inet", table="titus_isolation")],
     [("accept", "accept")]),
    # an unconditional drop; not forward hooks and other families are not looked at
    ([chain("f2", family="inet", table="fw"), rule("f2", DROP, family="inet", table="fw"),
      chain("INPUT", hook="input", policy="drop"), chain("FORWARD", family="ip6", policy="drop")],
     [("drop", "drop")]),
    # a jump loop ends (depth bound), then the policy
    ([chain("FORWARD", policy="drop"), chain("A", hook=None), rule("FORWARD", jump("A")), rule("A", jump("A"))],
     [("drop", "drop")]),
])
def test_forward_verdicts(items: list[dict[str, Any]], want: list[tuple[str, str]]) -> None:
    got = [(c.from_tasks, c.to_tasks) for c in forward_verdicts(ruleset(*items), "tn")]
    assert got == want


def run(check: Any) -> tuple[HealthStatus, str, dict[str, Any]]:
    obs = asyncio.run(check.run())
    return obs.status, obs.reason, dict(obs.evidence)


def test_forward_check_is_failed_on_aws_degraded_on_local() -> None:
    doc = ruleset(*DOCKERD)
    assert run(ForwardCheck(lambda: ForwardFacts("aws", doc)))[:2] == (HealthStatus.FAILED, "ForwardDropsTasks")
    assert run(ForwardCheck(lambda: ForwardFacts("local", doc)))[:2] == (HealthStatus.DEGRADED, "ForwardDropsTasks")
    assert run(ForwardCheck(lambda: ForwardFacts("aws", ruleset())))[:2] == (HealthStatus.OK, "ForwardOk")


# ---- eni ---------------------------------------------------------------------------------------------


def eni_check(*links: EniLink) -> tuple[HealthStatus, str, dict[str, Any]]:
    async def get() -> list[EniLink]:
        return list(links)
    return run(EniCheck(get))


def test_eni_check_verdicts() -> None:
    assert eni_check()[:2] == (HealthStatus.OK, "NoEniLinks")
    assert eni_check(EniLink("eni-1", "eth1", rules_checked=3))[:2] == (HealthStatus.OK, "EniOk")
    status, reason, ev = eni_check(EniLink("eni-1", "eth1", ("eth1 mtu 1500 (want 9001)",), mtu_only=True))
    assert (status, reason) == (HealthStatus.DEGRADED, "EniMtuMismatch") and ev["mtuMismatch"] == 1
    status, reason, ev = eni_check(EniLink("eni-1", "eth1", ("eth1 mtu 1500 (want 9001)",), mtu_only=True),
                                   EniLink("eni-2", "eth2", ("eth2 down",)))
    assert (status, reason) == (HealthStatus.FAILED, "EniDatapathBroken") and ev["eni.eni-2"] == "eth2: eth2 down"


# ---- imds probe verdict ------------------------------------------------------------------------------


def test_metadata_check_reports_a_failed_probe_with_its_step() -> None:
    facts = MetadataFacts(True, True, probe_ok=False, probe_step="token", probe_error="ConnectionRefusedError")
    status, reason, ev = run(MetadataCheck(lambda: facts))
    assert (status, reason) == (HealthStatus.FAILED, "MetadataProbeFailed") and ev["probeStep"] == "token"
    assert run(MetadataCheck(lambda: MetadataFacts(True, True)))[:2] == (HealthStatus.OK, "MetadataOk")
    # the namespace gone is said first (the probe could not tell more)
    assert run(MetadataCheck(lambda: MetadataFacts(False, True, probe_ok=False)))[1] == "MetadataNamespaceGone"


# ---- logs collected ----------------------------------------------------------------------------------


def test_clip_keeps_the_end() -> None:
    assert logtail.clip(b"short\n") == "short\n"
    text = logtail.clip(b"x" * 5000 + b"THE END\n")
    assert len(text) == MAX_LOG_TAIL and text.endswith("THE END\n") and text.startswith("…")
    assert logtail.clip(b"\xff ok") == "\ufffd ok"


class FakeDocker:
    def __init__(self, logs: bytes | None) -> None:
        self.logs = logs
        self.calls: list[str] = []

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        self.calls.append(f"stop {container_id}")

    async def logs_tail(self, container_id: str, lines: int) -> bytes | None:
        self.calls.append(f"logs {container_id} {lines}")
        return self.logs

    async def remove(self, container_id: str) -> None:
        self.calls.append(f"remove {container_id}")


def test_container_teardown_keeps_the_tail_and_leaves_the_container() -> None:
    a = TaskAssignment(task_id="t1", job_id="j1", index=0, container=ContainerSpec(image="busybox"), accepted_at=1.0)
    record = TaskCheckpoint(assignment=a, state=TaskState.STARTED)
    saved: list[str | None] = []
    docker = FakeDocker(b"line 1\nfatal: boom\n")
    ctx = LaunchContext(record, docker, "n1", save=lambda: saved.append(record.log_tail))  # type: ignore[arg-type]
    ctx.resources("container")["id"] = "c1"
    asyncio.run(ContainerStep().teardown(ctx))
    assert docker.calls == ["stop c1", f"logs c1 {logtail.TAIL_LINES}"]  # no remove: that waits for the ack
    assert record.log_tail == "line 1\nfatal: boom\n" and saved[-1] == record.log_tail
    asyncio.run(ContainerStep().teardown(ctx))  # a repeated teardown does not read again
    assert docker.calls.count(f"logs c1 {logtail.TAIL_LINES}") == 1
    record.state = TaskState.FINISHED
    record.reason = FinishReason.FAILED
    assert record.to_update().log_tail == "line 1\nfatal: boom\n"


def test_log_tail_bounded_by_the_protocol() -> None:
    with pytest.raises(ValueError):
        TaskUpdate(task_id="t", state=TaskState.FINISHED, timestamps={}, log_tail="x" * (MAX_LOG_TAIL + 1))


def test_eni_drift_is_re_asserted_before_it_is_reported() -> None:
    from types import SimpleNamespace

    from agent.host.health_sources import eni_links
    from netns.inspect import EniLinkState
    from netns.taskrules import WiredTasks

    good = EniLinkState("eni-1", "eth1", 101, True, up=True, gateway_route=True, default_route=True)
    flushed = EniLinkState("eni-1", "eth1", 101, True, up=True)
    down = EniLinkState("eni-1", "eth1", 101, True, up=False, gateway_route=True, default_route=True)

    class Networks:
        def __init__(self, *states: EniLinkState) -> None:
            self.states = list(states)
            self.reasserted = 0
            self.wired = WiredTasks()

        async def eni_states(self) -> list[EniLinkState]:
            return [self.states.pop(0) if len(self.states) > 1 else self.states[0]]

        async def reassert_eni_tables(self) -> dict[str, list[str]]:
            self.reasserted += 1
            return {}

    repaired = Networks(flushed, good)  # a flush the re-assertion repairs: no fault
    links = asyncio.run(eni_links(SimpleNamespace(tasks=SimpleNamespace(networks=repaired))))  # type: ignore[arg-type]
    assert repaired.reasserted == 1 and links == [EniLink("eni-1", "eth1", (), False, 0)]
    stuck = Networks(down)  # a link the re-assertion does not bring up: reported
    (link,) = asyncio.run(eni_links(SimpleNamespace(tasks=SimpleNamespace(networks=stuck))))  # type: ignore[arg-type]
    assert stuck.reasserted == 1 and "eth1 down" in link.problems[0]
    healthy = Networks(good)
    asyncio.run(eni_links(SimpleNamespace(tasks=SimpleNamespace(networks=healthy))))  # type: ignore[arg-type]
    assert healthy.reasserted == 0
