"""Task identities on this host (docs/identity.md): each task's key (generated here, never sent
anywhere), its certificate from the scheduler and the cell CA bundle, in a per-task directory the
identity step bind-mounts read-only into the container. Rotated before expiry while the task runs;
removed at teardown; leaked directories (a task the agent no longer holds) removed by GC.

Layout (as Kubernetes' projected volumes do it, so a rotation swaps key and certificate together):

    <root>/              0700 root: no other host user reaches a task's key
      <task id>/         0755, bind-mounted read-only at /run/titus/identity
        g<serial>/       0755: one generation: cert.pem key.pem bundle.pem (0444)
        ..data -> g<serial>          swapped by an atomic rename at each rotation
        cert.pem -> ..data/cert.pem  (and key.pem, bundle.pem): stable paths for the task

The files are 0444 because the task's user is a userns-remapped uid the host does not know in
advance; only the task's own bind reaches the directory (the same reasoning as the ECS token file).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry, Counter

from agent.checkpoint import TaskCheckpoint
from agent.host.base import LiveTasks, launching
from titus_common.pki import key_pem, lifetime, new_key, remaining
from titus_common.workload import cert_spiffe_id, mint_jwt, task_csr

__all__ = ["IdentityResource", "IdentityUnavailable", "Issued", "TaskIdentities"]

log = logging.getLogger("titus.agent.identity")

RESOURCE_KEY = "identity"
FILES = ("cert.pem", "key.pem", "bundle.pem")
ROTATE_AT = 1 / 3  # of the lifetime left
TICK_MIN, TICK_MAX = 1.0, 30.0
RETRY = 5.0  # after a failed rotation (the certificate in place stays valid meanwhile)


class IdentityUnavailable(Exception):
    """The scheduler did not issue the task's certificate (unreachable, or refused)."""


@dataclass(frozen=True)
class Issued:
    certificate: str
    bundle: str


# (task id, CSR PEM) → the scheduler's answer
IssueCall = Callable[[str, str], Awaitable[Issued]]


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o444)


