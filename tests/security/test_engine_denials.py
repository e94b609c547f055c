"""Against the real engine: the same attempts in a container with titus's options and in one with
Docker's defaults. Every container is labelled titus.test=security and removed in a finally."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from security.hardening import hardening_options
from security.posture import probe_host_posture
from security.profiles import ProfileCatalog, parse_policy, resolve_security
from tests.security.conftest import IMAGE, job

pytestmark = pytest.mark.integration
LABELS = {"titus.test": "security"}

PERF_HELPER_C = r"""
#include <linux/perf_event.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_TASK_CLOCK;
    a.exclude_kernel = 1;
    a.exclude_hv = 1;
    long fd = syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
    if (fd < 0) { printf("perf_event_open: %s\n", strerror(errno)); return 1; }
    printf("perf_event_open: ok\n");
    return 0;
}
"""


@dataclass(frozen=True)
class Outcome:
    rc: int
    output: str


@pytest.fixture(scope="module")
def api() -> Iterator[docker.APIClient]:
    client = docker.APIClient(version="1.41")
    try:
        client.ping()
    except Exception as e:  # the suite needs the engine: say so rather than skip silently
        pytest.fail(f"Docker engine not reachable ({e}); `make test` starts dockerd and the registry")
    yield client
    for c in client.containers(all=True, filters={"label": "titus.test=security"}):
        client.remove_container(c["Id"], force=True)  # only ever ours: filtered by our label
    client.close()


def run(api: docker.APIClient, host_config: dict[str, Any], command: str) -> Outcome:
    hc = dict(host_config)
    hc["NetworkMode"] = "none"
    container = api.create_container(IMAGE, ["sh", "-c", command], host_config=hc, labels=LABELS)
    try:
        api.start(container)
        rc = int(api.wait(container, timeout=30)["StatusCode"])
        return Outcome(rc, api.logs(container).decode(errors="replace").strip())
    finally:
        api.remove_container(container, force=True)


def titus_host_config(
    api: docker.APIClient, variant: str = "default", binds: list[str] | None = None
) -> dict[str, Any]:
    catalog = ProfileCatalog.load()
    policy = parse_policy({"version": 1, "openVariants": ["default", "perf"]}, catalog)
    decision = resolve_security(job({"seccomp": variant}).container, policy, probe_host_posture(api))
    return hardening_options(decision, memory_mib=64, binds=binds).host_config(api.create_host_config)


# (attempt, command, denied-by-titus marker, docker-default allows it?). "unless-userns": Docker's
# defaults allow it only when the engine does not remap user namespaces (a remapped root has no
# real CAP_MKNOD).
ATTEMPTS: list[tuple[str, str, str, bool | str]] = [
    ("create a device node", "mknod /tmp/null c 1 3", "Operation not permitted", "unless-userns"),
    ("chroot", "chroot / true", "Operation not permitted", True),
    ("raw socket (ping)", "ping -c1 -W1 127.0.0.1", "permission denied", True),
    ("read kernel symbols", "head -c1 /proc/kallsyms | grep -q .", "", True),
    ("unshare a user namespace", "unshare -U true", "Operation not permitted", False),
    ("mount a filesystem", "mount -t tmpfs none /mnt", "permission denied", False),
    ("write /proc/sysrq-trigger", "echo h > /proc/sysrq-trigger", "", False),
]


def test_attempts_titus_versus_docker_defaults(api: docker.APIClient) -> None:
    titus = titus_host_config(api)
    plain = api.create_host_config()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            (name, mode): pool.submit(run, api, hc, cmd)
            for name, cmd, _, _ in ATTEMPTS
            for mode, hc in (("titus", titus), ("docker", plain))
        }
        results = {k: f.result() for k, f in futures.items()}
    remapped = "name=userns" in api.info().get("SecurityOptions", [])
    table = ["attempt | titus | docker default"]
    for name, _, marker, docker_allows in ATTEMPTS:
        if docker_allows == "unless-userns":
            docker_allows = not remapped
        t, d = results[(name, "titus")], results[(name, "docker")]
        table.append(f"{name} | {'denied' if t.rc else 'ALLOWED'} | {'denied' if d.rc else 'allowed'}")
        assert t.rc != 0 and marker in t.output, (name, t)
        assert (d.rc == 0) == docker_allows, (name, d)
    print("\n" + "\n".join(table))


def test_no_new_privileges_pids_and_caps(api: docker.APIClient) -> None:
    probe = (
        "grep -E 'NoNewPrivs|CapEff' /proc/self/status;"
        " cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"  # cgroup v1 || v2
    )
    t = run(api, titus_host_config(api), probe)
    d = run(api, api.create_host_config(), probe)
    assert "NoNewPrivs:\t1" in t.output and "NoNewPrivs:\t0" in d.output
    assert t.output.splitlines()[-1].isdigit() and d.output.splitlines()[-1] == "max"
    # CAP_CHOWN..CAP_SETUID, KILL, NET_BIND_SERVICE = 0x4fb; Docker's default adds NET_RAW, MKNOD, ...
    assert "CapEff:\t00000000000004fb" in t.output


@pytest.fixture(scope="module")
def perf_helper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed: cannot build the static perf_event_open helper")
    d = tmp_path_factory.mktemp("perf")
    (d / "perf.c").write_text(PERF_HELPER_C)
    proc = subprocess.run(
        [gcc, "-static", "-O1", "-o", str(d / "perf"), str(d / "perf.c")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"static build failed (libc6-dev?): {proc.stderr[:200]}")
    return d / "perf"


def test_perf_event_open_only_with_the_perf_variant(api: docker.APIClient, perf_helper: Path) -> None:
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    binds = [f"{perf_helper}:/perf:ro"]
    default = run(api, titus_host_config(api, "default", binds), "/perf")
    perf = run(api, titus_host_config(api, "perf", binds), "/perf")
    plain = run(api, api.create_host_config(binds=binds), "/perf")
    assert default.rc == 1 and "Operation not permitted" in default.output, default
    assert plain.rc == 1 and "Operation not permitted" in plain.output, plain
    if paranoid <= 2:
        assert perf.rc == 0 and "ok" in perf.output, perf
    else:  # the kernel's own knob still applies; the filter let the call through
        assert "Operation not permitted" not in perf.output or perf.rc == 0, perf
