"""The real titus-agent on a simulated EC2 host (docs/ec2-host.md, "Proven end to end"): the agent
process with `--network-provider aws`, its identity from the simulator's IMDSv2, EC2 = moto on
loopback, a real scheduler and real containers. The agent runs in the host's own network namespace
(it reaches moto, the scheduler and dockerd on loopback); the simulated hypervisor hot-plugs each
attached ENI's link into that namespace, its peer in a test-owned fabric namespace that plays the
VPC's router and, beyond it, an "outside" namespace.

The scheduler runs with `--aws-imds-identity`: the fake IMDS signs its identity document with a test
key the scheduler trusts, and the agent's certificate must come out bound to the instance.

Proven: a task gets an address of an ENI the agent created and attached in moto; the agent waited
for the hot-plugged link, owns it (up, MTU 9001, ENI table with proto 122, networkd `Unmanaged=yes`
file); the container reaches the outside address with its own address as source; a kill -9 and
restart of the agent re-adopts the task (same address, egress still works); killing the task leaves
no link, rule or route; at the end the host's links, rules, routing tables, nft tables and
namespaces are what they were before (everything the test created is removed even on failure).
Run under the engine lock."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from cryptography import x509
import requests

from netns.wiring import ENI_TABLE_BASE, RT_PROTO_TITUS, host_ifname
from tests.ec2sim.hypervisor import Hypervisor, NetUtils
from tests.ec2sim.iid import IidAuthority
from tests.ec2sim.imds import FakeImds
from tests.harness import Platform, wait_for
from tests.moto_server import moto_server
from tests.netns.conftest import Ec2World, make_world
from tests.netns.world import listen, ns_path

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and links")]

OUTSIDE = "198.51.100.1"  # TEST-NET-2: "the internet", beyond the simulated VPC's router
OUTSIDE_PORT = 8080
SUBNET = "10.20.0.0/20"


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=20).stdout


def host_state() -> dict[str, Any]:
    """What the test must leave as it found it in the host's own namespace."""
    links = {line.split(":")[1].strip().split("@")[0] for line in run("ip", "-o", "link", "show").splitlines()}
    return {
        "links": sorted(links),
        "rules": run("ip", "-4", "rule", "show"),
        "main": run("ip", "-4", "route", "show", "table", "main"),
        "routes": run("ip", "-4", "route", "show", "table", "all"),
        "nft": run("nft", "list", "tables"),
        "netns": sorted(line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()),
    }


@dataclass
class Sim:
    platform: Platform
    ec2: Ec2World
    hv: Hypervisor
    imds: FakeImds
    inet: str  # the outside world's namespace
    unmanaged: Path  # where the agent writes its networkd files (not the host's /run/systemd/network)

    def start_agent(self, wait: bool = True) -> None:
        self.platform.start_agent(
            "--network-provider", "aws", "--aws-imds-identity", "--aws-imds-endpoint", self.imds.endpoint,
            "--aws-endpoint-url", self.ec2.endpoint, "--aws-sts-endpoint-url", self.ec2.endpoint, wait=wait,
        )


def make_namespaces(fab: str, inet: str) -> None:
    """The fabric (VPC side of every ENI, its router) and the outside world behind it."""
    for n in (fab, inet):
        run("ip", "netns", "add", n)
        run("ip", "-n", n, "link", "set", "lo", "up")
    for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
        run("ip", "netns", "exec", fab, "sysctl", "-qw", key)
    run("ip", "link", "add", "out0", "netns", inet, "type", "veth", "peer", "name", "out1", "netns", fab)
    run("ip", "-n", inet, "addr", "add", f"{OUTSIDE}/24", "dev", "out0")
    run("ip", "-n", inet, "link", "set", "out0", "up")
    run("ip", "-n", inet, "route", "add", "default", "via", "198.51.100.254")
    run("ip", "-n", fab, "addr", "add", "198.51.100.254/24", "dev", "out1")
    run("ip", "-n", fab, "link", "set", "out1", "up")


