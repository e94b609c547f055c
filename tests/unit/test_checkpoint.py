import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from agent import checkpoint
from agent.checkpoint import CheckpointCorrupt, CheckpointStore, TaskCheckpoint
from titus_common.jobspec import ContainerSpec
from titus_common.protocol import TaskAssignment
from titus_common.states import TaskState


def record(task_id: str = "t1") -> TaskCheckpoint:
    a = TaskAssignment(
        task_id=task_id, job_id="j1", index=0, container=ContainerSpec(image="busybox"), accepted_at=1.0
    )
    return TaskCheckpoint(assignment=a, state=TaskState.STARTED, timestamps={TaskState.STARTED: 2.0})


def records_dir(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "tasks").iterdir() if p.name != ".boot_id")


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


def _old_and_new(store: CheckpointStore) -> tuple[TaskCheckpoint, bytes, TaskCheckpoint]:
    old = record()
    old.message = "the old version"
    store.save(old)
    new = record()
    new.state, new.message, new.exit_code = TaskState.FINISHED, "the new version " * 500, 3
    return old, store._path("t1").read_bytes(), new


@pytest.mark.parametrize("cut_at", ["chmod", "replace"])
def test_interrupted_write_leaves_the_old_version_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut_at: str
) -> None:
    """A save that dies after its data is written (chmod) or before it is put in place (rename)
    leaves the previous version byte for byte: a save that wrote the file in place would fail here."""
    store = CheckpointStore(tmp_path)
    old, old_bytes, new = _old_and_new(store)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError(5, f"simulated crash in {cut_at}")

    monkeypatch.setattr(os, cut_at, crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.save(new)
    monkeypatch.undo()
    assert store._path("t1").read_bytes() == old_bytes
    assert store.load_all() == [old]  # nothing partial is read as valid
    assert records_dir(tmp_path) == ["t1.json"]
    store.save(new)  # and the next save works
    assert store.load_all() == [new]


def test_leftover_of_a_killed_write_is_not_read_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old, old_bytes, new = _old_and_new(store)
    monkeypatch.undo()
    # The save wrote a temp file beside the record and renamed it over the record.
    ((src, dst),) = renames
    assert dst == store._path("t1") and src.parent == dst.parent and src != dst
    # kill -9 after half the next version went into such a temp file, before its rename:
    torn = src.with_name(src.name[:-3] + "xyz")
    torn.write_bytes(new.model_dump_json().encode()[: len(old_bytes) // 2])
    assert store.load_all() == [old]
    assert store._path("t1").read_bytes() == old_bytes
    assert records_dir(tmp_path) == ["t1.json"]  # the garbage went


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


def test_saves_are_made_durable_off_the_callers_thread_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save() never waits on the disk (it runs on the agent's loop); the group sync fsyncs every
    record and the directory on its own thread, a burst in one round."""
    store = CheckpointStore(tmp_path)
    real_fsync = os.fsync
    first_round = threading.Event()
    fsyncs: list[str] = []

    def held_fsync(fd: int) -> None:
        fsyncs.append(threading.current_thread().name)
        first_round.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    store.save(record("t0"))  # the first round starts and is held in its fsync
    for i in range(1, 20):
        store.save(record(f"t{i}"))  # no fsync on this thread: the saves do not wait
    assert threading.current_thread().name not in fsyncs
    first_round.set()
    assert store.flush(timeout=10)
    assert store.sync.rounds <= 3  # t0's round, then the other 19 together (one more at most)
    assert set(fsyncs) == {"group-sync"}
    assert len(store.load_all()) == 20


def test_torn_record_after_a_reboot_is_set_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record saved just before a power loss may be torn; after the host rebooted it is set aside
    (the task died with the host); without a reboot an unreadable record still stops the agent."""
    store = CheckpointStore(tmp_path)
    store.save(record("t1"))
    assert store.load_all() == [record("t1")]  # leaves this boot's id
    (tmp_path / "tasks" / "t9.json").write_bytes(b"")  # renamed into place, data never reached the disk
    with pytest.raises(CheckpointCorrupt, match="t9.json cannot be read"):
        CheckpointStore(tmp_path).load_all()  # same boot: not a power loss, never guess
    monkeypatch.setattr(checkpoint, "current_boot_id", lambda: "another-boot")
    after = CheckpointStore(tmp_path)
    assert after.load_all() == [record("t1")]
    assert [p.name for p in after.quarantined] == ["t9.torn"]
    assert records_dir(tmp_path) == ["t1.json", "t9.torn"]
    assert CheckpointStore(tmp_path).load_all() == [record("t1")]  # and the next start is clean
    # A whole JSON record this agent cannot read (another schema) is no torn write: it stops the
    # agent after a reboot too (a review found it would have been set aside and lost).
    (tmp_path / "tasks" / "t8.json").write_text('{"task_id": "t8", "unknown_field": 1}')
    monkeypatch.setattr(checkpoint, "current_boot_id", lambda: "a-third-boot")
    with pytest.raises(CheckpointCorrupt, match="t8.json cannot be read"):
        CheckpointStore(tmp_path).load_all()


def test_async_saves_land_in_order_whatever_the_threads_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save_async serialises the record when called; if an older version's write is slower than a
    newer one's, the older is dropped, never written over the newer."""
    store = CheckpointStore(tmp_path)
    rec = record()
    real = checkpoint.replace_bytes
    gate = threading.Event()

    def slow_first(path: Path, data: bytes, mode: int = 0o600) -> None:
        if b"the old version" in data:
            gate.wait(10)
        real(path, data, mode)

    monkeypatch.setattr(checkpoint, "replace_bytes", slow_first)

    async def main() -> None:
        rec.message = "the old version"
        old = asyncio.ensure_future(store.save_async(rec))
        await asyncio.sleep(0.05)  # the old version's write is parked in its thread
        rec.message = "the new version"
        store.save(rec)  # a newer version (sync) lands first
        gate.set()
        await old

    asyncio.run(main())
    assert store.load_all()[0].message == "the new version"


def test_commit_runs_the_write_off_the_loop(tmp_path: Path) -> None:
    from agent.steps.base import LaunchContext

    store = CheckpointStore(tmp_path)
    rec = record()
    threads: list[str] = []
    real_write = store._write

    def spy(*args: object) -> None:
        threads.append(threading.current_thread().name)
        real_write(*args)  # type: ignore[arg-type]

    store._write = spy  # type: ignore[method-assign]
    ctx = LaunchContext(rec, docker=None, node_id="n1", save=lambda: store.save(rec),  # type: ignore[arg-type]
                        save_async=lambda: store.save_async(rec))
    asyncio.run(ctx.commit())
    assert threads and threads[0].startswith("checkpoint_")  # its own pool, not the shared one
    assert store.load_all() == [rec]


def test_a_failed_fsync_is_never_counted_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After EIO the kernel may have dropped the pages: a later fsync that succeeds proves nothing,
    so flush says False from then on (and the agent's stop logs it), even for later writes."""
    store = CheckpointStore(tmp_path / "state")
    real_fsync = os.fsync
    failing = {"on": True}

    def eio_fsync(fd: int) -> None:
        if failing["on"]:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", eio_fsync)
    store.save(record("t0"))
    assert store.flush(timeout=10) is False
    assert store.sync.error is not None and "Input/output error" in store.sync.error
    failing["on"] = False
    store.save(record("t1"))
    assert store.flush(timeout=10) is False  # sticky
    assert {r.task_id for r in store.load_all()} == {"t0", "t1"}  # the records themselves are in place
    healthy = CheckpointStore(tmp_path / "other")
    healthy.save(record("t2"))
    assert healthy.flush(timeout=10) is True
