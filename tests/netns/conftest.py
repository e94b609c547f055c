"""Fixtures for the netns tests: a moto EC2 server on loopback (own process, free port) and a small
world in it: a VPC, a subnet, security groups and an instance to attach ENIs to."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    if not MOTO_SERVER.exists():
        pytest.fail(f"{MOTO_SERVER} missing: .venv/bin/pip install 'moto[server]'")
    port = free_port()
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server did not start")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
