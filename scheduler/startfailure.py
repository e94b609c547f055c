"""A job whose every task fails the same way at start (the image's user is missing, the memory limit
is below its start usage, …) is visible as such: the API's `startFailure` on a job. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

from scheduler.records import TaskRecord
from titus_common.states import TaskState

__all__ = ["start_failure"]

MIN_TASKS = 1  # one finished task that never started is already the job's answer, if it is all there is


def start_failure(tasks: Iterable[TaskRecord]) -> str | None:
    """The shared "reason: message" when every finished task of the job ended failed or crashed
    without reaching Started, all the same way, and no task has started; else None."""
    seen: set[str] = set()
    first = ""
    finished = 0
    for t in tasks:
        if TaskState.STARTED.value in t.timestamps:
            return None
        if t.state is not TaskState.FINISHED:
            continue
        if t.reason is None or t.reason.value not in ("failed", "crashed"):
            return None
        finished += 1
        # "The same way": same reason and message but for numbers (usages, ids, exit codes vary).
        seen.add(f"{t.reason.value}: {re.sub(r'[0-9a-f]{12,}|[0-9]+', 'N', t.message)}")
        first = first or f"{t.reason.value}: {t.message}"
        if len(seen) > 1:
            return None
    return first if finished >= MIN_TASKS and seen else None
