"""Trust with the real agent (docs/trust.md): the agent bootstraps over TLS (every integration test
does, through tests/harness.py), rotates its certificate while tasks run without interrupting them,
and a revoked agent stops being heard at once while its containers keep running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from cryptography import x509

from tests.harness import Platform, wait_for


@pytest.fixture
def short_certs(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Platform]:
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler("--node-cert-ttl", "30")  # the agent rotates with < 10 s left
        p.start_agent()
        yield p
    finally:
        p.close()


def serial(p: Platform) -> int:
    return int(x509.load_pem_x509_certificate((p.tmp / "agent" / "pki" / "node.crt").read_bytes()).serial_number)


def test_rotation_while_five_tasks_run(short_certs: Platform) -> None:
    p = short_certs
    job = p.submit("sleep 3600", count=5, service=True)
    started = wait_for(lambda: len(s := p.started(job)) == 5 and s, 90, "5 tasks Started")
    ids = {t["id"] for t in started}
    first = serial(p)
    statuses: set[str] = set()

    def rotated_from(before: int) -> bool:
        node = p.node()
        statuses.add(node["status"] if node else "absent")
        return serial(p) != before

    wait_for(lambda: rotated_from(first), 60, "certificate rotated")
    second = serial(p)
    wait_for(lambda: rotated_from(second), 60, "certificate rotated again")
    # the node kept syncing with each new certificate: never Disconnected, no task touched
    beat = p.node()["lastHeartbeat"]  # type: ignore[index]
    wait_for(lambda: (n := p.node()) is not None and n["lastHeartbeat"] > beat, 20, "a sync after rotation")
    assert statuses == {"Ready"}
    now = p.tasks(job)
    assert {t["id"] for t in now} == ids and all(t["state"] == "Started" for t in now)
    assert len(p.containers()) == 5


def test_revoked_agent_is_refused_at_once(short_certs: Platform) -> None:
    p = short_certs
    job = p.submit("sleep 3600")
    wait_for(lambda: p.started(job), 60, "task Started")
    revoked = p.api("POST", f"/v1/admin/nodes/{p.node_id}/revoke", expect=200)["revoked"]
    assert revoked
    metric = 'titus_scheduler_auth_refused_total{reason="revoked"}'
    wait_for(lambda: metric in (m := p.http.get(f"{p.url}/metrics", timeout=5).text)
             and float(m.split(metric)[1].split()[0]) >= 1, 20, "the agent's next sync refused")
    assert len(p.containers()) == 1  # the agent keeps its tasks; only the control plane stops hearing it
