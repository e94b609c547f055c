"""Verifying an EC2 instance identity document (scheduler/iid.py): real RSA signatures by a test
"AWS" key (tests/ec2sim/iid.py), checked against the certificate the policy names."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from scheduler.iid import IdentityRefused, IidVerifier, instance_arn, instance_of_arn
from tests.ec2sim.iid import ACCOUNT, IidAuthority, identity_document
from titus_common.errors import ConfigError

INSTANCE = "i-0123456789abcdef0"


@pytest.fixture(scope="module")
def aws() -> IidAuthority:
    return IidAuthority()


@pytest.fixture
def verifier(aws: IidAuthority, tmp_path: Path) -> IidVerifier:
    return IidVerifier.load(aws.write_policy(tmp_path, nodeIds={"i-00000000000000aaa": "web-1"},
                                             maxDocumentAgeSeconds=600))


def refusal(verifier: IidVerifier, document: str, signature: str, node: str = INSTANCE, **kw: bool) -> str:
    with pytest.raises(IdentityRefused) as e:
        verifier.verify(document, signature, node, time.time(), **kw)
    return e.value.reason


def test_a_good_document_binds_the_instance(aws: IidAuthority, verifier: IidVerifier) -> None:
    doc = identity_document(INSTANCE)
    binding = verifier.verify(doc, aws.sign(doc), INSTANCE, time.time())
    assert (binding.instance_id, binding.account_id, binding.region) == (INSTANCE, ACCOUNT, "us-east-1")
    assert binding.arn == f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{INSTANCE}"
    assert instance_of_arn(binding.arn) == INSTANCE and instance_of_arn("spiffe://x/y") is None
    # a configured mapping: the instance joins under its node name, and only under it
    mapped = identity_document("i-00000000000000aaa")
    assert verifier.verify(mapped, aws.sign(mapped), "web-1", time.time()).instance_id == "i-00000000000000aaa"
    assert refusal(verifier, mapped, aws.sign(mapped), "i-00000000000000aaa") == "iid_node"


def test_wrong_signer_is_refused(verifier: IidVerifier) -> None:
    doc = identity_document(INSTANCE)
    assert refusal(verifier, doc, IidAuthority("impostor").sign(doc)) == "iid_signature"


def test_tampered_document_is_refused(aws: IidAuthority, verifier: IidVerifier) -> None:
    doc = identity_document(INSTANCE)
    sig = aws.sign(doc)
    forged = doc.replace(INSTANCE, "i-0fffffffffffffff0")
    assert refusal(verifier, forged, sig, "i-0fffffffffffffff0") == "iid_signature"
    # even a change invisible to a JSON parser: the signature is over the bytes
    assert refusal(verifier, doc + "\n", sig) == "iid_signature"
    assert refusal(verifier, doc, "not base64!") == "iid_signature"
    assert refusal(verifier, "[1, 2]", sig) == "iid_document"


def test_wrong_account_and_region_are_refused(aws: IidAuthority, tmp_path: Path) -> None:
    verifier = IidVerifier.load(aws.write_policy(tmp_path, cert_regions=("us-east-1", "eu-west-1"),
                                                 accounts=("999999999999",)))
    doc = identity_document(INSTANCE)
    assert refusal(verifier, doc, aws.sign(doc)) == "iid_policy"
    # a region without a configured certificate cannot be verified at all
    other = identity_document(INSTANCE, region="ap-south-1", account="999999999999")
    assert refusal(verifier, other, aws.sign(other)) == "iid_policy"
    # an allow-list of regions narrower than the certificates
    narrow = IidVerifier.load(aws.write_policy(tmp_path / "n", cert_regions=("us-east-1", "eu-west-1"),
                                               accounts=("999999999999",), regions=["eu-west-1"]))
    ok = identity_document(INSTANCE, account="999999999999")
    assert refusal(narrow, ok, aws.sign(ok)) == "iid_policy"


def test_stale_and_future_documents_are_refused(aws: IidAuthority, verifier: IidVerifier) -> None:
    old = identity_document(INSTANCE, pending=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert refusal(verifier, old, aws.sign(old)) == "iid_stale"
    # a re-admitted instance is not held to the bound (the route passes check_age=False)
    assert verifier.verify(old, aws.sign(old), INSTANCE, time.time(), check_age=False).instance_id == INSTANCE
    future = identity_document(INSTANCE, pending=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert refusal(verifier, future, aws.sign(future)) == "iid_stale"
    skewed = identity_document(INSTANCE, pending=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=4))
    assert verifier.verify(skewed, aws.sign(skewed), INSTANCE, time.time()).instance_id == INSTANCE


def test_a_bad_policy_file_is_a_config_error(aws: IidAuthority, tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    for doc, words in (({"certificates": {}, "accounts": [ACCOUNT]}, "certificates"),
                       ({"certificates": {"us-east-1": [str(tmp_path / "none.pem")]}, "accounts": [ACCOUNT]}, "none.pem"),
                       ({"certificates": {"us-east-1": []}, "accounts": ["12"]}, "accounts"),
                       ({"certificates": {"*": []}, "accounts": [ACCOUNT], "extra": 1}, "extra")):
        bad.write_text(json.dumps(doc))
        with pytest.raises(ConfigError, match=words):
            IidVerifier.load(bad)
    with pytest.raises(ConfigError, match="cannot|No such"):
        IidVerifier.load(tmp_path / "missing.json")
    assert instance_arn("us-east-1", ACCOUNT, INSTANCE).endswith(f":instance/{INSTANCE}")
