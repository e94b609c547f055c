"""The 12,000-container incident as a test (issue 14), on a real agent and engine, 20 running containers.

One cell for the module: a service job A (18 tasks) and B (2), a verified backup of the store taken
while they run. Each case breaks the control plane the way the talk's did, then checks that

- the engine itself saw no titus container die, be killed or stopped (its own events, not the
  scheduler's view), and
- the case ended refused-to-start (exit 3 and a one-line reason) or frozen with the operator paged
  (`--page-command` wrote the freeze), and
- after the operator's recovery (restore the backup, approve, unfreeze — or the cut healing) the cell
  converges with the very same containers (same ids, same start times) and no task started twice.

The last case turns orphan kills on (`--orphan-kill-after`) and checks that exactly the orphans die.

Short timeouts via flags keep it fast. Run it under the engine lock:
`flock /tmp/titus-engine.lock python -m pytest -q tests/integration/test_incident.py`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.harness import IMAGE, Platform, Proc, wait_for

FLAGS = ("--heartbeat-interval", "1", "--disconnect-after", "3", "--lost-after", "6",
         "--reconcile-interval", "0.5", "--reconcile-grace", "3", "--missing-after", "2", "--missing-lost-after", "3",
         "--job-disruption-window", "5")
A, B = 18, 2  # 20 running containers


class Cell:
    def __init__(self, p: Platform) -> None:
        self.p = p
        self.db = p.tmp / "scheduler.db"
        self.pages = p.tmp / "pages.jsonl"
        self.backups = p.tmp / "backups"
        self.base: Path = Path()
        self.jobs: dict[str, str] = {}
        self.baseline: dict[str, str] = {}  # container id → StartedAt

    # ---- processes ----------------------------------------------------------------------------

    def flags(self) -> list[str]:
        return [*FLAGS, "--page-command", f"tee -a {self.pages}"]

    def start(self, *extra: str) -> None:
        self.p.start_scheduler(*self.flags(), *extra)

    def stop(self) -> None:
        assert self.p.scheduler is not None
        self.p.scheduler.stop()
        self.p.scheduler = None

    def refused(self) -> str:
        """Start the scheduler on the store as it is: it must refuse (exit 3). Returns its stderr line."""
        log = self.p.tmp / f"refused-{time.monotonic_ns()}.log"
        proc = Proc("scheduler", [sys.executable, "-m", "scheduler.main", "--listen",
                                  f"127.0.0.1:{self.p.scheduler_port}", "--db", str(self.db), "--pki", str(self.p.pki),
                                  *self.flags()], log)
        rc = proc.p.wait(30)
        proc.stop()
        assert rc == 3, log.read_text()
        line = next(x for x in log.read_text().splitlines() if x.startswith("titus-scheduler: cannot start:"))
        return line

    def cli(self, *args: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "scheduler.main", *args], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def restore_base(self) -> None:
        """The operator's recovery: the verified backup back in place, the scheduler started on it."""
        self.cli("restore", str(self.base), "--db", str(self.db), "--force")
        self.start()

    # ---- observations -------------------------------------------------------------------------

    def reconcile(self) -> dict[str, Any]:
        return dict(self.p.api("GET", "/v1/admin/reconcile"))

    def paged(self) -> int:
        # page_command gets the freeze as one JSON document on stdin; tee appends them back to back
        return self.pages.read_text().count('"event"') if self.pages.exists() else 0

    def running(self) -> dict[str, str]:
        return {c.id: c.attrs["State"]["StartedAt"] for c in self.p.containers()}

    def kills_since(self, since_ns: int) -> list[str]:
        """die/kill/stop events of this agent's task containers since `since_ns`, from the engine."""
        return [f"{action} {task}" for action, task in self.kill_events(since_ns)]

    def kill_events(self, since_ns: int) -> list[tuple[str, str]]:
        events = self.p.engine.events(
            since=since_ns // 1_000_000_000 - 1, until=int(time.time()) + 1, decode=True,
            filters={"type": "container", "label": f"titus.agent={self.p.node_id}"},
        )
        return [(str(e["Action"]), str(e["Actor"]["Attributes"].get("titus.task_id"))) for e in events
                if e.get("Action") in ("die", "kill", "stop") and int(e.get("timeNano", 0)) >= since_ns]

    def starts_per_task(self) -> Counter[str]:
        events = self.p.engine.events(
            since=0, until=int(time.time()) + 1, decode=True,
            filters={"type": "container", "event": "start", "label": f"titus.agent={self.p.node_id}"},
        )
        return Counter(e["Actor"]["Attributes"].get("titus.task_id", "?") for e in events)

    def converged(self, unknown: int = 0) -> None:
        def ok() -> bool:
            r, n = self.reconcile(), self.p.node()
            return (not r["frozen"] and n is not None and n["status"] == "Ready" and not n["missingTasks"]
                    and r["lastPass"] is not None and not r["inGrace"]
                    and sum(r["mismatch"].values()) == r["mismatch"]["unknownTask"] == unknown)
        try:
            wait_for(ok, 40, "the cell converged (not frozen, no mismatch)")
        except AssertionError as e:
            r = self.reconcile()
            state = {k: r[k] for k in ("frozen", "freezeReason", "inGrace", "mismatch", "mismatches", "proposed")}
            raise AssertionError(f"{e}; node {self.p.node()}; reconcile {state}") from None
        starts = self.starts_per_task()
        assert max(starts.values()) == 1, f"a task started twice: {starts}"


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    engine = docker.from_env()
    p = Platform(tmp_path_factory.mktemp("incident"), engine)
    c = Cell(p)
    try:
        c.start()
        p.start_agent()
        c.jobs["A"] = p.submit("sleep 3600", count=A, service=True, killGraceSeconds=1)
        c.jobs["B"] = p.submit("sleep 3600", count=B, service=True, killGraceSeconds=1)
        wait_for(lambda: len(p.started(c.jobs["A"])) == A and len(p.started(c.jobs["B"])) == B, 180,
                 f"{A + B} Started")
        c.converged()
        c.base = Path(c.cli("backup", "--db", str(c.db), "--out", str(c.backups))["snapshot"])
        assert c.cli("restore-test", str(c.base))["ok"]
        c.baseline = c.running()
        assert len(c.baseline) == A + B
        yield c
    finally:
        p.close()


