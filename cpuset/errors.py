"""Exceptions raised by the cpuset package."""

from __future__ import annotations

from titus_common.errors import HostRefused, StateCorrupt, TitusError


class CpusetError(TitusError):
    """Base class of every error raised by :mod:`cpuset`."""

    exit_code = HostRefused.exit_code


class TopologyError(CpusetError):
    """The sysfs tree (or a topology description) is missing files or contradicts itself."""


class NativeUnavailable(CpusetError, ImportError):
    """The compiled placement core ``cpuset._cpuset_core`` cannot be imported."""


class InvalidRequest(CpusetError, ValueError):
    """Bad argument: zero/negative CPU count, unknown class, bad CPU id, empty id..."""


class RequestTooLarge(InvalidRequest):
    """The request is larger than the host's usable (online, not reserved) CPUs."""


class InsufficientCpus(CpusetError):
    """Not enough free CPUs right now (the request could fit an emptier host)."""


class DuplicateWorkload(CpusetError):
    """The workload already holds CPUs."""


class UnknownWorkload(CpusetError, KeyError):
    """The workload holds no CPUs (unknown container on release)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else "unknown workload"


class CapacityExceeded(CpusetError):
    """The core's fixed workload cap is reached."""


class CpuBusy(CpusetError):
    """A CPU given for an exact assignment is already held by another workload."""


class CheckpointError(CpusetError, StateCorrupt):
    """A checkpoint is malformed or does not match the current topology."""

    exit_code = StateCorrupt.exit_code
