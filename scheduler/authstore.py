"""What trust needs to remember (docs/trust.md), in its own SQLite file beside the scheduler's store
(`<db>.auth`): bootstrap and operator tokens (only their SHA-256 is kept), each node's current
certificate serials, the deny list of revoked serials, the audit log of mutating calls, and which
owner each app belongs to (`apps`, scheduler/appgrants.py)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from scheduler.appgrants import AppGrants

__all__ = ["AuthStore", "Token", "TokenRefused"]

ROLES = ("admin", "operator", "submitter")


class TokenRefused(Exception):
    """A token that is unknown, expired, used up or not for this node."""


@dataclass(frozen=True)
class Token:
    id: str
    kind: str  # "bootstrap" | "operator"
    expires_at: float
    nodes: str = ""  # bootstrap: the node-id pattern (fnmatch)
    uses_left: int = 0
    name: str = ""  # operator: who
    role: str = ""
    owner: str = ""  # submitter: the owner whose jobs it may submit and kill


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AuthStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA journal_mode=WAL")
        # As the scheduler's store: a commit survives a process crash without an fsync on the event
        # loop per audited call (a power cut may lose the last audit rows, never corrupts the file).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, digest TEXT NOT NULL, kind TEXT NOT NULL,
              expires_at REAL NOT NULL, nodes TEXT NOT NULL, uses_left INTEGER NOT NULL, name TEXT NOT NULL,
              role TEXT NOT NULL, owner TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS node_certs (serial TEXT PRIMARY KEY, node_id TEXT NOT NULL,
              not_after REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS node_certs_node ON node_certs (node_id);
            CREATE TABLE IF NOT EXISTS revoked (serial TEXT PRIMARY KEY, at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS audit (at REAL NOT NULL, who TEXT NOT NULL, method TEXT NOT NULL,
              path TEXT NOT NULL, status INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS node_instances (instance_id TEXT PRIMARY KEY, node_id TEXT NOT NULL,
              arn TEXT NOT NULL, bound_at REAL NOT NULL, readmit INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS node_instances_node ON node_instances (node_id);
            """
        )
        # An event's details (JSON; an exec session's task, command, duration, exit code: docs/exec.md).
        if "detail" not in {r[1] for r in self.db.execute("PRAGMA table_info(audit)")}:
            self.db.execute("ALTER TABLE audit ADD COLUMN detail TEXT NOT NULL DEFAULT ''")
        self._revoked = {r[0] for r in self.db.execute("SELECT serial FROM revoked")}
        # serial → node id of every unrevoked node certificate: checked per request, from memory.
        self._current = dict(self.db.execute("SELECT serial, node_id FROM node_certs WHERE revoked = 0").fetchall())
        # SHA-256 of a presented operator token → its record: a bearer call needs no SQLite read
        # (operator tokens are never changed once written; expiry is checked on every call).
        self._operators: dict[str, Token] = {}
        # node id → the ARN of the EC2 instance its certificates are bound to (docs/trust.md).
        self._bound = dict(self.db.execute("SELECT node_id, arn FROM node_instances ORDER BY bound_at").fetchall())
        # app → owner (docs/identity.md); the policy for an app with no grant is set by build_trust.
        self.apps = AppGrants(self.db)

    def close(self) -> None:
        self.db.close()

    # ---- tokens ---------------------------------------------------------------------------------

    def create_token(self, token: Token) -> str:
        """Store the token; return its secret form `<id>.<secret>` (shown once, never stored)."""
        secret = secrets.token_urlsafe(24)
        self.db.execute(
            "INSERT INTO tokens VALUES (?,?,?,?,?,?,?,?,?)",
            (token.id, _digest(secret), token.kind, token.expires_at, token.nodes, token.uses_left,
             token.name, token.role, token.owner),
        )
        return f"{token.id}.{secret}"

    def _lookup(self, presented: str, kind: str, now: float) -> Token:
        token_id, _, secret = presented.partition(".")
        row = self.db.execute(
            "SELECT id, kind, expires_at, nodes, uses_left, name, role, owner, digest FROM tokens WHERE id = ?",
            (token_id,),
        ).fetchone()
        if row is None or row[1] != kind or not secrets.compare_digest(row[8], _digest(secret)):
            raise TokenRefused(f"unknown {kind} token")
        token = Token(*row[:8])
        if token.expires_at <= now:
            raise TokenRefused(f"{kind} token {token.id} expired")
        return token

    def operator(self, presented: str, now: float | None = None) -> Token:
        now = time.time() if now is None else now
        key = _digest(presented)
        token = self._operators.get(key)
        if token is None:
            token = self._lookup(presented, "operator", now)
            if len(self._operators) >= 1024:
                self._operators.clear()
            self._operators[key] = token
        if token.expires_at <= now:
            raise TokenRefused(f"operator token {token.id} expired")
        return token

    def use_bootstrap(self, presented: str, node_id: str, now: float | None = None, *, spend: bool = True) -> Token:
        """Spend one use of a bootstrap token for `node_id` (only check it with `spend=False`);
        refuses before spending anything."""
        now = time.time() if now is None else now
        token = self._lookup(presented, "bootstrap", now)
        if token.uses_left <= 0:
            raise TokenRefused(f"bootstrap token {token.id} already used")
        if not fnmatch.fnmatchcase(node_id, token.nodes):
            raise TokenRefused(f"bootstrap token {token.id} is for nodes {token.nodes!r}, not {node_id!r}")
        if not spend:
            return token
        cur = self.db.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ? AND uses_left > 0", (token.id,))
        if cur.rowcount != 1:
            raise TokenRefused(f"bootstrap token {token.id} already used")
        return token

    # ---- node certificates ----------------------------------------------------------------------

    def live_certs(self, node_id: str, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        return [r[0] for r in self.db.execute(
            "SELECT serial FROM node_certs WHERE node_id = ? AND not_after > ? AND revoked = 0", (node_id, now))]

    def record_cert(self, node_id: str, serial: str, not_after: float) -> None:
        self.db.execute("INSERT INTO node_certs VALUES (?,?,?,0)", (serial, node_id, not_after))
        self._current[serial] = node_id

    def cert_current(self, node_id: str, serial: str) -> bool:
        return self._current.get(serial) == node_id

    def revoke_node(self, node_id: str, now: float | None = None) -> list[str]:
        """Deny every certificate the node holds, at once (checked per request)."""
        now = time.time() if now is None else now
        serials = [r[0] for r in self.db.execute("SELECT serial FROM node_certs WHERE node_id = ?", (node_id,))]
        with self.db:
            self.db.execute("UPDATE node_certs SET revoked = 1 WHERE node_id = ?", (node_id,))
            self.db.executemany("INSERT OR IGNORE INTO revoked VALUES (?, ?)", [(s, now) for s in serials])
        self._revoked.update(serials)
        for serial in serials:
            self._current.pop(serial, None)
        return serials

    def revoked(self, serial: str) -> bool:
        return serial in self._revoked

    # ---- instance bindings (scheduler/iid.py) ---------------------------------------------------

    def instance_use(self, instance_id: str) -> tuple[str, bool] | None:
        """(the node the instance was bound to, whether an admin re-admitted it), or None: never seen."""
        row = self.db.execute("SELECT node_id, readmit FROM node_instances WHERE instance_id = ?",
                              (instance_id,)).fetchone()
        return (str(row[0]), bool(row[1])) if row is not None else None

    def bind_instance(self, instance_id: str, node_id: str, arn: str, now: float | None = None) -> bool:
        """Record that `node_id` bootstrapped as this instance; spends a re-admission. False when
        another bootstrap bound it first (never seen → seen, or re-admitted → spent, is one UPDATE
        or INSERT that only one caller wins). An instance's row is never deleted: its document
        cannot be replayed once the node id moved to another instance."""
        now = time.time() if now is None else now
        with self.db:
            cur = self.db.execute("UPDATE node_instances SET node_id = ?, arn = ?, bound_at = ?, readmit = 0 "
                                  "WHERE instance_id = ? AND readmit = 1", (node_id, arn, now, instance_id))
            if cur.rowcount != 1:
                cur = self.db.execute("INSERT OR IGNORE INTO node_instances VALUES (?,?,?,?,0)",
                                      (instance_id, node_id, arn, now))
                if cur.rowcount != 1:
                    return False
        self._bound[node_id] = arn
        return True

    def instance_binding(self, node_id: str) -> str | None:
        """The ARN of the instance the node's certificates are bound to (kept across rotations)."""
        return self._bound.get(node_id)

    def readmit(self, node_id: str) -> str | None:
        """Let the node's instance bootstrap once more (after its certificate expired or was
        revoked); the instance id, or None when the node is bound to no instance."""
        row = self.db.execute("SELECT instance_id FROM node_instances WHERE node_id = ? ORDER BY bound_at DESC",
                              (node_id,)).fetchone()
        if row is None:
            return None
        self.db.execute("UPDATE node_instances SET readmit = 1 WHERE instance_id = ?", (row[0],))
        return str(row[0])

    # ---- audit ----------------------------------------------------------------------------------

    def audit(self, who: str, method: str, path: str, status: int, at: float | None = None,
              detail: dict[str, object] | None = None) -> None:
        self.db.execute("INSERT INTO audit (at, who, method, path, status, detail) VALUES (?,?,?,?,?,?)",
                        (time.time() if at is None else at, who, method, path, status,
                         json.dumps(detail, separators=(",", ":")) if detail else ""))

    def audit_log(self, limit: int = 1000) -> list[dict[str, object]]:
        rows = self.db.execute("SELECT at, who, method, path, status, detail FROM audit ORDER BY rowid DESC LIMIT ?",
                               (limit,))
        events: list[dict[str, object]] = []
        for r in rows:
            event: dict[str, object] = dict(zip(("at", "who", "method", "path", "status"), r[:5], strict=True))
            if r[5]:
                event["detail"] = json.loads(r[5])
            events.append(event)
        return events


def auth_db_path(db: Path) -> Path:
    """The trust store beside the scheduler's store."""
    return db.with_name(db.name + ".auth")


def parse_ttl(value: str) -> float:
    """`90`, `90s`, `30m`, `1h`, `7d` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (value[:-1], value[-1]) if value and value[-1] in units else (value, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"expected a duration like 90s, 30m, 1h or 7d, got {value!r}") from None
    if not 0 < seconds <= 30 * 86400:
        raise ValueError(f"duration {value!r} must be positive and at most 30d")
    return seconds
