from typing import Any

from scheduler.records import TaskRecord
from scheduler.startfailure import start_failure


def task(i: int, state: str = "Finished", reason: str | None = "failed", message: str = "", started: bool = False) -> TaskRecord:
    ts: dict[str, float] = {"Accepted": 1.0}
    if started:
        ts["Started"] = 2.0
    doc: dict[str, Any] = {"id": f"t{i}", "jobId": "j", "index": i, "state": state, "reason": reason,
                           "message": message, "timestamps": ts}
    return TaskRecord.model_validate(doc)


MEM = "the memory limit is below what the container uses to start: … (current usage: {})"


def test_every_task_failing_the_same_way_at_start_is_named() -> None:
    tasks = [task(i, message=MEM.format(7925760 + i)) for i in range(3)]
    assert start_failure(tasks) == "failed: " + MEM.format(7925760)
    assert start_failure([*tasks, task(9, state="Accepted", reason=None)]) is not None  # retries pending


def test_not_a_start_failure() -> None:
    assert start_failure([]) is None
    assert start_failure([task(0, message="a"), task(1, message="b")]) is None  # different ways
    assert start_failure([task(0, message="a"), task(1, message="a", started=True)]) is None  # one ran
    assert start_failure([task(0, reason="killed")]) is None
    assert start_failure([task(0, state="Accepted", reason=None)]) is None
