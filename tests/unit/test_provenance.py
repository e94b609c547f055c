"""Image provenance on the control plane (docs/provenance.md): provenance attributes validated at
submit (400 naming the attribute), the digest resolved at submit against the real local registry
(127.0.0.1:5000; images pushed over its HTTP API into a repository this test owns, then deleted),
unresolved at submit → pinned by the first launch, every launch sent the pinned digest, and a moved
tag flagging the live task (API, metric)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from scheduler.api import make_app
from scheduler.core import Scheduler
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import FirstFit
from scheduler.provenance import TagWatcher
from scheduler.registry import Lookup, Registry
from scheduler.store import SQLiteStore
from tests.harness import free_port
from tests.support import registry as reg
from titus_common.jobspec import SpecError, parse_job_spec
from titus_common.protocol import CapacityReport, NodeReport, TaskUpdate
from titus_common.provenance import check_provenance, container_labels, digest_reference, split_reference
from titus_common.states import TaskState as S

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GOOD = {"source.commit": COMMIT, "source.repo": "https://github.com/netflix/titus.git",
        "build.id": "jenkins-web#1234", "build.url": "https://ci.example.com/job/web/1234/"}


def job_doc(image: str, **attributes: str) -> dict[str, Any]:
    return {"appName": "web", "owner": "me", "attributes": attributes,
            "container": {"image": image, "command": ["true"], "resources": {"cpu": 1, "memoryMiB": 64}},
            "service": {"desired": 1}}


@pytest.fixture
def repo() -> Iterator[tuple[str, list[str]]]:
    """A repository this test owns, and the digests pushed into it (deleted afterwards)."""
    reg.require()
    name, pushed = reg.owned_repo("i19-unit"), []
    try:
        yield name, pushed
    finally:
        for digest in pushed:
            reg.delete(name, digest)


# ---- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("source.commit", "abc"), ("source.commit", "g" * 40), ("source.commit", "a" * 65),
    ("source.repo", "ftp://example.com/r"), ("source.repo", "https://"), ("source.repo", "not a url"),
    ("source.repo", "https://u:secret@github.com/o/r"), ("source.repo", "https://x.com/" + "a" * 600),
    ("build.id", ""), ("build.id", "-starts-with-dash"), ("build.id", "has space"), ("build.id", "x" * 129),
    ("build.url", "git://ci.example.com/1"), ("build.url", "https://user@ci.example.com/1"),
    ("build.url", "https://ci.example.com/\n1"), ("build.url", "https://ci.example.com:99999/"),
])
def test_bad_provenance_is_refused_naming_the_attribute(key: str, value: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_job_spec(job_doc("127.0.0.1:5000/a/b:1", **{key: value}))
    assert [f for f, _ in e.value.problems] == [f"attributes.{key}"]


def test_good_provenance_and_other_attributes_pass() -> None:
    assert check_provenance(GOOD) == []
    assert check_provenance({"source.repo": "git@github.com:netflix/titus.git", "build.id": "42"}) == []
    spec = parse_job_spec(job_doc("127.0.0.1:5000/a/b:1", **GOOD, **{"titus.health.tolerate": "x"}))
    assert spec.attributes["source.commit"] == COMMIT


def test_two_bad_attributes_are_two_problems() -> None:
    with pytest.raises(SpecError) as e:
        parse_job_spec(job_doc("127.0.0.1:5000/a/b:1", **{"source.commit": "zz", "build.url": "ftp://x/y"}))
    assert sorted(f for f, _ in e.value.problems) == ["attributes.build.url", "attributes.source.commit"]


def test_references_and_labels() -> None:
    d = "sha256:" + "a" * 64
    assert split_reference("127.0.0.1:5000/titus/x:2") == ("127.0.0.1:5000", "titus/x", "2", None)
    assert split_reference("busybox") == ("docker.io", "library/busybox", None, None)
    assert digest_reference("127.0.0.1:5000/titus/x:2", d) == f"127.0.0.1:5000/titus/x@{d}"
    assert digest_reference("localhost:5000/x", d) == f"localhost:5000/x@{d}"
    assert container_labels("r:1", d, GOOD) == {
        "titus.image.ref": "r:1", "titus.image.digest": d, "titus.source.commit": COMMIT,
        "titus.source.repo": GOOD["source.repo"], "titus.build.id": GOOD["build.id"], "titus.build.url": GOOD["build.url"]}


# ---- the registry --------------------------------------------------------------------------------

async def test_registry_lookup_follows_the_tag(repo: tuple[str, list[str]]) -> None:
    name, pushed = repo
    pushed.append(reg.push(name, "v1", b"one"))
    r = Registry(timeout=5)
    assert await r.lookup(f"{reg.REGISTRY}/{name}:v1") == Lookup(pushed[0])
    pushed.append(reg.push(name, "v1", b"two"))
    assert (await r.lookup(f"{reg.REGISTRY}/{name}:v1")).digest == pushed[1] != pushed[0]
    missing = await r.lookup(f"{reg.REGISTRY}/{name}:nope")
    assert missing.digest is None and "404" in missing.error


async def test_unreachable_registry_is_an_answer_not_an_error() -> None:
    lookup = await Registry(timeout=2).lookup(f"127.0.0.1:{free_port()}/a/b:1")
    assert lookup.digest is None and "unreachable" in lookup.error
    hub = await Registry().lookup("busybox:latest")  # never asked (token auth): the agent pins it
    assert hub.digest is None and "first launch" in hub.error


# ---- the scheduler ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Scheduler]]:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), registry=Registry(timeout=5),
                  clock=Clock())
    client = TestClient(TestServer(make_app(s)))
    await client.start_server()
    yield client, s
    await client.close()


def place(s: Scheduler) -> Any:
    s.heartbeat(NodeReport(id="n1", capacity=CapacityReport(cpus=4, memory_mib=4096, disk_mib=100_000)))
    s.schedule_pass()
    (launch,) = s.work_for("n1").launch
    return launch


def started(s: Scheduler, task_id: str, digest: str | None) -> None:
    s.apply_updates("n1", [TaskUpdate(task_id=task_id, state=S.STARTED, image_digest=digest,
                                      timestamps={S.STARTED: s.clock()})])


async def test_submit_400_names_the_attribute(api: tuple[TestClient[Any, Any], Scheduler]) -> None:
    client, s = api
    r = await client.post("/v1/jobs", json=job_doc("127.0.0.1:5000/a/b:1", **{"source.commit": "nothex!"}))
    assert r.status == 400
    assert [p["field"] for p in (await r.json())["error"]["problems"]] == ["attributes.source.commit"]
    assert not s.jobs


async def test_by_tag_pins_at_submit_and_a_moved_tag_flags_the_task(
        api: tuple[TestClient[Any, Any], Scheduler], repo: tuple[str, list[str]]) -> None:
    client, s = api
    name, pushed = repo
    pushed.append(reg.push(name, "v1", b"first"))
    image = f"{reg.REGISTRY}/{name}:v1"
    r = await client.post("/v1/jobs", json=job_doc(image, **GOOD))
    assert r.status == 201
    job = await r.json()
    assert job["provenance"]["imageDigest"] == pushed[0] and job["provenance"]["pinnedBy"] == "submit"
    assert job["provenance"]["source.commit"] == COMMIT
    launch = place(s)
    assert launch.image_digest == pushed[0] and launch.provenance == GOOD
    started(s, launch.task_id, pushed[0])
    clock = s.clock
    assert isinstance(clock, Clock) and s.registry is not None
    watcher = TagWatcher(s, s.registry, interval=60, per_pass=4, clock=clock)
    assert await watcher.run_pass() == 0  # asked at submit: not due again before the interval
    clock.now += 61
    assert await watcher.run_pass() == 1
    assert await watcher.run_pass() == 0  # rate-limited
    task = await (await client.get(f"/v1/tasks/{launch.task_id}")).json()
    assert task["tagMoved"] is False and task["provenance"]["taskImageDigest"] == pushed[0]

    pushed.append(reg.push(name, "v1", b"second"))  # the tag moves in the registry
    clock.now += 61
    assert await watcher.run_pass() == 1
    task = await (await client.get(f"/v1/tasks/{launch.task_id}")).json()
    assert task["tagMoved"] is True and task["provenance"]["tagDigest"] == pushed[1]
    assert b"titus_scheduler_tasks_tag_moved 1.0" in generate_latest(s.metrics.registry)
    # The job stays pinned: a new launch (the task killed, replaced) is sent the first digest.
    await client.post(f"/v1/tasks/{launch.task_id}/kill")
    s.apply_updates("n1", [TaskUpdate(task_id=launch.task_id, state=S.FINISHED, reason="killed",
                                      timestamps={S.FINISHED: s.clock()})])
    s.schedule_pass()
    (again,) = s.work_for("n1").launch
    assert again.task_id != launch.task_id and again.image_digest == pushed[0]


async def test_unreachable_at_submit_is_pinned_by_the_first_launch(tmp_path: Path) -> None:
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics(), registry=Registry(timeout=2))
    client = TestClient(TestServer(make_app(s)))
    await client.start_server()
    try:
        r = await client.post("/v1/jobs", json=job_doc(f"127.0.0.1:{free_port()}/a/b:1"))
        job = (await r.json())["provenance"]
        assert r.status == 201 and job["imageDigest"] is None and "unreachable" in job["resolveError"]
        launch = place(s)
        assert launch.image_digest is None
        ran = "sha256:" + "c" * 64
        started(s, launch.task_id, ran)
        record = next(iter(s.jobs.values()))
        assert (record.image_digest, record.image_pinned_by) == (ran, "launch")
        # Durable: a restarted scheduler still has the pin.
        s.store.close()
        again = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
        assert again.jobs[record.id].image_digest == ran and again.tasks[launch.task_id].image_digest == ran
        again.store.close()
    finally:
        await client.close()


def test_a_digest_reference_is_pinned_by_itself(tmp_path: Path) -> None:
    d = "sha256:" + "d" * 64
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    job, _ = s.submit(parse_job_spec(job_doc(f"127.0.0.1:5000/a/b@{d}")))
    assert (job.image_digest, job.image_pinned_by) == (d, "reference")
    watcher = TagWatcher(s, Registry(), interval=0, per_pass=4, clock=s.clock)
    assert watcher.due(s.jobs.values(), s.clock()) == []  # nothing to watch: a digest cannot move


# ---- titusctl ------------------------------------------------------------------------------------

def test_titusctl_attributes_and_describe_summary() -> None:
    from titusctl.commands import job_spec_from_args
    from titusctl.main import build_parser
    from titusctl.render import describe

    args = build_parser().parse_args(["job", "submit", "--image", "b", "--attribute", f"source.commit={COMMIT}",
                                      "--attribute", "build.id=ci#1"])
    assert job_spec_from_args(args)["attributes"] == {"source.commit": COMMIT, "build.id": "ci#1"}
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    text = describe({"id": "t", "provenance": {"image": "r:1", "imageDigest": d1, "pinnedBy": "submit",
                                               "taskImageDigest": d1, "tagDigest": d2, "tagMoved": True, **GOOD}})
    assert f"pinned   {d1} (by submit)" in text and f"TAG MOVED: the tag now points at {d2}" in text
    assert f"source   {GOOD['source.repo']} @ {COMMIT}" in text
    quiet = describe({"id": "t", "provenance": {"image": "r:1", "imageDigest": None, "resolveError": "down",
                                                "taskImageDigest": None, "tagMoved": False}})
    assert "pinned   not yet (down)" in quiet and "TAG MOVED" not in quiet


def test_placement_locality_looks_for_the_pinned_digest(tmp_path: Path) -> None:
    from scheduler.passes import request_for

    d = "sha256:" + "e" * 64
    s = Scheduler(SQLiteStore(tmp_path / "s.db"), FirstFit(), SchedulerMetrics())
    job, _ = s.submit(parse_job_spec(job_doc("127.0.0.1:5000/a/b:1")), Lookup(d))
    (task,) = s.job_tasks(job.id)
    assert request_for(task, job).image == f"127.0.0.1:5000/a/b@{d}"  # as the engine lists RepoDigests
    unpinned, _ = s.submit(parse_job_spec(job_doc("127.0.0.1:5000/a/b")), Lookup(None, "down"))
    assert request_for(s.job_tasks(unpinned.id)[0], unpinned).image == "127.0.0.1:5000/a/b:latest"
