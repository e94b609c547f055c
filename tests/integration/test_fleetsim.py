"""A small simulated fleet against the real titus-scheduler process over the real protocol, over
TLS (no Docker engine, no namespaces: no lock needed): 300 hosts, each bootstrapping its own node
certificate with one bounded-use token, a burst of 1,000 tasks in pack mode submitted with the admin
certificate, every task Started. The throughput floor sits far below the measured figure
(kube-scheduler's CI practice); it is not the goal."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import requests

from fleetsim.main import run_burst
from fleetsim.sim import LaunchModel
from fleetsim.trust import FleetTrust
from tests.harness import Proc, free_port, wait_for

FLOOR_PPS = 20.0  # measured ≈ 150–250/s end to end on the 2-core CI machine with 300 hosts
HOSTS = 300


def _trust(*argv: str) -> str:
    return subprocess.run([sys.executable, "-m", "scheduler.main", *argv], check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def test_fleetsim_burst_over_tls(tmp_path: Path) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    pki, db = tmp_path / "pki", tmp_path / "s.db"
    _trust("ca", "init", "--pki", str(pki))
    token = _trust("token", "create", "--db", str(db), "--nodes", "sim-*", "--uses", str(HOSTS), "--ttl", "1h")
    # Every simulated host bootstraps from 127.0.0.1: the per-address bucket is opened for this.
    proc = Proc("scheduler", [sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{port}",
                              "--db", str(db), "--pki", str(pki), "--bootstrap-source-burst", str(HOSTS),
                              "--bootstrap-source-rate", "100", "--bootstrap-burst", str(HOSTS)],
                tmp_path / "scheduler.log")
    http = requests.Session()
    http.trust_env = False
    http.verify = str(pki / "ca.crt")
    http.cert = (str(pki / "admin.crt"), str(pki / "admin.key"))

    def ok() -> bool:
        try:
            return http.get(f"{url}/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_for(ok, 15, "scheduler /healthz")
        trust = FleetTrust(pki / "ca.crt", tmp_path / "sim", token, pki / "admin.crt", pki / "admin.key")
        r = asyncio.run(run_burst(url, hosts=HOSTS, burst=1000, job_size=10, mode="pack",
                                  model=LaunchModel(time_scale=0.002), timeout=240, trust=trust))
        assert r.e2e_pps > FLOOR_PPS, r
        # run_burst returned: the simulated agents started all 1,000. The fleet stops at once, so its
        # last updates may never reach the scheduler: every task is placed, most are reported Started.
        tasks = http.get(f"{url}/v1/tasks", timeout=10).json()["tasks"]
        assert len(tasks) == 1000
        assert {t["state"] for t in tasks} <= {"Launched", "StartInitiated", "Started"}, {t["state"] for t in tasks}
        assert http.get(f"{url}/v1/admin/scheduling-mode", timeout=5).json()["mode"] == "pack"
        # The same hosts again (the bench's burst fleet after its steady one): each keeps the certificate
        # in its key dir; bootstrapping again would be refused (the token is spent, the ids have live certificates).
        again = asyncio.run(run_burst(url, hosts=HOSTS, burst=0, trust=trust, timeout=60))
        assert again.errors == 0, again
        # The token was good for exactly HOSTS nodes: one more is refused.
        more = FleetTrust(pki / "ca.crt", tmp_path / "more", token)
        try:
            asyncio.run(run_burst(url, hosts=HOSTS + 1, burst=0, trust=more, timeout=60))
        except RuntimeError as e:
            assert "HTTP 401" in str(e) and "already used" in str(e), e
        else:
            raise AssertionError("a used-up bootstrap token registered another host")
        # Garbage from a "simulated agent" (with its own certificate) is refused and the scheduler
        # carries on; without a certificate the same call is refused before its body is read.
        node = (str(tmp_path / "sim" / "sim-00000.crt"), str(tmp_path / "sim" / "sim-00000.key"))
        bad = http.post(f"{url}/v1/nodes/sim-00000/sync", data=b"\x00garbage", cert=node, timeout=5)
        assert bad.status_code == 400, bad.text
        anonymous = requests.post(f"{url}/v1/nodes/sim-00000/sync", data=b"{}", verify=str(pki / "ca.crt"), timeout=5)
        assert anonymous.status_code == 401
        assert ok()
    finally:
        proc.stop()
    assert "Traceback" not in (tmp_path / "scheduler.log").read_text()
