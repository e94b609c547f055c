"""The clock: synchronised, and close to the scheduler's.

- kernel NTP state from `adjtimex(2)` (modes 0: read only — what `timedatectl`'s "System clock
  synchronized" and chrony/timesyncd set): the return value `TIME_ERROR` or the status flag
  `STA_UNSYNC` means no time daemon is disciplining the clock → degraded `ClockUnsynchronised`;
  the kernel's `maxerror` ≥ `max_error_s` (1 s) → degraded `ClockUncertain`;
- skew against the scheduler: the agent's last sync answer's HTTP `Date` (whole seconds, taken at
  the middle of the exchange) against its own clock, `|skew|` ≥ `skew_degraded_s` (2 s) degraded,
  ≥ `skew_failed_s` (60 s) failed `ClockSkew` (certificates, signed AWS requests — SigV4 allows 5
  min — and every timestamp the platform keeps go wrong).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from dataclasses import dataclass

from health.blocking import Worker
from health.model import Observation, degraded, failed, ok
from titus_common.protocol import EvidenceValue

__all__ = ["ClockCheck", "KernelClock", "read_adjtimex"]

TIME_ERROR = 5
STA_UNSYNC = 0x0040
STA_NANO = 0x2000


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):  # struct timex, <sys/timex.h> (208 bytes on x86-64 and arm64)
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class KernelClock:
    state: int  # adjtimex's return: TIME_OK 0 … TIME_ERROR 5
    status: int  # STA_* flags
    max_error_s: float
    est_error_s: float
    offset_s: float

    @property
    def synchronised(self) -> bool:
        return self.state != TIME_ERROR and not self.status & STA_UNSYNC


_libc: ctypes.CDLL | None = None


def read_adjtimex() -> KernelClock:
    """The kernel's clock discipline state (modes = 0 changes nothing; needs no privilege)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    tx = _Timex()
    state = int(_libc.adjtimex(ctypes.byref(tx)))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: errno {err}")
    offset = tx.offset / (1e9 if tx.status & STA_NANO else 1e6)
    return KernelClock(state, int(tx.status), tx.maxerror / 1e6, tx.esterror / 1e6, offset)


class ClockCheck:
    name = "clock"

    def __init__(
        self,
        skew: Callable[[], float | None],
        *,
        period: float = 60.0,
        timeout: float = 5.0,
        max_error_s: float = 1.0,
        skew_degraded_s: float = 2.0,
        skew_failed_s: float = 60.0,
        kernel: Callable[[], KernelClock] = read_adjtimex,
    ) -> None:
        self.skew = skew  # seconds the host is ahead of the scheduler (None: not measured yet)
        self.period = period
        self.timeout = timeout
        self.max_error_s = max_error_s
        self.skew_degraded_s = skew_degraded_s
        self.skew_failed_s = skew_failed_s
        self.kernel = kernel
        self._worker = Worker(self.name)

    async def run(self) -> Observation:
        k = await self._worker.call(self.kernel)
        skew = self.skew()
        evidence: dict[str, EvidenceValue] = {
            "synchronised": k.synchronised, "kernelState": k.state, "maxErrorS": round(k.max_error_s, 3),
            "estErrorS": round(k.est_error_s, 6), "offsetS": round(k.offset_s, 6),
        }
        if skew is not None:
            evidence["skewS"] = round(skew, 3)
            if abs(skew) >= self.skew_failed_s:
                return failed("ClockSkew", f"the host's clock is {skew:+.1f}s off the scheduler's "
                                           f"(limit {self.skew_failed_s:g}s)", **evidence)
            if abs(skew) >= self.skew_degraded_s:
                return degraded("ClockSkew", f"the host's clock is {skew:+.1f}s off the scheduler's", **evidence)
        if not k.synchronised:
            return degraded("ClockUnsynchronised",
                            "the kernel clock is not synchronised (no NTP daemon disciplining it: chrony, "
                            "systemd-timesyncd)", **evidence)
        if k.max_error_s >= self.max_error_s:
            return degraded("ClockUncertain", f"the kernel's maximum clock error is {k.max_error_s:.2f}s", **evidence)
        return ok("ClockSynchronised", **evidence)
