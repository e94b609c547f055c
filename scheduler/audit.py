"""The audit log: one JSON line per control-plane decision to kill, declare lost, hold or release
(`reconcile`), with its reason. Written to a file (next to the store: `<db>.audit.jsonl`) and the
`titus.scheduler.audit` logger; the last entries are kept in memory for `GET /v1/admin/reconcile`."""

from __future__ import annotations

import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]

log = logging.getLogger("titus.scheduler.audit")


class AuditLog:
    def __init__(self, path: Path | None = None, keep: int = 200) -> None:
        self.path = path
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def write(self, at: float, event: str, **fields: Any) -> None:
        entry = {"at": at, "event": event, **{k: v for k, v in fields.items() if v is not None}}
        self.recent.append(entry)
        line = json.dumps(entry, separators=(",", ":"), sort_keys=True)
        log.info("audit %s", line)
        if self.path is not None:
            try:
                with self.path.open("a") as f:
                    f.write(line + "\n")
            except OSError as e:  # the decision stands; losing its record is itself worth an error
                log.error("cannot write the audit log %s: %s", self.path, e.strerror or e)
