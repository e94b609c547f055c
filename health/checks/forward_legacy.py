"""The `forward` check's view of iptables-legacy (x_tables), which `nft list ruleset` does not show.

A host whose firewall tool still uses iptables-legacy (an old image, a vendor agent) can set FORWARD
DROP there after the agent started; tasks' forwarded packets then cross that hook too. The facts are
`iptables-legacy -S` of the `filter` table, read only when the kernel has a legacy `filter` table
(`/proc/net/ip_tables_names`; running iptables-legacy otherwise would load the module and create the
table). `legacy_verdicts` walks `FORWARD` as `forward_verdicts` walks an nft chain, for a task's
packet in each direction (`-i <prefix>+` out of a task, `-o <prefix>+` into one):
- a rule whose only matches are that interface match (or none; `-m comment` is neutral) decides:
  `ACCEPT`, `DROP`/`REJECT`, `RETURN`, or a jump into a user chain walked the same way (depth ≤ 8);
- any other match (addresses, protocols, ports, conntrack state, negations) is selective: skipped;
- nothing decided: the chain's policy (`-P FORWARD`).
Pure: no I/O here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

__all__ = ["LegacyRule", "legacy_verdicts", "parse_legacy"]

MAX_DEPTH = 8
_NEUTRAL_MODULES = {"comment"}


@dataclass(frozen=True)
class LegacyRule:
    iface: str | None  # "in" (-i <prefix>+), "out" (-o <prefix>+), None: every packet
    selective: bool  # another match: does not decide for every task packet
    target: str  # ACCEPT | DROP | REJECT | RETURN | a user chain | "" (no target: a counter)


@dataclass(frozen=True)
class LegacyRules:
    policies: dict[str, str]  # built-in chain → policy
    chains: dict[str, list[LegacyRule]]


def _rule(tokens: list[str], prefix: str) -> LegacyRule:
    iface: str | None = None
    selective = False
    target = ""
    i = 0
    while i < len(tokens):
        t = tokens[i]
        value = tokens[i + 1] if i + 1 < len(tokens) else ""
        if t in ("-j", "--jump", "-g", "--goto"):
            target, i = value, i + 2
        elif t in ("-i", "--in-interface", "-o", "--out-interface"):
            if value == prefix + "+" and iface is None:
                iface = "in" if t in ("-i", "--in-interface") else "out"
            else:
                selective = True  # another interface, or both directions named: not every task packet
            i += 2
        elif t in ("-m", "--match") and value in _NEUTRAL_MODULES:
            i += 2
            while i < len(tokens) and tokens[i].startswith("--") and tokens[i] not in ("--jump", "--goto"):
                i += 2  # the module's options (`--comment "…"`)
        elif t == "-c":
            i += 3  # packet and byte counters
        else:
            selective = True  # -s, -d, -p, !, -m state …: a match on something else
            i += 1
    return LegacyRule(iface, selective, target)


def parse_legacy(text: str, prefix: str = "tn") -> LegacyRules:
    """`iptables-legacy -S` (one table) into policies and each chain's rules in order."""
    policies: dict[str, str] = {}
    chains: dict[str, list[LegacyRule]] = {}
    for line in text.splitlines():
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue  # an unbalanced quote: not a line iptables prints
        if len(tokens) >= 3 and tokens[0] == "-P":
            policies[tokens[1]] = tokens[2]
        elif len(tokens) >= 2 and tokens[0] == "-N":
            chains.setdefault(tokens[1], [])
        elif len(tokens) >= 2 and tokens[0] == "-A":
            chains.setdefault(tokens[1], []).append(_rule(tokens[2:], prefix))
    return LegacyRules(policies, chains)


def _walk(chain: str, direction: str, rules: LegacyRules, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return None
    for r in rules.chains.get(chain, []):
        if r.selective or (r.iface is not None and r.iface != direction) or not r.target:
            continue
        if r.target == "ACCEPT":
            return "accept"
        if r.target in ("DROP", "REJECT"):
            return "drop"
        if r.target == "RETURN":
            return None
        if r.target in rules.chains:
            decided = _walk(r.target, direction, rules, depth + 1)
            if decided is not None:
                return decided
        # any other target (LOG, MARK, a target extension): not a verdict, the walk goes on
    return None


def legacy_verdicts(text: str, prefix: str = "tn") -> tuple[str, str, str] | None:
    """(policy, from tasks, to tasks) of the legacy FORWARD chain, or None when the text has none."""
    rules = parse_legacy(text, prefix)
    if "FORWARD" not in rules.policies and "FORWARD" not in rules.chains:
        return None
    policy = rules.policies.get("FORWARD", "ACCEPT")
    base = "drop" if policy in ("DROP", "REJECT") else "accept"
    out, into = (_walk("FORWARD", d, rules, 0) or base for d in ("in", "out"))
    return policy, out, into
