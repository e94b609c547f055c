"""Placement constraints of a job (docs/scheduling.md), hard (a host that breaks one is not
eligible) or soft (a host that breaks one scores lower). Validated once, at submit: unknown names and
contradictory hard constraints are refused naming the field.

Names (values are strings, as in Titus's v3 API):
- `uniqueHost`: "true" — at most one task of the job per host.
- `maxPerHost`: "N" (1..1000) — at most N tasks of the job per host (job anti-affinity).
- `zoneBalance`: "true" — keep the job's task count per zone within one of each other.
- `zone`: a zone name — only hosts labelled `zone=<value>`.
- `instanceType`: a type — only hosts labelled `instanceType=<value>`.
- `label.<key>`: a value — only hosts labelled `<key>=<value>`.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = ["ConstraintsSpec", "KNOWN_CONSTRAINTS", "host_attribute_requirements"]

KNOWN_CONSTRAINTS = ("uniqueHost", "maxPerHost", "zoneBalance", "zone", "instanceType", "label.<key>")
_BOOL = ("true", "false")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,252}$")


def _check(kind: str, name: str, value: str) -> str | None:
    if name in ("uniqueHost", "zoneBalance"):
        return None if value in _BOOL else f"{kind}.{name}: must be 'true' or 'false', not {value!r}"
    if name == "maxPerHost":
        if not value.isdigit() or not 1 <= int(value) <= 1000:
            return f"{kind}.{name}: must be an integer 1..1000, not {value!r}"
        return None
    if name in ("zone", "instanceType") or (name.startswith("label.") and _LABEL_KEY.match(name[6:])):
        return None if 0 < len(value) <= 253 else f"{kind}.{name}: must be 1..253 characters"
    return f"{kind}.{name}: unknown constraint; known: {', '.join(KNOWN_CONSTRAINTS)}"


class ConstraintsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)

    hard: dict[str, str] = Field(default_factory=dict)
    soft: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> ConstraintsSpec:
        problems = [p for kind, m in (("hard", self.hard), ("soft", self.soft)) for n, v in m.items()
                    if (p := _check(kind, n, v)) is not None]
        h = self.hard
        if h.get("uniqueHost") == "true" and "maxPerHost" in h and int(h["maxPerHost"]) > 1:
            problems.append("hard.maxPerHost: contradicts hard.uniqueHost=true (at most 1 per host)")
        if h.get("zoneBalance") == "true" and "zone" in h:
            problems.append("hard.zone: contradicts hard.zoneBalance=true (one zone cannot be balanced)")
        for name in set(h) & set(self.soft):
            if h[name] != self.soft[name]:
                problems.append(f"soft.{name}: contradicts hard.{name}={h[name]!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def flag(self, name: str) -> tuple[bool, bool]:
        """(hard, soft) for a boolean constraint."""
        return self.hard.get(name) == "true", self.soft.get(name) == "true"

    def max_per_host(self) -> tuple[int | None, int | None]:
        """(hard, soft) per-host caps; uniqueHost is a cap of 1."""
        def cap(m: dict[str, str]) -> int | None:
            if m.get("uniqueHost") == "true":
                return 1
            return int(m["maxPerHost"]) if "maxPerHost" in m else None
        return cap(self.hard), cap(self.soft)


def host_attribute_requirements(m: dict[str, str]) -> dict[str, str]:
    """The host labels a constraint map requires: {label key: value}."""
    out: dict[str, str] = {}
    for name, value in m.items():
        if name in ("zone", "instanceType"):
            out[name] = value
        elif name.startswith("label."):
            out[name[6:]] = value
    return out
