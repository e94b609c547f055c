"""Memory and CPU pressure. With PSI (/proc/pressure, Linux ≥ 4.20 with CONFIG_PSI): the share of
the last 60 s in which some (or all) runnable tasks stalled on memory or CPU. Without PSI: the
fraction of memory available (/proc/meminfo MemAvailable) and the 1-minute load average per CPU.

Defaults: memory `some` ≥ 25 % degraded, memory `full` ≥ 20 % failed (the host thrashes), CPU
`some` ≥ 80 % degraded (CPU contention slows tasks; it never fails a host). Fallback: available
memory ≤ 10 % degraded, ≤ 3 % failed; load per CPU ≥ 4 degraded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from health.blocking import Worker
from health.model import Observation, degraded, failed, ok
from titus_common.protocol import EvidenceValue

__all__ = ["PressureCheck", "PressureLimits", "parse_psi"]


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """`some avg10=0.00 avg60=1.50 avg300=0.00 total=8822` lines → {"some": {"avg60": 1.5, …}}."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        fields = {}
        for item in rest.split():
            key, sep, value = item.partition("=")
            if sep:
                try:
                    fields[key] = float(value)
                except ValueError:
                    continue
        out[kind] = fields
    return out


@dataclass(frozen=True)
class PressureLimits:
    memory_some_degraded: float = 25.0
    memory_full_failed: float = 20.0
    cpu_some_degraded: float = 80.0
    mem_available_degraded_pct: float = 10.0
    mem_available_failed_pct: float = 3.0
    load_per_cpu_degraded: float = 4.0


class PressureCheck:
    name = "pressure"

    def __init__(
        self, *, proc: Path = Path("/proc"), limits: PressureLimits = PressureLimits(),
        period: float = 15.0, timeout: float = 5.0, cpu_count: int | None = None,
    ) -> None:
        self.proc = proc
        self.limits = limits
        self.period = period
        self.timeout = timeout
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self._worker = Worker(self.name)

    def _psi(self) -> Observation:
        mem = parse_psi((self.proc / "pressure" / "memory").read_text())
        cpu = parse_psi((self.proc / "pressure" / "cpu").read_text())
        m_some = mem.get("some", {}).get("avg60", 0.0)
        m_full = mem.get("full", {}).get("avg60", 0.0)
        c_some = cpu.get("some", {}).get("avg60", 0.0)
        ev: dict[str, EvidenceValue] = {"source": "psi", "memorySomeAvg60": m_some, "memoryFullAvg60": m_full,
                                        "cpuSomeAvg60": c_some}
        lim = self.limits
        if m_full >= lim.memory_full_failed:
            return failed("MemoryThrashing", f"all tasks stalled on memory {m_full:g}% of the last 60s", **ev)
        if m_some >= lim.memory_some_degraded:
            return degraded("MemoryPressure", f"tasks stalled on memory {m_some:g}% of the last 60s", **ev)
        if c_some >= lim.cpu_some_degraded:
            return degraded("CpuPressure", f"tasks waited for CPU {c_some:g}% of the last 60s", **ev)
        return ok("NoPressure", **ev)

    def _fallback(self) -> Observation:
        info: dict[str, int] = {}
        for line in (self.proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                info[key] = int(parts[0])
        total = info.get("MemTotal", 0)
        avail_pct = round(100.0 * info.get("MemAvailable", total) / total, 2) if total else 100.0
        load1 = float((self.proc / "loadavg").read_text().split()[0])
        per_cpu = round(load1 / self.cpu_count, 2)
        ev: dict[str, EvidenceValue] = {"source": "meminfo+loadavg", "memAvailablePct": avail_pct,
                                        "loadPerCpu": per_cpu}
        lim = self.limits
        if avail_pct <= lim.mem_available_failed_pct:
            return failed("MemoryExhausted", f"only {avail_pct:g}% of memory available", **ev)
        if avail_pct <= lim.mem_available_degraded_pct:
            return degraded("MemoryPressure", f"only {avail_pct:g}% of memory available", **ev)
        if per_cpu >= lim.load_per_cpu_degraded:
            return degraded("CpuPressure", f"load {per_cpu:g} per CPU", **ev)
        return ok("NoPressure", **ev)

    def _measure(self) -> Observation:
        if (self.proc / "pressure" / "memory").exists():
            return self._psi()
        return self._fallback()

    async def run(self) -> Observation:
        return await self._worker.call(self._measure)