def scrub(before: dict[str, Any], ec2: Ec2World | None) -> None:
    """Last resort after a failure: anything of ours still in the host namespace. Only links the
    hypervisor names, rules with our protocol for the simulated subnet, ENI tables that were empty."""
    if ec2 is not None:
        with contextlib.suppress(Exception):
            for eni in ec2.client.describe_network_interfaces()["NetworkInterfaces"]:
                subprocess.run(["ip", "link", "del", Hypervisor.link_name(eni["NetworkInterfaceId"])],
                               capture_output=True, timeout=20)
    subnet = ipaddress.IPv4Network(SUBNET)
    for line in run("ip", "-4", "rule", "show").splitlines():
        if line in before["rules"] or f"proto {RT_PROTO_TITUS}" not in line:
            continue
        found = [w for w in re.findall(r"\d+\.\d+\.\d+\.\d+", line) if ipaddress.IPv4Address(w) in subnet]
        if found or re.search(r"iif tn[0-9a-f]+ ", line):  # the hairpin rule of a task link
            prio, _, selector = line.replace("[detached]", "").partition(":")
            subprocess.run(["ip", "rule", "del", "priority", prio, *selector.split()], capture_output=True, timeout=20)
    for table in range(ENI_TABLE_BASE + 1, ENI_TABLE_BASE + 16):
        if f"table {table} " not in before["routes"]:
            subprocess.run(["ip", "route", "flush", "table", str(table), "proto", str(RT_PROTO_TITUS)],
                           capture_output=True, timeout=20)


@pytest.fixture
def sim(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Sim]:
    before = host_state()
    prefix = f"x{uuid.uuid4().hex[:6]}"
    fab, inet = f"{prefix}fab", f"{prefix}inet"
    ec2: Ec2World | None = None
    try:
        with moto_server() as endpoint:
            ec2 = make_world(endpoint, subnet_cidr=SUBNET)
            make_namespaces(fab, inet)
            unmanaged = tmp_path / "networkd"
            aws = IidAuthority()  # signs the fake IMDS's identity documents; the scheduler trusts it
            with FakeImds(ec2.client, ec2.instance_id, role="titus-agent-host", signer=aws) as imds, \
                    Hypervisor(ec2.client, ec2.instance_id, None, fab, delay_s=1.0, vpc_routing=True) as hv:
                p = Platform(tmp_path, engine)
                p.agent_env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                               "AWS_DEFAULT_REGION": "us-east-1", "TITUS_AGENT_NETWORK_UNMANAGED_DIR": str(unmanaged)}
                policy = aws.write_policy(tmp_path / "iid", accounts=(imds.account_id,),
                                          nodeIds={ec2.instance_id: p.node_id})
                try:
                    p.start_scheduler("--aws-imds-identity", str(policy))
                    yield Sim(p, ec2, hv, imds, inet, unmanaged)
                finally:
                    p.close()
                assert hv.errors == [], hv.errors
    finally:
        for n in (fab, inet):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=20)
        scrub(before, ec2)
    after = host_state()
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}


def address_in(container: Any) -> str:
    code, out = container.exec_run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
    assert code == 0, out
    match = re.search(r"inet (\S+)/32", out.decode())
    assert match, out
    return match.group(1)


def egress_source(sim: Sim, container: Any) -> str | None:
    """The container connects to the outside address; the peer address the outside saw."""
    server = listen(ns_path(sim.inet), OUTSIDE, OUTSIDE_PORT)
    server.settimeout(5)
    peers: list[str] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            conn, peer = server.accept()
            peers.append(peer[0])
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        container.exec_run(["nc", "-w", "3", OUTSIDE, str(OUTSIDE_PORT)], stdin=False)
        t.join(6)
    finally:
        server.close()
    return peers[0] if peers else None


def link_facts(name: str) -> dict[str, Any]:
    line = run("ip", "-o", "link", "show", "dev", name)
    return {"up": ",UP" in line or "<UP" in line, "mtu": int(re.search(r" mtu (\d+)", line).group(1))}  # type: ignore[union-attr]


def agent_net(p: Platform) -> dict[str, Any]:
    return dict(requests.get(f"http://127.0.0.1:{p.agent_port}/v1/net", timeout=5).json())


