"""The scheduler's in-memory task indexes, so API reads and per-host work do not scan every task
ever run. Only `core.Scheduler` changes them, alongside the records it commits; it calls `touched`
for a change the index cannot see (a kill requested, an agent's report), so that the hosts whose
tasks changed are known (`take_dirty`: what `groupuse.GroupUseIndex` recomputes)."""

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
        self._live: dict[str, int] = {}  # job → its tasks not Finished (pending or holding resources)
        self._dirty: set[str] = set()  # hosts whose tasks changed since the last `take_dirty`
        self._forgotten: list[str] = []  # jobs dropped since the last `take_forgotten_jobs`

    def add(self, task: TaskRecord) -> None:
        self.tasks[task.id] = task
        self._by_job.setdefault(task.job_id, []).append(task.id)
        if task.node_id and task.state.active:
            self._active_by_node.setdefault(task.node_id, set()).add(task.id)
            self._dirty.add(task.node_id)
            self._count(task, 1)
        elif task.state is TaskState.ACCEPTED:
            self.pending.add(task.id)
            self._count(task, 1)

    def placed(self, task: TaskRecord) -> None:
        """`task` was just given a host."""
        assert task.node_id is not None
        self._active_by_node.setdefault(task.node_id, set()).add(task.id)
        self.pending.discard(task.id)  # (still live: the count is unchanged)
        self._dirty.add(task.node_id)

    def finished(self, task: TaskRecord) -> None:
        was_live = task.id in self.pending
        self.pending.discard(task.id)
        if task.node_id:
            active = self._active_by_node.get(task.node_id, set())
            was_live = was_live or task.id in active
            active.discard(task.id)
            self._dirty.add(task.node_id)
        if was_live:
            self._count(task, -1)

    def touched(self, task: TaskRecord) -> None:
        """Something a host's use depends on changed in `task` (a kill requested, a state or
        timestamp from its agent)."""
        if task.node_id:
            self._dirty.add(task.node_id)

    def take_dirty(self) -> set[str]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    def take_forgotten_jobs(self) -> list[str]:
        gone, self._forgotten = self._forgotten, []
        return gone

    def live(self, job_id: str) -> int:
        """The job's tasks not Finished."""
        return self._live.get(job_id, 0)

    def _count(self, task: TaskRecord, n: int) -> None:
        left = self._live.get(task.job_id, 0) + n
        if left:
            self._live[task.job_id] = left
        else:
            self._live.pop(task.job_id, None)

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
        self._live.pop(job_id, None)
        self._forgotten.append(job_id)
        for t in gone:
            self.pending.discard(t.id)
            if t.node_id:
                active = self._active_by_node.get(t.node_id)
                if active is not None:
                    active.discard(t.id)
                    self._dirty.add(t.node_id)
                    if not active:
                        del self._active_by_node[t.node_id]
        return gone

    def compact(self) -> None:
        """Give back the hash tables' memory after many removals (a dict or set never shrinks by
        deleting); in place, because `Scheduler.tasks` is `self.tasks`."""
        tasks, by_job, by_node, live = dict(self.tasks), dict(self._by_job), dict(self._active_by_node), dict(self._live)
        self.tasks.clear()
        self.tasks.update(tasks)
        self._by_job.clear()
        self._by_job.update(by_job)
        self._active_by_node.clear()
        self._active_by_node.update(by_node)
        self._live = live
        pending = set(self.pending)
        self.pending.clear()
        self.pending.update(pending)
