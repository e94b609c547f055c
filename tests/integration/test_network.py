"""Task networking end to end on the real engine (agent/steps/network.py, docs/network.md): each task
gets its own IP from the local provider's CIDR in a namespace the agent prepared (joined through the
titus runtime, no sandbox container), tasks on the host reach each other over TCP, a kill -9 of the
agent keeps IPs and traffic, teardown leaves no veth, namespace or sandbox, and an exhausted subnet
crashes the task with a clear cause and leaks nothing."""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
import requests

from netns import isolation
from agent.host.network import netns_dir
from netns.wiring import host_ifname, netns_name
from tests.harness import Platform, wait_for

pytestmark = pytest.mark.integration

DEFAULT_CIDR = ipaddress.IPv4Network("100.64.0.0/16")
SERVER = "nc -ll -p 7000 -e echo pong"


def sandboxes(p: Platform) -> list[Any]:
    return list(p.engine.containers.list(all=True, filters={"label": f"titus.sandbox_agent={p.node_id}"}))


def namespaces(p: Platform) -> list[str]:
    """The agent's prepared namespaces (netns.prepared), by name."""
    d = netns_dir(p.node_id)
    return sorted({e.name.removesuffix(".user") for e in d.iterdir()}) if d.is_dir() else []


def leftovers(p: Platform) -> list[Any]:
    return [*sandboxes(p), *namespaces(p)]


def task_containers(p: Platform) -> list[Any]:
    return [c for c in p.containers() if c.labels.get("titus.role") != "sandbox"]


def container_of(p: Platform, task_id: str) -> Any:
    return next(c for c in task_containers(p) if c.labels.get("titus.task_id") == task_id)


def address_in(container: Any) -> str:
    code, out = container.exec_run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
    assert code == 0, out
    match = re.search(r"inet (\S+)/32", out.decode())
    assert match, out
    return match.group(1)


def our_veths(task_ids: list[str]) -> set[str]:
    links = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True, check=True)
    names = {line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()}
    return names & {host_ifname(t) for t in task_ids}


def rules_for(addresses: list[str]) -> list[str]:
    rules = subprocess.run(["ip", "-4", "rule", "show"], capture_output=True, text=True, check=True).stdout
    return [line for line in rules.splitlines() if any(f" {a} " in f" {line} " for a in addresses)]


@pytest.fixture
def net_platform(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Platform]:
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent()
        yield p
    finally:
        p.close()


def test_tasks_get_own_ips_and_talk_and_survive_agent_kill9(net_platform: Platform) -> None:
    p = net_platform
    server = p.submit(SERVER, service=True, count=1, killGraceSeconds=1)
    client = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
    wait_for(lambda: p.started(server) and p.started(client), 30, "both Started")
    (s_task,) = p.started(server)
    (c_task,) = p.started(client)
    s_box, c_box = container_of(p, s_task["id"]), container_of(p, c_task["id"])
    s_ip, c_ip = address_in(s_box), address_in(c_box)
    assert ipaddress.IPv4Address(s_ip) in DEFAULT_CIDR and ipaddress.IPv4Address(c_ip) in DEFAULT_CIDR
    assert s_ip != c_ip
    # Each task runs in the namespace the agent prepared for it: no second container.
    assert (s_box.attrs["HostConfig"]["NetworkMode"], s_box.attrs["HostConfig"]["Runtime"]) == ("none", "titus")
    assert namespaces(p) == sorted(netns_name(t) for t in (s_task["id"], c_task["id"]))
    assert sandboxes(p) == []
    assert our_veths([s_task["id"], c_task["id"]]) == {host_ifname(s_task["id"]), host_ifname(c_task["id"])}

    def talk() -> bool:
        code, out = c_box.exec_run(["nc", "-w", "3", s_ip, "7000"])
        return code == 0 and b"pong" in out

    wait_for(talk, 10, "TCP from one task to the other")

    # The agent's view, as titusctl node net shows it.
    net = requests.get(f"http://127.0.0.1:{p.agent_port}/v1/net", timeout=5).json()
    held = {ip["address"]: ip["task_id"] for eni in net["enis"] for ip in eni["ips"] if ip["state"] == "assigned"}
    assert held == {s_ip: s_task["id"], c_ip: c_task["id"]}
    ctl = subprocess.run(
        [".venv/bin/titusctl", "node", "net", "--agent", f"http://127.0.0.1:{p.agent_port}"],
        capture_output=True, text=True, timeout=30,
    )
    assert ctl.returncode == 0, ctl.stderr
    assert s_ip in ctl.stdout and s_task["id"] in ctl.stdout and "leaks found" in ctl.stdout

    # kill -9 and restart: same addresses, traffic still flows, no task re-launched.
    assert p.agent is not None
    p.agent.stop(signal.SIGKILL)
    p.start_agent()
    wait_for(lambda: "titus_agent_adopted_total 2.0" in p.agent_metrics(), 20, "2 adopted")
    assert (address_in(s_box), address_in(c_box)) == (s_ip, c_ip)
    wait_for(talk, 10, "TCP after the agent restart")
    net = requests.get(f"http://127.0.0.1:{p.agent_port}/v1/net", timeout=5).json()
    held = {ip["address"]: ip["task_id"] for eni in net["enis"] for ip in eni["ips"] if ip["state"] == "assigned"}
    assert held == {s_ip: s_task["id"], c_ip: c_task["id"]}
    # A new task after the restart gets neither address.
    third = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
    wait_for(lambda: p.started(third), 30, "third Started")
    (t_task,) = p.started(third)
    assert address_in(container_of(p, t_task["id"])) not in (s_ip, c_ip)

    # Teardown: no sandbox, no veth, no policy rule left.
    tasks = [s_task["id"], c_task["id"], t_task["id"]]
    for job in (server, client, third):
        p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    for job in (server, client, third):
        p.wait_job_finished(job, timeout=30)
    wait_for(lambda: not p.containers(all=True) and not leftovers(p), 15, "containers and sandboxes removed")
    assert our_veths(tasks) == set()
    assert rules_for([s_ip, c_ip]) == []