def test_agent_on_a_simulated_ec2_host(sim: Sim) -> None:
    p, ec2 = sim.platform, sim.ec2
    sim.start_agent()
    # Identity came from the fake IMDSv2: a token first, then tokened reads.
    assert sim.imds.requests[0] == ("PUT", "/latest/api/token")
    assert ("GET", "/latest/dynamic/instance-identity/document") in sim.imds.requests
    # The scheduler admits only attested instances (--aws-imds-identity): the agent sent the signed
    # document, and its certificate is bound to this instance (docs/trust.md, "Bound to the instance").
    assert ("GET", "/latest/dynamic/instance-identity/signature") in sim.imds.requests
    cert = x509.load_pem_x509_certificate((p.tmp / "agent" / "pki" / "node.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"arn:aws:ec2:us-east-1:{sim.imds.account_id}:instance/{ec2.instance_id}"]

    job = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
    (task,) = wait_for(lambda: p.started(job), 60, "task Started")
    (box,) = [c for c in p.containers() if c.labels.get("titus.task_id") == task["id"]
              and c.labels.get("titus.role") != "sandbox"]
    address = address_in(box)
    assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(SUBNET)

    # The address is a secondary IP of an ENI the agent created and attached to this instance in moto.
    enis = ec2.client.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [ec2.instance_id]}])["NetworkInterfaces"]
    (eni,) = [e for e in enis if address in {a["PrivateIpAddress"] for a in e["PrivateIpAddresses"]}]
    assert eni["Attachment"]["DeviceIndex"] >= 1
    assert {t["Key"] for t in eni.get("TagSet", [])} >= {"titus:node", "titus:instance"}

    # The hypervisor plugged its link (MAC = the ENI's) into the host; the agent owns it.
    link = sim.hv.plugged[eni["NetworkInterfaceId"]]
    assert eni["MacAddress"].lower() in run("ip", "-o", "link", "show", "dev", link).lower()
    assert link_facts(link) == {"up": True, "mtu": 9001}
    table = ENI_TABLE_BASE + eni["Attachment"]["DeviceIndex"]
    routes = run("ip", "-4", "route", "show", "table", str(table))
    assert f"default via 10.20.0.1 dev {link} proto {RT_PROTO_TITUS}" in routes, routes
    assert f"10.20.0.1 dev {link} proto {RT_PROTO_TITUS} scope link" in routes, routes
    rules = run("ip", "-4", "rule", "show")
    assert f"from {address} lookup {table} proto {RT_PROTO_TITUS}" in rules
    # Hairpin: the task's link is routed by its ENI's table, which reaches only this ENI's tasks.
    assert f"iif {host_ifname(task['id'])} lookup {table} proto {RT_PROTO_TITUS}" in rules, rules
    assert f"{address} dev {host_ifname(task['id'])} proto {RT_PROTO_TITUS} scope link" in routes, routes
    networkd = sim.unmanaged / f"05-titus-eni-{eni['MacAddress'].lower().replace(':', '')}.network"
    assert "Unmanaged=yes" in networkd.read_text()

    # Egress: through the ENI's link and the VPC's router, with the task's own address as source.
    assert wait_for(lambda: egress_source(sim, box), 20, "egress to the outside address") == address

    # kill -9 and restart: the agent re-adopts the task, same address, egress still works.
    assert p.agent is not None
    p.agent.stop(signal.SIGKILL)
    sim.start_agent()
    wait_for(lambda: "titus_agent_adopted_total 1.0" in p.agent_metrics(), 30, "task adopted")
    held = {ip["address"]: ip["task_id"] for e in agent_net(p)["enis"] for ip in e["ips"] if ip["state"] == "assigned"}
    assert held == {address: task["id"]}
    assert address_in(box) == address
    assert wait_for(lambda: egress_source(sim, box), 20, "egress after the restart") == address
    assert link_facts(link) == {"up": True, "mtu": 9001}

    # ec2-net-utils' damage on the re-adopted ENI: the task's address as a host alias on the ENI's
    # link, then the ENI table flushed. The agent (its netlink watch or its reconcile) undoes both.
    net_utils = NetUtils(None)
    net_utils.add_aliases(link, [address])
    wait_for(lambda: address not in run("ip", "-4", "addr", "show", "dev", link), 20, "the alias removed")
    net_utils.flush_table(table)
    try:
        wait_for(lambda: f"default via 10.20.0.1 dev {link}" in run("ip", "-4", "route", "show", "table", str(table)),
                 20, "the ENI table restored")
    except AssertionError as e:
        net = agent_net(p)
        raise AssertionError(f"{e}; agent: eni_watch={net.get('eni_watch')} eni_drift={net.get('eni_drift')} "
                             f"enis={[(x['eni_id'], x['device_index']) for x in net['enis']]}") from None
    log = p.agent.log.read_text()
    assert f"ENI {eni['NetworkInterfaceId']} had drifted (restored)" in log
    assert wait_for(lambda: egress_source(sim, box), 20, "egress after the repairs") == address

    # Kill the task: no task link, rule or main-table route left (the ENI stays, warm).
    p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    p.wait_job_finished(job, timeout=60)
    wait_for(lambda: not p.containers(all=True), 30, "containers removed")
    wait_for(lambda: address not in run("ip", "-4", "rule", "show"), 15, "the task's rules removed")
    assert address not in run("ip", "-4", "route", "show", "table", "main")
    assert host_ifname(task["id"]) not in run("ip", "-o", "link", "show")
    assert host_ifname(task["id"]) not in run("ip", "-4", "rule", "show")


