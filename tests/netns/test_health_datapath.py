"""The datapath health checks against real namespaces and nftables (run under the engine lock):
`eni` (links, tables, rules read through netns/inspect.py), `forward` (a namespace's real
iptables-nft / nft forward hooks), and the `imds` self-probe through a task-side link, with its
cleanup contract."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.host.health_sources import eni_link
from agent.host.metadata import PROBE_TASK_ID, HostMetadata
from agent.host.metadata_probe import MetadataProbe
from health.checks.eni import EniCheck, EniLink, TaskRuleFinding
from health.checks.forward import ForwardCheck, ForwardFacts
from health.checks.network import MetadataCheck, MetadataFacts
from imds.credentials import CredentialBroker
from imds.service import MetadataService
from imds.thread import ServiceThread
from netns.inspect import inspect_eni, iptables_legacy_filter, nft_ruleset
from netns.metadata import IMDS_ADDRESS, MetadataNetwork
from netns.probe import PROBE_ADDRESS, ProbeNamespace
from netns.taskrules import WiredTask, WiredTasks, find_missing_in, readd_in
from netns.wiring import HOST_IF_PREFIX, ContainerNetSpec, HostEni, Wiring, eni_table, host_ifname
from titus_common.protocol import HealthStatus
from tests.netns.world import World, ns_path, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def world() -> Iterator[World]:
    w = World(prefix=f"thd{os.getpid() % 10000}-")
    try:
        yield w.build(("a",))
    finally:
        w.close()


def run_check(check: EniCheck | ForwardCheck | MetadataCheck) -> tuple[HealthStatus, str, dict[str, object]]:
    obs = asyncio.run(check.run())
    return obs.status, obs.reason, dict(obs.evidence)


# ---- eni -------------------------------------------------------------------------------------------


def test_eni_check_sees_a_downed_link_a_flushed_table_a_lost_rule_and_a_wrong_mtu(world: World) -> None:
    h = world.hosts["a"]
    host = ns_path(h.name)
    eni = HostEni(h.eni.device_index, h.eni.ifname, h.eni.gateway, mtu=1500)
    wiring = Wiring(host)
    wiring.ensure_eni_table(eni)
    container = world.container("t1")
    wiring.setup(ContainerNetSpec("t1", container, "10.30.5.7", eni))
    wired = WiredTasks()
    wired.wired(WiredTask("t1", "10.30.5.7", eni_table(eni.device_index), host_ifname("t1")))

    def check() -> tuple[HealthStatus, str, dict[str, object]]:
        async def links() -> list[EniLink]:
            return [eni_link(await asyncio.to_thread(inspect_eni, "eni-1", eni, host), rules_checked=3)]

        async def task_rules() -> list[TaskRuleFinding]:
            return [TaskRuleFinding(m.task_id, m.rule.describe(), False)
                    for m in await asyncio.to_thread(find_missing_in, host, wired)]
        return run_check(EniCheck(links, task_rules=task_rules))

    status, reason, evidence = check()
    assert (status, reason) == (HealthStatus.OK, "EniOk") and evidence["rulesChecked"] == 3

    sh("ip", "-n", h.name, "link", "set", "eni1", "down")
    status, reason, evidence = check()
    assert (status, reason) == (HealthStatus.FAILED, "EniDatapathBroken")
    assert "eni1 down" in str(evidence["eni.eni-1"])
    wiring.ensure_eni_table(eni)  # the agent's re-assertion
    assert check()[1] == "EniOk"

    sh("ip", "-n", h.name, "route", "flush", "table", "101")
    status, reason, evidence = check()
    assert reason == "EniDatapathBroken" and "default route" in str(evidence["eni.eni-1"])
    assert "on-link route" in str(evidence["eni.eni-1"])
    wiring.ensure_eni_table(eni)

    sh("ip", "-n", h.name, "rule", "del", "from", "10.30.5.7", "lookup", "101")
    status, reason, evidence = check()
    assert (status, reason) == (HealthStatus.DEGRADED, "TaskRuleMissing")
    assert evidence["taskRule.t1"] == "from 10.30.5.7 lookup 101 priority 1536 (still missing)"
    assert [m.rule.describe() for m in readd_in(host, wired)] == ["from 10.30.5.7 lookup 101 priority 1536"]
    assert check()[1] == "EniOk"

    sh("ip", "-n", h.name, "link", "set", "eni1", "mtu", "1400")
    status, reason, _ = check()
    assert (status, reason) == (HealthStatus.DEGRADED, "EniMtuMismatch")

    sh("ip", "-n", h.name, "link", "del", "eni1")
    status, reason, evidence = check()
    assert reason == "EniDatapathBroken" and "absent" in str(evidence["eni.eni-1"])


# ---- forward ---------------------------------------------------------------------------------------


def forward_check(host: str, provider: str = "aws") -> tuple[HealthStatus, str, dict[str, object]]:
    return run_check(ForwardCheck(lambda: ForwardFacts(provider, nft_ruleset(host)), prefix=HOST_IF_PREFIX))


def iptables(ns: str, *args: str) -> None:
    sh("ip", "netns", "exec", ns, "iptables", *args)


def test_forward_check_reads_dockerd_style_iptables_nft_rules(world: World) -> None:
    ns = world.hosts["a"].name
    host = ns_path(ns)
    assert forward_check(host)[:2] == (HealthStatus.OK, "ForwardOk")

    # What stock dockerd with iptables leaves: policy DROP, DOCKER-USER returning, docker0 accepted.
    iptables(ns, "-N", "DOCKER-USER")
    iptables(ns, "-A", "DOCKER-USER", "-j", "RETURN")
    iptables(ns, "-A", "FORWARD", "-j", "DOCKER-USER")
    iptables(ns, "-A", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
             "-j", "ACCEPT")
    iptables(ns, "-A", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT")
    iptables(ns, "-P", "FORWARD", "DROP")
    status, reason, evidence = forward_check(host)
    assert (status, reason) == (HealthStatus.FAILED, "ForwardDropsTasks")
    assert "policy drop" in str(evidence["chain.ip filter FORWARD"])
    assert forward_check(host, "local")[0] is HealthStatus.DEGRADED

    # Only one direction accepted: still dropping the answers.
    iptables(ns, "-I", "DOCKER-USER", "-i", "tn+", "-j", "ACCEPT")
    status, _, evidence = forward_check(host)
    assert status is HealthStatus.FAILED and "to tasks drop" in str(evidence["chain.ip filter FORWARD"])
    iptables(ns, "-I", "DOCKER-USER", "-o", "tn+", "-j", "ACCEPT")
    assert forward_check(host)[:2] == (HealthStatus.OK, "ForwardOk")

    # A native nft table whose forward hook drops tasks' packets outright.
    sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=(
        "table inet fw {\n  chain tasks_fw {\n    type filter hook forward priority 10; policy accept;\n"
        f'    iifname "{HOST_IF_PREFIX}*" counter drop\n'
        "    ip daddr 10.99.0.0/16 drop\n  }\n}\n"))
    status, _, evidence = forward_check(host)
    assert status is HealthStatus.FAILED and "from tasks drop" in str(evidence["chain.inet fw tasks_fw"])


def legacy_check(host: str) -> tuple[HealthStatus, str, dict[str, object]]:
    return run_check(ForwardCheck(
        lambda: ForwardFacts("aws", nft_ruleset(host), legacy=iptables_legacy_filter(host)), prefix=HOST_IF_PREFIX))


def test_forward_check_sees_a_drop_set_later_through_iptables_legacy(world: World) -> None:
    """A tool on iptables-legacy (x_tables, invisible to nft) sets FORWARD DROP after the start."""
    ns = world.hosts["a"].name
    host = ns_path(ns)
    assert iptables_legacy_filter(host) is None  # no legacy table in the namespace: none is created
    assert legacy_check(host)[:2] == (HealthStatus.OK, "ForwardOk")
    sh("ip", "netns", "exec", ns, "iptables-legacy", "-P", "FORWARD", "DROP")
    text = iptables_legacy_filter(host)
    assert text is not None and "-P FORWARD DROP" in text
    status, reason, evidence = legacy_check(host)
    assert (status, reason) == (HealthStatus.FAILED, "ForwardDropsTasks")
    assert "policy DROP" in str(evidence["chain.legacy filter FORWARD"])
    for flag in ("-i", "-o"):
        sh("ip", "netns", "exec", ns, "iptables-legacy", "-I", "FORWARD", flag, f"{HOST_IF_PREFIX}+", "-j", "ACCEPT")
    assert legacy_check(host)[:2] == (HealthStatus.OK, "ForwardOk")


def test_forward_check_degrades_when_nft_cannot_read() -> None:
    status, reason, _ = run_check(ForwardCheck(lambda: ForwardFacts("aws", None, "nft not found")))
    assert (status, reason) == (HealthStatus.DEGRADED, "ForwardUnreadable")


# ---- the metadata self-probe -----------------------------------------------------------------------


@pytest.fixture
def metadata(tmp_path: Path) -> Iterator[HostMetadata]:
    path = MetadataNetwork(f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}", tmp_path / "netns")
    path.ensure()
    service = ServiceThread(MetadataService(CredentialBroker(endpoint_url=None, region="us-east-1"),
                                            secrets.token_bytes(32))).start()
    host = HostMetadata(service=service, path=path, token_dir=tmp_path / "tokens", key=b"k" * 32,
                        region="us-east-1", availability_zone="us-east-1a", instance_type="m5.large",
                        sts_endpoint_url=None)
    try:
        yield host
    finally:
        service.stop()
        path.remove_namespace()


def namespaces_of_this_process() -> set[str]:
    """The network namespaces any of this process's descriptors hold open."""
    out: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("net:["):
            out.add(target)
    return out


