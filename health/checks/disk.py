"""Space and inodes of the filesystems the host needs (engine root, agent state, logs): degraded
above `degraded_pct` used, failed above `failed_pct`, for bytes and inodes alike."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from health.blocking import Worker
from health.model import Observation, degraded, failed, ok
from titus_common.errors import ConfigError
from titus_common.protocol import EvidenceValue, HealthStatus

__all__ = ["DiskCheck", "DiskUsage", "statvfs_usage"]


@dataclass(frozen=True)
class DiskUsage:
    bytes_pct: float
    inodes_pct: float  # 0 where the filesystem has no inode limit (btrfs, tmpfs with nr_inodes=0)
    free_bytes: int


def statvfs_usage(path: Path) -> DiskUsage:
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    used = total - st.f_bfree * st.f_frsize
    # As df: used / (used + available to unprivileged users).
    bytes_pct = 100.0 * used / (used + avail) if used + avail > 0 else 0.0
    inodes_pct = 100.0 * (st.f_files - st.f_ffree) / st.f_files if st.f_files > 0 else 0.0
    return DiskUsage(round(bytes_pct, 2), round(inodes_pct, 2), avail)


class DiskCheck:
    name = "disk"

    def __init__(
        self,
        paths: Mapping[str, Path],
        *,
        degraded_pct: float = 85.0,
        failed_pct: float = 95.0,
        period: float = 60.0,
        timeout: float = 10.0,
        usage: Callable[[Path], DiskUsage] = statvfs_usage,
    ) -> None:
        if not 0 < degraded_pct <= failed_pct <= 100:
            raise ConfigError(f"disk check: need 0 < degraded ({degraded_pct}) <= failed ({failed_pct}) <= 100")
        self.paths = dict(paths)
        self.degraded_pct = degraded_pct
        self.failed_pct = failed_pct
        self.period = period
        self.timeout = timeout
        self.usage = usage
        self._worker = Worker(self.name)

    def _level(self, pct: float) -> HealthStatus:
        if pct >= self.failed_pct:
            return HealthStatus.FAILED
        return HealthStatus.DEGRADED if pct >= self.degraded_pct else HealthStatus.OK

    def _measure(self) -> Observation:
        evidence: dict[str, EvidenceValue] = {}
        worst: tuple[HealthStatus, str, str] = (HealthStatus.OK, "DiskOk", "")
        for label, path in sorted(self.paths.items()):
            try:
                u = self.usage(path)
            except OSError as e:
                return failed("DiskUnreadable", f"{label} ({path}): {e.strerror or e}", path=str(path))
            evidence[f"{label}.usedPct"] = u.bytes_pct
            evidence[f"{label}.inodesPct"] = u.inodes_pct
            for what, pct, reason in (("space", u.bytes_pct, "DiskPressure"), ("inodes", u.inodes_pct, "InodePressure")):
                level = self._level(pct)
                if level.rank > worst[0].rank:
                    limit = self.failed_pct if level is HealthStatus.FAILED else self.degraded_pct
                    worst = (level, reason, f"{label} ({path}): {what} {pct:g}% used (limit {limit:g}%)")
        status, reason, message = worst
        if status is HealthStatus.FAILED:
            return failed(reason, message, **evidence)
        if status is HealthStatus.DEGRADED:
            return degraded(reason, message, **evidence)
        return ok(reason, message, **evidence)

    async def run(self) -> Observation:
        return await self._worker.call(self._measure)
