"""Network setup latency per container and EC2 API calls per launch.

Measures `TaskNetworks.setup` (IP from the pool + veth into the container namespace + routes and
policy rules) inside a namespace that plays the host, against pre-created namespaces that play
containers (a container's netns exists before its network step runs):
- sequential launches and a burst of 50 concurrent ones, with the warm pool cold (empty, warm target
  0: every launch waits for the provider) and warm (pre-filled);
- the `aws` provider against moto (server mode on loopback): EC2 calls per launch in a 50-launch
  burst;
- two floors, in the same run, each the same four steps (a veth pair with one end moved into a
  fresh namespace, an address on that end, both ends up): with four fork/exec'd `ip` commands
  (`floor_p99_ms`), and in-process with pyroute2 over netlink sockets opened in the two namespaces
  the way `netns.wiring` opens them (setns on this thread, no helper process; `netlink_floor_p99_ms`).
  The ratios of the warm sequential p99 to each floor are reported as well. The netlink floor is the
  nearer bound: `TaskNetworks.setup` is in-process pyroute2 too, and does more (routes, a neighbour
  entry, policy rules, the address pool).

Everything it creates (namespaces, links, the moto process) is removed at the end.
Last line: RESULT network warm_p99_ms=… burst_p99_ms=… ec2_calls_per_launch=… floor_p99_ms=…
netlink_floor_p99_ms=… warm_over_ip_floor=… warm_over_netlink_floor=… attach_p50_ms=…
attach_max_ms=… cold_burst_ec2_calls_per_launch=…
- attach (tests/ec2sim, a cold host, hot-plug delay HOTPLUG_S): ms from the pool's decision to grow
  to a usable ENI, and EC2 calls per launch in a 50-burst.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns.ipam import PoolConfig  # noqa: E402
from netns.pool import NetworkPool  # noqa: E402
from netns.providers.aws import AwsConfig, AwsProvider  # noqa: E402
from netns.providers.local import LocalProvider, LocalVpc  # noqa: E402
from netns.step import TaskNetworks  # noqa: E402
from netns.wiring import Wiring, iproute_in  # noqa: E402
from tests.moto_server import moto_server  # noqa: E402

PREFIX = f"tnb{os.getpid() % 100000}-"
BURST = 50
HOTPLUG_S = 1.0  # the simulated hypervisor's delay before an attached ENI's link appears


def sh(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Namespaces:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.counter = 0

    def new(self, kind: str) -> str:
        self.counter += 1
        name = f"{PREFIX}{kind}{self.counter}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        return name

    def delete(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        if name in self.names:
            self.names.remove(name)

    def close(self) -> None:
        for name in list(self.names):
            self.delete(name)


def make_host(spaces: Namespaces) -> str:
    host = spaces.new("host")
    sh("ip", "-n", host, "link", "set", "lo", "up")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return f"/var/run/netns/{host}"


async def launch_round(
    networks: TaskNetworks, spaces: Namespaces, tasks: list[str], concurrent: bool
) -> tuple[list[float], list[float]]:
    """Set up `tasks` (sequentially or all at once), then tear them down; returns latencies in ms."""
    containers = {t: "/var/run/netns/" + spaces.new("c") for t in tasks}
    records: dict[str, dict[str, Any]] = {t: {} for t in tasks}

    async def one(task: str) -> float:
        start = time.perf_counter()
        await networks.setup(task, containers[task], [], records[task], lambda: None)
        return (time.perf_counter() - start) * 1000

    if concurrent:
        setup = list(await asyncio.gather(*(one(t) for t in tasks)))
    else:
        setup = [await one(t) for t in tasks]
    teardown = []
    for task in tasks:
        start = time.perf_counter()
        await networks.teardown(task, records[task])
        teardown.append((time.perf_counter() - start) * 1000)
    for path in containers.values():
        spaces.delete(Path(path).name)
    return setup, teardown


def pool_config(limits: Any, warm: int, **kw: Any) -> PoolConfig:
    return PoolConfig(
        max_enis=limits.container_enis,
        ips_per_eni=limits.container_ips_per_eni,
        warm_ip_target=warm,
        refill_batch=4,
        burst_batch=32,
        cooldown_s=0.0,  # the bench reuses addresses across rounds at once
        quiet_period_s=3600,
        default_security_groups=kw.pop("groups", ("sg-bench",)),
        **kw,
    )


async def local_rounds(spaces: Namespaces, host: str, sequential: int) -> dict[str, tuple[list[float], list[float]]]:
    results = {}
    for warmth, warm in (("cold", 0), ("warm", BURST + 4)):
        for mode, count, concurrent in (("seq", sequential, False), ("burst", BURST, True)):
            provider = LocalProvider("bench", LocalVpc("10.40.0.0/16"), "m5.24xlarge")
            pool = NetworkPool(provider, pool_config(provider.limits, warm), error_backoff_s=0.05)
            networks = TaskNetworks(pool, Wiring(host))
            await networks.restore({})
            if warm:
                await pool.refill_once()
            tasks = [f"{warmth}-{mode}-{i}" for i in range(count)]
            results[f"local {warmth} {mode}"] = await launch_round(networks, spaces, tasks, concurrent)
            await pool.close()
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def aws_round(spaces: Namespaces, host: str, endpoint: str) -> tuple[list[float], float, int]:
    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
    client = boto3.session.Session(
        aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    ).client("ec2", endpoint_url=endpoint)
    vpc = client.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="10.50.0.0/18")["Subnet"]["SubnetId"]
    group = client.create_security_group(GroupName="bench", Description="bench", VpcId=vpc)["GroupId"]
    instance = client.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="m5.24xlarge", SubnetId=subnet
    )["Instances"][0]["InstanceId"]
    from botocore.config import Config

    client = boto3.session.Session(
        aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    ).client("ec2", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}))
    cfg = AwsConfig("bench", instance, "m5.24xlarge", subnet, endpoint_url=endpoint)
    provider = AwsProvider(cfg, client=client)
    pool = NetworkPool(provider, pool_config(provider.limits, 4, groups=(group,)), error_backoff_s=0.05)
    networks = TaskNetworks(pool, Wiring(host))
    await networks.restore({})
    await pool.refill_once()  # the host's steady state: one ENI, a warm pool of 4
    before, repairs_before = provider.api_calls, provider.repair_calls
    tasks = [f"aws-burst-{i}" for i in range(BURST)]
    containers = {t: "/var/run/netns/" + spaces.new("c") for t in tasks}
    records: dict[str, dict[str, Any]] = {t: {} for t in tasks}

    async def one(task: str) -> float:
        start = time.perf_counter()
        await networks.setup(task, containers[task], [group], records[task], lambda: None)
        return (time.perf_counter() - start) * 1000

    latencies = list(await asyncio.gather(*(one(t) for t in tasks)))
    # moto offers duplicate addresses (EC2 does not); the calls that replace them are not batching.
    repairs = provider.repair_calls - repairs_before
    calls = provider.api_calls - before - repairs
    if repairs:
        print(f"  (aws burst: {repairs} more calls replaced moto's duplicate addresses; not counted)")
    addresses = [r["lease"]["address"] for r in records.values()]
    assert len(set(addresses)) == BURST, "an address was handed out twice"
    for task in tasks:
        await networks.teardown(task, records[task])
    for path in containers.values():
        spaces.delete(Path(path).name)
    await pool.close()
    return latencies, calls / BURST, calls


async def attach_round(spaces: Namespaces, endpoint: str, hotplug_s: float) -> tuple[list[float], float]:
    """A cold simulated EC2 host (tests/ec2sim: no container ENI yet, the hypervisor hot-plugs each
    attached ENI's link after `hotplug_s`) takes a burst of 50 launches. Per ENI: ms from the
    pool's decision to grow (create_eni called) to a usable ENI (its link found and its table
    written); and EC2 calls per launch over the whole burst."""
    import boto3
    from botocore.config import Config

    from netns.step import HostEniByMac
    from tests.ec2sim.hypervisor import Hypervisor

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
    client = boto3.session.Session(
        aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    ).client("ec2", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}))
    vpc = client.create_vpc(CidrBlock="10.60.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="10.60.0.0/18")["Subnet"]["SubnetId"]
    group = client.create_security_group(GroupName="bench", Description="bench", VpcId=vpc)["GroupId"]
    instance = client.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="m5.24xlarge", SubnetId=subnet
    )["Instances"][0]["InstanceId"]
    host = make_host(spaces)
    fabric = spaces.new("fab")
    provider = AwsProvider(AwsConfig("bench", instance, "m5.24xlarge", subnet, endpoint_url=endpoint), client=client)
    pool = NetworkPool(provider, pool_config(provider.limits, 4, groups=(group,)), error_backoff_s=0.05)
    wiring = Wiring(host)
    networks = TaskNetworks(pool, wiring, host_eni_for=HostEniByMac(host, timeout_s=60, mtu=9001))
    decided: dict[int, float] = {}
    usable: dict[int, float] = {}
    create, ensure = provider.create_eni, wiring.ensure_eni_table

    async def timed_create(groups: Any, device_index: int) -> Any:
        decided.setdefault(device_index, time.perf_counter())
        return await create(groups, device_index)

    def timed_ensure(eni: Any) -> list[str]:
        found = ensure(eni)
        usable.setdefault(eni.device_index, time.perf_counter())
        return found

    provider.create_eni = timed_create  # type: ignore[method-assign]
    wiring.ensure_eni_table = timed_ensure  # type: ignore[method-assign]
    tasks = [f"attach-{i}" for i in range(BURST)]
    containers = {t: "/var/run/netns/" + spaces.new("c") for t in tasks}
    records: dict[str, dict[str, Any]] = {t: {} for t in tasks}
    with Hypervisor(client, instance, Path(host).name, fabric, delay_s=hotplug_s):
        await networks.restore({})  # cold: nothing on the host, nothing warm
        before, repairs_before = provider.api_calls, provider.repair_calls
        await asyncio.gather(*(networks.setup(t, containers[t], [group], records[t], lambda: None) for t in tasks))
        calls = provider.api_calls - before - (provider.repair_calls - repairs_before)
        for task in tasks:
            await networks.teardown(task, records[task])
        await pool.close()
        for eni_id in list(pool.enis):
            await provider.delete_eni(eni_id)
    for path in containers.values():
        spaces.delete(Path(path).name)
    attach = [(usable[i] - decided[i]) * 1000 for i in usable if i in decided]
    return attach, calls / BURST


def floor_round(spaces: Namespaces, host: str, count: int) -> list[float]:
    host_ns = Path(host).name
    samples = []
    for i in range(count):
        container = spaces.new("f")
        name = f"fl{i}"
        start = time.perf_counter()
        sh("ip", "-n", host_ns, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", container)
        sh("ip", "-n", container, "addr", "add", f"10.60.{i // 250}.{i % 250 + 2}/32", "dev", "eth0")
        sh("ip", "-n", container, "link", "set", "eth0", "up")
        sh("ip", "-n", host_ns, "link", "set", name, "up")
        samples.append((time.perf_counter() - start) * 1000)
        spaces.delete(container)
    return samples


def netlink_floor_round(spaces: Namespaces, host: str, count: int) -> list[float]:
    """The `ip` floor's four steps in-process: pyroute2, one netlink socket per namespace."""
    samples = []
    for i in range(count):
        container = "/var/run/netns/" + spaces.new("n")
        name = f"nl{i}"
        start = time.perf_counter()
        with iproute_in(host) as outer:
            target = os.open(container, os.O_RDONLY)
            try:
                outer.link("add", ifname=name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": target})
            finally:
                os.close(target)
            with iproute_in(container) as inner:
                (eth,) = inner.link_lookup(ifname="eth0")
                inner.addr("add", index=eth, address=f"10.61.{i // 250}.{i % 250 + 2}", prefixlen=32)
                inner.link("set", index=eth, state="up")
            (index,) = outer.link_lookup(ifname=name)
            outer.link("set", index=index, state="up")
        samples.append((time.perf_counter() - start) * 1000)
        spaces.delete(Path(container).name)
    return samples


def line(label: str, samples: list[float]) -> str:
    return (
        f"{label:<24} n={len(samples):<4} p50={statistics.median(samples):7.2f} ms "
        f"p99={pct(samples, 0.99):7.2f} ms max={max(samples):7.2f} ms"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sequential launches (< 1 minute)")
    args = parser.parse_args()
    sequential = 20 if args.quick else 100
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    spaces = Namespaces()
    try:
        host = make_host(spaces)
        floor = floor_round(spaces, host, sequential)
        # pyroute2's synchronous IPRoute runs its own event loop: off this one, as Wiring is
        netlink_floor = await asyncio.to_thread(netlink_floor_round, spaces, host, sequential)
        local = await local_rounds(spaces, host, sequential)
        with moto_server() as endpoint:
            aws_latency, calls_per_launch, calls = await aws_round(spaces, host, endpoint)
            attach, cold_calls = await attach_round(spaces, endpoint, HOTPLUG_S)
    finally:
        spaces.close()
    print(f"# network setup per container, host = a namespace, {os.cpu_count()} CPUs")
    print(line("floor (ip veth+addr)", floor))
    print(line("floor (netlink in-proc)", netlink_floor))
    for label, (setup, teardown) in local.items():
        print(line(f"{label} setup", setup))
    for label, (_, teardown) in local.items():
        if "seq" in label:
            print(line(f"{label} teardown", teardown))
    print(line("aws(moto) burst setup", aws_latency))
    print(f"aws(moto) burst of {BURST}: {calls} EC2 calls, {calls_per_launch:.2f} per launch")
    print(line(f"aws(ec2sim) attach, hot-plug {HOTPLUG_S:g}s", attach))
    print(f"aws(ec2sim) cold burst of {BURST}: {cold_calls:.2f} EC2 calls per launch")
    warm_p99 = pct(local["local warm seq"][0], 0.99)
    burst_p99 = pct(local["local cold burst"][0], 0.99)
    ip_floor_p99 = pct(floor, 0.99)
    netlink_floor_p99 = pct(netlink_floor, 0.99)
    print(
        f"RESULT network warm_p99_ms={warm_p99:.1f} burst_p99_ms={burst_p99:.1f} "
        f"ec2_calls_per_launch={calls_per_launch:.2f} floor_p99_ms={ip_floor_p99:.1f} "
        f"netlink_floor_p99_ms={netlink_floor_p99:.1f} "
        f"warm_over_ip_floor={warm_p99 / ip_floor_p99:.2f} "
        f"warm_over_netlink_floor={warm_p99 / netlink_floor_p99:.2f} "
        f"attach_p50_ms={pct(attach, 0.5):.0f} attach_max_ms={max(attach):.0f} "
        f"cold_burst_ec2_calls_per_launch={cold_calls:.2f}"
    )
    return 0


if __name__ == "__main__":
    tempfile.tempdir = None
    sys.exit(asyncio.run(main()))
