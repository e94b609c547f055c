"""Structured logging: journald when the daemon runs under systemd, JSON lines on stderr otherwise.

Every record may carry `task_id` / `job_id` (pass them in `extra=`); journald gets them as the fields
TASK_ID / JOB_ID so `journalctl TASK_ID=…` finds everything about one task.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from typing import Any

CONTEXT_FIELDS = ("task_id", "job_id", "node_id", "container_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                doc[field] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _journald_handler(identifier: str) -> logging.Handler | None:
    # journald is there when systemd started us (JOURNAL_STREAM is set for units).
    if "JOURNAL_STREAM" not in os.environ:
        return None
    try:
        journal: Any = importlib.import_module("systemd.journal")
    except ImportError:
        return None

    class _Handler(journal.JournalHandler):  # type: ignore[misc]
        def emit(self, record: logging.LogRecord) -> None:
            for field in CONTEXT_FIELDS:
                value = getattr(record, field, None)
                if value is not None:
                    setattr(record, field.upper(), value)
            super().emit(record)

    handler: logging.Handler = _Handler(SYSLOG_IDENTIFIER=identifier)
    return handler


def setup_logging(identifier: str, level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = _journald_handler(identifier)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is one line per long-poll: noise at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
