"""A real EC2 host's start-up and ENI lifecycle, against moto plus the simulator's IMDSv2
(tests/ec2sim): identity from IMDS and checked, limits from DescribeInstanceTypes, the VPC's default
group instead of a placeholder, DeleteOnTermination, clean detach, the cell-wide sweeper."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agent.config import load_config
from agent.host.identity import resolve_aws_host
from agent.host.network import default_security_groups, make_provider
from netns.providers.aws import TAG_CREATED, TAG_NODE, AwsConfig, AwsProvider
from netns.providers.ec2_identity import read_identity, region_hostname_suffix
from tests.ec2sim.imds import FakeImds
from tests.netns.conftest import Ec2World
from titus_common.errors import EXIT_BAD_CONFIG, EXIT_PROVIDER, ConfigError, ProviderError, exit_code_for


async def no_sleep(_: float) -> None:
    return None


class Recording:
    """Passes calls through to the client and records (operation, kwargs)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        def call(**kw: Any) -> Any:
            self.calls.append((name, kw))
            return getattr(self.inner, name)(**kw)
        return call


def agent_config(ec2: Ec2World, imds: FakeImds, *extra: str) -> Any:
    return load_config(["--network-provider", "aws", "--aws-imds-identity", "--aws-endpoint-url", ec2.endpoint,
                        *extra], environ={"TITUS_AGENT_AWS_IMDS_ENDPOINT": imds.endpoint})


def test_identity_from_imdsv2_fills_the_config(ec2: Ec2World, caplog: pytest.LogCaptureFixture) -> None:
    with FakeImds(ec2.client, ec2.instance_id) as imds:
        me = read_identity(imds.endpoint)
        config = resolve_aws_host(agent_config(ec2, imds), ec2_for=lambda _: ec2.client)
    # moto's instances have IMDSv1 open (HttpTokens optional): the operator is told.
    assert "IMDS HttpTokens is 'optional', not 'required'" in caplog.text
    assert imds.requests[0] == ("PUT", "/latest/api/token")  # v2: a token first, then tokened GETs
    assert (config.aws_instance_id, config.aws_instance_type, config.aws_subnet_id) == (
        ec2.instance_id, "m5.8xlarge", ec2.subnet_id)
    assert config.aws_availability_zone == me.availability_zone and config.aws_region == "us-east-1"
    assert (config.aws_max_enis, config.aws_ipv4_per_eni) == (8, 30)
    assert region_hostname_suffix(config.aws_region) == "ec2.internal"
    assert region_hostname_suffix("eu-west-1") == "eu-west-1.compute.internal"
    # No placeholder: the VPC's own `default` group, which EC2 accepts.
    (group,) = default_security_groups(config)
    assert group.startswith("sg-") and group != "sg-default"
    vpc_default = ec2.client.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
    assert vpc_default["GroupName"] == "default"


def test_a_config_naming_another_instance_refuses(ec2: Ec2World) -> None:
    with FakeImds(ec2.client, ec2.instance_id) as imds:
        config = agent_config(ec2, imds, "--aws-instance-id", "i-0123456789abcdef0")
        with pytest.raises(ConfigError, match="aws_instance_id is 'i-0123456789abcdef0' but this instance's IMDS"
                           ) as e:
            resolve_aws_host(config, ec2_for=lambda _: ec2.client)
    assert exit_code_for(e.value) == EXIT_BAD_CONFIG


def test_imds_unreachable_or_v1_only_is_a_provider_refusal(ec2: Ec2World) -> None:
    config = load_config(["--network-provider", "aws", "--aws-imds-identity"],
                         environ={"TITUS_AGENT_AWS_IMDS_ENDPOINT": "http://127.0.0.1:9"})
    with pytest.raises(ProviderError, match="IMDS token") as e:
        resolve_aws_host(config, ec2_for=lambda _: ec2.client)
    assert exit_code_for(e.value) == EXIT_PROVIDER


def test_instance_type_outside_the_table_uses_describe_instance_types(ec2: Ec2World) -> None:
    # m7g.large is not in netns/limits.py; today's config refuses it, with IMDS it is asked of EC2.
    with FakeImds(ec2.client, ec2.instance_id) as imds:
        config = agent_config(ec2, imds).model_copy(update={"aws_imds_identity": False,
                                                             "aws_instance_id": ec2.instance_id,
                                                             "aws_subnet_id": ec2.subnet_id,
                                                             "aws_instance_type": "m7g.large"})
        recording = Recording(ec2.client)
        config = resolve_aws_host(config, ec2_for=lambda _: recording)
    assert ("describe_instance_types", {"InstanceTypes": ["m7g.large"]}) in recording.calls
    provider = make_provider(config)
    assert provider.limits.max_enis == config.aws_max_enis and provider.limits.max_enis >= 2


