"""How a container's end becomes a task's finish reason. A pure function: table-tested."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from titus_common.states import FinishReason


@dataclass(frozen=True)
class ExitFacts:
    exit_code: int | None = None
    oom_killed: bool = False
    runtime_error: str = ""  # the engine's State.Error: it failed to run the container
    kill_requested: bool = False  # the scheduler (a user) asked for the kill
    runtime_limit_seconds: float | None = None  # set when the agent killed it for running too long
    container_missing: bool = False
    memory_mib: int | None = None

    @classmethod
    def from_inspect(cls, state: dict[str, Any] | None, **known: Any) -> ExitFacts:
        if state is None:
            return cls(container_missing=True, **known)
        s = state["State"]
        return cls(
            exit_code=int(s.get("ExitCode", 0)),
            oom_killed=bool(s.get("OOMKilled")),
            runtime_error=str(s.get("Error") or ""),
            **known,
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(f: ExitFacts) -> tuple[FinishReason, str]:
    """The order matters: a cause the agent knows (it was asked to kill, it enforced the runtime limit,
    the kernel reported an OOM kill) outranks what the exit code alone suggests."""
    if f.kill_requested:
        return FinishReason.KILLED, "killed on request"
    if f.runtime_limit_seconds is not None:
        return FinishReason.FAILED, f"runtime limit of {f.runtime_limit_seconds:g}s exceeded"
    if f.container_missing:
        return FinishReason.CRASHED, "the container disappeared (removed outside the agent)"
    if f.oom_killed:
        limit = f" (limit {f.memory_mib} MiB)" if f.memory_mib else ""
        return FinishReason.FAILED, f"OOM-killed: out of memory{limit}"
    if f.runtime_error:
        return FinishReason.CRASHED, f"container runtime error: {f.runtime_error}"
    code = f.exit_code
    if code is None:
        return FinishReason.CRASHED, "no exit status available"
    if code == 0:
        return FinishReason.NORMAL, "exited with code 0"
    if code == 127:
        return FinishReason.FAILED, "exited with code 127 (command not found)"
    if 128 < code < 128 + 65:
        # 137/143 here means SIGKILL/SIGTERM from outside the platform: not OOM, not a titus kill.
        return FinishReason.FAILED, f"killed by {_signal_name(code - 128)} (exit code {code}), not by titus"
    return FinishReason.FAILED, f"exited with code {code}"
