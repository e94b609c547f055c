"""Fixtures for the netns tests: a moto EC2 server on loopback (own process, free port) and a small
world in it: a VPC, a subnet, security groups and an instance to attach ENIs to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.moto_server import moto_server



@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@dataclass
class Ec2World:
    client: Any
    endpoint: str
    subnet_id: str
    instance_id: str
    groups: dict[str, str]


def ec2_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("ec2", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}))


def make_world(endpoint: str, subnet_cidr: str = "10.20.0.0/20", instance_type: str = "m5.8xlarge") -> Ec2World:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
    client = ec2_client(endpoint)
    vpc = client.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock=subnet_cidr)["Subnet"]["SubnetId"]
    groups = {
        name: client.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
        for name in ("web", "db")
    }
    instance = client.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType=instance_type, SubnetId=subnet
    )["Instances"][0]["InstanceId"]
    return Ec2World(client, endpoint, subnet, instance, groups)


@pytest.fixture
def ec2(moto_endpoint: str) -> Ec2World:
    return make_world(moto_endpoint)
