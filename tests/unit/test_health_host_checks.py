"""The host-state checks: clock (adjtimex, skew to the scheduler), network, imds, leaks,
credentials — each over the facts it is handed; the adjtimex read and the instance-role read are
real (the kernel; a fake IMDSv2 server on loopback)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter

from agent.host.health_sources import leaks_removed
from health.checks.clock import STA_UNSYNC, TIME_ERROR, ClockCheck, KernelClock, read_adjtimex
from health.checks.credentials import CredentialFacts, CredentialsCheck
from health.checks.leaks import LeaksCheck
from health.checks.network import MetadataCheck, MetadataFacts, NetworkCheck, NetworkFacts
from netns.providers.ec2_identity import IdentityUnavailable, read_instance_role
from tests.ec2sim.imds import FakeImds
from titus_common.protocol import HealthStatus as H

SYNCED = KernelClock(state=0, status=0, max_error_s=0.05, est_error_s=0.001, offset_s=0.0001)
UNSYNCED = KernelClock(state=TIME_ERROR, status=STA_UNSYNC, max_error_s=16.0, est_error_s=16.0, offset_s=0.0)


@pytest.mark.parametrize(("kernel", "skew", "status", "reason"), [
    (SYNCED, None, H.OK, "ClockSynchronised"),
    (SYNCED, 0.7, H.OK, "ClockSynchronised"),
    (SYNCED, -3.0, H.DEGRADED, "ClockSkew"),
    (SYNCED, 120.0, H.FAILED, "ClockSkew"),
    (UNSYNCED, 0.2, H.DEGRADED, "ClockUnsynchronised"),
    (UNSYNCED, 90.0, H.FAILED, "ClockSkew"),  # skew wins: it is the harm
    (KernelClock(0, 0, 2.5, 0.1, 0.0), None, H.DEGRADED, "ClockUncertain"),
])
async def test_clock(kernel: KernelClock, skew: float | None, status: H, reason: str) -> None:
    obs = await ClockCheck(lambda: skew, kernel=lambda: kernel).run()
    assert (obs.status, obs.reason) == (status, reason), obs
    assert obs.evidence["synchronised"] is kernel.synchronised
    if skew is not None:
        assert obs.evidence["skewS"] == skew


def test_adjtimex_reads_the_kernel() -> None:
    k = read_adjtimex()
    assert 0 <= k.state <= 5 and k.max_error_s >= 0
    # the kernel's own view agrees with the flag we read (whatever this host's NTP state is)
    assert k.synchronised == (k.state != TIME_ERROR and not k.status & STA_UNSYNC)


@pytest.mark.parametrize(("facts", "status", "reason"), [
    (NetworkFacts("local", True, enis=1, free_ips=5), H.OK, "NetworkOk"),
    (NetworkFacts("local", False), H.DEGRADED, "IpForwardOff"),
    (NetworkFacts("aws", False), H.FAILED, "IpForwardOff"),
    (NetworkFacts("aws", True, {"sg-1": "EC2 AttachNetworkInterface: limit exceeded"}), H.DEGRADED, "ProviderErrors"),
    (NetworkFacts("aws", True, provider_backoff_s=12.0), H.DEGRADED, "ProviderBackoff"),
])
async def test_network(facts: NetworkFacts, status: H, reason: str) -> None:
    obs = await NetworkCheck(lambda: facts).run()
    assert (obs.status, obs.reason) == (status, reason)
    if reason == "ProviderErrors":
        assert "limit exceeded" in obs.message and obs.evidence["firstError.groups"] == "sg-1"


@pytest.mark.parametrize(("facts", "status", "reason"), [
    (MetadataFacts(True, True, tasks=3), H.OK, "MetadataOk"),
    (MetadataFacts(False, True), H.FAILED, "MetadataNamespaceGone"),
    (MetadataFacts(True, False, error="TimeoutError"), H.FAILED, "MetadataServiceDown"),
])
async def test_imds(facts: MetadataFacts, status: H, reason: str) -> None:
    obs = await MetadataCheck(lambda: facts).run()
    assert (obs.status, obs.reason) == (status, reason)


async def test_leaks_over_a_sliding_window() -> None:
    registry = CollectorRegistry()
    counter = Counter("titus_agent_network_leaks_removed", "x", ["kind"], registry=registry)
    now = [0.0]
    unknown = [0]
    check = LeaksCheck(lambda: leaks_removed(counter), lambda: unknown[0], window_s=3600, degraded_per_window=20,
                       failed_per_window=200, clock=lambda: now[0])
    assert (await check.run()).reason == "NoLeaks"
    counter.labels("link").inc(15)
    counter.labels("namespace").inc(5)
    now[0] = 60
    obs = await check.run()
    assert (obs.status, obs.reason) == (H.DEGRADED, "LeakingResources")
    assert obs.evidence["removed.link"] == 15 and obs.evidence["removedInWindow"] == 20
    counter.labels("link").inc(200)
    now[0] = 120
    assert (await check.run()).status is H.FAILED
    now[0] = 120 + 3600 + 1  # nothing new for an hour: the window forgets
    obs = await check.run()
    assert (obs.status, obs.evidence["removedInWindow"]) == (H.OK, 0)
    unknown[0] = 7
    assert (await check.run()).reason == "UnknownContainers"


async def test_leaks_counts_cgroups_and_checkpoints_with_the_kinds_in_evidence() -> None:
    registry = CollectorRegistry()
    counter = Counter("titus_agent_network_leaks_removed", "x", ["kind"], registry=registry)
    now = [0.0]
    check = LeaksCheck(lambda: leaks_removed(counter), lambda: 0, window_s=3600, degraded_per_window=20,
                       failed_per_window=200, clock=lambda: now[0])
    assert (await check.run()).evidence["kinds"] == ""
    counter.labels("cgroup").inc(12)
    counter.labels("checkpoint").inc(7)
    now[0] = 60
    obs = await check.run()
    assert (obs.status, obs.evidence["removedInWindow"]) == (H.OK, 19)  # below the threshold
    counter.labels("checkpoint").inc(1)
    now[0] = 120
    obs = await check.run()
    assert (obs.status, obs.reason) == (H.DEGRADED, "LeakingResources")
    assert obs.evidence["kinds"] == "cgroup,checkpoint"
    assert (obs.evidence["removed.cgroup"], obs.evidence["removed.checkpoint"]) == (12, 8)
    assert "12 cgroup" in obs.message and "8 checkpoint" in obs.message


NOW = 1_900_000_000.0


@pytest.mark.parametrize(("facts", "status", "reason"), [
    (CredentialFacts(), H.OK, "CredentialsOk"),  # http: no client certificate
    (CredentialFacts(NOW - 3600, NOW + 86400 * 29), H.OK, "CredentialsOk"),
    (CredentialFacts(NOW - 86400 * 28, NOW + 3600), H.DEGRADED, "CertificateNotRotating"),
    (CredentialFacts(NOW - 86400 * 30, NOW - 10), H.FAILED, "CertificateExpired"),
    (CredentialFacts(aws=True, instance_role="titus-host"), H.OK, "CredentialsOk"),
    (CredentialFacts(aws=True, instance_role=""), H.FAILED, "InstanceRoleMissing"),
    (CredentialFacts(aws=True, instance_role_error="IMDS token: unreachable"), H.FAILED, "HostImdsUnreachable"),
    (CredentialFacts(task_roles=4, task_roles_failing=1, first_failure="AccessDenied: no"), H.DEGRADED,
     "TaskCredentialsFailing"),
])
async def test_credentials(facts: CredentialFacts, status: H, reason: str) -> None:
    obs = await CredentialsCheck(lambda: facts, clock=lambda: NOW).run()
    assert (obs.status, obs.reason) == (status, reason), obs


def test_instance_role_from_imdsv2() -> None:
    with FakeImds(None, "i-0123", role="titus-host") as imds:
        assert read_instance_role(imds.endpoint) == "titus-host"
    with FakeImds(None, "i-0123", role=None) as imds:
        assert read_instance_role(imds.endpoint) == ""
    with pytest.raises(IdentityUnavailable, match="unreachable"):
        read_instance_role("http://127.0.0.1:9", timeout_s=0.5)


def test_credential_facts_read_the_node_certificate(tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.host.health_sources import HostSources, credential_facts
    from agent.node_credentials import NodeCredentials

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")])
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    creds = NodeCredentials("n1", tmp_path / "ca.crt", tmp_path, None)
    creds.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    registry = CollectorRegistry()
    sources = HostSources(Counter("x", "x", registry=registry), lambda: 0, lambda: None, credentials=creds)
    f: Any = credential_facts(AgentConfig(node_id="n1", state_dir=tmp_path), sources)
    assert (f.cert_not_before, f.cert_not_after) == (start.timestamp(), (start + dt.timedelta(days=30)).timestamp())
    assert not f.aws and f.instance_role is None


def test_skew_from_the_schedulers_date_header() -> None:
    from agent.scheduler_client import SchedulerClient

    c = SchedulerClient("http://127.0.0.1:7100", "n1")
    assert c.skew is None
    sent = dt.datetime(2026, 12, 2, 1, 0, 0, tzinfo=dt.UTC).timestamp()
    c._note_date("Wed, 02 Dec 2026 01:00:00 GMT", sent + 10.5)
    assert c.skew == pytest.approx(10.0)
    c._note_date("not a date", sent)
    assert c.skew == pytest.approx(10.0)  # an unreadable Date changes nothing
