import json
import logging
from typing import Any

import pytest

from titus_common.logs import JsonFormatter, _journald_handler


def test_json_lines_carry_task_and_job_ids() -> None:
    record = logging.makeLogRecord(
        {"name": "titus.agent", "levelno": logging.INFO, "levelname": "INFO", "msg": "task %s", "args": ("up",),
         "task_id": "t1", "job_id": "j1"}
    )
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "task up" and doc["task_id"] == "t1" and doc["job_id"] == "j1"


def test_journald_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("systemd.journal", reason="systemd-python is the optional 'journald' extra")
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    handler = _journald_handler("titus-agent")
    assert handler is not None
    sent: list[dict[str, Any]] = []
    handler.send = lambda *text, **fields: sent.append({"MESSAGE": text[0], **fields})  # type: ignore[attr-defined]
    logging.getLogger("titus.test").addHandler(handler)
    try:
        logging.getLogger("titus.test").warning("hello", extra={"task_id": "t1", "job_id": "j1"})
    finally:
        logging.getLogger("titus.test").removeHandler(handler)
    (fields,) = sent
    assert fields["TASK_ID"] == "t1" and fields["JOB_ID"] == "j1"
    assert fields["SYSLOG_IDENTIFIER"] == "titus-agent"


def test_no_journald_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert _journald_handler("x") is None
