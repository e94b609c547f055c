"""titusctl node health|doctor|cordon|uncordon|drain against a real scheduler process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from titusctl.main import main
from tests.unit.test_titusctl import free_port


@pytest.fixture
def scheduler_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "s.db"), "--insecure"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 15
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.RequestException:
                assert time.time() < deadline, "scheduler did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_node_health_verbs(scheduler_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    health = [
        {"check": "engine", "status": "failed", "reason": "EngineDown", "message": "no ping",
         "since": now, "observedAt": now, "durationMs": 3.0, "evidence": {"socket": "/run/docker.sock"}},
        {"check": "disk", "status": "ok", "reason": "DiskOk", "since": now, "observedAt": now},
    ]
    node = {"id": "h1", "capacity": {"cpus": 2, "memoryMiB": 1024, "diskMiB": 1000}, "health": health}
    r = requests.post(f"{scheduler_url}/v1/nodes/h1/sync", json={"node": node, "waitSeconds": 0}, timeout=5)
    assert r.status_code == 200, r.text

    def run(*argv: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as e:
            main(["--scheduler", scheduler_url, *argv])
        return int(e.value.code or 0), capsys.readouterr().out.strip()

    code, out = run("node", "health")
    assert code == 0 and "EngineDown" in out and "DiskOk" not in out
    assert "DiskOk" in run("node", "health", "--all")[1]
    code, out = run("node", "doctor", "h1", "--agent", f"http://127.0.0.1:{free_port()}")
    assert code == 0
    assert "NO NEW WORK: health.engine: EngineDown: no ping" in out
    assert "socket=/run/docker.sock" in out and "DiskOk" in out
    code, out = run("node", "cordon", "h1", "--reason", "bad disk")
    assert (code, out) == (0, "node h1: takes no new work (bad disk)")
    doc = json.loads(run("-o", "json", "node", "health")[1])
    assert doc["nodes"][0]["taints"]["cordoned"] == "bad disk"
    code, out = run("node", "uncordon", "h1")
    assert (code, out) == (0, "node h1: cordon lifted; still tainted: health.engine")
    code, out = run("node", "drain", "h1", "--reason", "kernel upgrade", "--batch-deadline", "60")
    assert code == 0 and out.startswith("node h1: drained (by ") and "kernel upgrade" in out, out
    doc = json.loads(run("-o", "json", "node", "drain-status", "h1")[1])
    assert doc["state"] == "drained" and doc["drain"]["batchDeadline"] - doc["drain"]["startedAt"] == 60
    code, out = run("node", "uncordon", "h1")
    assert code == 0 and run("node", "drain-status", "h1")[1] == "node h1: no drain"
    assert run("node", "drain", "h1", "--batch-deadline", "-1")[0] != 0
    assert run("node", "cordon", "nope")[0] == 1
    assert run("node", "history", "h1") == (0, "no remediation")
