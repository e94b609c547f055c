from typing import Any

import pytest

from titus_common.jobspec import SpecError, parse_job_spec


def job(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "appName": "web",
        "owner": "team@example.com",
        "container": {"image": "127.0.0.1:5000/titus/busybox:latest", "command": ["true"]},
        "batch": {"size": 2},
    }
    for key, value in over.items():
        target = doc
        parts = key.split("__")
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        if value is ...:
            target.pop(parts[-1], None)
        else:
            target[parts[-1]] = value
    return doc


def test_valid_batch_and_service() -> None:
    spec = parse_job_spec(job())
    assert spec.kind == "batch" and spec.task_count == 2
    spec = parse_job_spec(job(batch=..., service={"desired": 3}))
    assert spec.kind == "service" and spec.task_count == 3


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "busybox:1.36",
        "registry.example.com:5000/team/app:v1.2-rc",
        "127.0.0.1:5000/titus/busybox@sha256:" + "a" * 64,
        "app:tag@sha256:" + "b" * 64,
    ],
)
def test_image_references_accepted(image: str) -> None:
    parse_job_spec(job(container__image=image))


@pytest.mark.parametrize(
    "over,field,words",
    [
        ({"container__resources": {"cpu": 0}}, "container.resources.cpu", "greater than 0"),
        ({"container__resources": {"cpu": 1e9}}, "container.resources.cpu", "less than or equal"),
        ({"container__resources": {"cpu": -1}}, "container.resources.cpu", "greater than 0"),
        ({"container__resources": {"memoryMiB": -5}}, "container.resources.memoryMiB", "greater than"),
        ({"container__resources": {"memoryMiB": 10**12}}, "container.resources.memoryMiB", "less than"),
        ({"container__resources": {"cpu": "2"}}, "container.resources.cpu", "valid number"),
        ({"container__image": "UPPER/Case"}, "container.image", "not an image reference"),
        ({"container__image": "a b"}, "container.image", "not an image reference"),
        ({"container__image": "app@sha256:short"}, "container.image", "not an image reference"),
        ({"container__env": {"A=B": "x"}}, "container.env", "no '='"),
        ({"container__env": {"": "x"}}, "container.env", "invalid environment variable name"),
        ({"batch": {"size": 0}}, "batch.size", "greater than or equal to 1"),
        ({"batch": ..., "service": {"desired": 0}}, "service.desired", "greater than or equal to 1"),
        ({"batch": ...}, "", "exactly one of 'batch' and 'service'"),
        ({"service": {"desired": 1}}, "", "exactly one of 'batch' and 'service'"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
        ({"container__cmd": ["x"]}, "container.cmd", "Extra inputs"),
        ({"container__securityGroups": ["default"]}, "container.securityGroups", "invalid security group"),
        ({"container__iamRole": "not a role!"}, "container.iamRole", "IAM role"),
        ({"container__command": []}, "container.command", "empty list"),
        ({"appName": "has space"}, "appName", "letters, digits"),
        ({"batch__runtimeLimitSeconds": 1}, "batch.runtimeLimitSeconds", "greater than or equal to 5"),
    ],
)
def test_bad_input_names_the_field(over: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_job_spec(job(**over))
    assert any(f == field and words in m for f, m in e.value.problems), e.value.problems


def test_not_an_object() -> None:
    with pytest.raises(SpecError, match="JSON object"):
        parse_job_spec([1, 2])
