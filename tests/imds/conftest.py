"""Fixtures for the metadata proxy tests: a fake clock, a scriptable fake STS, listening sockets on
loopback, a service factory and a moto server (own process, free port) playing STS/IAM."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from tests.moto_server import moto_server

from imds.credentials import CredentialBroker
from imds.identity import TaskIdentity
from imds.service import DEFAULT_IMDS_HOSTS, MetadataService
from prometheus_client import CollectorRegistry

ACCOUNT = "123456789012"
KEY = b"k" * 32
ECS_TOKEN = "ecs-secret-token-0123456789abcdef"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSts:
    """Answers AssumeRole like STS (a dict with datetime Expiration), or as `behaviour` says.

    behaviour(role_arn, session) may return an answer, raise, or return None for the default answer.
    `gate` (a threading.Event) holds calls until set, to test single-flight; `wait_calls(n)` returns
    once n calls have entered (and, with a gate, are held inside) AssumeRole.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.calls: list[tuple[str, str, int]] = []
        self._entered = threading.Condition()
        self.behaviour: Callable[[str, str], Any] | None = None
        self.gate: threading.Event | None = None
        self.serial = 0
        self.lifetime = 3600.0

    def answer(self, role_arn: str, session: str) -> dict[str, Any]:
        self.serial += 1
        account, name = role_arn.split(":")[4], role_arn.rsplit("/", 1)[1]
        exp = dt.datetime.fromtimestamp(self.clock() + self.lifetime, dt.timezone.utc)
        return {
            "Credentials": {
                "AccessKeyId": f"ASIAFAKE{self.serial:08d}",
                "SecretAccessKey": f"secret-{self.serial}-{name}",
                "SessionToken": f"session-token-{self.serial}-{name}",
                "Expiration": exp,
            },
            "AssumedRoleUser": {
                "AssumedRoleId": f"AROAFAKE:{session}",
                "Arn": f"arn:aws:sts::{account}:assumed-role/{name}/{session}",
            },
        }

    async def wait_calls(self, n: int, timeout: float = 5.0) -> None:
        def wait() -> bool:
            with self._entered:
                return self._entered.wait_for(lambda: len(self.calls) >= n, timeout)

        if not await asyncio.to_thread(wait):
            raise AssertionError(f"STS got {len(self.calls)} calls, waited for {n}")

    def assume_role(self, RoleArn: str, RoleSessionName: str, DurationSeconds: int) -> Any:  # noqa: N803
        with self._entered:
            self.calls.append((RoleArn, RoleSessionName, DurationSeconds))
            self._entered.notify_all()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.behaviour is not None:
            out = self.behaviour(RoleArn, RoleSessionName)
            if out is not None:
                return out
        return self.answer(RoleArn, RoleSessionName)


def client_error(code: str, message: str = "boom") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message}}, "AssumeRole")


def role_arn(name: str, path: str = "/") -> str:
    return f"arn:aws:iam::{ACCOUNT}:role{path}{name}"


def identity(task_id: str, role: str | None = "app-role", **kw: Any) -> TaskIdentity:
    values: dict[str, Any] = dict(
        task_id=task_id,
        job_id=f"job-{task_id}",
        role_arn=role_arn(role) if role and not role.startswith("arn:") else role,
        ipv4="10.1.2.3",
        mac="0e:11:22:33:44:55",
        hostname="ip-10-1-2-3.ec2.internal",
        instance_id="i-0123456789abcdef0",
        instance_type="m5.large",
        availability_zone="us-east-1a",
        region="us-east-1",
        account_id=ACCOUNT,
        ecs_token=ECS_TOKEN,
    )
    values.update(kw)
    return TaskIdentity(**values)


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url(sock: socket.socket, path: str) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}{path}"


class Env:
    """A service with a fake STS and clock, plus an HTTP session."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.clock = FakeClock()
        self.sts = FakeSts(self.clock)
        self.registry = CollectorRegistry()
        self.broker = CredentialBroker(lambda: self.sts, clock=self.clock, tick_s=3600.0)
        self.service = MetadataService(
            self.broker, KEY, registry=self.registry, clock=self.clock,
            imds_hosts=(*DEFAULT_IMDS_HOSTS, "127.0.0.1"), ecs_hosts=("169.254.170.2", "127.0.0.1"),
        )
        self.http = http
        self.sockets: dict[str, tuple[socket.socket, socket.socket]] = {}

    async def add(self, ident: TaskIdentity, wait: bool = True) -> tuple[socket.socket, socket.socket]:
        imds_sock, ecs_sock = listener(), listener()
        self.sockets[ident.task_id] = (imds_sock, ecs_sock)
        await self.service.add_task(ident, [imds_sock], [ecs_sock])
        if wait and ident.role_arn:
            await self.broker.get(ident.task_id)
        return imds_sock, ecs_sock

    async def token(self, task_id: str, ttl: str = "21600") -> str:
        async with self.http.put(
            url(self.sockets[task_id][0], "/latest/api/token"),
            headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl},
        ) as r:
            assert r.status == 200, r.status
            return await r.text()

    async def get(self, task_id: str, path: str, token: str | None = None, **headers: str) -> tuple[int, str]:
        hdrs = dict(headers)
        if token is not None:
            hdrs["X-aws-ec2-metadata-token"] = token
        async with self.http.get(url(self.sockets[task_id][0], path), headers=hdrs) as r:
            return r.status, await r.text()

    async def ecs(self, task_id: str, auth: str | None = ECS_TOKEN, path: str = "/v2/credentials") -> tuple[int, str]:
        hdrs = {} if auth is None else {"Authorization": auth}
        async with self.http.get(url(self.sockets[task_id][1], path), headers=hdrs) as r:
            return r.status, await r.text()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with aiohttp.ClientSession() as http:
        e = Env(http)
        try:
            yield e
        finally:
            await e.service.close()


@pytest.fixture(scope="session")
def moto_sts() -> Iterator[str]:
    with moto_server() as url:
        yield url


async def settle() -> None:
    """Let fetch tasks started by the service run (the fake STS answers from a thread)."""
    for _ in range(50):
        await asyncio.sleep(0.01)
