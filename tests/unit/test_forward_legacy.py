"""The `forward` check's walk of iptables-legacy's FORWARD chain (health/checks/forward_legacy.py):
what `iptables-legacy -S` prints, judged for a task's packet in each direction."""

from __future__ import annotations

import asyncio

import pytest

from health.checks.forward import ForwardCheck, ForwardFacts
from health.checks.forward_legacy import legacy_verdicts
from titus_common.protocol import HealthStatus

POLICIES = "-P INPUT ACCEPT\n-P FORWARD {policy}\n-P OUTPUT ACCEPT\n"


def table(policy: str, *rules: str) -> str:
    return POLICIES.format(policy=policy) + "".join(r + "\n" for r in rules)


@pytest.mark.parametrize("text, want", [
    # a fresh legacy table: nothing drops
    (table("ACCEPT"), ("ACCEPT", "accept", "accept")),
    # stock dockerd on iptables-legacy: policy DROP, its bridges accepted, task links not
    (table("DROP", "-N DOCKER-USER", "-A DOCKER-USER -j RETURN", "-A FORWARD -j DOCKER-USER",
           "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
           "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT"), ("DROP", "drop", "drop")),
    # one direction accepted: the answers are still dropped
    (table("DROP", "-A FORWARD -i tn+ -j ACCEPT"), ("DROP", "accept", "drop")),
    # both, through a user chain, with a comment and counters on the rules
    (table("DROP", "-N TITUS", '-A TITUS -i tn+ -m comment --comment "titus tasks" -j ACCEPT',
           "-A TITUS -c 10 2000 -o tn+ -j ACCEPT", "-A FORWARD -j TITUS"), ("DROP", "accept", "accept")),
    # an unconditional drop before any accept decides, whatever the policy
    (table("ACCEPT", "-A FORWARD -j DROP", "-A FORWARD -i tn+ -j ACCEPT"), ("ACCEPT", "drop", "drop")),
    # REJECT is a drop; LOG decides nothing
    (table("ACCEPT", "-A FORWARD -j LOG --log-prefix fw", "-A FORWARD -o tn+ -j REJECT"),
     ("ACCEPT", "accept", "drop")),
    # selective rules (an address, a protocol, another interface, a negation) are skipped
    (table("ACCEPT", "-A FORWARD -d 10.99.0.0/16 -j DROP", "-A FORWARD -p udp -j DROP",
           "-A FORWARD -i eth0 -j DROP", "-A FORWARD ! -i tn+ -j DROP"), ("ACCEPT", "accept", "accept")),
    # a jump loop ends at the depth bound, then the policy
    (table("DROP", "-N A", "-A A -j A", "-A FORWARD -j A"), ("DROP", "drop", "drop")),
    # a RETURN from a user chain goes on in FORWARD
    (table("ACCEPT", "-N B", "-A B -j RETURN", "-A B -j DROP", "-A FORWARD -j B"), ("ACCEPT", "accept", "accept")),
])
def test_legacy_verdicts(text: str, want: tuple[str, str, str]) -> None:
    assert legacy_verdicts(text, "tn") == want


def test_text_without_a_forward_chain_is_no_verdict() -> None:
    assert legacy_verdicts("", "tn") is None
    assert legacy_verdicts("-P INPUT ACCEPT\n-A INPUT -j 'unbalanced\n", "tn") is None


def run(check: ForwardCheck) -> tuple[HealthStatus, str, dict[str, object]]:
    obs = asyncio.run(check.run())
    return obs.status, obs.reason, dict(obs.evidence)


def test_a_legacy_drop_fails_the_check_beside_an_accepting_nft_ruleset() -> None:
    nft_ok: dict[str, object] = {"nftables": []}
    dropping = table("DROP")
    status, reason, evidence = run(ForwardCheck(lambda: ForwardFacts("aws", nft_ok, legacy=dropping)))
    assert (status, reason) == (HealthStatus.FAILED, "ForwardDropsTasks")
    assert "policy DROP" in str(evidence["chain.legacy filter FORWARD"])
    assert run(ForwardCheck(lambda: ForwardFacts("local", nft_ok, legacy=dropping)))[0] is HealthStatus.DEGRADED
    accepting = table("DROP", "-A FORWARD -i tn+ -j ACCEPT", "-A FORWARD -o tn+ -j ACCEPT")
    assert run(ForwardCheck(lambda: ForwardFacts("aws", nft_ok, legacy=accepting)))[:2] == (
        HealthStatus.OK, "ForwardOk")
    assert run(ForwardCheck(lambda: ForwardFacts("aws", nft_ok)))[:2] == (HealthStatus.OK, "ForwardOk")