class TaskIdentities:
    def __init__(self, root: Path, issue: IssueCall,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.root = root
        self._issue = issue
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self.rotations = 0

    def dir(self, task_id: str) -> Path:
        if not task_id or "/" in task_id or task_id.startswith("."):
            raise ValueError(f"unsafe task id {task_id!r}")
        return self.root / task_id

    def current(self, task_id: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
        """The task's key and certificate as the task sees them now (None: none yet, or unreadable)."""
        gen = self.dir(task_id) / "..data"
        try:
            cert = x509.load_pem_x509_certificate((gen / "cert.pem").read_bytes())
            key = serialization.load_pem_private_key((gen / "key.pem").read_bytes(), password=None)
        except (OSError, ValueError):
            return None
        return (key, cert) if isinstance(key, ec.EllipticCurvePrivateKey) else None

    def due(self, task_id: str, now: dt.datetime | None = None) -> float | None:
        """Seconds until the task's certificate should be rotated (<= 0: now); None: it has none."""
        held = self.current(task_id)
        if held is None:
            return None
        cert = held[1]
        return remaining(cert, now or self.clock()) - lifetime(cert) * ROTATE_AT

    async def ensure(self, task_id: str) -> x509.Certificate:
        """The task's certificate, asked for (a new key, a CSR) unless it has one not yet due for
        rotation. Idempotent: a launch re-run after an agent restart reuses a valid certificate."""
        async with self._locks.setdefault(task_id, asyncio.Lock()):
            held = self.current(task_id)
            if held is not None and (self.due(task_id) or 0.0) > 0:
                return held[1]
            key = new_key()
            try:
                issued = await self._issue(task_id, task_csr(key, task_id).decode())
            except IdentityUnavailable:
                raise
            except Exception as e:  # the client's own errors (unreachable scheduler, refusal)
                raise IdentityUnavailable(str(e)) from None
            cert = x509.load_pem_x509_certificate(issued.certificate.encode())
            public = cert.public_key()
            if not isinstance(public, ec.EllipticCurvePublicKey) or public.public_numbers() != \
                    key.public_key().public_numbers():
                raise IdentityUnavailable("the scheduler's certificate is not for the key this host sent")
            cert_spiffe_id(cert)  # has exactly one identity
            await asyncio.to_thread(self._install, task_id, key, cert, issued.bundle.encode())
            if held is not None:
                self.rotations += 1
            log.info("task identity %s %s, serial %x, valid until %s", "rotated:" if held else "issued:",
                     cert_spiffe_id(cert), cert.serial_number, cert.not_valid_after_utc.isoformat(),
                     extra={"task_id": task_id})
            return cert

    def _install(self, task_id: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, bundle: bytes) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        top = self.dir(task_id)
        top.mkdir(mode=0o755, exist_ok=True)
        gen_name = f"g{cert.serial_number:x}"
        tmp = top / f".tmp-{gen_name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o755)
        for name, data in zip(FILES, (cert.public_bytes(serialization.Encoding.PEM), key_pem(key), bundle)):
            _write(tmp / name, data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, top / gen_name)
        link = top / "..data.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(gen_name)
        previous = os.readlink(top / "..data") if (top / "..data").is_symlink() else None
        os.replace(link, top / "..data")  # the swap: key and certificate change together
        for name in FILES:
            if not (top / name).is_symlink():
                (top / name).unlink(missing_ok=True)
                (top / name).symlink_to(f"..data/{name}")
        for old in top.glob("g*"):  # keep the previous generation for a reader mid-way through it
            if old.name not in (gen_name, previous):
                shutil.rmtree(old, ignore_errors=True)
        dir_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def remove(self, task_id: str) -> None:
        shutil.rmtree(self.dir(task_id), ignore_errors=True)
        self._locks.pop(task_id, None)

    def jwt(self, task_id: str, audience: str, now: float | None = None) -> str | None:
        """The task's JWT for `audience` (None: the task has no identity). Called from the metadata
        service's thread: it reads the files, never shared state. IdentityRefused for a bad audience."""
        held = self.current(task_id)
        if held is None:
            return None
        key, cert = held
        return mint_jwt(key, cert, audience, time.time() if now is None else now)

    def gc(self, keep: set[str]) -> list[str]:
        if not self.root.is_dir():
            return []
        leaked = [d.name for d in self.root.iterdir() if d.is_dir() and d.name not in keep]
        for name in leaked:
            shutil.rmtree(self.root / name, ignore_errors=True)
        return leaked


def holds_identity(record: TaskCheckpoint) -> bool:
    return not record.state.terminal and bool((record.resources.get(RESOURCE_KEY) or {}).get("spiffe_id"))


class IdentityResource:
    """Rotates the certificates of the tasks that hold one, before they expire, while they run."""

    name = "identity"

    def __init__(self, identities: TaskIdentities, tasks: Callable[[], LiveTasks],
                 registry: CollectorRegistry | None = None) -> None:
        self.identities = identities
        self._tasks = tasks
        self._loop: asyncio.Task[None] | None = None
        self.rotations = Counter("titus_agent_identity_rotations", "Task certificate rotations by outcome",
                                 ["outcome"], registry=registry if registry is not None else CollectorRegistry())

    async def start(self, records: Sequence[TaskCheckpoint]) -> None:
        self._loop = asyncio.create_task(self._rotate_loop(), name="identity-rotation")

    async def rotate_due(self) -> float:
        """Rotate every certificate that is due; the seconds until the next one is."""
        next_due = TICK_MAX
        failed: list[tuple[str, Exception]] = []
        for task_id, record in list(self._tasks().items()):
            if not holds_identity(record):
                continue
            due = self.identities.due(task_id)
            if due is not None and due > 0:
                next_due = min(next_due, due)
                continue
            try:
                await self.identities.ensure(task_id)
                self.rotations.labels("ok").inc()
            except (IdentityUnavailable, OSError) as e:
                failed.append((task_id, e))
                self.rotations.labels("failed").inc()
        if failed:  # one line per round, not per task: a scheduler outage must not flood the log
            log.warning("task identity rotation failed for %d task(s), retried in %.0fs; first: %s: %s",
                        len(failed), RETRY, failed[0][0], failed[0][1])
            next_due = min(next_due, RETRY)
        return max(TICK_MIN, next_due)

    async def _rotate_loop(self) -> None:
        while True:
            try:
                delay = await self.rotate_due()
            except Exception as e:  # never let the loop die
                log.warning("task identity rotation round failed: %s", e)
                delay = TICK_MAX
            await asyncio.sleep(delay)

    async def reconcile(self, tasks: LiveTasks) -> None:
        return None

    async def gc(self, tasks: LiveTasks) -> None:
        """Directories of tasks the agent no longer holds (on the loop: no launch can start mid-way)."""
        if launching(tasks):
            return
        try:
            leaked = self.identities.gc(set(tasks))
        except Exception as e:
            log.warning("task identity GC failed: %s", e)
            return
        if leaked:
            log.warning("leaked task identity directories removed: %s", leaked)

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop
            self._loop = None
