"""Per-task IAM credentials: STS AssumeRole, cached, refreshed ahead of expiry, single-flight.

Policy (docs/imds.md):
- prefetch when the task is added; one AssumeRole per task (session `titus-<task id>`, 1 h);
- hand out credentials only while they have >= `min_remaining_s` (15 min) left;
- refresh in the background when 20-25 min are left (jittered per credential), so a healthy host
  never makes a caller wait for STS after the first fetch;
- on failure retry with backoff (1 s doubling to 30 s) forever, keep serving the cached credentials
  while they have >= 15 min left, then answer 503 (403 for AccessDenied-type codes) until STS recovers;
- callers arriving while a fetch is in flight wait for that fetch (no second STS call).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from imds.metrics import ImdsMetrics

log = logging.getLogger("titus.imds")

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_ROLE_ARN = re.compile(
    r"arn:(aws|aws-cn|aws-us-gov|aws-iso|aws-iso-[a-z]):iam::(\d{12}):role/((?:[\w+=,.@-]+/)*)([\w+=,.@-]{1,64})",
    re.ASCII,
)
_ASSUMED_ROLE_ARN = re.compile(r"arn:([\w-]+):sts::(\d{12}):assumed-role/([\w+=,.@-]+)/([\w+=,.@-]+)", re.ASCII)
_SESSION_BAD_CHARS = re.compile(r"[^\w+=,.@-]", re.ASCII)

# STS error codes that mean "this role may not be assumed" rather than "STS is unavailable": 403.
DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "AuthFailure", "UnauthorizedOperation", "RegionDisabledException"}
)


@dataclass(frozen=True)
class RoleArn:
    arn: str
    partition: str
    account: str
    path: str  # "/" or "/a/b/"
    name: str


def parse_role_arn(arn: str) -> RoleArn:
    """Strictly parse `arn:<partition>:iam::<12 digits>:role/<path/>name`; ValueError says what is wrong."""
    if not isinstance(arn, str) or len(arn) > 2048:
        raise ValueError("role ARN must be a string of at most 2048 characters")
    m = _ROLE_ARN.fullmatch(arn)
    if m is None:
        raise ValueError(
            f"invalid IAM role ARN {arn!r}: expected arn:aws:iam::<12-digit account>:role/[path/]name "
            "(name: 1-64 of A-Za-z0-9_+=,.@-)"
        )
    return RoleArn(arn, m.group(1), m.group(2), "/" + m.group(3), m.group(4))


def session_name(task_id: str) -> str:
    """RoleSessionName for a task: `titus-<task id>`, characters STS refuses replaced by '-', <= 64."""
    return ("titus-" + _SESSION_BAD_CHARS.sub("-", task_id))[:64]


def format_time(ts: float) -> str:
    return time.strftime(TIME_FORMAT, time.gmtime(ts))


class CredentialError(Exception):
    """Why a task gets no credentials; `status` is the HTTP code, `code`/`message` go in the JSON body
    (never secrets, never the host role: STS's own message is only logged)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"Code": self.code, "Message": self.message}).encode()


@dataclass(frozen=True)
class Credentials:
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    token: str = field(repr=False)
    expiration: float  # Unix time
    issued_at: float  # Unix time we received them (IMDS LastUpdated)
    role_arn: str
    imds_body: bytes = field(repr=False)  # pre-rendered IMDS security-credentials/<role> JSON
    ecs_body: bytes = field(repr=False)  # pre-rendered ECS-style JSON

    @classmethod
    def build(cls, key: str, secret: str, token: str, expiration: float, issued_at: float, role: RoleArn) -> Credentials:
        imds = {
            "Code": "Success",
            "LastUpdated": format_time(issued_at),
            "Type": "AWS-HMAC",
            "AccessKeyId": key,
            "SecretAccessKey": secret,
            "Token": token,
            "Expiration": format_time(expiration),
        }
        ecs = {
            "AccessKeyId": key,
            "SecretAccessKey": secret,
            "Token": token,
            "Expiration": format_time(expiration),
            "RoleArn": role.arn,
            "AccountId": role.account,
        }
        return cls(
            key, secret, token, expiration, issued_at, role.arn,
            json.dumps(imds, indent=2).encode(), json.dumps(ecs).encode(),
        )


def _malformed(why: str) -> CredentialError:
    return CredentialError(503, "MalformedAnswer", f"STS returned an unusable answer: {why}")


@dataclass(eq=False)
class _TaskState:
    task_id: str
    role: RoleArn
    session: str
    added_at: float
    creds: Credentials | None = None
    error: CredentialError | None = None
    error_at: float = 0.0
    failures: int = 0
    next_attempt_at: float = 0.0
    refresh_at: float = 0.0
    planned_at: float | None = None  # when the current fetch episode was due (refresh lag)
    inflight: asyncio.Task[None] | None = None
    removed: bool = False


def default_sts_factory(endpoint_url: str | None, region: str | None) -> Callable[[], Any]:
    def make() -> Any:
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 2})
        return boto3.session.Session().client(
            "sts", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config
        )

    return make