def test_an_eni_whose_link_never_appears_crashes_the_launch_and_is_given_back(sim: Sim) -> None:
    p, ec2 = sim.platform, sim.ec2
    p.agent_env["TITUS_AGENT_NETWORK_ENI_LINK_TIMEOUT_SECONDS"] = "4"
    sim.hv.paused = True  # attachments seen, links never plugged
    sim.start_agent()
    job = p.submit("sleep 600", service=True, count=1, killGraceSeconds=1)
    (crashed,) = wait_for(lambda: [t for t in p.tasks(job) if t["reason"] == "crashed"][:1], 60, "a crashed attempt")
    assert "attached but its link did not appear on this host within 4s" in crashed["message"], crashed
    assert crashed["retriesUsed"] == 0  # the platform's fault
    sim.hv.paused = False  # the hypervisor recovers: the retry gets a new ENI whose link comes
    (task,) = wait_for(lambda: p.started(job), 60, "the retry Started")
    (box,) = [c for c in p.containers() if c.labels.get("titus.task_id") == task["id"]
              and c.labels.get("titus.role") != "sandbox"]
    address = address_in(box)
    assert wait_for(lambda: egress_source(sim, box), 20, "egress of the retry") == address
    # The ENI whose link never came was condemned: detached and deleted in EC2 (no task held an
    # address on it); the retry's address is on another one.
    serving = next(e["eni_id"] for e in agent_net(p)["enis"] if address in {ip["address"] for ip in e["ips"]})
    condemned = [e for e in sim.hv.seen if e != serving]
    assert condemned, sim.hv.seen

    def remaining() -> list[str]:
        found = ec2.client.describe_network_interfaces()["NetworkInterfaces"]
        return [e["NetworkInterfaceId"] for e in found if e["NetworkInterfaceId"] in condemned]

    wait_for(lambda: not remaining(), 60, "the condemned ENIs deleted")
    p.api("POST", f"/v1/jobs/{job}/kill", expect=202)
    p.wait_job_finished(job, timeout=60)
    wait_for(lambda: not p.containers(all=True), 30, "containers removed")


def refused(p: Platform, reason: str) -> float:
    text = p.http.get(f"{p.url}/metrics", timeout=5).text
    match = re.search(rf'^titus_scheduler_auth_refused_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_revoked_instance_comes_back_only_when_readmitted(sim: Sim) -> None:
    """The instance's document bootstraps once: after a revocation, the same instance (a new token,
    its key and certificate gone) is refused as a replay until `titusctl admin node readmit`."""
    p = sim.platform
    sim.start_agent()
    assert p.agent is not None
    p.agent.stop()
    p.api("POST", f"/v1/admin/nodes/{p.node_id}/revoke", expect=200)
    for name in ("node.crt", "node.key"):
        (p.tmp / "agent" / "pki" / name).unlink()
    sim.start_agent(wait=False)
    wait_for(lambda: refused(p, "iid_replayed") >= 1, 30, "the replayed instance refused")
    assert not (p.tmp / "agent" / "pki" / "node.crt").exists()
    ctl = subprocess.run([sys.executable, "-m", "titusctl.main", "admin", "node", "readmit", p.node_id],
                         capture_output=True, text=True, timeout=60, env={**os.environ, **p.ctl_env()})
    assert ctl.returncode == 0 and f"instance {sim.ec2.instance_id} may bootstrap once more" in ctl.stdout, ctl
    wait_for(lambda: p._synced(f"http://127.0.0.1:{p.agent_port}/healthz"), 60, "the re-admitted agent's sync")
    cert = x509.load_pem_x509_certificate((p.tmp / "agent" / "pki" / "node.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier)[0].endswith(f"instance/{sim.ec2.instance_id}")
