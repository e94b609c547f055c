"""Image provenance end to end on the real engine and the local registry (docs/provenance.md): a job
submitted by tag records the digest; the container runs it and carries every provenance label; the
task reads its provenance from its metadata; moving the tag in the registry flags the running task
(API, `titusctl task describe`, metric) and the job's next launch still runs the pinned digest.

The repository is this test's own (`titus/i19prov-<random>`); its images and manifests are removed
at the end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.harness import IMAGE, Platform, wait_for
from tests.integration.test_imds import container_of, http_in_container
from tests.support import registry as reg

pytestmark = pytest.mark.integration

COMMIT = "9fceb02d0ae598e95dc970b74767f19372d61af8"
PROVENANCE = {"source.commit": COMMIT, "source.repo": "https://git.example.com/web/web.git",
              "build.id": "ci-web#77", "build.url": "https://ci.example.com/web/77"}


class Pushed:
    def __init__(self, engine: docker.DockerClient) -> None:
        self.engine = engine
        self.repo = f"titus/i19prov-{uuid.uuid4().hex[:8]}"
        self.ref = f"{reg.REGISTRY}/{self.repo}:v1"
        self.digests: list[str] = []
        self.image_ids: list[str] = []

    def push(self, generation: int) -> str:
        """Build a new image as the tag and push it; returns its manifest digest."""
        image, _ = self.engine.images.build(
            fileobj=io.BytesIO(f"FROM {IMAGE}\nLABEL generation={generation}\n".encode()), tag=self.ref, rm=True)
        self.engine.images.push(self.ref)
        digest = next(d.partition("@")[2] for d in self.engine.images.get(self.ref).attrs["RepoDigests"]
                      if d.startswith(f"{reg.REGISTRY}/{self.repo}@"))
        self.digests.append(digest)
        self.image_ids.append(str(image.id))
        return digest

    def clean(self) -> None:
        for digest in self.digests:
            reg.delete(self.repo, digest)
        for image_id in self.image_ids:
            try:
                self.engine.images.remove(image_id, force=True)
            except docker.errors.ImageNotFound:
                pass


@pytest.fixture
def pushed(engine: docker.DockerClient) -> Iterator[Pushed]:
    p = Pushed(engine)
    try:
        yield p
    finally:
        p.clean()


@pytest.fixture
def fast_checks(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Platform]:
    p = Platform(tmp_path, engine)
    try:
        p.start_scheduler("--tag-check-interval", "1")
        p.start_agent()
        yield p
    finally:
        p.close()


def submit(p: Platform, image: str) -> str:
    spec: dict[str, Any] = {
        "appName": "itest", "owner": "tests", "attributes": PROVENANCE, "service": {"desired": 1},
        "container": {"image": image, "command": ["sleep", "600"], "resources": {"cpu": 0.1, "memoryMiB": 64},
                      "killGraceSeconds": 1, "imdsV1Allowed": True},
    }
    return str(p.api("POST", "/v1/jobs", spec, expect=201)["id"])


def describe(p: Platform, task_id: str) -> str:
    done = subprocess.run([sys.executable, "-m", "titusctl.main", "task", "describe", task_id],
                          env={**p.ctl_env(), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pinned_digest_labels_metadata_and_a_moved_tag(pushed: Pushed, fast_checks: Platform) -> None:
    p = fast_checks
    first = pushed.push(1)
    job_id = submit(p, pushed.ref)
    job = p.job(job_id)
    assert job["provenance"]["imageDigest"] == first and job["provenance"]["pinnedBy"] == "submit"

    (task,) = wait_for(lambda: p.started(job_id), 60, "task Started")
    assert task["provenance"]["taskImageDigest"] == first and task["tagMoved"] is False
    box = container_of(p, task["id"])
    assert box.attrs["Image"] == pushed.image_ids[0]
    labels = box.labels
    assert labels["titus.image.digest"] == first and labels["titus.image.ref"] == pushed.ref
    assert {k: labels[f"titus.{k}"] for k in PROVENANCE} == PROVENANCE
    status, body = http_in_container(box, "GET", "/latest/meta-data/titus/provenance")
    assert status == 200 and json.loads(body) == {"image": pushed.ref, "imageDigest": first, **PROVENANCE}

    # The tag moves in the registry (and on this host: the engine's tag is the new image now).
    second = pushed.push(2)
    assert second != first
    moved = wait_for(lambda: (t := p.api("GET", f"/v1/tasks/{task['id']}"))["tagMoved"] and t, 30, "tagMoved")
    assert moved["provenance"]["tagDigest"] == second
    assert "TAG MOVED" in describe(p, task["id"])
    metrics = p.http.get(f"{p.url}/metrics", timeout=5).text
    assert "titus_scheduler_tasks_tag_moved 1.0" in metrics

    # A new launch of the job (the task killed, the service replaces it) runs the pinned digest.
    p.api("POST", f"/v1/tasks/{task['id']}/kill", expect=202)
    (again,) = wait_for(lambda: [t for t in p.started(job_id) if t["id"] != task["id"]], 60, "replacement Started")
    box = container_of(p, again["id"])
    assert box.attrs["Image"] == pushed.image_ids[0] and box.labels["titus.image.digest"] == first
    assert again["provenance"]["taskImageDigest"] == first
    p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    p.wait_job_finished(job_id, timeout=60)


def test_bad_provenance_is_refused(platform: Platform) -> None:
    spec = {"appName": "itest", "owner": "tests", "batch": {"size": 1},
            "attributes": {"source.commit": "not-a-commit", "build.url": "https://u:pw@ci.example.com/1"},
            "container": {"image": IMAGE, "command": ["true"]}}
    err = platform.api("POST", "/v1/jobs", spec, expect=400)["error"]
    assert sorted(e["field"] for e in err["problems"]) == ["attributes.build.url", "attributes.source.commit"]
    assert platform.api("GET", "/v1/jobs")["jobs"] == []
