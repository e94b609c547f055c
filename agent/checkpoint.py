"""The agent's durable memory: one JSON file per task, written atomically on every change.

After `kill -9` the agent rebuilds its view from these files and the containers that exist. One file
per task keeps a write O(1) however many tasks the host runs. A file is deleted only after the
scheduler has acknowledged the task's Finished report, so no outcome is ever lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from titus_common.errors import StateCorrupt
from titus_common.files import GroupSync, atomic_write_bytes, replace_bytes
from titus_common.protocol import MAX_MESSAGE, TaskAssignment, TaskUpdate
from titus_common.states import FinishReason, TaskState
from titus_common.threads import ElasticThreadPool

log = logging.getLogger("titus.agent.checkpoint")

WRITERS = 8  # threads writing checkpoints at once (different tasks; one task's writes are ordered)
BOOT_ID_FILE = ".boot_id"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str:
    return BOOT_ID_PATH.read_text().strip()


# 2: typed step outputs (`outputs`); a version-1 record gets them derived from its resources.
CHECKPOINT_VERSION = 2


class NetworkOutput(BaseModel):
    """What the network step publishes for later steps and the host: where the task's network is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str
    netns_path: str
    sandbox_id: str = ""  # set only by agents that still held the namespace in a sandbox container


class ImageOutput(BaseModel):
    """What the image step ran the task from (docs/provenance.md): the reference given to the engine
    (name@digest when the job is pinned), the manifest digest (None: a local-only image has none)
    and the engine's image id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str
    digest: str | None = None
    image_id: str = ""


class TaskOutputs(BaseModel):
    """Typed outputs of launch steps, read by later steps and by the agent. A step reads another
    step's output here, never that step's raw `resources` entry."""

    model_config = ConfigDict(extra="forbid")

    network: NetworkOutput | None = None
    image: ImageOutput | None = None
    # When the container step saw the container start (the task's Started time).
    container_started_at: float | None = None


class CheckpointCorrupt(StateCorrupt):
    """A task checkpoint cannot be read as written: the agent refuses to start (never guesses)."""


class TaskCheckpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = CHECKPOINT_VERSION
    assignment: TaskAssignment
    state: TaskState
    timestamps: dict[TaskState, float] = Field(default_factory=dict)
    reason: FinishReason | None = None
    message: str = ""
    exit_code: int | None = None
    container_id: str | None = None
    # The container's last output, captured at teardown before the container may go (agent/logtail.py).
    log_tail: str | None = None
    # What each launch step acquired (step name → its own record), so teardown and GC after a
    # restart know exactly what to release.
    resources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    outputs: TaskOutputs = Field(default_factory=TaskOutputs)
    kill_requested: bool = False
    runtime_limit_hit: bool = False
    # Bumped on every change; the reporter sends until the scheduler has taken `revision`.
    revision: int = 0
    reported_revision: int = 0

    @model_validator(mode="after")
    def _outputs_of_version_1(self) -> TaskCheckpoint:
        """A version-1 record had no `outputs`: derive them from what its steps recorded."""
        if self.version < 2:
            net = self.resources.get("network") or {}
            address = (net.get("lease") or {}).get("address")
            netns_path = (net.get("wiring") or {}).get("netns_path")
            if address and netns_path and net.get("sandbox_id"):
                self.outputs.network = NetworkOutput(
                    address=str(address), netns_path=str(netns_path), sandbox_id=str(net["sandbox_id"])
                )
            started = (self.resources.get("container") or {}).get("started_at")
            if started is not None:
                self.outputs.container_started_at = float(started)
            self.version = CHECKPOINT_VERSION
        return self

    @property
    def task_id(self) -> str:
        return self.assignment.task_id

    @property
    def job_id(self) -> str:
        return self.assignment.job_id

    @property
    def unreported(self) -> bool:
        return self.revision > self.reported_revision

    def to_update(self) -> TaskUpdate:
        return TaskUpdate(
            task_id=self.task_id,
            state=self.state,
            timestamps=dict(self.timestamps),
            reason=self.reason,
            # The protocol bounds a message; an engine error can be longer (its head says what failed).
            message=self.message if len(self.message) <= MAX_MESSAGE else self.message[: MAX_MESSAGE - 1] + "…",
            exit_code=self.exit_code,
            container_id=self.container_id,
            image_digest=self.outputs.image.digest if self.outputs.image is not None else None,
            log_tail=self.log_tail if self.state.terminal else None,
        )


class CheckpointStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "tasks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sync = GroupSync(self.dir)
        self._boot_file = self.dir / BOOT_ID_FILE
        self.quarantined: list[Path] = []  # records torn by a power loss, set aside by load_all
        # Per task: the last version number handed out, the last one in place, a lock for writing.
        self._locks_lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self._written: dict[str, int] = {}
        self._locks: dict[str, threading.Lock] = {}
        # Threads of its own: under a burst the shared to_thread pool is full of netlink and namespace
        # work, and a step's checkpoint write must not queue behind it.
        self._pool = ElasticThreadPool(WRITERS, "checkpoint", idle_seconds=10.0, min_workers=1)

    def _path(self, task_id: str) -> Path:
        if "/" in task_id or task_id.startswith("."):
            raise ValueError(f"unsafe task id {task_id!r}")
        return self.dir / f"{task_id}.json"

    def save(self, record: TaskCheckpoint) -> None:
        """Written before returning (a kill -9 of the agent right after finds it), made durable
        against power loss moments later by the group sync (docs/footprint.md, "Checkpoint writes")."""
        self._write(*self._version(record))

    async def save_async(self, record: TaskCheckpoint) -> None:
        """`save` with the file work on a thread: the record is serialised now (this version, on the
        caller's loop), and the call returns once the file is in place. Versions of one task land in
        order whatever the threads do: a write older than the one in place is dropped."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._write, *self._version(record))

    def _version(self, record: TaskCheckpoint) -> tuple[str, int, bytes]:
        task_id = record.task_id
        self._path(task_id)  # an unsafe id is refused on the caller's side
        with self._locks_lock:
            seq = self._seq.get(task_id, 0) + 1
            self._seq[task_id] = seq
        return task_id, seq, record.model_dump_json().encode()

    def _write(self, task_id: str, seq: int, data: bytes) -> None:
        path = self._path(task_id)
        with self._locks_lock:
            lock = self._locks.setdefault(task_id, threading.Lock())
        with lock:
            if seq <= self._written.get(task_id, 0):
                return  # a newer version of this record is already in place
            replace_bytes(path, data)
            self._written[task_id] = seq
        self.sync.written(path)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record saved so far is on disk (the agent's stop; tests)."""
        return self.sync.flush(timeout)

    def _rebooted(self) -> bool:
        """The host booted since the records were written (by the boot id the last load left)."""
        try:
            return self._boot_file.read_text().strip() != current_boot_id()
        except FileNotFoundError:
            return False  # first start, or written by an agent that kept no boot id: be strict

    def delete(self, task_id: str) -> None:
        # Only for a task whose runner has ended: every save_async of it has been awaited, so no
        # write can land after the unlink (the per-task state goes too: nothing grows per task).
        with self._locks_lock:
            self._locks.pop(task_id, None)
            self._written.pop(task_id, None)
            self._seq.pop(task_id, None)
        try:
            os.unlink(self._path(task_id))
        except FileNotFoundError:
            pass

    def load_all(self) -> list[TaskCheckpoint]:
        """Every record, or CheckpointCorrupt naming the file: the agent must not guess what it ran."""
        records = []
        rebooted = self._rebooted()
        for path in sorted(self.dir.glob("*.json")):
            try:
                raw = path.read_bytes()
                record = TaskCheckpoint.model_validate_json(raw)
            except (ValidationError, OSError, UnicodeDecodeError) as e:
                # Only bytes that are not JSON at all can be a write torn by a power loss; a whole
                # JSON record this agent cannot read (an upgrade's schema) stops it, reboot or not.
                if rebooted and isinstance(e, (ValidationError, UnicodeDecodeError)) and not _is_json(raw):
                    # Saved moments before a power loss, before the group sync reached it: the task
                    # died with the host; what it held is found by GC and the engine's labels.
                    aside = path.with_suffix(".torn")
                    path.replace(aside)
                    self.quarantined.append(aside)
                    log.error("checkpoint %s is unreadable after a reboot (%s): set aside as %s",
                              path, str(e).splitlines()[0], aside.name)
                    continue
                raise CheckpointCorrupt(
                    f"checkpoint {path} cannot be read ({str(e).splitlines()[0]}); the agent will not start "
                    "without knowing what it ran. Inspect the file; move it aside to give up on that task."
                ) from None
            if record.version > CHECKPOINT_VERSION:
                raise CheckpointCorrupt(f"checkpoint {path} has version {record.version}, newer than this agent")
            if path.stem != record.task_id:
                raise CheckpointCorrupt(f"checkpoint {path} holds task {record.task_id}")
            records.append(record)
        # Left-over temp files from a write interrupted by a crash are garbage by construction.
        for tmp in self.dir.glob(".*.json.*"):
            tmp.unlink(missing_ok=True)
        atomic_write_bytes(self._boot_file, current_boot_id().encode())
        return records


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return True
