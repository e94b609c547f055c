"""How a container's end, or the engine's refusal to start it, becomes a task's finish reason. Pure
functions: table-tested (tests/unit/test_exits.py, tests/unit/test_start_refusals.py)."""

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
        user_fault = _user_fault(f.runtime_error)
        if user_fault is not None:
            return FinishReason.FAILED, f"{user_fault}: {f.runtime_error}"
        return FinishReason.CRASHED, f"container runtime error: {f.runtime_error}"
    code = f.exit_code
    if code is None:
        return FinishReason.CRASHED, "no exit status available"
    if code == 0:
        return FinishReason.NORMAL, "exited with code 0"
    if code == 127:
        return FinishReason.FAILED, "exited with code 127 (command not found)"
    if code == 126:
        return FinishReason.FAILED, "exited with code 126 (command not executable)"
    if 128 < code < 128 + 65:
        # 137/143 here means SIGKILL/SIGTERM from outside the platform: not OOM, not a titus kill.
        return FinishReason.FAILED, f"killed by {_signal_name(code - 128)} (exit code {code}), not by titus"
    return FinishReason.FAILED, f"exited with code {code}"


# What runc reports (through the engine's start, as HTTP 500 "unknown": the engine has no error type
# for these) when the container's own configuration cannot be started. Each is the user's doing — the
# job's memory limit, the image's USER, WORKDIR or binaries — never the host's. Where the engine does
# type its answer (400 InvalidParameter: the command is not in the image, not executable, wrong
# format) the status decides (`classify_start_refusal`), not these words.
_USER_FAULTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("unable to set memory limit", "current usage"), "the memory limit is below what the container uses to start"),
    (("unable to find user",), "the image's user does not exist in the image"),
    (("unable to find group",), "the image's group does not exist in the image"),
    (("exec format error",), "the image's binary is for another architecture (exec format error)"),
    (("chdir to cwd",), "the working directory cannot be entered"),
    (("starting container process caused: exec:",), "the command cannot be executed"),
    (("unable to start container process: exec:",), "the command cannot be executed"),
)


def _user_fault(message: str) -> str | None:
    low = message.lower()
    for needles, what in _USER_FAULTS:
        if all(n in low for n in needles):
            return what
    return None


def classify_start_refusal(status: int | None, message: str, client_error: bool) -> tuple[FinishReason, str]:
    """The engine said no to `start`. A 4xx the engine types as the request's fault (`client_error`,
    e.g. 400 for a command that is not in the image) is the user's; a 500 is the user's only when
    runc names the container's own configuration (above); anything else — the engine, the runtime,
    a cgroup or mount failure — is the platform's."""
    if client_error:
        return FinishReason.FAILED, f"cannot run the task's command: {message}"
    user_fault = _user_fault(message)
    if user_fault is not None:
        return FinishReason.FAILED, f"{user_fault}: {message}"
    return FinishReason.CRASHED, f"Docker refused to start the container ({status}): {message}"