def test_empty_store_freezes_and_pages(cell: Cell) -> None:
    since, pages = time.time_ns(), cell.paged()
    cell.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cell.db}{suffix}").unlink(missing_ok=True)
    cell.start("--orphan-kill-after", "1")  # even with orphan kills on: a mass of orphans freezes
    wait_for(lambda: cell.reconcile()["frozen"], 30, "frozen")
    assert cell.reconcile()["mismatch"]["unknownTask"] == A + B
    wait_for(lambda: sum(a["kind"] == "killOrphanTask" for a in cell.reconcile()["proposed"]) == A + B, 30,
             "every orphan proposed (the dry run), none killed")
    wait_for(lambda: cell.paged() > pages, 10, "paged")
    cell.p.api("POST", "/v1/admin/reconcile/unfreeze", {}, expect=200)  # a person tries: it freezes again
    wait_for(lambda: cell.reconcile()["frozen"], 30, "frozen again")
    assert cell.running() == cell.baseline
    cell.stop()
    cell.restore_base()
    cell.converged()
    assert cell.running() == cell.baseline
    assert cell.kills_since(since) == []


@pytest.mark.parametrize("damage", ["newer_schema", "unreadable_task", "deleted_task_row"])
def test_damaged_store_refuses_to_start(cell: Cell, damage: str) -> None:
    since = time.time_ns()
    cell.stop()
    db = sqlite3.connect(cell.db)
    if damage == "newer_schema":
        db.execute("PRAGMA user_version=99")
        expect = "newer than this scheduler understands"
    elif damage == "unreadable_task":
        db.execute("UPDATE tasks SET doc = '{\"id\": 1}' WHERE rowid = (SELECT min(rowid) FROM tasks)")
        expect = "cannot be read"
    else:
        db.execute("DELETE FROM tasks WHERE rowid = (SELECT max(rowid) FROM tasks)")
        expect = "integrity check failed"
    db.commit()
    db.close()
    line = cell.refused()
    assert expect in line, line
    assert cell.running() == cell.baseline  # the agent kept everything while nobody was in charge
    cell.restore_base()
    cell.converged()
    assert cell.running() == cell.baseline
    assert cell.kills_since(since) == []


def test_every_agent_cut_off_freezes_then_heals(cell: Cell) -> None:
    since, pages = time.time_ns(), cell.paged()
    agent = cell.p.agent
    assert agent is not None
    agent.p.send_signal(signal.SIGSTOP)  # a control-plane network cut: the agent hears and says nothing
    try:
        wait_for(lambda: cell.reconcile()["frozen"], 40, "frozen on the silent host")
        assert cell.reconcile()["mismatch"]["disconnected"] == A + B
        wait_for(lambda: cell.paged() > pages, 10, "paged")
        assert all(t["state"] == "Started" for j in cell.jobs.values() for t in cell.p.tasks(j))
    finally:
        agent.p.send_signal(signal.SIGCONT)
    wait_for(lambda: (n := cell.p.node()) is not None and n["status"] == "Ready", 30, "the host is back")
    wait_for(lambda: sum(cell.reconcile()["mismatch"].values()) == 0, 30, "no mismatch")
    assert cell.reconcile()["frozen"]  # sticky: a person looks before anything is released
    cell.p.api("POST", "/v1/admin/reconcile/unfreeze", {}, expect=200)
    cell.converged()
    assert cell.running() == cell.baseline
    assert cell.kills_since(since) == []


