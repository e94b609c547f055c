"""The job specification accepted by the scheduler API, validated field by field.

Validation happens once, at the API boundary: whatever passes here is safe to store and to hand to an
agent. Errors name the field (`container.resources.cpu`) so the user knows what to fix.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from titus_common.constraints import ConstraintsSpec

# Docker distribution reference grammar (distribution/reference/regexp.go), written out here
# because the docker SDK's parser accepts almost anything.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,252}$")
_SECURITY_GROUP = re.compile(r"^sg-[0-9a-f]{8,17}$")
_IAM_ROLE = re.compile(r"^(arn:aws[a-z-]*:iam::[0-9]{12}:role/)?[\w+=,.@/-]{1,64}$")
_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

MAX_CPU = 1024.0
MAX_MEMORY_MIB = 4 * 1024 * 1024  # 4 TiB, larger than any EC2 host
MAX_DISK_MIB = 64 * 1024 * 1024
MAX_TASKS_PER_JOB = 10_000
MAX_ARGS = 4096


def image_name_without_tag(image: str) -> str:
    m = IMAGE_REFERENCE.match(image)
    if m is None:
        raise ValueError(f"not an image reference: {image!r}")
    return m.group("name")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class Resources(_Model):
    cpu: Annotated[float, Field(gt=0, le=MAX_CPU, description="vCPUs, fractions allowed")] = 1.0
    memory_mib: Annotated[int, Field(alias="memoryMiB", ge=4, le=MAX_MEMORY_MIB)] = 512
    disk_mib: Annotated[int, Field(alias="diskMiB", ge=1, le=MAX_DISK_MIB)] = 1024

    @field_validator("cpu")
    @classmethod
    def _cpu_granularity(cls, v: float) -> float:
        if v < 0.01:
            raise ValueError("cpu must be at least 0.01")
        return v


class ContainerSpec(_Model):
    image: Annotated[str, Field(min_length=1, max_length=512)]
    entrypoint: Annotated[list[str] | None, Field(max_length=MAX_ARGS)] = None
    command: Annotated[list[str] | None, Field(max_length=MAX_ARGS)] = None
    env: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    iam_role: str | None = None
    imds_v1_allowed: bool = Field(
        default=False,
        description="Serve instance-metadata GETs without an IMDSv2 token (for old SDKs); off by default",
    )
    security_groups: list[str] = Field(default_factory=list)
    # Requests for security variants (seccomp/AppArmor profiles); their policy lives with the security step.
    security_attributes: dict[str, str] = Field(default_factory=dict)
    kill_grace_seconds: Annotated[float, Field(ge=0, le=600)] = 10.0
    cpu_class: Annotated[
        Literal["static", "burst"] | None,
        Field(
            description="CPU placement class. static: exclusive whole CPUs (whole physical cores when the "
            "request allows, inside one NUMA node / L3 group when it fits); needs a whole-number cpu request. "
            "burst: floor(cpu) exclusive CPUs as a guaranteed minimum, plus every idle CPU of the host, "
            "shrinking back when static work arrives. Default: static for a whole-number cpu request, "
            "burst for a fractional one (which then runs on the idle CPUs only)."
        ),
    ] = None

    @model_validator(mode="after")
    def _static_needs_whole_cpus(self) -> ContainerSpec:
        if self.cpu_class == "static" and not self.resources.cpu.is_integer():
            raise ValueError(
                "cpuClass 'static' gets whole exclusive CPUs: ask for a whole number of cpus "
                f"(not {self.resources.cpu:g}), or use cpuClass 'burst'"
            )
        return self

    @property
    def effective_cpu_class(self) -> Literal["static", "burst"]:
        if self.cpu_class is not None:
            return self.cpu_class
        return "static" if self.resources.cpu.is_integer() else "burst"

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not IMAGE_REFERENCE.match(v) or len(image_name_without_tag(v)) > 255:
            raise ValueError(
                "not an image reference; expected name[:tag][@sha256:digest], e.g. registry:5000/app/web:1.2"
            )
        return v

    @field_validator("entrypoint", "command")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("must not be an empty list (leave it out to use the image's default)")
            if any("\x00" in a for a in v):
                raise ValueError("arguments must not contain NUL bytes")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _ENV_NAME.match(name):
                raise ValueError(
                    f"invalid environment variable name {name!r}: letters, digits, '_', '.', '-' only, no '='"
                )
            if "\x00" in value:
                raise ValueError(f"environment variable {name!r} contains a NUL byte")
        return v

    @field_validator("iam_role")
    @classmethod
    def _iam_role(cls, v: str | None) -> str | None:
        if v is not None and not _IAM_ROLE.match(v):
            raise ValueError("not an IAM role name or ARN (arn:aws:iam::123456789012:role/name)")
        return v

    @field_validator("security_groups")
    @classmethod
    def _security_groups(cls, v: list[str]) -> list[str]:
        for sg in v:
            if not _SECURITY_GROUP.match(sg):
                raise ValueError(f"invalid security group id {sg!r}; expected sg- followed by hex digits")
        if len(set(v)) != len(v):
            raise ValueError("security groups listed twice")
        if len(v) > 16:
            raise ValueError("at most 16 security groups")
        return v


class RetryPolicy(_Model):
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    delay_seconds: Annotated[float, Field(ge=0, le=3600)] = 0.0


class BatchSpec(_Model):
    size: Annotated[int, Field(ge=1, le=MAX_TASKS_PER_JOB, description="number of tasks")]
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    runtime_limit_seconds: Annotated[float, Field(ge=5, le=30 * 86400)] = 86400.0


class ServiceSpec(_Model):
    desired: Annotated[int, Field(ge=1, le=MAX_TASKS_PER_JOB, description="tasks kept running")]


def _check_label_map(v: dict[str, str], what: str) -> dict[str, str]:
    if len(v) > 64:
        raise ValueError(f"at most 64 {what}")
    for key, value in v.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"invalid {what[:-1]} key {key!r}")
        if len(value) > 1024:
            raise ValueError(f"{what[:-1]} {key!r} is longer than 1024 characters")
    return v


class JobSpec(_Model):
    """What a user submits. Exactly one of `batch` and `service`."""

    app_name: Annotated[str, Field(min_length=1, max_length=128)]
    owner: Annotated[str, Field(min_length=1, max_length=256)]
    container: ContainerSpec
    batch: BatchSpec | None = None
    service: ServiceSpec | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    attributes: dict[str, str] = Field(default_factory=dict)
    # Placement constraints, hard and soft (titus_common/constraints.py, docs/scheduling.md).
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)
    idempotency_key: Annotated[str | None, Field(max_length=128)] = None

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, v: str) -> str:
        if not _APP_NAME.match(v):
            raise ValueError("letters, digits, '_', '.', '-' only")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_label_map(v, "labels")

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_label_map(v, "attributes")

    @model_validator(mode="after")
    def _one_kind(self) -> JobSpec:
        if (self.batch is None) == (self.service is None):
            raise ValueError("exactly one of 'batch' and 'service' must be given")
        return self

    @property
    def kind(self) -> Literal["batch", "service"]:
        return "batch" if self.batch is not None else "service"

    @property
    def task_count(self) -> int:
        if self.batch is not None:
            return self.batch.size
        assert self.service is not None
        return self.service.desired


class SpecError(ValueError):
    """A submission that does not validate; `problems` is a list of (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in problems))


def parse_job_spec(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError([("", "the job must be a JSON object")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            path = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append((path, msg))
        raise SpecError(problems) from None
