"""Which owner an app belongs to (docs/identity.md, "Who may use an app name"): a task's workload
identity names its app (`spiffe://<cell>/app/<app>/…`), so an app name must not be free for any
submitter to pick. Kept in the trust store's SQLite file (`app_grants`), read from memory.

An app is bound to one owner either by an admin's grant (`titusctl admin app grant APP --owner O`)
or, under the default policy `claim`, by the first owner that uses it (a submit, or the first task
identity of a job stored before grants existed). Under policy `granted` an app with no grant is
refused. Every grant, revocation and claim is audited by the caller (scheduler/apps_api.py,
scheduler/auth.py, scheduler/workload.py)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["AppGrant", "AppGrants", "AppRefused", "Policy"]

Policy = Literal["claim", "granted"]


class AppRefused(Exception):
    """This owner may not use this app name (the message names the app and, if any, its owner)."""


@dataclass(frozen=True)
class AppGrant:
    app: str
    owner: str
    how: str  # "grant" (an admin) | "claim" (first use)
    by: str  # who granted or claimed
    at: float

    def view(self) -> dict[str, object]:
        return {"app": self.app, "owner": self.owner, "how": self.how, "by": self.by, "at": self.at}


class AppGrants:
    def __init__(self, db: sqlite3.Connection, policy: Policy = "claim") -> None:
        self.db = db
        self.policy: Policy = policy
        db.execute("CREATE TABLE IF NOT EXISTS app_grants (app TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                   "how TEXT NOT NULL, by TEXT NOT NULL, at REAL NOT NULL)")
        self._grants = {r[0]: AppGrant(*r) for r in db.execute("SELECT app, owner, how, by, at FROM app_grants")}
        # app → uses in flight of a claim none of whose uses has succeeded yet (two submits of one
        # owner can race: the second must not be left on an app the first one's failure released)
        self._unsettled: dict[str, int] = {}

    def get(self, app: str) -> AppGrant | None:
        return self._grants.get(app)

    def owner_of(self, app: str) -> str | None:
        grant = self._grants.get(app)
        return grant.owner if grant is not None else None

    def list(self) -> list[AppGrant]:
        return sorted(self._grants.values(), key=lambda g: g.app)

    def grant(self, app: str, owner: str, by: str) -> AppGrant | None:
        """Bind `app` to `owner` (replacing any earlier grant or claim); returns the one replaced."""
        previous = self._grants.get(app)
        new = AppGrant(app, owner, "grant", by, time.time())
        self.db.execute("INSERT OR REPLACE INTO app_grants VALUES (?,?,?,?,?)",
                        (new.app, new.owner, new.how, new.by, new.at))
        self._grants[app] = new
        self._unsettled.pop(app, None)
        return previous

    def revoke(self, app: str) -> AppGrant | None:
        self._unsettled.pop(app, None)
        previous = self._grants.pop(app, None)
        if previous is not None:
            self.db.execute("DELETE FROM app_grants WHERE app = ?", (app,))
        return previous

    def admit(self, app: str, owner: str, by: str) -> AppGrant | None:
        """May `owner` use `app`? Raises AppRefused. Returns the claim this use depends on — a new one,
        or one whose first use has not ended yet — which the caller must `settle` once the use ends;
        None when the app is already the owner's for good."""
        grant = self._grants.get(app)
        if grant is not None:
            if grant.owner != owner:
                raise AppRefused(f"app {app!r} belongs to owner {grant.owner!r}, not {owner!r} (an admin moves it: "
                                 f"titusctl admin app grant {app} --owner {owner})")
            if app in self._unsettled:  # rides on a claim still in flight
                self._unsettled[app] += 1
                return grant
            return None
        if self.policy == "granted":
            raise AppRefused(f"app {app!r} is granted to no owner; an admin grants it: "
                             f"titusctl admin app grant {app} --owner {owner}")
        claim = AppGrant(app, owner, "claim", by, time.time())
        self.db.execute("INSERT INTO app_grants VALUES (?,?,?,?,?)", (claim.app, claim.owner, claim.how, claim.by,
                                                                       claim.at))
        self._grants[app] = claim
        self._unsettled[app] = 1
        return claim

    def settle(self, claim: AppGrant, succeeded: bool) -> bool:
        """A use of `claim` (as `admit` returned it) has ended. The first use that succeeded makes the
        claim final (True: the caller audits it); once every use has failed (a submit refused after
        the check), the claim is undone. Only that very claim: a grant made meanwhile stays."""
        left = self._unsettled.get(claim.app)
        if left is None or self._grants.get(claim.app) != claim:
            return False  # final already, or replaced or revoked meanwhile
        if succeeded:
            del self._unsettled[claim.app]
            return True
        if left > 1:
            self._unsettled[claim.app] = left - 1
            return False
        self.revoke(claim.app)
        return False
