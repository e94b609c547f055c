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
from titus_common.provenance import PROVENANCE_KEYS, check_provenance

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
APP_NAME = _APP_NAME  # what an app name may be (also checked by the admin's app grants, docs/identity.md)

MAX_CPU = 1024.0
MAX_MEMORY_MIB = 4 * 1024 * 1024  # 4 TiB, larger than any EC2 host
MAX_DISK_MIB = 64 * 1024 * 1024
MAX_TASKS_PER_JOB = 10_000
MAX_ARGS = 4096
# The engine refuses a memory limit under 6 MB at create (HostConfig validation, 400).
MIN_MEMORY_MIB = 6

# What execve(2) accepts, and therefore what the container's process can be started with. Linux's
# ARG_MAX is a quarter of the stack rlimit: 2,097,152 bytes with the default 8 MiB stack (`getconf
# ARG_MAX`), counted as each argument and each NAME=value string's bytes + its NUL + an 8-byte
# pointer; one string may be at most MAX_ARG_STRLEN (32 pages = 131,072 bytes, NUL included). The user
# gets half of ARG_MAX for entrypoint + command + env; the other half is the platform's (TITUS_*,
# AWS_* and metadata variables, tini's own argv) and headroom for a smaller stack limit.
LINUX_ARG_MAX = 2_097_152
MAX_ARG_STRLEN = 131_072
ARGV_ENV_BUDGET = LINUX_ARG_MAX // 2
MAX_ENV_VARS = 4096
MAX_ENV_NAME = 256
MAX_LABELS = 64
MAX_LABEL_KEY = 253
MAX_LABEL_VALUE = 1024
MAX_SECURITY_GROUPS = 16


def exec_bytes(strings: list[str]) -> int:
    """What `strings` cost in execve's ARG_MAX accounting: bytes + NUL + pointer each."""
    return sum(len(s.encode()) + 1 + 8 for s in strings)


def _argv_schema(what: str) -> dict[str, Any]:
    return {
        "items": {"type": "string", "maxLength": MAX_ARG_STRLEN - 1},
        "description": f"{what}; each argument at most {MAX_ARG_STRLEN - 1} bytes (MAX_ARG_STRLEN), and "
        f"entrypoint + command + env together at most {ARGV_ENV_BUDGET} bytes (half of Linux's ARG_MAX "
        f"{LINUX_ARG_MAX}; each string counts its bytes + 1 + 8)",
    }


def _map_schema(key_max: int, value_max: int, pattern: str | None = None) -> dict[str, Any]:
    names: dict[str, Any] = {"maxLength": key_max}
    if pattern is not None:
        names["pattern"] = pattern
    return {"propertyNames": names, "additionalProperties": {"type": "string", "maxLength": value_max}}


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
    memory_mib: Annotated[int, Field(alias="memoryMiB", ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB)] = 512
    disk_mib: Annotated[int, Field(alias="diskMiB", ge=1, le=MAX_DISK_MIB)] = 1024

    @field_validator("cpu")
    @classmethod
    def _cpu_granularity(cls, v: float) -> float:
        if v < 0.01:
            raise ValueError("cpu must be at least 0.01")
        return v


