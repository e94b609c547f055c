"""Host health: checks that run inside the agent on their own schedules (docs/health.md).

A check is a small object with a name, a period, a timeout and an async `run()` returning an
`Observation` (ok | degraded | failed, a CamelCase reason, a message, evidence). The
`HealthMonitor` runs every check on its period under its timeout: a check that hangs or raises is
itself a failed result (`CheckTimeout`, `CheckError`), never a hung agent. Results are
`titus_common.protocol.HealthCondition`s, which the agent sends with its heartbeat.

Imports: titus_common only (tests/unit/test_layering.py). What a check needs from the agent (the
engine, paths) it receives as a small Protocol or plain values.
"""

from health.model import Check, Observation, degraded, failed, ok
from health.monitor import HealthMonitor, worst

__all__ = ["Check", "HealthMonitor", "Observation", "degraded", "failed", "ok", "worst"]