class CredentialBroker:
    def __init__(
        self,
        client_factory: Callable[[], Any] | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        clock: Callable[[], float] = time.time,
        duration_s: int = 3600,
        min_remaining_s: float = 900.0,
        refresh_window_s: tuple[float, float] = (1200.0, 1500.0),
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        wait_s: float = 2.0,
        tick_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if not min_remaining_s < refresh_window_s[0] <= refresh_window_s[1] < duration_s:
            raise ValueError("need min_remaining_s < refresh window < duration_s")
        self._factory = client_factory or default_sts_factory(endpoint_url, region)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._clock = clock
        self.duration_s = duration_s
        self.min_remaining_s = min_remaining_s
        self.refresh_window_s = refresh_window_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.wait_s = wait_s
        self.tick_s = tick_s
        self._rng = rng or random.Random()
        self._tasks: dict[str, _TaskState] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.metrics = ImdsMetrics(CollectorRegistry())

    def attach_metrics(self, metrics: ImdsMetrics) -> None:
        self.metrics = metrics

    # ---- task lifecycle (call on the service's event loop) ----

    def add(self, task_id: str, role_arn: str) -> RoleArn:
        role = parse_role_arn(role_arn)
        if task_id in self._tasks:
            raise ValueError(f"task {task_id} already has credentials")
        st = _TaskState(task_id, role, session_name(task_id), self._clock())
        self._tasks[task_id] = st
        self._start_fetch(st)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="imds-credential-refresh")
        log.info("task %s: fetching credentials for %s (session %s)", task_id, role.arn, st.session)
        return role

    def remove(self, task_id: str) -> None:
        st = self._tasks.pop(task_id, None)
        if st is not None:
            st.removed = True
            st.creds = None  # an in-flight fetch finishes in its thread and is discarded

    async def close(self) -> None:
        tasks = [st.inflight for st in self._tasks.values() if st.inflight is not None]
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for st in list(self._tasks.values()):
            self.remove(st.task_id)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None

    def forget(self) -> None:
        """Drop every task's state and the refresher without awaiting them: their loop is gone or
        stuck. The next `add` on a new loop starts a new refresher."""
        for st in list(self._tasks.values()):
            self.remove(st.task_id)
        self._loop_task = None

    # ---- hand-out ----

    def peek(self, task_id: str) -> Credentials | None:
        """Cached credentials with at least `min_remaining_s` left, without waiting (the hot path)."""
        st = self._tasks.get(task_id)
        if st is None:
            return None
        c = st.creds
        if c is not None and c.expiration - self._clock() >= self.min_remaining_s:
            return c
        return None

    async def get(self, task_id: str) -> Credentials:
        st = self._tasks.get(task_id)
        if st is None:
            raise CredentialError(404, "NotFound", "no IAM role for this task")
        c = st.creds
        if c is not None and c.expiration - self._clock() >= self.min_remaining_s:
            return c
        if st.inflight is None and self._clock() >= st.next_attempt_at:
            self._start_fetch(st)
        if st.inflight is not None:
            try:
                await asyncio.wait_for(asyncio.shield(st.inflight), self.wait_s)
            except TimeoutError:
                raise CredentialError(503, "Pending", "credentials are being fetched, retry shortly") from None
            if st.removed:
                raise CredentialError(404, "NotFound", "no IAM role for this task")
            c = st.creds
            if c is not None and c.expiration - self._clock() >= self.min_remaining_s:
                return c
        raise st.error or CredentialError(503, "Unavailable", "no valid credentials cached, retrying")

    # ---- refresh machinery ----

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.maintain_once()
            except Exception:  # pragma: no cover - never let the refresher die
                log.exception("credential refresh loop")

    def maintain_once(self) -> int:
        """Start the fetches that are due (refresh time reached, backoff elapsed); returns how many."""
        now = self._clock()
        started = 0
        for st in list(self._tasks.values()):
            if st.creds is not None and st.creds.expiration <= now:
                st.creds = None  # never hand out expired credentials
            if st.inflight is not None or now < st.next_attempt_at:
                continue
            if st.creds is None or now >= st.refresh_at:
                self._start_fetch(st)
                started += 1
        return started

    def _start_fetch(self, st: _TaskState) -> None:
        if st.planned_at is None:
            st.planned_at = st.refresh_at if st.creds is not None else self._clock()
        st.inflight = asyncio.get_running_loop().create_task(self._fetch(st), name=f"imds-sts-{st.task_id}")

    def _sts(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def _assume_role(self, role_arn: str, session: str) -> Any:
        return self._sts().assume_role(RoleArn=role_arn, RoleSessionName=session, DurationSeconds=self.duration_s)

    async def _fetch(self, st: _TaskState) -> None:
        started = time.monotonic()
        creds: Credentials | None = None
        error: CredentialError
        try:
            answer = await asyncio.to_thread(self._assume_role, st.role.arn, st.session)
            creds = self._validate(answer, st.role, self._clock())
        except asyncio.CancelledError:
            st.inflight = None
            raise
        except CredentialError as e:
            error = e
        except Exception as e:  # noqa: BLE001 - classified below, never crashes the service
            error = self._classify(e, st)
        finally:
            self.metrics.sts_latency.observe(time.monotonic() - started)
        st.inflight = None
        if st.removed:
            return
        now = self._clock()
        if creds is not None:
            self.metrics.sts_calls.labels("ok").inc()
            if st.planned_at is not None:
                self.metrics.refresh_lag.observe(max(0.0, now - st.planned_at))
            st.creds, st.error, st.failures, st.planned_at = creds, None, 0, None
            st.next_attempt_at = 0.0
            st.refresh_at = creds.expiration - self._rng.uniform(*self.refresh_window_s)
            log.info(
                "task %s: credentials for %s valid until %s, refresh at %s",
                st.task_id, st.role.name, format_time(creds.expiration), format_time(st.refresh_at),
            )
            return
        self.metrics.sts_calls.labels("error").inc()
        self.metrics.sts_errors.labels(ImdsMetrics.sts_code(error.code)).inc()
        st.failures += 1
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (st.failures - 1))
        st.error, st.error_at = error, now
        st.next_attempt_at = now + delay * self._rng.uniform(0.8, 1.0)
        left = "none cached" if st.creds is None else f"cached valid until {format_time(st.creds.expiration)}"
        log.warning(
            "task %s: AssumeRole %s failed (%s, attempt %d), retry in %.1fs, %s",
            st.task_id, st.role.arn, error, st.failures, st.next_attempt_at - now, left,
        )

    def _classify(self, exc: Exception, st: _TaskState) -> CredentialError:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
            code = str(err.get("Code") or "Unknown")
            log.warning("task %s: STS %s: %s", st.task_id, code, err.get("Message", ""))
            if code in DENIED_CODES:
                return CredentialError(403, code, f"not authorized to assume the task's role {st.role.name}")
            return CredentialError(503, code, "STS AssumeRole failed, retrying")
        if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)):
            return CredentialError(503, "Timeout", "STS did not answer in time, retrying")
        if isinstance(exc, (EndpointConnectionError, ConnectionError)):
            return CredentialError(503, "Connection", "STS is unreachable, retrying")
        if isinstance(exc, NoCredentialsError):
            return CredentialError(503, "NoHostCredentials", "the host has no credentials to call STS")
        if isinstance(exc, BotoCoreError):
            log.warning("task %s: STS call failed: %r", st.task_id, exc)
            return CredentialError(503, "ServiceUnavailable", "STS AssumeRole failed, retrying")
        log.error("task %s: unexpected error fetching credentials", st.task_id, exc_info=exc)
        return CredentialError(503, "InternalError", "credential fetch failed, retrying")

    def _validate(self, answer: Any, role: RoleArn, now: float) -> Credentials:
        if not isinstance(answer, dict):
            raise _malformed("not a mapping")
        c = answer.get("Credentials")
        if not isinstance(c, dict):
            raise _malformed("no Credentials")
        values: list[str] = []
        for key in ("AccessKeyId", "SecretAccessKey", "SessionToken"):
            v = c.get(key)
            if not isinstance(v, str) or not v or not v.isprintable() or len(v) > 8192:
                raise _malformed(f"missing or invalid {key}")
            values.append(v)
        exp = c.get("Expiration")
        if isinstance(exp, str):
            try:
                exp = dt.datetime.fromisoformat(exp)
            except ValueError:
                raise _malformed("unparsable Expiration") from None
        if not isinstance(exp, dt.datetime):
            raise _malformed("missing Expiration")
        if exp.tzinfo is None:
            exp = exp.replace(tzinfo=dt.timezone.utc)
        expiration = exp.timestamp()
        if expiration <= now:
            raise _malformed("Expiration is in the past")
        if expiration - now < self.min_remaining_s + 60:
            raise CredentialError(503, "ShortLived", "STS returned credentials that expire too soon")
        user = answer.get("AssumedRoleUser")
        arn = user.get("Arn") if isinstance(user, dict) else None
        m = _ASSUMED_ROLE_ARN.fullmatch(arn) if isinstance(arn, str) else None
        if m is None:
            raise _malformed("missing AssumedRoleUser.Arn")
        if (m.group(1), m.group(2), m.group(3)) != (role.partition, role.account, role.name):
            raise _malformed("credentials are for another role")
        return Credentials.build(values[0], values[1], values[2], expiration, now, role)

    # ---- introspection ----

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for st in self._tasks.values():
            c = st.creds
            out[st.task_id] = {
                "role_arn": st.role.arn,
                "session_name": st.session,
                "fetching": st.inflight is not None,
                "expiration": format_time(c.expiration) if c else None,
                "age_s": round(now - c.issued_at, 1) if c else None,
                "remaining_s": round(c.expiration - now, 1) if c else None,
                "refresh_in_s": round(st.refresh_at - now, 1) if c else None,
                "failures": st.failures,
                "next_attempt_in_s": round(max(0.0, st.next_attempt_at - now), 1) if st.failures else None,
                "last_error": (
                    {"code": st.error.code, "message": st.error.message, "at": format_time(st.error_at)}
                    if st.error
                    else None
                ),
            }
        return out
