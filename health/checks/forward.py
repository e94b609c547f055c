"""The host's forward hooks (`forward`): would netfilter drop tasks' forwarded traffic?

Tasks' packets are routed by the host between their `tn…` links and the ENI (or uplink), so they
cross every base chain on the `forward` hook of the `ip` and `inet` families. Stock dockerd with
iptables sets `FORWARD` policy DROP (iptables-nft: `table ip filter`, chain `FORWARD`) and accepts
only its own bridges; a firewall reload can do the same later, after the start-up pre-flight
(agent/host/preflight.py) passed. The agent reads `nft -j list ruleset` (netns/inspect.py) every
period; `forward_verdicts` walks each base forward chain in order for a task's packet in each
direction (`iifname "tn*"` out of a task, `oifname "tn*"` into one):
- a rule that applies to all such packets (no match but the interface one; counters, logs and
  comments are neutral) decides: `accept`, `drop`/`reject`, or `jump`/`goto` into a chain walked
  the same way (depth ≤ 8; a chain that decides nothing returns);
- rules with any other match (addresses, ports, conntrack state, sets) are selective: skipped, so
  `ip daddr <control plane> drop` (netns/isolation.py) is not a drop of tasks' traffic;
- nothing decided: the chain's policy.
A base chain whose verdict is drop in either direction → failed `ForwardDropsTasks` on aws (no
task traffic at all), degraded on the local provider (as the pre-flight judges); the fix is
`iptables -I FORWARD -i tn+ -j ACCEPT; iptables -I FORWARD -o tn+ -j ACCEPT` (or the nft rules).
`nft` unreadable → degraded `ForwardUnreadable`. Rules of iptables-legacy are not in nft's view:
when the kernel has a legacy `filter` table its `FORWARD` chain is judged the same way
(health/checks/forward_legacy.py) and reported as chain `legacy filter FORWARD`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from health.blocking import Worker
from health.checks.forward_legacy import legacy_verdicts
from health.model import Observation, degraded, failed, ok
from titus_common.protocol import EvidenceValue

__all__ = ["ChainVerdict", "ForwardCheck", "ForwardFacts", "forward_verdicts"]

NEUTRAL = {"counter", "log", "comment"}
MAX_DEPTH = 8
Key = tuple[str, str, str]  # family, table, chain


@dataclass(frozen=True)
class ChainVerdict:
    chain: str  # "family table chain"
    policy: str
    from_tasks: str  # "accept" | "drop"
    to_tasks: str


@dataclass(frozen=True)
class ForwardFacts:
    provider: str
    ruleset: Mapping[str, Any] | None  # `nft -j list ruleset`; None: unreadable
    error: str = ""
    legacy: str | None = None  # `iptables-legacy -S` of the legacy filter table; None: the host has none


def _iface(match: Mapping[str, Any], prefix: str) -> str | None:
    """"in"/"out" for `iifname|oifname == "<prefix>*"` (or a longer wildcard of ours), else None."""
    left, right = match.get("left"), match.get("right")
    key = left.get("meta", {}).get("key") if isinstance(left, dict) and isinstance(left.get("meta"), dict) else None
    if key not in ("iifname", "oifname") or match.get("op", "==") not in ("==", "in") or not isinstance(right, str):
        return None
    if not (right.startswith(prefix) and right.endswith("*")) and right != prefix + "*":
        return None
    return "in" if key == "iifname" else "out"


def _rule_action(expr: Sequence[Any], direction: str, prefix: str) -> tuple[str, str | None] | None:
    """(verdict, jump target) when the rule applies to every task packet of `direction`, else None."""
    verdict: tuple[str, str | None] | None = None
    for e in expr:
        if not isinstance(e, dict) or len(e) != 1:
            return None
        (kind, body), = e.items()
        if kind in NEUTRAL:
            continue
        if kind == "match":
            if not isinstance(body, dict) or _iface(body, prefix) != direction:
                return None  # selective, or the other direction
            continue
        if kind in ("accept", "drop", "reject", "return"):
            verdict = ("drop" if kind == "reject" else kind, None)
        elif kind in ("jump", "goto") and isinstance(body, dict):
            verdict = (kind, str(body.get("target", "")))
        else:
            return None  # anything else (xt matches, limits, sets, mangling): not a plain verdict
    return verdict


def _walk(key: Key, direction: str, rules: Mapping[Key, list[Sequence[Any]]], prefix: str, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return None
    for expr in rules.get(key, []):
        action = _rule_action(expr, direction, prefix)
        if action is None:
            continue
        verdict, target = action
        if verdict in ("accept", "drop"):
            return verdict
        if verdict == "return":
            return None
        if target:
            decided = _walk((key[0], key[1], target), direction, rules, prefix, depth + 1)
            if decided is not None:
                return decided
    return None


def forward_verdicts(ruleset: Mapping[str, Any], prefix: str = "tn") -> list[ChainVerdict]:
    """Each `ip`/`inet` base chain on the forward hook, with what it does to a task's packets."""
    chains: list[Mapping[str, Any]] = []
    rules: dict[Key, list[Sequence[Any]]] = {}
    for item in ruleset.get("nftables") or []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("chain"), dict):
            chains.append(item["chain"])
        elif isinstance(item.get("rule"), dict):
            r = item["rule"]
            k = (str(r.get("family")), str(r.get("table")), str(r.get("chain")))
            rules.setdefault(k, []).append(r.get("expr") or [])
    out: list[ChainVerdict] = []
    for c in chains:
        if c.get("hook") != "forward" or c.get("family") not in ("ip", "inet"):
            continue
        key = (str(c["family"]), str(c.get("table")), str(c.get("name")))
        policy = str(c.get("policy") or "accept")
        base = "drop" if policy == "drop" else "accept"
        verdicts = [_walk(key, d, rules, prefix, 0) or base for d in ("in", "out")]
        out.append(ChainVerdict(" ".join(key), policy, verdicts[0], verdicts[1]))
    return out


class ForwardCheck:
    name = "forward"

    def __init__(self, facts: Callable[[], ForwardFacts], *, prefix: str = "tn", period: float = 30.0,
                 timeout: float = 15.0) -> None:
        self.facts = facts  # blocking (runs nft): on the check's own thread
        self.prefix = prefix
        self.period = period
        self.timeout = timeout
        self._worker = Worker(self.name)

    async def run(self) -> Observation:
        f = await self._worker.call(self.facts)
        if f.ruleset is None:
            return degraded("ForwardUnreadable", f"cannot read the forward hooks: {f.error}"[:256], provider=f.provider)
        chains = forward_verdicts(f.ruleset, self.prefix)
        legacy = legacy_verdicts(f.legacy, self.prefix) if f.legacy is not None else None
        if legacy is not None:
            chains.append(ChainVerdict("legacy filter FORWARD", *legacy))
        evidence: dict[str, EvidenceValue] = {"provider": f.provider, "forwardChains": len(chains)}
        dropping = [c for c in chains if "drop" in (c.from_tasks, c.to_tasks)]
        for c in dropping[:8]:
            evidence[f"chain.{c.chain}"] = f"policy {c.policy}; from tasks {c.from_tasks}, to tasks {c.to_tasks}"
        if dropping:
            c = dropping[0]
            message = (f"forward chain {c.chain} (policy {c.policy}) drops tasks' traffic "
                       f"(from tasks: {c.from_tasks}, to tasks: {c.to_tasks}); accept iifname/oifname "
                       f"\"{self.prefix}*\" there")
            return (failed if f.provider == "aws" else degraded)("ForwardDropsTasks", message, **evidence)
        return ok("ForwardOk", **evidence)