def test_namespace_removed_from_outside_crashes_the_task(tmp_path: Path, engine: docker.DockerClient) -> None:
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent("--network-gc-seconds", "1")  # each GC round also checks the namespaces
        namespace_removed(p)
    finally:
        p.close()


def namespace_removed(p: Platform) -> None:
    job = p.submit("sleep 600", killGraceSeconds=1)
    wait_for(lambda: p.started(job), 30, "Started")
    (task,) = p.started(job)
    (name,) = namespaces(p)
    # What `ip netns delete` does: unpin it (the running container keeps the namespace itself).
    subprocess.run(["umount", str(netns_dir(p.node_id) / name)], check=True)
    (first,) = wait_for(lambda: [t for t in p.tasks(job) if t["reason"] == "crashed"], 60, "crashed")
    assert "network namespace" in first["message"] and "lost its network" in first["message"], first
    assert first["retriesUsed"] == 0  # the platform's fault: retried at no cost to the user
    p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    p.wait_job_finished(job, timeout=30)
    wait_for(lambda: not p.containers(all=True) and not leftovers(p), 15, "containers and sandboxes removed")
    assert our_veths([task["id"]]) == set()


def test_exhausted_subnet_crashes_task_and_leaks_nothing(tmp_path: Path, engine: docker.DockerClient) -> None:
    cidr = "100.100.255.240/28"  # usable .244-.254; all taken by another "host" below
    vpc = tmp_path / "vpc.json"
    taken = {str(a): "eni-local-other-1" for a in ipaddress.IPv4Network(cidr)}
    vpc.write_text(json.dumps({
        "cidr": cidr,
        "enis": [{"eni_id": "eni-local-other-1", "node_id": "other", "device_index": 1,
                  "security_groups": ["sg-default"], "primary_ip": "100.100.255.244", "created_at": 0.0,
                  "attached": True, "secondary": []}],
        "taken": taken, "cursor": 0, "next_id": 2,
    }))
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent("--network-cidr", cidr, "--network-local-vpc-state", str(vpc), "--network-acquire-timeout", "2")
        job = p.submit("exit 0")
        crashed = wait_for(lambda: [t for t in p.tasks(job) if t["reason"] == "crashed"], 30, "a crashed attempt")
        assert "network step: no network" in crashed[0]["message"], crashed[0]
        assert "has no free address" in crashed[0]["message"], crashed[0]
        assert crashed[0]["retriesUsed"] == 0
        assert p.agent is not None and p.agent.alive()
        p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
        p.wait_job_finished(job, timeout=30)
        wait_for(lambda: not p.containers(all=True) and not leftovers(p), 15, "nothing left")
        assert our_veths([t["id"] for t in p.tasks(job)]) == set()
    finally:
        p.close()


