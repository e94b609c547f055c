"""The scheduler's in-memory task indexes, so API reads and per-host work do not scan every task
ever run. Only `core.Scheduler` changes them, alongside the records it commits."""

from __future__ import annotations

from scheduler.records import TaskRecord
from titus_common.states import TaskState

__all__ = ["TaskIndex"]


class TaskIndex:
    def __init__(self) -> None:
        self.tasks: dict[str, TaskRecord] = {}
        self.pending: set[str] = set()  # Accepted tasks waiting for a host
        self._by_job: dict[str, list[str]] = {}
        self._active_by_node: dict[str, set[str]] = {}  # tasks holding resources on each host

    def add(self, task: TaskRecord) -> None:
        self.tasks[task.id] = task
        self._by_job.setdefault(task.job_id, []).append(task.id)
        if task.node_id and task.state.active:
            self._active_by_node.setdefault(task.node_id, set()).add(task.id)
        if task.state is TaskState.ACCEPTED:
            self.pending.add(task.id)

    def placed(self, task: TaskRecord) -> None:
        """`task` was just given a host."""
        assert task.node_id is not None
        self._active_by_node.setdefault(task.node_id, set()).add(task.id)
        self.pending.discard(task.id)

    def finished(self, task: TaskRecord) -> None:
        self.pending.discard(task.id)
        if task.node_id:
            self._active_by_node.get(task.node_id, set()).discard(task.id)

    def job_tasks(self, job_id: str) -> list[TaskRecord]:
        return [self.tasks[i] for i in self._by_job.get(job_id, [])]

    def node_tasks(self, node_id: str) -> list[TaskRecord]:
        return [self.tasks[i] for i in self._active_by_node.get(node_id, ())]

    def node_task_ids(self, node_id: str) -> frozenset[str]:
        """The ids of `node_tasks`, without looking the records up (what a pass's host cache compares)."""
        return frozenset(self._active_by_node.get(node_id, ()))

    def forget_job(self, job_id: str) -> list[TaskRecord]:
        """Drop a finished job's tasks from memory (scheduler/retention.py); returns them."""
        gone = [self.tasks.pop(i) for i in self._by_job.pop(job_id, []) if i in self.tasks]
        for t in gone:
            self.pending.discard(t.id)
            if t.node_id:
                active = self._active_by_node.get(t.node_id)
                if active is not None:
                    active.discard(t.id)
                    if not active:
                        del self._active_by_node[t.node_id]
        return gone

    def compact(self) -> None:
        """Give back the hash tables' memory after many removals (a dict or set never shrinks by
        deleting); in place, because `Scheduler.tasks` is `self.tasks`."""
        tasks, by_job, by_node = dict(self.tasks), dict(self._by_job), dict(self._active_by_node)
        self.tasks.clear()
        self.tasks.update(tasks)
        self._by_job.clear()
        self._by_job.update(by_job)
        self._active_by_node.clear()
        self._active_by_node.update(by_node)
        pending = set(self.pending)
        self.pending.clear()
        self.pending.update(pending)
