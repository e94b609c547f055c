from pathlib import Path

import pytest

from agent.checkpoint import CheckpointCorrupt, CheckpointStore, TaskCheckpoint
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import TaskState


def record(task_id: str = "t1") -> TaskCheckpoint:
    a = TaskAssignment(
        task_id=task_id, job_id="j1", index=0, container=ContainerSpec(image="busybox"), accepted_at=1.0
    )
    return TaskCheckpoint(assignment=a, state=TaskState.STARTED, timestamps={TaskState.STARTED: 2.0})


def test_round_trip_and_delete(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    rec = record()
    rec.resources["container"] = {"id": "abc"}
    store.save(rec)
    (loaded,) = store.load_all()
    assert loaded == rec
    store.delete("t1")
    store.delete("t1")  # idempotent
    assert store.load_all() == []


def test_interrupted_write_leaves_old_version_and_no_garbage(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(record())
    (tmp_path / "tasks" / ".t1.json.abc123").write_text('{"half": ')  # a write cut by kill -9
    assert [r.task_id for r in store.load_all()] == ["t1"]
    assert not list((tmp_path / "tasks").glob(".*"))


def test_corrupt_file_stops_the_agent(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / "tasks" / "t9.json").write_text("{not json")
    with pytest.raises(CheckpointCorrupt, match="t9.json cannot be read"):
        store.load_all()


def test_file_name_must_match_task(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / "tasks" / "other.json").write_text(record("t1").model_dump_json())
    with pytest.raises(CheckpointCorrupt, match="holds task t1"):
        store.load_all()


def test_unsafe_task_id_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path).save(record("../escape"))
