"""The node protocol refuses what its schema does not allow (the fuzzer's findings and their kin):
booleans or strings for numbers, negative or absurd sizes, empty ids, NaN."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from titus_common.protocol import SyncRequest, UpdatesRequest

NODE: dict[str, Any] = {"id": "n1", "capacity": {"cpus": 2, "memoryMiB": 1024, "diskMiB": 1024}}
UPDATE: dict[str, Any] = {"taskId": "t1", "state": "Finished", "timestamps": {"Finished": 1.5}, "exitCode": 0}


def test_valid_messages_pass() -> None:
    assert SyncRequest.model_validate({"node": NODE, "waitSeconds": 2}).wait_seconds == 2.0
    assert UpdatesRequest.model_validate({"updates": [UPDATE]}).updates[0].exit_code == 0


@pytest.mark.parametrize("body", [
    {"node": NODE, "waitSeconds": False},
    {"node": NODE, "waitSeconds": "2"},
    {"node": NODE, "waitSeconds": -1},
    {"node": NODE, "waitSeconds": float("nan")},
    {"node": {**NODE, "capacity": {**NODE["capacity"], "cpus": True}}},
    {"node": {**NODE, "capacity": {**NODE["capacity"], "memoryMiB": -5}}},
    {"node": {**NODE, "capacity": {**NODE["capacity"], "diskMiB": 1 << 60}}},
    {"node": {**NODE, "capacity": {**NODE["capacity"], "memoryMiB": 1.5}}},
    {"node": {**NODE, "id": ""}},
    {"node": {**NODE, "running": [""]}},
    {"node": {**NODE, "labels": {"a": 1}}},
])
def test_sync_refuses(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SyncRequest.model_validate(body)


@pytest.mark.parametrize("update", [
    {**UPDATE, "exitCode": False},
    {**UPDATE, "exitCode": "1"},
    {**UPDATE, "exitCode": 1 << 40},
    {**UPDATE, "taskId": ""},
    {**UPDATE, "timestamps": {"Finished": True}},
    {**UPDATE, "timestamps": {"Finished": -1}},
    {**UPDATE, "containerId": ""},
    {**UPDATE, "message": "x" * 5000},
])
def test_updates_refuse(update: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        UpdatesRequest.model_validate({"updates": [update]})
