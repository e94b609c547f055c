"""Every engine refusal a task's own configuration can cause ends the task `failed` (the user's fault,
consuming its retries), not `crashed` (which the platform retries as its own): on the real engine."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Iterator

import docker
import pytest

from tests.harness import IMAGE, Platform

pytestmark = pytest.mark.integration

NO_USER = "127.0.0.1:5000/titus/i18-nouser:latest"
ARM64 = "127.0.0.1:5000/titus/i18-arm64:latest"
FOREIGN_ELF = "127.0.0.1:5000/titus/i18-foreign-elf:latest"


def _foreign_busybox() -> bytes:
    """The host's static busybox with its ELF e_machine set to aarch64: what execve sees of a binary
    built for another architecture (ENOEXEC, 'exec format error')."""
    path = shutil.which("busybox")
    assert path, "busybox-static is installed by scripts/setup-host.sh"
    elf = bytearray(open(path, "rb").read())
    elf[18:20] = (0xB7).to_bytes(2, "little")
    return bytes(elf)


def _load_image(engine: docker.DockerClient, tag: str, arch: str, files: dict[str, bytes],
                entrypoint: list[str]) -> None:
    """`docker load` of a one-layer image whose config says `arch` (a build would say the host's)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            t.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    config = json.dumps({
        "architecture": arch, "os": "linux", "config": {"Entrypoint": entrypoint},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]},
    }).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as t:
        for name, data in (("layer.tar", layer_bytes), ("config.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    engine.images.load(archive.getvalue())


@pytest.fixture(scope="module")
def images(engine: docker.DockerClient) -> Iterator[None]:
    engine.images.build(fileobj=io.BytesIO(f"FROM {IMAGE}\nUSER nosuchuser\n".encode()), tag=NO_USER, rm=True)
    arm = _foreign_busybox()
    _load_image(engine, ARM64, "arm64", {"bin/app": arm}, ["/bin/app"])
    # Labelled for this host's architecture, yet its binary is not: the kernel is the one to refuse.
    _load_image(engine, FOREIGN_ELF, "amd64", {"bin/app": arm}, ["/bin/app"])
    try:
        yield
    finally:
        for tag in (NO_USER, ARM64, FOREIGN_ELF):
            engine.images.remove(tag, force=True)


CASES = [
    # The finding: a memory limit below what the container needs to start (a large env).
    ("memory below start usage", {"command": ["true"], "resources": {"cpu": 0.1, "memoryMiB": 6},
                                  "env": {f"V{i:04d}": "x" * 240 for i in range(4000)}}, "memory limit is below"),
    ("entrypoint missing", {"entrypoint": ["/nonexistent"], "command": ["x"]}, "code 127"),
    ("entrypoint not executable", {"entrypoint": ["/etc/passwd"], "command": ["x"]}, "code 126"),
    ("user missing in the image", {"image": NO_USER, "command": ["true"]}, "user does not exist"),
    ("image for another architecture", {"image": ARM64, "command": ["x"]}, "built for linux/arm64"),
    ("exec format error", {"image": FOREIGN_ELF, "command": ["x"]}, "exited with code 1"),
]


REFUSED_AT_START = {"memory below start usage", "user missing in the image", "image for another architecture"}


@pytest.mark.parametrize("name,container,words", CASES, ids=[c[0] for c in CASES])
def test_user_faults_at_start_are_failed(
    platform: Platform, images: None, name: str, container: dict[str, object], words: str
) -> None:
    p = platform
    job_id = p.submit(container.pop("command"), **container)  # type: ignore[arg-type]
    p.wait_job_finished(job_id, timeout=90)
    tasks = p.tasks(job_id)
    assert len(tasks) == 1, tasks  # failed with no retries left: not re-run as a platform crash
    assert tasks[0]["reason"] == "failed", tasks[0]
    assert words in str(tasks[0]["message"]), tasks[0]
    job = p.job(job_id)
    assert not job["crashLooping"]
    if name in REFUSED_AT_START:  # never Started: the job says how it fails at start
        assert str(job["startFailure"]).startswith("failed: ") and words in job["startFailure"], job
    else:  # it started, then exited non-zero
        assert job["startFailure"] is None, job
