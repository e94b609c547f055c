"""The agent's half of instance attestation (agent/host/instance_proof.py): the document and its
signature read from the fake IMDSv2 (token first), byte for byte, verify at the scheduler."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from agent.host.instance_proof import read_instance_proof
from netns.providers.ec2_identity import IdentityUnavailable
from scheduler.iid import IidVerifier
from tests.ec2sim.iid import IidAuthority
from tests.ec2sim.imds import FakeImds

INSTANCE = "i-0123456789abcdef0"


class OneInstance:
    """What FakeImds asks of EC2, for one running instance (no moto needed for this)."""

    def describe_instances(self, InstanceIds: list[str]) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        return {"Reservations": [{"Instances": [{
            "InstanceType": "m5.large", "Placement": {"AvailabilityZone": "us-east-1a"},
            "PrivateIpAddress": "10.0.0.10", "LaunchTime": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)}]}]}

    def describe_network_interfaces(self, Filters: list[Any]) -> dict[str, Any]:  # noqa: N803
        return {"NetworkInterfaces": []}


def test_the_proof_read_from_imdsv2_verifies(tmp_path: Path) -> None:
    aws = IidAuthority()
    verifier = IidVerifier.load(aws.write_policy(tmp_path))
    with FakeImds(OneInstance(), INSTANCE, signer=aws) as imds:
        proof = read_instance_proof(imds.endpoint)
        assert imds.requests[0] == ("PUT", "/latest/api/token")
    assert proof["document"].startswith("{\n") and "\n" in proof["signature"]  # as served: not re-encoded
    binding = verifier.verify(proof["document"], proof["signature"], INSTANCE, time.time())
    assert binding.instance_id == INSTANCE and binding.region == "us-east-1"


def test_no_signature_or_no_imds_is_one_clear_error() -> None:
    with FakeImds(OneInstance(), INSTANCE) as imds, \
            pytest.raises(IdentityUnavailable, match="instance-identity/signature: HTTP 404"):
        read_instance_proof(imds.endpoint)
    with pytest.raises(IdentityUnavailable, match="token .*unreachable"):
        read_instance_proof("http://127.0.0.1:9", timeout_s=0.5)