def test_probe_asks_the_metadata_service_as_a_task_and_leaves_nothing(metadata: HostMetadata) -> None:
    before = namespaces_of_this_process()
    probe = MetadataProbe(metadata, "node-x")
    result = probe.run()
    assert result.ok, result
    assert result.step == "done"
    assert metadata.path.links() == []  # the probe's tm… is gone
    assert PROBE_TASK_ID not in metadata.service.snapshot()
    assert namespaces_of_this_process() == before  # the probe namespace's descriptor is closed

    status, reason, evidence = run_check(MetadataCheck(lambda: MetadataFacts(
        True, True, probe_ok=result.ok, probe_step=result.step, probe_ms=result.elapsed_ms)))
    assert (status, reason) == (HealthStatus.OK, "MetadataOk") and evidence["probeOk"] is True


def test_probe_fails_with_the_step_when_the_metadata_address_is_gone(metadata: HostMetadata) -> None:
    # The metadata namespace lost 169.254.169.254 (its lo flushed): every task's requests go nowhere.
    subprocess.run(["nsenter", f"--net={metadata.path.path}", "ip", "addr", "del", f"{IMDS_ADDRESS}/32", "dev", "lo"],
                   check=True, capture_output=True)
    result = MetadataProbe(metadata, "node-x", timeout=1.0).run()
    assert not result.ok and result.step in ("listen", "token"), result
    assert metadata.path.links() == []
    status, reason, evidence = run_check(MetadataCheck(lambda: MetadataFacts(
        True, True, probe_ok=result.ok, probe_step=result.step, probe_error=result.error)))
    assert (status, reason) == (HealthStatus.FAILED, "MetadataProbeFailed") and evidence["probeStep"] == result.step


def test_a_probe_namespace_dropped_mid_probe_takes_its_metadata_link_with_it(metadata: HostMetadata) -> None:
    # The cleanup contract when the agent dies mid-probe: nothing pins the namespace, so once its
    # descriptor goes (process exit), the kernel frees it, its imds0 and the peer tm… in the metadata ns.
    ns = ProbeNamespace()
    path = ns.__enter__()
    metadata.path.attach(PROBE_TASK_ID, path, PROBE_ADDRESS)
    assert len(metadata.path.links()) == 1
    ns.close()  # no detach
    deadline = 200
    while metadata.path.links() and deadline:  # the namespace is freed by the kernel's cleanup work
        deadline -= 1
        asyncio.run(asyncio.sleep(0.05))
    assert metadata.path.links() == []
