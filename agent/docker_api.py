"""The agent's only door to the Docker engine: the docker SDK's low-level client, with every blocking
call run on a dedicated thread pool so the event loop never waits on dockerd.

Errors are translated once, here, by the SDK's exception types (never by message text):
`DockerUnavailable` (the engine does not answer — a platform fault) versus `DockerError` (the engine
answered no, with its HTTP status: `not_found` for the SDK's NotFound/ImageNotFound, `conflict` for
409, `client_error` for the engine's 4xx "your request is wrong", e.g. a command that is not in the
image). Nothing else in the agent holds the SDK client.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from titus_common.errors import ProviderError
from titus_common.threads import ElasticThreadPool

T = TypeVar("T")

POOL_IDLE_SECONDS = 10.0

LABEL_TASK = "titus.task_id"
LABEL_JOB = "titus.job_id"
LABEL_AGENT = "titus.agent"
LABEL_INDEX = "titus.task_index"


class DockerUnavailable(ProviderError):
    """The engine could not be reached (down, socket missing, timed out)."""


class DockerError(ProviderError):
    def __init__(self, status: int | None, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self._not_found = not_found or status == 404

    @property
    def not_found(self) -> bool:
        return self._not_found

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def client_error(self) -> bool:
        """The engine refused the request as malformed or impossible (4xx other than 404/409)."""
        return self.status is not None and 400 <= self.status < 500 and not self.not_found and not self.conflict


def _translate(e: Exception) -> Exception:
    if isinstance(e, docker.errors.APIError):
        status = e.response.status_code if e.response is not None else None
        return DockerError(status, str(e.explanation or e), not_found=isinstance(e, docker.errors.NotFound))
    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, FileNotFoundError)):
        return DockerUnavailable(f"Docker engine unreachable: {e}")
    if isinstance(e, docker.errors.DockerException):
        return DockerUnavailable(f"Docker client error: {e}")
    return e


class Docker:
    def __init__(self, base_url: str | None = None, api_version: str = "1.41", workers: int = 64) -> None:
        # A fixed API version: "auto" would call the engine at construction and fail if it is down.
        # A connection per pool thread: the SDK's default of 10 makes every call beyond the tenth in a
        # burst open a fresh connection and discard it (urllib3 "pool is full", logged per call).
        kwargs: dict[str, Any] = {"version": api_version, "timeout": 120, "max_pool_size": workers}
        if base_url:
            kwargs["base_url"] = base_url
        self.base_url = base_url
        self.api_version = api_version
        self._api = docker.APIClient(**kwargs)
        # Threads a burst made (a mass kill holds one per `stop` for its grace) leave once idle.
        self.pool = ElasticThreadPool(workers, "docker", idle_seconds=POOL_IDLE_SECONDS, min_workers=min(2, workers))

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))
        except Exception as e:
            raise _translate(e) from e

    async def ping(self) -> bool:
        try:
            return bool(await self.call(self._api.ping))
        except (DockerUnavailable, DockerError):
            return False

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        try:
            return await self.call(self._api.inspect_image, ref)
        except DockerError as e:
            if e.not_found:
                return None
            raise

    async def pull(self, ref: str) -> None:
        # stream=False returns the whole progress log; errors inside it are raised by the SDK only
        # for HTTP errors, so look for an error line ourselves.
        out = await self.call(self._api.pull, ref)
        for line in str(out).splitlines()[-3:]:
            if '"error"' in line or '"errorDetail"' in line:
                raise DockerError(None, line)

    async def create(self, name: str, **kwargs: Any) -> str:
        created = await self.call(self._api.create_container, name=name, **kwargs)
        return str(created["Id"])

    async def start(self, container_id: str) -> None:
        await self.call(self._api.start, container_id)

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        try:
            return await self.call(self._api.inspect_container, container_id)
        except DockerError as e:
            if e.not_found:
                return None
            raise

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace period (dockerd does the timing)."""
        try:
            await self.call(self._api.stop, container_id, timeout=max(0, round(grace_seconds)))
        except DockerError as e:
            if not e.not_found:
                raise

    async def logs_tail(self, container_id: str, lines: int) -> bytes | None:
        """The last `lines` lines of stdout and stderr (None: no such container)."""
        try:
            out = await self.call(self._api.logs, container_id, stdout=True, stderr=True, tail=lines, timestamps=False)
        except DockerError as e:
            if e.not_found:
                return None
            raise
        return out if isinstance(out, bytes) else bytes(out)

    async def remove(self, container_id: str) -> None:
        try:
            await self.call(self._api.remove_container, container_id, force=True, v=True)
        except DockerError as e:
            if not e.not_found and not e.conflict:  # 409: a removal already in progress
                raise

    async def image_refs(self) -> list[str]:
        """Every tag and digest reference of the images the engine holds (what placement calls cached)."""
        images = await self.call(self._api.images)
        refs = {r for img in images for r in (img.get("RepoTags") or []) + (img.get("RepoDigests") or [])}
        return sorted(r for r in refs if not r.startswith("<none>"))

    async def images(self, label: str | None = None) -> list[dict[str, Any]]:
        """The engine's images (Id, RepoTags, RepoDigests, Size, Created), optionally those with a label."""
        filters = {"label": [label]} if label else None
        return list(await self.call(self._api.images, filters=filters))

    async def remove_image(self, image_id: str) -> None:
        """Remove an image by id (never forced: the engine refuses one a container uses, 409)."""
        await self.call(self._api.remove_image, image_id, force=False, noprune=False)

    async def list_labelled(self, agent_id: str) -> list[dict[str, Any]]:
        return await self.list_containers(f"{LABEL_AGENT}={agent_id}")

    async def list_containers(self, *labels: str) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of `labels` (`key` or `key=value`)."""
        return await self.call(self._api.containers, all=True, filters={"label": list(labels)})

    async def info(self) -> dict[str, Any]:
        """`docker info`: the engine's view of itself (security options, cgroups, root dir)."""
        return dict(await self.call(self._api.info))

    def events(self) -> Any:
        """A blocking generator of the engine's container events (for the watcher's own thread)."""
        return self._api.events(decode=True, filters={"type": "container"})

    async def update_cpuset(self, container: str, cpus: str) -> None:
        """`docker update --cpuset-cpus`: the engine rewrites the cgroup and remembers the value."""
        await self.call(self._api.update_container, container, cpuset_cpus=cpus)

    async def cgroup_cpuset(self, container_id: str, cgroup_root: Path) -> str | None:
        """The container's cpuset as the kernel has it (`cpuset.cpus` of its cgroup), or None when
        no known cgroup layout has it. Read on the pool: it is file I/O."""
        return await self.call(_read_cgroup_cpuset, container_id, cgroup_root)

    async def cgroup_cpusets(self, container_ids: list[str], cgroup_root: Path) -> dict[str, str | None]:
        """`cgroup_cpuset` of many containers in one trip to the pool."""
        def read_all() -> dict[str, str | None]:
            return {c: _read_cgroup_cpuset(c, cgroup_root) for c in container_ids}

        return await self.call(read_all)

    def host_config(self, **kwargs: Any) -> dict[str, Any]:
        return dict(self._api.create_host_config(**kwargs))


def _read_cgroup_cpuset(container_id: str, root: Path) -> str | None:
    candidates = (
        root / "cpuset" / "docker" / container_id,  # v1, cgroupfs driver
        root / "cpuset" / "system.slice" / f"docker-{container_id}.scope",  # v1, systemd driver
        root / "system.slice" / f"docker-{container_id}.scope",  # v2, systemd driver
        root / "docker" / container_id,  # v2, cgroupfs driver
    )
    for directory in candidates:
        try:
            return (directory / "cpuset.cpus").read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None