async def test_eni_lifecycle_delete_on_termination_and_clean_detach(ec2: Ec2World) -> None:
    recording = Recording(ec2.client)
    p = AwsProvider(AwsConfig(node_id="node-a", instance_id=ec2.instance_id, instance_type="m5.8xlarge",
                              subnet_id=ec2.subnet_id, endpoint_url=ec2.endpoint), client=recording,
                    sleep=no_sleep)
    eni = await p.create_eni((ec2.groups["web"],), 1)
    doc = ec2.client.describe_network_interfaces(NetworkInterfaceIds=[eni.eni_id])["NetworkInterfaces"][0]
    # moto 5.2 ignores ModifyNetworkInterfaceAttribute's Attachment (DeleteOnTermination stays
    # False on its side): check the request EC2 would act on.
    modify = [kw for op, kw in recording.calls if op == "modify_network_interface_attribute"]
    assert modify == [{"NetworkInterfaceId": eni.eni_id, "Attachment": {
        "AttachmentId": doc["Attachment"]["AttachmentId"], "DeleteOnTermination": True}}]
    create = next(kw for op, kw in recording.calls if op == "create_network_interface")
    assert create["TagSpecifications"][0]["ResourceType"] == "network-interface"  # tag on create
    await p.delete_eni(eni.eni_id)
    detaches = [kw for op, kw in recording.calls if op == "detach_network_interface"]
    assert detaches and all("Force" not in kw for kw in detaches) and p.forced_detaches == 0


async def test_the_cell_sweeper_deletes_another_nodes_leaked_eni(ec2: Ec2World) -> None:
    def leak(node: str, created: str) -> str:
        return str(ec2.client.create_network_interface(
            SubnetId=ec2.subnet_id, Groups=[ec2.groups["web"]],
            TagSpecifications=[{"ResourceType": "network-interface", "Tags": [
                {"Key": TAG_NODE, "Value": node}, {"Key": TAG_CREATED, "Value": created}]}],
        )["NetworkInterface"]["NetworkInterfaceId"])

    gone_host = leak("node-terminated", "1000")
    young = leak("node-b", str(int(time.time())))
    foreign = ec2.client.create_network_interface(SubnetId=ec2.subnet_id, Groups=[ec2.groups["web"]])[
        "NetworkInterface"]["NetworkInterfaceId"]
    cfg = dict(node_id="node-a", instance_id=ec2.instance_id, instance_type="m5.8xlarge",
               subnet_id=ec2.subnet_id, endpoint_url=ec2.endpoint)
    own_only = AwsProvider(AwsConfig(**cfg), client=ec2.client, sleep=no_sleep)  # type: ignore[arg-type]
    assert await own_only.find_leaked_enis(300, time.time()) == []
    sweeper = AwsProvider(AwsConfig(**cfg, sweep_cell=True), client=ec2.client, sleep=no_sleep)  # type: ignore[arg-type]
    assert await sweeper.find_leaked_enis(300, time.time()) == [gone_host]
    await sweeper.delete_leaked_eni(gone_host)
    left = {e["NetworkInterfaceId"] for e in ec2.client.describe_network_interfaces()["NetworkInterfaces"]}
    assert gone_host not in left and young in left and foreign in left


