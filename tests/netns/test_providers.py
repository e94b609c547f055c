"""Providers and the pool driver: the local pretend VPC, and the aws provider against moto (server
mode on loopback). moto duplicates IPs and enforces no limits, so uniqueness and limits are checked
here, across everything moto holds."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path
from typing import Any

import pytest

from netns.errors import (
    EniLimitReached,
    IpLimitReached,
    PoolTimeout,
    ProviderThrottled,
    ProviderUnavailable,
    SubnetExhausted,
    UnknownSecurityGroup,
)
from netns.ipam import PoolConfig, sg_key
from netns.pool import NetworkPool
from netns.providers.aws import TAG_CREATED, TAG_NODE, AwsConfig, AwsProvider
from netns.providers.local import LocalProvider, LocalVpc
from tests.netns.conftest import Ec2World, make_world


async def no_sleep(_: float) -> None:
    return None


def aws(world: Ec2World, node: str = "node-a", instance_type: str = "m5.8xlarge", client: Any = None) -> AwsProvider:
    cfg = AwsConfig(
        node_id=node, instance_id=world.instance_id, instance_type=instance_type,
        subnet_id=world.subnet_id, endpoint_url=world.endpoint, max_attempts=4,
    )
    return AwsProvider(cfg, client=client or world.client, sleep=no_sleep)


def all_moto_addresses(world: Ec2World) -> list[str]:
    out = []
    for eni in world.client.describe_network_interfaces()["NetworkInterfaces"]:
        out += [a["PrivateIpAddress"] for a in eni["PrivateIpAddresses"]]
    return out


def pool_config(provider: Any, **kw: Any) -> PoolConfig:
    base: dict[str, Any] = dict(
        max_enis=provider.limits.container_enis, ips_per_eni=provider.limits.container_ips_per_eni,
        warm_ip_target=4, refill_batch=4, burst_batch=16, cooldown_s=30, quiet_period_s=60,
    )
    base.update(kw)
    return PoolConfig(**base)


# ---- local ---------------------------------------------------------------------------------------


async def test_local_two_hosts_share_a_vpc_without_clashes() -> None:
    vpc = LocalVpc("10.9.0.0/24", security_groups={"sg-a"})
    a, b = LocalProvider("a", vpc, "t3.large"), LocalProvider("b", vpc, "t3.large")
    seen: list[str] = []
    for p in (a, b):
        for i in (1, 2):
            eni = await p.create_eni(("sg-a",), i)
            seen += [eni.primary_ip, *await p.assign_ips(eni.eni_id, 11)]
        with pytest.raises(EniLimitReached):
            await p.create_eni(("sg-a",), 3)
    assert len(seen) == len(set(seen)) == 2 * 2 * 12
    eni = (await a.list_enis())[0]
    with pytest.raises(IpLimitReached):
        await a.assign_ips(eni.eni_id, 1)
    with pytest.raises(UnknownSecurityGroup):
        await a.create_eni(("sg-nope",), 3)


async def test_local_subnet_exhausted() -> None:
    vpc = LocalVpc("10.9.0.0/28")  # 11 usable addresses
    p = LocalProvider("a", vpc, "m5.8xlarge")
    eni = await p.create_eni(("sg",), 1)
    got = await p.assign_ips(eni.eni_id, 10)
    assert len(got) == 10
    with pytest.raises(SubnetExhausted):
        await p.assign_ips(eni.eni_id, 1)


async def test_pool_burst_restart_no_duplicates_no_leaks(tmp_path: Path) -> None:
    vpc = LocalVpc("10.8.0.0/20")
    provider = LocalProvider("a", vpc, "m5.8xlarge")
    cfg = pool_config(provider, default_security_groups=("sg-default",))
    path = tmp_path / "ipam.json"
    pool = NetworkPool(provider, cfg, path, error_backoff_s=0.01)
    await pool.start()
    leases = await asyncio.gather(*(pool.acquire(f"t{i}", []) for i in range(30)))
    assert len({le.address for le in leases}) == 30
    calls_for_30 = provider.api_calls
    assert calls_for_30 <= 8, calls_for_30
    # Restart mid-burst: 20 more launches in flight when the agent dies.
    burst = [asyncio.create_task(pool.acquire(f"u{i}", [])) for i in range(20)]
    await asyncio.sleep(0)
    await pool.close()
    for t in burst:
        t.cancel()
    await asyncio.gather(*burst, return_exceptions=True)
    survivors = {le.task_id: le.address for le in leases[:20]}  # t20..t29 died with the agent
    pool2 = NetworkPool(provider, cfg, path, error_backoff_s=0.01)
    report = await pool2.start(existing=survivors)
    assert report.kept == survivors
    dead = {f"t{i}" for i in range(20, 30)} | {f"u{i}" for i in range(20)}
    assert {f"t{i}" for i in range(20, 30)} <= set(report.released) <= dead
    more = await asyncio.gather(*(pool2.acquire(f"v{i}", []) for i in range(20)))
    in_use = list(survivors.values()) + [le.address for le in more]
    assert len(in_use) == len(set(in_use))
    # Nothing leaked: every address the VPC handed this node is known to the pool.
    vpc_addresses = {a for e in vpc.enis.values() for a in e.secondary}
    assert vpc_addresses == set(pool2.pool.ips)
    assert json.loads(path.read_text())["version"] == "titus-ipam/1"
    await pool2.close()


async def test_pool_errors_are_typed_and_waiting_times_out() -> None:
    provider = LocalProvider("a", LocalVpc("10.7.0.0/24", security_groups={"sg-ok"}), "t3.small")
    cfg = pool_config(provider, default_security_groups=("sg-ok",), warm_ip_target=0)
    pool = NetworkPool(provider, cfg, acquire_timeout_s=0.5, error_backoff_s=0.01)
    await pool.start()
    with pytest.raises(UnknownSecurityGroup):
        await pool.acquire("t1", ["sg-missing"])
    provider.fail_next = [ProviderThrottled("throttled")] * 100
    with pytest.raises(PoolTimeout, match="throttled"):
        await pool.acquire("t2", ["sg-ok"])
    provider.fail_next = []
    pool.errors.clear()
    # t3.small: 2 container ENIs x 3 IPs
    leases = [await pool.acquire(f"x{i}", ["sg-ok"]) for i in range(3)]
    assert len({le.address for le in leases}) == 3
    await pool.release("x0")
    with pytest.raises(PoolTimeout):  # the one free IP is cooling; pool is at its limits
        await pool.acquire("x4", ["sg-ok"]) and await pool.acquire("x5", ["sg-ok"]) and await pool.acquire(
            "x6", ["sg-ok"]) and await pool.acquire("x7", ["sg-ok"])
    assert pool.pool.eni_count() <= 2
    await pool.close()


# ---- aws against moto ----------------------------------------------------------------------------


async def test_aws_eni_lifecycle_tags_limits_uniqueness(ec2: Ec2World) -> None:
    p = aws(ec2, instance_type="m5.8xlarge")  # 7 container ENIs x 29 IPs
    web = sg_key([ec2.groups["web"]])
    eni = await p.create_eni(web, 1)
    doc = ec2.client.describe_network_interfaces(NetworkInterfaceIds=[eni.eni_id])["NetworkInterfaces"][0]
    tags = {t["Key"]: t["Value"] for t in doc["TagSet"]}
    assert tags[TAG_NODE] == "node-a" and TAG_CREATED in tags
    assert doc["Attachment"]["InstanceId"] == ec2.instance_id
    got = await p.assign_ips(eni.eni_id, 29)
    assert len(got) == len(set(got)) == 29
    with pytest.raises(IpLimitReached):
        await p.assign_ips(eni.eni_id, 1)
    for i in range(2, 8):
        e = await p.create_eni(web, i)
        await p.assign_ips(e.eni_id, 29)
    with pytest.raises(EniLimitReached):
        await p.create_eni(web, 8)
    addresses = all_moto_addresses(ec2)
    dupes = [a for a, n in collections.Counter(addresses).items() if n > 1]
    assert dupes == [], "provider let moto's duplicate addresses through"
    listed = await p.list_enis()
    assert len(listed) == 7 and all(len(e.secondary_ips) == 29 for e in listed)
    await p.unassign_ips(eni.eni_id, got[:5])
    await p.delete_eni(listed[-1].eni_id)
    assert len(await p.list_enis()) == 6


async def test_aws_unknown_group_and_leaked_eni_gc(ec2: Ec2World) -> None:
    p = aws(ec2)
    with pytest.raises(UnknownSecurityGroup):
        await p.create_eni(("sg-0000000000000dead",), 1)
    # A leak: created and tagged by this node, never attached. Plus a foreign ENI that must survive.
    mine = ec2.client.create_network_interface(
        SubnetId=ec2.subnet_id, Groups=[ec2.groups["web"]],
        TagSpecifications=[{"ResourceType": "network-interface", "Tags": [
            {"Key": TAG_NODE, "Value": "node-a"}, {"Key": TAG_CREATED, "Value": "1000"}]}],
    )["NetworkInterface"]["NetworkInterfaceId"]
    young = ec2.client.create_network_interface(
        SubnetId=ec2.subnet_id, Groups=[ec2.groups["web"]],
        TagSpecifications=[{"ResourceType": "network-interface", "Tags": [
            {"Key": TAG_NODE, "Value": "node-a"}, {"Key": TAG_CREATED, "Value": str(int(time.time()))}]}],
    )["NetworkInterface"]["NetworkInterfaceId"]
    foreign = ec2.client.create_network_interface(SubnetId=ec2.subnet_id, Groups=[ec2.groups["web"]])[
        "NetworkInterface"]["NetworkInterfaceId"]
    pool = NetworkPool(p, pool_config(p, default_security_groups=(ec2.groups["web"],), warm_ip_target=0))
    assert await pool.collect_leaked_enis(older_than_s=300) == [mine]
    remaining = {e["NetworkInterfaceId"] for e in ec2.client.describe_network_interfaces()["NetworkInterfaces"]}
    assert mine not in remaining and young in remaining and foreign in remaining


class Flaky:
    """An EC2 client that answers `failures` errors of `code` before passing calls through."""

    def __init__(self, inner: Any, code: str, failures: int, status: int = 503) -> None:
        self.inner, self.code, self.failures, self.status = inner, code, failures, status

    def __getattr__(self, name: str) -> Any:
        from botocore.exceptions import ClientError

        def call(**kw: Any) -> Any:
            if self.failures > 0:
                self.failures -= 1
                raise ClientError(
                    {"Error": {"Code": self.code, "Message": "injected"},
                     "ResponseMetadata": {"HTTPStatusCode": self.status}}, name)
            return getattr(self.inner, name)(**kw)

        return call


async def test_aws_throttling_is_retried_then_reported(ec2: Ec2World) -> None:
    p = aws(ec2, client=Flaky(ec2.client, "RequestLimitExceeded", failures=3))
    eni = await p.create_eni((ec2.groups["web"],), 1)  # 3 throttles absorbed by retries
    assert p.retries == 3 and eni.eni_id.startswith("eni-")
    p2 = aws(ec2, client=Flaky(ec2.client, "RequestLimitExceeded", failures=100))
    with pytest.raises(ProviderThrottled):
        await p2.list_enis()
    assert p2.api_calls == 4  # max_attempts, each one counted
    p3 = aws(ec2, client=Flaky(ec2.client, "InternalError", failures=100, status=500))
    with pytest.raises(ProviderUnavailable):
        await p3.list_enis()


async def test_aws_pool_burst_of_50_calls_per_launch(ec2: Ec2World) -> None:
    p = aws(ec2, instance_type="m5.24xlarge")
    web = ec2.groups["web"]
    cfg = pool_config(p, default_security_groups=(web,), warm_ip_target=8, burst_batch=32)
    pool = NetworkPool(p, cfg, error_backoff_s=0.01)
    await pool.start()
    await pool.refill_once()
    before, repairs_before = p.api_calls, p.repair_calls
    leases = await asyncio.gather(*(pool.acquire(f"t{i}", [web]) for i in range(50)))
    # Calls that only replace moto's duplicate addresses (EC2 gives none) are not the pool's batching.
    per_launch = (p.api_calls - before - (p.repair_calls - repairs_before)) / 50
    assert len({le.address for le in leases}) == 50
    assert per_launch <= 0.2, per_launch
    # moto itself may keep a duplicate (its own bookkeeping, e.g. a replaced ENI's address offered
    # again elsewhere); what this node hands out must be distinct and really on EC2's side.
    on_moto = set(all_moto_addresses(ec2))
    assert {le.address for le in leases} <= on_moto
    await pool.close()


async def test_aws_subnet_exhausted(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import netns.providers.aws as aws_module

    # In a /28, moto draws an ENI's primary address from all 16 (5 reserved, which EC2 never
    # hands out): three replacement rounds all landing on reserved ones is a 3% flake (CI hit it).
    monkeypatch.setattr(aws_module, "REPLACEMENT_ROUNDS", 12)
    world = make_world(moto_endpoint, subnet_cidr="10.20.0.0/28")  # 11 usable
    p = aws(world)
    eni = await p.create_eni((world.groups["web"],), 1)
    got = await p.assign_ips(eni.eni_id, 8)
    # moto draws at random, reserved addresses included; the provider gives those back and may
    # return fewer than asked (the pool asks again), but never a reserved or duplicate address.
    assert 1 <= len(got) == len(set(got)) <= 8 and eni.primary_ip not in got
    assert all(4 <= int(a.rsplit(".", 1)[1]) <= 14 for a in got)
    with pytest.raises(SubnetExhausted):
        await p.assign_ips(eni.eni_id, 5)


async def test_pool_saves_of_a_burst_are_group_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """30 acquires at once: each returns only once a write covering its lease is on disk, and they
    share writes instead of queueing 30 in a row (netns/pool.py `save`)."""
    import netns.pool as pool_module

    writes: list[int] = []
    real = pool_module.atomic_write_json

    def counting(path: Path, doc: Any) -> None:
        real(path, doc)
        writes.append(len(json.dumps(doc)))

    monkeypatch.setattr(pool_module, "atomic_write_json", counting)
    provider = LocalProvider("a", LocalVpc("10.9.0.0/20"), "m5.8xlarge")
    path = tmp_path / "ipam.json"
    pool = NetworkPool(provider, pool_config(provider, default_security_groups=("sg-default",)), path,
                       error_backoff_s=0.01)
    await pool.start()
    writes.clear()

    async def acquire_and_check(i: int) -> str:
        lease = await pool.acquire(f"t{i}", [])
        assert lease.address in path.read_text()  # durable before acquire returned
        return lease.address

    addresses = await asyncio.gather(*(acquire_and_check(i) for i in range(30)))
    assert len(set(addresses)) == 30
    assert 1 <= len(writes) < 30, writes
    await pool.close()
