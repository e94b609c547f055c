"""Kernel and journal log signals: a rule engine whose rule files are node-problem-detector's
`kernel-monitor.json` format (`source`, `conditions[{type, reason, message}]`, `rules[{type:
temporary|permanent, condition, reason, pattern}]`; other keys such as `plugin`, `logPath`,
`lookback`, `bufferSize` are accepted and ignored; a journald file's `pluginConfig.source`, as NPD's
docker-monitor.json has, names the `SYSLOG_IDENTIFIER` its lines come from).

Matching as NPD: a rule's `pattern` must match a suffix of the log line (`re.search(pattern + r"\\Z")`);
NPD matches over a buffer of `bufferSize` lines, here each line alone (multi-line patterns are not
supported). Lines are cut to `MAX_LINE` characters first, so a flood of long lines costs bounded CPU.

- temporary rule → an event (counted; the last few kept as evidence); `event_degraded_count`
  events of one reason within `window` make the check degraded;
- permanent rule → its condition is set (failed) with the matching line as evidence; it clears after
  `clear_after` seconds without another match (a latched condition that never clears is NPD's
  most-reported problem, #215 #728 #936).

Bounded memory on a flood: per-rule token buckets (`max_hits_per_second`; excess lines are counted
as dropped, not stored), fixed-size rings of recent events.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from health.model import Observation, degraded, failed, ok
from titus_common.errors import ConfigError
from titus_common.protocol import EvidenceValue

__all__ = ["LogRule", "LogRules", "LogSignals", "MAX_LINE", "SHIPPED_JOURNAL_RULES", "SHIPPED_RULES", "load_rules"]

MAX_LINE = 1024
SHIPPED_RULES = Path(__file__).with_name("rules") / "kernel-monitor.json"
SHIPPED_JOURNAL_RULES = Path(__file__).with_name("rules") / "docker-monitor.json"
_CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


@dataclass(frozen=True)
class LogRule:
    kind: str  # temporary | permanent
    reason: str
    regex: re.Pattern[str]
    condition: str = ""  # permanent rules: the condition type they set


@dataclass(frozen=True)
class LogRules:
    source: str
    conditions: Mapping[str, str]  # condition type → its healthy reason
    rules: tuple[LogRule, ...]
    identifiers: tuple[str, ...] = ()  # journald: only entries of these SYSLOG_IDENTIFIERs


def _rules_from(doc: Any, where: str) -> LogRules:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    conditions: dict[str, str] = {}
    for i, c in enumerate(doc.get("conditions") or []):
        if not isinstance(c, dict) or not isinstance(c.get("type"), str) or not _CAMEL.match(c["type"]):
            raise ConfigError(f"{where}: conditions[{i}]: needs a CamelCase `type`")
        conditions[c["type"]] = str(c.get("reason") or "NoProblem")
    rules: list[LogRule] = []
    for i, r in enumerate(doc.get("rules") or []):
        at = f"{where}: rules[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{at}: expected an object")
        kind, reason, pattern = r.get("type"), r.get("reason"), r.get("pattern")
        if kind not in ("temporary", "permanent"):
            raise ConfigError(f"{at}: type must be temporary or permanent, got {kind!r}")
        if not isinstance(reason, str) or not _CAMEL.match(reason):
            raise ConfigError(f"{at}: reason must be CamelCase, got {reason!r}")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{at}: pattern must be a non-empty string")
        try:
            regex = re.compile(f"(?:{pattern})\\Z")
        except re.error as e:
            raise ConfigError(f"{at}: pattern {pattern!r}: {e}") from None
        condition = r.get("condition", "")
        if kind == "permanent" and condition not in conditions:
            raise ConfigError(f"{at}: permanent rule's condition {condition!r} is not declared in `conditions`")
        rules.append(LogRule(kind, reason, regex, str(condition)))
    plugin = doc.get("pluginConfig") or {}
    source = plugin.get("source") if isinstance(plugin, dict) else None
    if source is not None and not (isinstance(source, str) and source):
        raise ConfigError(f"{where}: pluginConfig.source must be a non-empty string")
    return LogRules(str(doc.get("source") or where), conditions, tuple(rules), (source,) if source else ())


def load_rules(path: Path) -> LogRules:
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    return _rules_from(doc, str(path))


@dataclass
class _Bucket:
    rate: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _Active:
    reason: str
    line: str
    first: float
    last: float
    hits: int = 1


@dataclass
class LogSignals:
    """The rules' state over the lines fed so far; also the health check `name` (default
    "kernel-log") reporting it."""

    rules: LogRules
    name: str = "kernel-log"
    period: float = 10.0
    timeout: float = 2.0
    window: float = 600.0
    event_degraded_count: int = 10
    clear_after: float = 600.0
    max_hits_per_second: float = 20.0
    clock: Callable[[], float] = time.time
    on_hit: Callable[[str], None] | None = None
    lines: int = 0
    dropped: int = 0
    source_error: str = ""  # why the log cannot be read (set by the reader's owner)
    _events: dict[str, deque[float]] = field(default_factory=dict)
    _last_event: dict[str, str] = field(default_factory=dict)
    _active: dict[str, _Active] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def feed(self, line: str) -> LogRule | None:
        """One log line (the message, without the kmsg prefix). Returns the first rule it matched."""
        self.lines += 1
        text = line[:MAX_LINE].rstrip("\n")
        for rule in self.rules.rules:
            if rule.regex.search(text) is None:
                continue
            now = self.clock()
            bucket = self._buckets.setdefault(rule.reason, _Bucket(self.max_hits_per_second, self.max_hits_per_second, now))
            if not bucket.take(now):
                self.dropped += 1
                return rule
            if self.on_hit is not None:
                self.on_hit(rule.reason)
            if rule.kind == "temporary":
                ring = self._events.setdefault(rule.reason, deque(maxlen=max(64, self.event_degraded_count * 2)))
                ring.append(now)
                self._last_event[rule.reason] = text[:200]
            else:
                cur = self._active.get(rule.condition)
                if cur is None or cur.reason != rule.reason:
                    self._active[rule.condition] = _Active(rule.reason, text[:200], now, now)
                else:
                    cur.last, cur.line, cur.hits = now, text[:200], cur.hits + 1
            return rule
        return None

    async def run(self) -> Observation:
        return self.observe()

    def observe(self) -> Observation:
        now = self.clock()
        for cond in [c for c, a in self._active.items() if now - a.last > self.clear_after]:
            del self._active[cond]  # quiet long enough: the condition clears
        ev: dict[str, EvidenceValue] = {"lines": self.lines, "dropped": self.dropped}
        counts = {}
        for reason, ring in self._events.items():
            n = sum(1 for t in ring if now - t <= self.window)
            if n:
                counts[reason] = n
                ev[f"events.{reason}"] = n
        for cond, a in sorted(self._active.items()):
            ev[f"{cond}.line"] = a.line
            ev[f"{cond}.hits"] = a.hits
        if self.source_error:
            return degraded("LogSourceUnavailable", self.source_error, **ev)
        if self._active:
            cond, a = sorted(self._active.items())[0]
            return failed(a.reason, f"{cond}: {a.line}", **ev)
        storm = sorted((n, r) for r, n in counts.items() if n >= self.event_degraded_count)
        if storm:
            n, reason = storm[-1]
            return degraded(reason, f"{n} {reason} events in {self.window:g}s; last: {self._last_event[reason]}", **ev)
        return ok("NoLogSignals", **ev)
