"""The second layer (docs/trust.md): with the agent's control-plane isolation turned off, a task
that reaches the scheduler's port still cannot use it. A real agent, engine and task; the scheduler
listens on every address so the task's network can reach it at the host's address.

From inside the task's container (busybox nc): plain HTTP to the port gets no HTTP answer at all
(the port speaks only TLS). From the task's network namespace (the host's Python entered into it
with nsenter, since the task image has no TLS client that completes a handshake with the
scheduler; same source address, routes and nftables path as the task): TLS without a client
certificate, or with a made-up bearer token, gets 401 on registering a node, reporting for one,
listing and submitting, and nothing is stored. Run under the engine lock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from netns import isolation
from tests.harness import Platform, wait_for
from tests.integration.test_network import container_of, host_ipv4s

pytestmark = pytest.mark.integration

# Runs in the task's network namespace: TLS to the scheduler (verified against the cell CA), no
# client certificate; prints {"<method> <path>": status, ...}.
CLIENT = r"""
import json, socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
calls = [("POST", "/v1/nodes/fake-node/sync", '{"node": {"id": "fake-node", "capacity": {"cpus": 64, "memoryMiB": 1048576, "diskMiB": 1048576}}}', ""),
         ("POST", "/v1/nodes/fake-node/updates", '{"updates": []}', ""),
         ("GET", "/v1/jobs", "", ""),
         ("POST", "/v1/jobs", '{"appName": "x", "owner": "x"}', ""),
         ("POST", "/v1/jobs", '{"appName": "x", "owner": "x"}', "Authorization: Bearer abc.guessed\r\n")]
out = {}
for method, path, body, extra in calls:
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall((f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    out[f"{method} {path}{' bearer' if extra else ''}"] = int(data.split(b" ", 2)[1])
print(json.dumps(out))
"""


def test_without_isolation_a_task_reaches_the_port_but_cannot_use_the_scheduler(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    targets = host_ipv4s()
    if not targets:
        pytest.skip("the host has no non-loopback IPv4 address")
    host = targets[0]
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler("--listen", f"0.0.0.0:{p.scheduler_port}")
        p.start_agent("--no-network-isolation")
        job = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
        wait_for(lambda: p.started(job), 60, "Started")
        (task,) = p.started(job)
        box = container_of(p, task["id"])

        # Plain HTTP from the task itself: the TCP connection is made (nc exits 0), no HTTP comes back.
        request = "POST /v1/nodes/fake-node/sync HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\n\\r\\n{}"
        code, out = box.exec_run(["sh", "-c", f"printf '{request}' | nc -w 3 {host} {p.scheduler_port}"])
        assert code == 0, f"the task could not even connect to {host}:{p.scheduler_port}: {out!r}"
        assert b"HTTP/" not in out, out

        # TLS from the task's network namespace, without credentials: 401 everywhere.
        pid = box.attrs["State"]["Pid"]
        proc = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", CLIENT, host,
                               str(p.scheduler_port), str(p.pki / "ca.crt")], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        statuses: dict[str, Any] = json.loads(proc.stdout)
        assert statuses == {"POST /v1/nodes/fake-node/sync": 401, "POST /v1/nodes/fake-node/updates": 401,
                            "GET /v1/jobs": 401, "POST /v1/jobs": 401, "POST /v1/jobs bearer": 401}, statuses
        assert "fake-node" not in {n["id"] for n in p.api("GET", "/v1/nodes")["nodes"]}
        assert [j["id"] for j in p.api("GET", "/v1/jobs")["jobs"]] == [job]
        metrics = p.http.get(f"{p.url}/metrics", timeout=5).text
        assert 'titus_scheduler_auth_refused_total{reason="no_credentials"} 4.0' in metrics, metrics
        assert 'titus_scheduler_auth_refused_total{reason="bad_token"} 1.0' in metrics
    finally:
        p.close()
        isolation.apply(isolation.IsolationPolicy())  # the host's default policy back for the tests that follow