class ContainerSpec(_Model):
    image: Annotated[str, Field(min_length=1, max_length=512)]
    entrypoint: Annotated[
        list[str] | None, Field(max_length=MAX_ARGS, json_schema_extra=_argv_schema("the image's ENTRYPOINT replaced"))
    ] = None
    command: Annotated[
        list[str] | None, Field(max_length=MAX_ARGS, json_schema_extra=_argv_schema("the image's CMD replaced"))
    ] = None
    env: Annotated[
        dict[str, str],
        Field(
            max_length=MAX_ENV_VARS,
            json_schema_extra={
                **_map_schema(MAX_ENV_NAME, MAX_ARG_STRLEN - 1, _ENV_NAME.pattern),
                "description": f"at most {MAX_ENV_VARS} variables; each NAME=value at most "
                f"{MAX_ARG_STRLEN - 1} bytes; counts toward the {ARGV_ENV_BUDGET}-byte exec budget",
            },
        ),
    ] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    iam_role: str | None = None
    imds_v1_allowed: bool = Field(
        default=False,
        description="Serve instance-metadata GETs without an IMDSv2 token (for old SDKs); off by default",
    )
    security_groups: Annotated[
        list[str],
        Field(max_length=MAX_SECURITY_GROUPS, json_schema_extra={"items": {"type": "string",
                                                                           "pattern": _SECURITY_GROUP.pattern}}),
    ] = Field(default_factory=list)
    # Requests for security variants (seccomp/AppArmor profiles); their policy lives with the security step.
    security_attributes: Annotated[
        dict[str, str],
        Field(max_length=MAX_LABELS,
              json_schema_extra=_map_schema(MAX_LABEL_KEY, MAX_LABEL_VALUE)),
    ] = Field(default_factory=dict)
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

    @model_validator(mode="after")
    def _exec_budget(self) -> ContainerSpec:
        used = exec_bytes([*(self.entrypoint or []), *(self.command or []),
                           *(f"{k}={v}" for k, v in self.env.items())])
        if used > ARGV_ENV_BUDGET:
            raise ValueError(
                f"entrypoint + command + env take {used} bytes as execve counts them; at most "
                f"{ARGV_ENV_BUDGET} (half of Linux's ARG_MAX {LINUX_ARG_MAX})"
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
            for i, a in enumerate(v):
                if len(a.encode()) >= MAX_ARG_STRLEN:
                    raise ValueError(f"argument {i} is {len(a.encode())} bytes; at most {MAX_ARG_STRLEN - 1}")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _ENV_NAME.match(name):
                raise ValueError(
                    f"invalid environment variable name {name!r}: letters, digits, '_', '.', '-' only, no '='"
                )
            if len(name) > MAX_ENV_NAME:
                raise ValueError(f"environment variable name {name[:32]!r}… is longer than {MAX_ENV_NAME}")
            if "\x00" in value:
                raise ValueError(f"environment variable {name!r} contains a NUL byte")
            size = len(name.encode()) + 1 + len(value.encode())
            if size >= MAX_ARG_STRLEN:
                raise ValueError(f"environment variable {name!r} is {size} bytes as NAME=value; at most "
                                 f"{MAX_ARG_STRLEN - 1}")
        return v

    @field_validator("security_attributes")
    @classmethod
    def _security_attribute_sizes(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
                raise ValueError(f"security attribute {key[:64]!r}: key at most {MAX_LABEL_KEY} characters, "
                                 f"value at most {MAX_LABEL_VALUE}")
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
        if len(v) > MAX_SECURITY_GROUPS:
            raise ValueError(f"at most {MAX_SECURITY_GROUPS} security groups")
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
    if len(v) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} {what}")
    for key, value in v.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"invalid {what[:-1]} key {key[:64]!r}")
        if len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"{what[:-1]} {key!r} is longer than {MAX_LABEL_VALUE} characters")
    return v


_LabelMap = Annotated[
    dict[str, str],
    Field(max_length=MAX_LABELS, json_schema_extra=_map_schema(MAX_LABEL_KEY, MAX_LABEL_VALUE, _LABEL_KEY.pattern)),
]


class JobSpec(_Model):
    """What a user submits. Exactly one of `batch` and `service`."""

    app_name: Annotated[str, Field(min_length=1, max_length=128)]
    owner: Annotated[str, Field(min_length=1, max_length=256)]
    container: ContainerSpec
    batch: BatchSpec | None = None
    service: ServiceSpec | None = None
    labels: _LabelMap = Field(default_factory=dict)
    attributes: _LabelMap = Field(default_factory=dict)
    # Placement constraints, hard and soft (titus_common/constraints.py, docs/scheduling.md).
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)
    idempotency_key: Annotated[str | None, Field(max_length=128)] = None
    # The capacity group the job draws from (scheduler/capacity.py); None: by app, then owner.
    capacity_group: Annotated[str | None, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = None

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
        _check_label_map(v, "attributes")
        # Image provenance (titus_common/provenance.py); parse_job_spec names the attribute as the field.
        problems = check_provenance(v)
        if problems:
            raise ValueError("; ".join(f"{key}: {message}" for key, message in problems))
        return v

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
            if path == "attributes" and msg.split(":", 1)[0] in PROVENANCE_KEYS:
                for part in msg.split("; "):  # one problem per provenance attribute, named as the field
                    key, sep, text = part.partition(": ")
                    if sep and key in PROVENANCE_KEYS:
                        problems.append((f"attributes.{key}", text))
                    elif problems:
                        problems[-1] = (problems[-1][0], f"{problems[-1][1]}; {part}")
                continue
            problems.append((path, msg))
        raise SpecError(problems) from None