def test_store_restored_from_an_older_snapshot(cell: Cell) -> None:
    p = cell.p
    # After the backup the world moved on: B was killed, C started.
    old_b = {t["id"] for t in p.tasks(cell.jobs["B"])}
    p.api("POST", f"/v1/jobs/{cell.jobs['B']}/kill", expect=202)
    p.wait_job_finished(cell.jobs["B"], timeout=60)
    c = cell.jobs["C"] = p.submit("sleep 3600", count=2, service=True, killGraceSeconds=1)
    wait_for(lambda: len(p.started(c)) == 2, 60, "C Started")
    wait_for(lambda: len(p.containers()) == A + B, 30, "B's containers gone")
    before = cell.running()
    since, pages = time.time_ns(), cell.paged()
    cell.stop()
    cell.restore_base()  # the old snapshot: it knows B (gone) and not C (running)
    wait_for(lambda: cell.reconcile()["frozen"], 30, "frozen")
    wait_for(lambda: cell.paged() > pages, 10, "paged")
    r = cell.reconcile()
    assert (r["mismatch"]["missing"], r["mismatch"]["unknownTask"]) == (2, 2)
    assert cell.running() == before
    # The operator reviews the dry run (B's two tasks to declare lost) and approves it.
    wait_for(lambda: len([a for a in cell.reconcile()["proposed"] if a["kind"] == "declareLost"]) == 2, 30,
             "2 proposed")
    p.api("POST", "/v1/admin/reconcile/approve", {"all": True}, expect=200)
    # (its old tasks read Started until the approval takes effect: wait for the replacements)
    wait_for(lambda: len([t for t in p.started(cell.jobs["B"]) if t["id"] not in old_b]) == 2, 60,
             "B replaced and Started")
    wait_for(lambda: len(cell.running()) == A + B + 2, 30, "B's replacements' containers running")
    # The operator unfreezes once only the orphans are left (the agent has reported B's new tasks).
    wait_for(lambda: cell.reconcile()["mismatch"] == {**r["mismatch"], "missing": 0}, 30, "only orphans left")
    p.api("POST", "/v1/admin/reconcile/unfreeze", {}, expect=200)
    cell.converged(unknown=2)  # C's containers: orphans, reported, never killed
    after = cell.running()
    assert set(before) <= set(after) and all(after[k] == v for k, v in before.items())
    assert len(after) == A + B + 2
    assert cell.kills_since(since) == []


def test_orphans_are_killed_after_their_age_when_enabled(cell: Cell) -> None:
    """C's tasks are orphans since the older snapshot came back: with `--orphan-kill-after` they are
    killed (the agent's runners, told by the scheduler), then a container nobody knows is (the agent,
    told by the scheduler), each through the kill path — and nothing else dies."""
    p = cell.p
    # C is unknown to the restored store: its task ids are what the agent reports and nobody knows
    # (on the scheduler's next reconciliation pass after the unfreeze: wait for it, not for a sleep)
    def unknown() -> set[str] | None:
        doc = cell.reconcile()
        found = {m["key"].split(":", 1)[1] for m in doc["mismatches"] if m["key"].startswith("unknownTask:")}
        return found if len(found) == 2 and doc["mismatch"]["unknownTask"] == 2 else None

    orphans = wait_for(unknown, 30, "C's two tasks reported as unknown")
    keep = {k: v for k, v in cell.running().items()
            if p.engine.containers.get(k).labels.get("titus.task_id") not in orphans}
    assert len(keep) == A + B
    since = time.time_ns()
    cell.stop()
    cell.start("--orphan-kill-after", "2")
    wait_for(lambda: len(p.containers()) == A + B, 60, "C's orphaned containers killed")
    foreign = p.engine.containers.run(IMAGE, ["sleep", "3600"], detach=True,
                                      labels={"titus.agent": p.node_id, "titus.task_id": "foreign-1"})
    try:
        assert p.agent is not None
        p.agent.stop()  # a restarted agent lists the foreign container at once (else within 30 s)
        p.start_agent()
        # sparse: a full list inspects each container and 404s on one removed between the two calls
        wait_for(lambda: not any(c.id == foreign.id for c in p.engine.containers.list(all=True, sparse=True)), 60,
                 "the unknown container killed and removed")
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            foreign.remove(force=True)
    cell.converged()
    assert cell.running() == keep
    killed = {task for _, task in cell.kill_events(since)}
    assert killed == orphans | {"foreign-1"}, killed
    executed = [e for e in cell.reconcile()["audit"] if e["event"] == "action.executed"]
    assert {e["kind"] for e in executed} <= {"killOrphanTask", "killOrphanContainer"}