class Exhausted:
    """EC2 answering every create/assign with InsufficientFreeAddressesInSubnet; counts them."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.refused = inner, 0

    def __getattr__(self, name: str) -> Any:
        from botocore.exceptions import ClientError

        def call(**kw: Any) -> Any:
            if name in ("create_network_interface", "assign_private_ip_addresses"):
                self.refused += 1
                raise ClientError({"Error": {"Code": "InsufficientFreeAddressesInSubnet", "Message": "x"},
                                   "ResponseMetadata": {"HTTPStatusCode": 400}}, name)
            return getattr(self.inner, name)(**kw)
        return call


async def test_subnet_exhaustion_backs_off_without_an_ec2_call_storm(ec2: Ec2World) -> None:
    from netns.errors import SubnetExhausted
    from netns.ipam import PoolConfig
    from netns.pool import NetworkPool

    now = [1000.0]
    client = Exhausted(ec2.client)
    p = AwsProvider(AwsConfig(node_id="node-a", instance_id=ec2.instance_id, instance_type="m5.8xlarge",
                              subnet_id=ec2.subnet_id, endpoint_url=ec2.endpoint), client=client,
                    sleep=no_sleep, clock=lambda: now[0])
    web = ec2.groups["web"]
    pool = NetworkPool(p, PoolConfig(max_enis=7, ips_per_eni=29, default_security_groups=(web,),
                                     warm_ip_target=4, refill_batch=4, burst_batch=4))
    for _ in range(30):  # 30 pool passes (a minute of the refiller's 2 s error back-off)
        await pool.refill_once()
    assert client.refused == 1 and p.exhausted_refusals >= 29
    assert p.backoff()["subnet_exhausted_cooldown_s"] == 120.0
    now[0] += 121
    await pool.refill_once()
    assert client.refused == 2  # asked again once the cooldown is over
    with pytest.raises(SubnetExhausted, match="not asking EC2 again for 120s"):
        await p.create_eni((web,), 1)


async def test_device_indexes_taken_by_other_tools_enis_are_skipped(ec2: Ec2World) -> None:
    from netns.ipam import PoolConfig
    from netns.pool import NetworkPool

    web = ec2.groups["web"]
    # Another tool's ENI (no titus tag) at device index 1.
    other = ec2.client.create_network_interface(SubnetId=ec2.subnet_id, Groups=[web])["NetworkInterface"]
    ec2.client.attach_network_interface(NetworkInterfaceId=other["NetworkInterfaceId"], InstanceId=ec2.instance_id,
                                        DeviceIndex=1)
    p = AwsProvider(AwsConfig(node_id="node-a", instance_id=ec2.instance_id, instance_type="m5.8xlarge",
                              subnet_id=ec2.subnet_id, endpoint_url=ec2.endpoint), client=ec2.client,
                    sleep=no_sleep)
    pool = NetworkPool(p, PoolConfig(max_enis=7, ips_per_eni=29, default_security_groups=(web,),
                                     warm_ip_target=2, refill_batch=2))
    await pool.start()
    try:
        assert p.foreign_device_indexes() == {0, 1}
        assert [e.eni_id for e in await p.list_enis()] == []  # never adopted as ours
        for _ in range(400):  # the refiller (started by `start`) grows the pool to its warm target
            if pool.enis and pool.pool.counts(time.time())["free"] >= 2:
                break
            await asyncio.sleep(0.05)
        (mine,) = pool.enis.values()
        assert mine.device_index == 2
    finally:
        await pool.close()
        for eni in list(pool.enis):
            await p.delete_eni(eni)


class FailingAfterAttach:
    """EC2 that attaches, then refuses the DeleteOnTermination call and the cleanup detach while
    `broken` is set (an IAM policy missing both, an API outage mid-create)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.broken = inner, True

    def __getattr__(self, name: str) -> Any:
        from botocore.exceptions import ClientError

        def call(**kw: Any) -> Any:
            if self.broken and name in ("modify_network_interface_attribute", "detach_network_interface"):
                raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "x"},
                                   "ResponseMetadata": {"HTTPStatusCode": 403}}, name)
            return getattr(self.inner, name)(**kw)
        return call


async def test_an_eni_lost_after_attach_is_found_and_deleted_by_the_periodic_recovery(ec2: Ec2World) -> None:
    from netns.ipam import PoolConfig
    from netns.pool import NetworkPool
    from netns.step import TaskNetworks
    from netns.wiring import Wiring

    web = ec2.groups["web"]
    client = FailingAfterAttach(ec2.client)
    p = AwsProvider(AwsConfig(node_id="node-a", instance_id=ec2.instance_id, instance_type="m5.8xlarge",
                              subnet_id=ec2.subnet_id, endpoint_url=ec2.endpoint), client=client,
                    sleep=no_sleep)
    pool = NetworkPool(p, PoolConfig(max_enis=7, ips_per_eni=29, default_security_groups=(web,),
                                     warm_ip_target=2, refill_batch=2))
    networks = TaskNetworks(pool, Wiring())

    def attached() -> dict[str, int]:
        docs = ec2.client.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [ec2.instance_id]}])["NetworkInterfaces"]
        return {d["NetworkInterfaceId"]: d["Attachment"]["DeviceIndex"] for d in docs
                if d["Attachment"]["DeviceIndex"] > 0}

    assert await pool.refill_once()  # the create fails: attached, not marked, not detached
    (stray, index), = attached().items()
    assert index == 1 and stray not in pool.pool.enis and pool.enis == {}
    assert p.foreign_device_indexes() == {0, 1}  # its index is not asked for again meanwhile

    client.broken = False
    assert not await pool.refill_once()  # the pool grows past it: a new ENI at the next index
    (mine,) = pool.enis.values()
    assert mine.device_index == 2

    # The periodic pass (the agent's network GC) finds the stray and gives it back to EC2.
    report = await networks.collect_leaks(set())
    assert report.strays == [stray] and stray in report.enis
    assert attached() == {mine.eni_id: 2}
    assert ec2.client.describe_network_interfaces(
        Filters=[{"Name": "network-interface-id", "Values": [stray]}])["NetworkInterfaces"] == []
    assert p.foreign_device_indexes() == {0} and pool.pool.foreign_indexes == {0}
    assert networks.snapshot()["leaks"]["stray_enis"] == [stray]
    assert await networks.collect_leaks(set()) == type(report)()  # nothing more to find
    await p.delete_eni(mine.eni_id)