def host_ipv4s() -> list[str]:
    """The host's own non-loopback IPv4 addresses (what a task would aim at to reach a host service)."""
    return sorted(
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not ipaddress.IPv4Address(a.address).is_loopback
    )


@pytest.fixture
def host_service() -> Iterator[int]:
    """A service on the host bound to every address (a stand-in for sshd, a node exporter, ...)."""
    server = socket.create_server(("0.0.0.0", 0))
    port = int(server.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"host-secret\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        server.close()


def reaches(box: Any, address: str, port: int) -> bool:
    code, out = box.exec_run(["nc", "-w", "2", address, str(port)])
    return code == 0 and b"host-secret" in out


def test_isolation_keeps_tasks_off_host_ports_unless_allowed(
    tmp_path: Path, engine: docker.DockerClient, host_service: int
) -> None:
    targets = host_ipv4s()
    if not targets:
        pytest.skip("the host has no non-loopback IPv4 address")
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler()
        p.start_agent()  # isolation on by default
        job = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
        wait_for(lambda: p.started(job), 30, "Started")
        (task,) = p.started(job)
        box = container_of(p, task["id"])
        for address in targets:
            assert not reaches(box, address, host_service), f"a task reached the host service on {address}"
        # The drop is the isolation table's, counted: not a missing route.
        table = subprocess.run(["nft", "list", "table", "inet", "titus_isolation"], capture_output=True, text=True)
        assert table.returncode == 0 and 'iifname "tn*" counter packets' in table.stdout, table.stdout
        assert re.search(r'iifname "tn\*" counter packets [1-9]', table.stdout), table.stdout

        # An operator allows the port: the same task (re-adopted by the restarted agent) reaches it.
        assert p.agent is not None
        p.agent.stop()
        p.start_agent("--network-allow-host-port", str(host_service))
        wait_for(lambda: reaches(box, targets[0], host_service), 10, "the allowed host port")
        p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
        p.wait_job_finished(job, timeout=30)
    finally:
        p.close()
        if p.agent is not None:  # put the host's default policy back for the tests that follow
            isolation.apply(isolation.IsolationPolicy())


def test_agent_kill9_mid_burst_assigns_no_ip_twice_and_leaks_none(net_platform: Platform) -> None:
    p = net_platform
    count = 10
    job = p.submit("sleep 600", service=True, count=count, killGraceSeconds=1)
    # Kill the agent while the burst is being wired: some tasks Started, others half-way.
    wait_for(lambda: len(p.started(job)) >= 2, 60, "the first tasks Started")
    assert p.agent is not None
    p.agent.stop(signal.SIGKILL)
    mid = [t["state"] for t in p.tasks(job)]
    assert any(state != "Started" for state in mid), f"the burst was over before the kill: {mid}"
    p.start_agent()
    wait_for(lambda: len(p.started(job)) == count, 120, f"{count} tasks Started after the restart")

    running = {t["id"]: address_in(container_of(p, t["id"])) for t in p.started(job)}
    assert len(set(running.values())) == count, f"an IP was assigned twice: {running} (states at kill: {mid})"
    net = requests.get(f"http://127.0.0.1:{p.agent_port}/v1/net", timeout=5).json()
    held = {ip["address"]: ip["task_id"] for eni in net["enis"] for ip in eni["ips"] if ip["state"] == "assigned"}
    assert held == {a: t for t, a in running.items()}, (held, running)
    # One prepared namespace and one host link per running task, nothing else.
    assert namespaces(p) == sorted(netns_name(t) for t in running)
    assert sandboxes(p) == []
    all_tasks = [t["id"] for t in p.tasks(job)]
    assert our_veths(all_tasks) == {host_ifname(t) for t in running}

    p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    p.wait_job_finished(job, timeout=60)
    wait_for(lambda: not p.containers(all=True) and not leftovers(p), 30, "containers and sandboxes removed")
    assert our_veths(all_tasks) == set()
    assert rules_for(list(running.values())) == []
    net = requests.get(f"http://127.0.0.1:{p.agent_port}/v1/net", timeout=5).json()
    assert net["counts"]["assigned"] == 0, net["counts"]
