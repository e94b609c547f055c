"""The engine's refusals to start a container, classified user (`failed`) or platform (`crashed`).

Each row is an error as the docker SDK raises it (its real exception type, HTTP status and the
engine's explanation, recorded from dockerd 20.10 / runc), sent through the agent's one translation
(`Docker.call`) and then through `classify_start_refusal`, as the container step does."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest
import requests

from agent.docker_api import Docker, DockerError
from agent.exits import ExitFacts, classify, classify_start_refusal
from titus_common.states import FinishReason as R

RUNC = "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: "


def sdk_error(status: int, explanation: str, kind: type[docker.errors.APIError] = docker.errors.APIError) -> Exception:
    response = requests.Response()
    response.status_code = status
    return kind(f"{status} Server Error", response=response, explanation=explanation)


async def translated(e: Exception) -> DockerError:
    def fail() -> None:
        raise e

    d = Docker(workers=1)
    try:
        await d.call(fail)
    except DockerError as err:
        return err
    finally:
        d.pool.shutdown()
    raise AssertionError("not raised")


CASES: list[tuple[str, int, str, R, str]] = [
    # The finding: the user's 16 MiB limit is below what the container uses to start.
    ("memory below start usage", 500,
     RUNC + "error during container init: error setting cgroup config for procHooks process: unable to set memory "
     "limit to 16777216 (current usage: 33284096, peak usage: 33636352): unknown",
     R.FAILED, "memory limit is below"),
    ("entrypoint missing (no init)", 400,
     RUNC + 'exec: "/nonexistent": stat /nonexistent: no such file or directory: unknown', R.FAILED, "cannot run"),
    ("entrypoint not executable (no init)", 400,
     RUNC + 'exec: "/etc/passwd": permission denied: unknown', R.FAILED, "cannot run"),
    ("user missing in the image", 500, "unable to find user nosuchuser: no matching entries in passwd file",
     R.FAILED, "user does not exist"),
    ("group missing in the image", 500, "unable to find group nogroup: no matching entries in group file",
     R.FAILED, "group does not exist"),
    ("wrong architecture", 500, RUNC + 'exec: "/bin/app": exec format error: unknown', R.FAILED, "another architecture"),
    ("working directory not enterable", 500,
     RUNC + 'error during container init: chdir to cwd ("/data") set in config.json failed: not a directory: unknown',
     R.FAILED, "working directory"),
    # The platform's: the runtime, cgroups, mounts, the engine itself.
    ("runtime mount failure", 500, RUNC + "error during container init: error mounting \"proc\": permission denied",
     R.CRASHED, "refused to start"),
    ("shim failure", 500, "failed to create shim task: ttrpc: closed: unknown", R.CRASHED, "refused to start"),
    ("cgroup failure", 500, RUNC + "error during container init: error setting cgroup config: no space left on device",
     R.CRASHED, "refused to start"),
    ("engine internal", 500, "driver failed programming external connectivity", R.CRASHED, "refused to start"),
]


@pytest.mark.parametrize("name,status,explanation,reason,words", CASES, ids=[c[0] for c in CASES])
async def test_start_refusal_classification(name: str, status: int, explanation: str, reason: R, words: str) -> None:
    err = await translated(sdk_error(status, explanation))
    assert err.status == status
    got, message = classify_start_refusal(err.status, str(err), err.client_error)
    assert got is reason, message
    assert words in message


async def test_typed_refusals_never_count_as_the_users() -> None:
    """404 and 409 are typed answers about the object, not the user's command: the platform's."""
    for status, kind in ((404, docker.errors.NotFound), (409, docker.errors.APIError)):
        err = await translated(sdk_error(status, "no such container", kind))
        assert not err.client_error
        assert classify_start_refusal(err.status, str(err), err.client_error)[0] is R.CRASHED


@pytest.mark.parametrize(
    "state,reason,words",
    [
        ({"ExitCode": 126, "Error": ""}, R.FAILED, "not executable"),
        ({"ExitCode": 127, "Error": ""}, R.FAILED, "command not found"),
        # A container the engine could not run, seen after an agent restart from its State.Error.
        ({"ExitCode": 128, "Error": "unable to find user app: no matching entries in passwd file"}, R.FAILED, "user"),
        ({"ExitCode": 128, "Error": "error mounting proc"}, R.CRASHED, "runtime error"),
    ],
)
def test_exit_state_uses_the_same_table(state: dict[str, Any], reason: R, words: str) -> None:
    got, message = classify(ExitFacts.from_inspect({"State": state}))
    assert got is reason and words in message
