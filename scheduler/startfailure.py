"""A job whose every task fails the same way at start (the image's user is missing, the memory limit
is below its start usage, …) is visible as such: the API's `startFailure` on a job. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

from scheduler.records import TaskRecord
from titus_common.states import TaskState

__all__ = ["start_failure", "start_failure_of"]

MIN_TASKS = 1  # one finished task that never started is already the job's answer, if it is all there is


def start_failure(tasks: Iterable[TaskRecord]) -> str | None:
    """The shared "reason: message" when every finished task of the job ended failed or crashed
    without reaching Started, all the same way, and no task has started; else None."""
    tasks = list(tasks)
    if any(TaskState.STARTED.value in t.timestamps for t in tasks):
        return None
    return start_failure_of(
        (t.reason.value if t.reason is not None else None, t.message)
        for t in tasks
        if t.state is TaskState.FINISHED
    )


def start_failure_of(finished: Iterable[tuple[str | None, str]]) -> str | None:
    """The same answer from the (reason, message) of the job's finished tasks in their order, for a
    job none of whose tasks has started (an evicted job's, read from the store without its records)."""
    seen: set[str] = set()
    first = ""
    count = 0
    for reason, message in finished:
        if reason is None or reason not in ("failed", "crashed"):
            return None
        count += 1
        # "The same way": same reason and message but for numbers (usages, ids, exit codes vary).
        seen.add(f"{reason}: {re.sub(r'[0-9a-f]{12,}|[0-9]+', 'N', message)}")
        first = first or f"{reason}: {message}"
        if len(seen) > 1:
            return None
    return first if count >= MIN_TASKS and seen else None
