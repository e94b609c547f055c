"""The escape-attempt suite of issue 5, written once: the attempts, the static C helper they use, and a
runner that plays each one inside a container titus launched (through the scheduler and the agent) and
inside a plain `docker run` container with Docker's defaults, in the same run. Used by
`tests/integration/test_escape.py` and `bench/escape.py`.

How an attempt runs. The runner starts one long-running task through titus (`sleep 600`) and one
Docker-default container (`network_mode="none"`, label `titus.test=escape`), copies the helper into
both (`/tmp/escape-helper`, plus a setuid-root copy), and `docker exec`s every attempt into each:
an exec'd process gets the container's seccomp filter, capability sets, no-new-privileges, cgroups
and namespaces (and, with dockerd's userns-remap, its user namespace), so it is confined exactly like
the task's own process. The bombs (fork, memory) run as their own titus tasks so the limits they hit
are that task's.

Every attempt prints `ESCAPED …` when it got what it wanted; anything else is a denial, and for titus
the output must also match the attempt's specific denial (errno text / message).

What "outside" means for ptrace, inside a PID namespace: a host process (the agent, dockerd) has no
PID in the container's namespace, so PTRACE_ATTACH to the agent's host PID number must fail with ESRCH
(the number names nothing there; it could at most name one of the container's own processes, never a
host one). And "a process it does not own": uid 1000 attaching to the container's PID 1 (root) must
fail with EPERM (no CAP_SYS_PTRACE). Root attaching to its own container's processes is not an escape
and is not a row.

Rows with `expect_titus="allowed"` are measured and shown, not counted as escape attempts: binding a
port below 1024 (titus keeps CAP_NET_BIND_SERVICE, and Docker sets ip_unprivileged_port_start=0 in
the container's own network namespace anyway) and perf_event_open under the granted `perf` variant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from tests.harness import IMAGE, Platform, wait_for

LABELS = {"titus.test": "escape"}
HELPER = "/tmp/escape-helper"  # inside the containers
SETUID_HELPER = "/tmp/escape-setuid"
UNPRIVILEGED = "1000:1000"
FORK_CAP = 4000  # the fork bomb stops by itself after this many children (bounded on Docker's defaults)
MEMORY_BOMB_MIB = 256  # what the memory bomb allocates; titus gives the task 32 MiB
BOMB_TASK_MIB = 32

HELPER_C = r"""#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>

static int denied(const char *what) { printf("DENIED %s: %s\n", what, strerror(errno)); return 1; }
static void on_alarm(int sig) { (void)sig; }
static int escaped(const char *what) { printf("ESCAPED %s\n", what); return 0; }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage\n"); return 2; }
    const char *op = argv[1];
    if (!strcmp(op, "keyctl")) {
        long r = syscall(SYS_add_key, "user", "titus-escape", "x", 1, -2 /* KEY_SPEC_PROCESS_KEYRING */);
        return r < 0 ? denied("add_key") : escaped("add_key");
    }
    if (!strcmp(op, "keyctl-join")) {
        long r = syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, "titus-escape");
        return r < 0 ? denied("keyctl") : escaped("keyctl");
    }
    if (!strcmp(op, "ptrace") && argc > 2) {
        pid_t pid = atoi(argv[2]);
        if (ptrace(PTRACE_ATTACH, pid, 0, 0) < 0) return denied("ptrace");
        waitpid(pid, 0, 0); ptrace(PTRACE_DETACH, pid, 0, 0);
        return escaped("ptrace");
    }
    if (!strcmp(op, "init_module")) {
        static char img[64] = "\177ELF";
        return syscall(SYS_init_module, img, sizeof img, "") < 0 ? denied("init_module") : escaped("init_module");
    }
    if (!strcmp(op, "finit_module")) {
        int fd = open("/proc/self/exe", O_RDONLY);
        if (fd < 0) return denied("open");
        return syscall(SYS_finit_module, fd, "", 0) < 0 ? denied("finit_module") : escaped("finit_module");
    }
    if (!strcmp(op, "raw")) {
        int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
        return fd < 0 ? denied("socket(AF_INET, SOCK_RAW)") : escaped("socket(AF_INET, SOCK_RAW)");
    }
    if (!strcmp(op, "packet")) {
        int fd = socket(AF_PACKET, SOCK_RAW, htons(3));
        return fd < 0 ? denied("socket(AF_PACKET)") : escaped("socket(AF_PACKET)");
    }
    if (!strcmp(op, "settime")) {
        struct timeval tv; gettimeofday(&tv, 0);
        return settimeofday(&tv, 0) < 0 ? denied("settimeofday") : escaped("settimeofday");
    }
    if (!strcmp(op, "clock_settime")) {
        struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        return clock_settime(CLOCK_REALTIME, &ts) < 0 ? denied("clock_settime") : escaped("clock_settime");
    }
    if (!strcmp(op, "setns") && argc > 2) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) return denied("open");
        return setns(fd, 0) < 0 ? denied("setns") : escaped("setns");
    }
    if (!strcmp(op, "unix") && argc > 2) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
        return connect(fd, (struct sockaddr *)&a, sizeof a) < 0 ? denied("connect") : escaped("connect");
    }
    if (!strcmp(op, "tcp") && argc > 3) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return denied("socket");
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_alarm;
        sigaction(SIGALRM, &sa, 0);  /* no SA_RESTART: a dropped SYN ends as EINTR after 3 s */
        alarm(3);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            if (errno == EINTR) { printf("DENIED connect %s: timed out\n", argv[2]); return 1; }
            printf("DENIED connect %s: %s\n", argv[2], strerror(errno)); return 1;
        }
        printf("ESCAPED connect %s:%s\n", argv[2], argv[3]); return 0;
    }
    if (!strcmp(op, "bind") && argc > 2) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return denied("socket");
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        return bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ? denied("bind") : escaped("bind");
    }
    if (!strcmp(op, "capset") && argc > 2) {
        struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
        struct __user_cap_data_struct d[2];
        if (syscall(SYS_capget, &h, d) < 0) return denied("capget");
        int cap = atoi(argv[2]);
        d[cap / 32].effective |= 1u << (cap % 32);
        d[cap / 32].permitted |= 1u << (cap % 32);
        return syscall(SYS_capset, &h, d) < 0 ? denied("capset") : escaped("capset");
    }
    if (!strcmp(op, "chroot")) {
        /* the classic double chroot: chroot into a subdirectory keeping a cwd outside it, climb, chroot(".") */
        mkdir("/tmp/.escape-jail", 0755);
        if (chroot("/tmp/.escape-jail") < 0) return denied("chroot");
        for (int i = 0; i < 64; i++) chdir("..");
        if (chroot(".") < 0) return denied("chroot(.)");
        if (argc > 2 && access(argv[2], F_OK) == 0) return escaped("chroot: host marker visible");
        printf("DENIED chroot: reached the container's own root only (no host marker)\n");
        return 1;
    }
    if (!strcmp(op, "open_by_handle_at")) {
        struct { unsigned int bytes; int type; unsigned char h[8]; } fh = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
        int fd = syscall(SYS_open_by_handle_at, AT_FDCWD, &fh, O_RDONLY);
        return fd < 0 ? denied("open_by_handle_at") : escaped("open_by_handle_at");
    }
    if (!strcmp(op, "bpf")) {
        union bpf_attr a; memset(&a, 0, sizeof a);
        a.map_type = BPF_MAP_TYPE_ARRAY; a.key_size = 4; a.value_size = 4; a.max_entries = 1;
        return syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a) < 0 ? denied("bpf") : escaped("bpf");
    }
    if (!strcmp(op, "perf")) {
        struct perf_event_attr a; memset(&a, 0, sizeof a);
        a.size = sizeof a; a.type = PERF_TYPE_SOFTWARE; a.config = PERF_COUNT_SW_TASK_CLOCK;
        a.exclude_kernel = 1; a.exclude_hv = 1;
        return syscall(SYS_perf_event_open, &a, 0, -1, -1, 0) < 0 ? denied("perf_event_open") : escaped("perf_event_open");
    }
    if (!strcmp(op, "ids")) { printf("uid=%d euid=%d\n", getuid(), geteuid()); return 0; }
    if (!strcmp(op, "setuid")) {
        /* installed setuid-root: did exec grant euid 0? */
        if (geteuid() == 0 && getuid() != 0) { printf("ESCAPED setuid: uid=%d euid=0\n", getuid()); return 0; }
        printf("DENIED setuid: uid=%d euid=%d (setuid bit ignored)\n", getuid(), geteuid());
        return 1;
    }
    if (!strcmp(op, "forkbomb") && argc > 2) {
        int cap = atoi(argv[2]), n = 0;
        for (; n < cap; n++) {
            pid_t p = fork();
            if (p < 0) {
                printf("DENIED fork after %d children: %s\n", n, strerror(errno)); fflush(stdout);
                kill(0, SIGKILL);
                return 1;
            }
            if (p == 0) { pause(); _exit(0); }
            if ((n + 1) % 50 == 0) { printf("forked %d\n", n + 1); fflush(stdout); }
        }
        printf("ESCAPED fork: %d children, no limit hit\n", n); fflush(stdout);
        signal(SIGTERM, SIG_IGN);
        kill(0, SIGTERM);  /* children die (default action); we ignore it */
        while (wait(0) > 0) {}
        return 0;
    }
    fprintf(stderr, "unknown op %s\n", op);
    return 2;
}
"""


def build_helper(directory: Path) -> Path:
    """Compile the static helper (gcc -static, as tests/security/test_engine_denials.py does)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not installed: cannot build the static escape helper")
    src, out = directory / "escape-helper.c", directory / "escape-helper"
    src.write_text(HELPER_C)
    proc = subprocess.run([gcc, "-static", "-O1", "-o", str(out), str(src)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"static build of the escape helper failed (libc6-dev?): {proc.stderr[:400]}")
    return out


@dataclass(frozen=True)
class Context:
    """Host facts the attempts are formatted with."""

    agent_port: int
    scheduler_port: int
    agent_pid: int
    marker: str  # a file on the HOST that no container may see
    shadow_sha: str  # sha256 of the host's /etc/shadow (compared, never printed)
    host_ips: str  # the host's IPv4 addresses (space-separated)
    listen_port: int = 0  # a listener on 0.0.0.0 on the host (run_exec_attempts opens it)

    def fmt(self, command: str) -> str:
        return command.format(
            H=HELPER, S=SETUID_HELPER, agent_port=self.agent_port, scheduler_port=self.scheduler_port,
            agent_pid=self.agent_pid, marker=self.marker, shadow_sha=self.shadow_sha, host_ips=self.host_ips,
            listen_port=self.listen_port,
        )


@dataclass(frozen=True)
class Attempt:
    key: str
    name: str
    command: str  # `sh -c`, formatted with Context; prints ESCAPED on success
    denial: str  # regex the titus output must match (the specific denial)
    user: str = "root"
    note: str = ""  # why titus denies it (for the table)
    # "allowed": measured and documented as not an escape (the row says why); not counted as an attempt
    expect_titus: str = "denied"


def sh(cmd: str, what: str) -> str:
    """A shell attempt: ESCAPED if the command succeeded, else DENIED with its stderr."""
    return f"if {cmd}; then echo 'ESCAPED {what}'; else echo 'DENIED {what} rc='$?; fi"


def _via_host(port: str) -> str:
    """connect() to `port` on the container's default gateway (the host end of its veth, when titus wires
    a network) and on every IPv4 address of the host."""
    return (f"for ip in $(ip route 2>/dev/null | awk '/^default/ {{{{print $3}}}}') {{host_ips}};"
            f" do {{H}} tcp $ip {port}; done")


# The exec'd attempts (rows 1..), in the order of the issue.
ATTEMPTS: list[Attempt] = [
    Attempt("mount", "mount a tmpfs", sh("mount -t tmpfs none /mnt 2>&1", "mount"),
            r"mount: permission denied", note="seccomp (no CAP_SYS_ADMIN)"),
    Attempt("mount-cgroup", "mount a cgroup v1 hierarchy (release_agent, CVE-2022-0492)",
            sh("mkdir -p /tmp/cg && mount -t cgroup -o rdma cgroup /tmp/cg 2>&1", "mount cgroup"),
            r"mount: permission denied", note="seccomp (no CAP_SYS_ADMIN)"),
    Attempt("unshare-user", "unshare a new user namespace", sh("unshare -U true 2>&1", "unshare -U"),
            r"unshare: unshare\(0x10000000\): Operation not permitted", note="seccomp (clone/unshare flags)"),
    Attempt("unshare-mount", "unshare a new mount namespace", sh("unshare -m true 2>&1", "unshare -m"),
            r"unshare: unshare\(0x20000\): Operation not permitted", note="seccomp (no CAP_SYS_ADMIN)"),
    Attempt("keyctl", "add_key (kernel keyring)", "{H} keyctl", r"DENIED add_key: Operation not permitted",
            note="seccomp"),
    Attempt("keyctl-join", "keyctl(JOIN_SESSION_KEYRING)", "{H} keyctl-join",
            r"DENIED keyctl: Operation not permitted", note="seccomp"),
    Attempt("ptrace-host", "ptrace the agent (a host process, by its host PID)", "{H} ptrace {agent_pid}",
            r"DENIED ptrace: No such process", note="PID namespace: host PIDs name nothing inside"),
    Attempt("ptrace-other-user", "ptrace a process it does not own (PID 1, root) as uid 1000", "{H} ptrace 1",
            r"DENIED ptrace: Operation not permitted", user=UNPRIVILEGED, note="no CAP_SYS_PTRACE"),
    Attempt("init_module", "load a kernel module (init_module)", "{H} init_module",
            r"DENIED init_module: Operation not permitted", note="seccomp (no CAP_SYS_MODULE)"),
    Attempt("finit_module", "load a kernel module (finit_module)", "{H} finit_module",
            r"DENIED finit_module: Operation not permitted", note="seccomp (no CAP_SYS_MODULE)"),
    # This kernel is built without CONFIG_MAGIC_SYSRQ: the file does not exist (busybox says "nonexistent
    # directory" for ENOENT). Where it exists, Docker's and titus's read-only paths cover it.
    Attempt("sysrq", "write /proc/sysrq-trigger", sh("echo h 2>&1 > /proc/sysrq-trigger", "sysrq"),
            r"can't create /proc/sysrq-trigger: (Read-only file system|nonexistent directory)",
            note="read-only path (absent on this kernel)"),
    Attempt("core_pattern", "write /proc/sys/kernel/core_pattern (runs on the host)",
            sh("echo '|/tmp/x' 2>&1 > /proc/sys/kernel/core_pattern", "core_pattern"),
            r"Read-only file system", note="read-only /proc/sys"),
    Attempt("raw-socket", "raw socket (AF_INET, SOCK_RAW)", "{H} raw",
            r"DENIED socket\(AF_INET, SOCK_RAW\): Operation not permitted", note="no CAP_NET_RAW"),
    Attempt("packet-socket", "packet socket (AF_PACKET)", "{H} packet",
            r"DENIED socket\(AF_PACKET\): Operation not permitted", note="no CAP_NET_RAW"),
    Attempt("settimeofday", "change the system clock (settimeofday)", "{H} settime",
            r"DENIED settimeofday: Operation not permitted", note="seccomp (no CAP_SYS_TIME)"),
    Attempt("clock_settime", "change the system clock (clock_settime)", "{H} clock_settime",
            r"DENIED clock_settime: Operation not permitted", note="seccomp (no CAP_SYS_TIME)"),
    Attempt("setns-mnt", "setns into PID 1's mount namespace", "{H} setns /proc/1/ns/mnt",
            r"DENIED setns: Operation not permitted", note="seccomp (no CAP_SYS_ADMIN)"),
    Attempt("setns-net", "setns into PID 1's network namespace", "{H} setns /proc/1/ns/net",
            r"DENIED setns: Operation not permitted", note="seccomp (no CAP_SYS_ADMIN)"),
    Attempt("docker-sock", "reach the Docker socket",
            "ls /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock 2>&1;"
            " {H} unix /var/run/docker.sock",
            r"DENIED connect: No such file or directory", note="never mounted (binds audited)"),
    Attempt("cgroup-write", "raise its own pids.max (cgroup files)",
            sh("echo max 2>&1 > /sys/fs/cgroup/pids/pids.max", "cgroup write"),
            r"can't create /sys/fs/cgroup/pids/pids.max: (Permission denied|Read-only file system)",
            note="cgroup files belong to the unmapped host root (userns-remap)"),
    Attempt("mknod", "create a device node (mknod /tmp/sda b 8 0)", sh("mknod /tmp/sda b 8 0 2>&1", "mknod"),
            r"mknod: /tmp/sda: Operation not permitted", note="no CAP_MKNOD"),
    Attempt("chroot", "chroot breakout (double chroot)", "{H} chroot {marker}",
            r"DENIED chroot: Operation not permitted", note="no CAP_SYS_CHROOT"),
    Attempt("capset", "gain a capability beyond the set (capset CAP_NET_ADMIN)", "{H} capset 12",
            r"DENIED capset: Operation not permitted", note="bounding set"),
    Attempt("capset-raw", "gain CAP_NET_RAW back (capset)", "{H} capset 13",
            r"DENIED capset: Operation not permitted", note="bounding set"),
    Attempt("agent-api", "reach the agent API (127.0.0.1:agent port)", "{H} tcp 127.0.0.1 {agent_port}",
            r"DENIED connect 127.0.0.1: Connection refused", note="its own network namespace: its own loopback"),
    Attempt("scheduler-api", "reach the scheduler (127.0.0.1:scheduler port)", "{H} tcp 127.0.0.1 {scheduler_port}",
            r"DENIED connect 127.0.0.1: Connection refused", note="its own network namespace: its own loopback"),
    Attempt("agent-api-host", "reach the agent API via the host's addresses (gateway, every host IPv4)",
            _via_host("{agent_port}"), r"\A(DENIED connect \S+: [^\n]+\n?)+\Z",
            note="the agent listens on loopback only; nothing reachable on the host's addresses"),
    Attempt("scheduler-api-host", "reach the scheduler via the host's addresses (gateway, every host IPv4)",
            _via_host("{scheduler_port}"), r"\A(DENIED connect \S+: [^\n]+\n?)+\Z",
            note="the scheduler listens on loopback only"),
    # A stand-in for any host service bound to all addresses (sshd, a node exporter, ...): the suite opens a
    # listener on 0.0.0.0 on the host for the duration of the run. The agent and the scheduler themselves
    # listen on loopback only (rows above); this row is about what the task's network lets it reach.
    Attempt("host-service", "reach a host service bound to 0.0.0.0 (gateway, every host IPv4)",
            _via_host("{listen_port}"), r"\A(DENIED connect \S+: [^\n]+\n?)+\Z",
            note="control-plane isolation: input from task links (tn*) to the host is dropped"),
    Attempt("proc1-root", "read host files via /proc/1/root",
            "if [ -e /proc/1/root{marker} ]; then echo 'ESCAPED host marker visible'; fi;"
            " sha=$(sha256sum /proc/1/root/etc/shadow 2>/dev/null | cut -d' ' -f1);"
            " if [ \"$sha\" = '{shadow_sha}' ]; then echo 'ESCAPED host /etc/shadow'; fi;"
            " echo \"DENIED /proc/1/root is the container's own root (shadow sha ${{sha:-none}})\"",
            r"DENIED /proc/1/root is the container's own root", note="PID namespace: PID 1 is the container's"),
    Attempt("setuid", "setuid-root binary run by uid 1000", "{S} setuid",
            r"DENIED setuid: uid=1000 euid=1000", user=UNPRIVILEGED, note="no-new-privileges"),
    Attempt("bpf", "bpf(BPF_MAP_CREATE)", "{H} bpf", r"DENIED bpf: Operation not permitted",
            note="seccomp (no CAP_SYS_ADMIN/CAP_BPF)"),
    Attempt("perf", "perf_event_open (default variant)", "{H} perf",
            r"DENIED perf_event_open: Operation not permitted", note="seccomp (perf variant only)"),
    Attempt("open_by_handle_at", "open_by_handle_at (the 'shocker' escape)", "{H} open_by_handle_at",
            r"DENIED open_by_handle_at: Operation not permitted", note="seccomp (no CAP_DAC_READ_SEARCH)"),
    Attempt("low-port-root", "bind a privileged port (80) as root: the one capability kept",
            "{H} bind 80", r"^ESCAPED bind$", expect_titus="allowed",
            note="by design: CAP_NET_BIND_SERVICE, in the task's own network namespace"),
    Attempt("low-port-user", "bind a privileged port (80) as uid 1000 (no capabilities)",
            "{H} bind 80", r"^ESCAPED bind$", user=UNPRIVILEGED, expect_titus="allowed",
            note="not an escape: Docker sets net.ipv4.ip_unprivileged_port_start=0 in the container's own "
                 "network namespace (titus inherits it); no host port is reachable"),
    Attempt("kallsyms", "read kernel symbol addresses (/proc/kallsyms)",
            "if [ -s /proc/kallsyms ] || head -c1 /proc/kallsyms | grep -q .; then echo 'ESCAPED kallsyms';"
            " else echo 'DENIED kallsyms empty (masked)'; fi",
            r"DENIED kallsyms empty \(masked\)", note="masked path"),
]

# Run on their own, not exec'd: each is its own titus task (and its own Docker-default container).
FORK_BOMB = Attempt(
    "fork-bomb", f"fork bomb (stops itself at {FORK_CAP} children)",
    f"while [ ! -x {HELPER} ]; do sleep 0.1; done; exec {HELPER} forkbomb {FORK_CAP}",
    r"DENIED fork after \d+ children: (Resource temporarily unavailable|Cannot allocate memory)|OOM-killed",
    note="memory limit (kernel memory is charged) / pids limit",
)
MEMORY_BOMB = Attempt(
    "memory-bomb", f"memory bomb ({MEMORY_BOMB_MIB} MiB in a {BOMB_TASK_MIB} MiB task)",
    f"dd if=/dev/zero of=/dev/null bs={MEMORY_BOMB_MIB}M count=1 && echo 'ESCAPED allocated {MEMORY_BOMB_MIB} MiB'",
    r"OOM-killed", note="memory limit, swap = memory",
)


@dataclass
class Result:
    attempt: Attempt
    titus_output: str
    titus_rc: int
    docker_output: str
    docker_rc: int
    facts: dict[str, Any] = field(default_factory=dict)  # measured extras (pids limit, host can fork, ...)

    @property
    def titus_denied(self) -> bool:
        return "ESCAPED" not in self.titus_output

    @property
    def titus_specific(self) -> bool:
        """The titus outcome is the expected one, with its specific message."""
        if re.search(self.attempt.denial, self.titus_output, re.MULTILINE) is None:
            return False
        return self.titus_denied if self.attempt.expect_titus == "denied" else not self.titus_denied

    @property
    def docker_denied(self) -> bool:
        return "ESCAPED" not in self.docker_output


# The scheduler's and the agent's policy: the `perf` variant granted to the harness's owner/app only.
PERF_OWNER, PERF_APP = "tests", "itest"  # what tests/harness.py Platform.submit sends
POLICY = {
    "version": 1,
    "apparmorUnavailable": "refuse",
    "openVariants": ["default"],
    "variants": {"perf": [{"owner": PERF_OWNER, "app": PERF_APP}]},
}


def start_platform(p: Platform) -> None:
    """Scheduler + agent, both with POLICY (so the perf variant is granted to the harness's jobs only)."""
    policy = p.tmp / "security-policy.json"
    policy.write_text(json.dumps(POLICY))
    p.start_scheduler("--security-policy", str(policy))
    p.start_agent("--security-policy", str(policy))


def host_context(p: Platform) -> Context:
    assert p.agent is not None
    return Context(
        agent_port=p.agent_port, scheduler_port=p.scheduler_port, agent_pid=p.agent.p.pid,
        marker=f"/tmp/titus-escape-marker-{uuid.uuid4().hex[:12]}",
        shadow_sha=hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest(),
        host_ips=" ".join(host_ipv4()),
    )


def host_ipv4() -> list[str]:
    """Every IPv4 address of the host (loopback included: from a container it is its own loopback)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, 0, 0, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def install_helper(container: Any, helper: Path) -> None:
    """`docker cp` the helper into /tmp of a running container, plus a setuid-root copy."""
    data = helper.read_bytes()
    assert container.put_archive("/tmp", _tar({"escape-helper": (data, 0o755), "escape-setuid": (data, 0o4755)}))
    # Make sure the setuid bit is there whatever the archive extraction kept (root owns the file).
    r = container.exec_run(["sh", "-c", f"chown 0:0 {SETUID_HELPER} && chmod 4755 {SETUID_HELPER} && ls -ln {SETUID_HELPER}"])
    assert r.exit_code == 0 and r.output.decode().startswith("-rwsr-xr-x"), r.output


def exec_attempt(container: Any, attempt: Attempt, ctx: Context) -> tuple[int, str]:
    r = container.exec_run(["sh", "-c", ctx.fmt(attempt.command) + " 2>&1"], user=attempt.user)
    return int(r.exit_code), r.output.decode(errors="replace").strip()


def titus_task_container(p: Platform, task_id: str) -> Any:
    return wait_for(
        lambda: next((c for c in p.containers() if c.labels.get("titus.task_id") == task_id), None),
        30, f"container of task {task_id}",
    )


@contextmanager
def docker_default(engine: docker.DockerClient, command: list[str], **kw: Any) -> Iterator[Any]:
    """A plain `docker run` with Docker's defaults (only network_mode=none and our label); removed after."""
    c = engine.containers.run(IMAGE, command, detach=True, network_mode="none", labels=LABELS, **kw)
    try:
        yield c
    finally:
        c.remove(force=True)


def remove_leftovers(engine: docker.DockerClient, node_id: str | None = None) -> None:
    """Our Docker-default containers, and the network sandboxes (`titus.sandbox_agent=<node>`, which the
    harness's Platform.close does not match) of our platform's node, if it left any."""
    labels = ["titus.test=escape"] + ([f"titus.sandbox_agent={node_id}"] if node_id else [])
    for label in labels:
        for c in engine.containers.list(all=True, filters={"label": label}):
            c.remove(force=True)  # only ever ours: filtered by our label / our node id


def run_exec_attempts(
    p: Platform, engine: docker.DockerClient, helper: Path, ctx: Context,
    attempts: list[Attempt] | None = None,
) -> list[Result]:
    """Every exec'd attempt in one titus task and one Docker-default container."""
    attempts = ATTEMPTS if attempts is None else attempts
    job_id = p.submit("sleep 600", killGraceSeconds=1)
    (task,) = wait_for(lambda: p.started(job_id), 60, "holder task Started")
    titus = titus_task_container(p, task["id"])
    Path(ctx.marker).write_text("host marker: a container must never see this file\n")
    listener = socket.create_server(("0.0.0.0", 0), backlog=64)  # accepted by the kernel, never served
    ctx = dataclasses.replace(ctx, listen_port=listener.getsockname()[1])
    try:
        with docker_default(engine, ["sleep", "600"]) as plain:
            install_helper(titus, helper)
            install_helper(plain, helper)
            results = []
            for a in attempts:
                t_rc, t_out = exec_attempt(titus, a, ctx)
                d_rc, d_out = exec_attempt(plain, a, ctx)
                results.append(Result(a, t_out, t_rc, d_out, d_rc))
    finally:
        listener.close()
        Path(ctx.marker).unlink(missing_ok=True)
        p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    p.wait_job_finished(job_id, timeout=30)
    return results


def _task_finish(p: Platform, job_id: str, timeout: float = 60) -> dict[str, Any]:
    p.wait_job_finished(job_id, timeout=timeout)
    (t,) = p.tasks(job_id)
    return t


def run_fork_bomb(p: Platform, engine: docker.DockerClient, helper: Path) -> Result:
    """Its own titus task (default 64 MiB, the host-aware pids limit): the helper forks children that pause until
    fork fails or FORK_CAP is reached. On Docker's defaults the same bounded loop."""
    job_id = p.submit(FORK_BOMB.command, killGraceSeconds=1)
    (task,) = wait_for(lambda: [t for t in p.tasks(job_id) if "Started" in t["timestamps"]], 60, "fork bomb Started")
    c = titus_task_container(p, task["id"])
    c.reload()
    pids_limit = int(c.attrs["HostConfig"]["PidsLimit"])
    # The agent removes the container at teardown: follow its output while it runs.
    chunks: list[bytes] = []
    follower = threading.Thread(target=lambda: chunks.extend(c.logs(stream=True, follow=True)), daemon=True)
    follower.start()
    c.put_archive("/tmp", _tar({"escape-helper": (helper.read_bytes(), 0o755)}))
    done = _task_finish(p, job_id, timeout=120)
    follower.join(10)
    lines = b"".join(chunks).decode(errors="replace").strip().splitlines()
    forked = max([int(m.group(1)) for m in map(re.compile(r"forked (\d+)").match, lines) if m] or [0])
    t_out = "\n".join(lines[-1:] + [f"[task {done['reason']}: {done.get('message', '')}]"])
    facts = {"pids_limit": pids_limit, "forked_before_stop": forked, "host_can_fork": host_can_fork(),
             "host_pid_max": int(Path("/proc/sys/kernel/pid_max").read_text())}
    with docker_default(engine, ["sh", "-c", FORK_BOMB.command]) as plain:
        plain.put_archive("/tmp", _tar({"escape-helper": (helper.read_bytes(), 0o755)}))
        d_rc = int(plain.wait(timeout=120)["StatusCode"])
        d_out = plain.logs().decode(errors="replace").strip().splitlines()[-1]
    return Result(FORK_BOMB, t_out, 0 if done["reason"] == "normal" else 1, d_out, d_rc, facts)


def run_memory_bomb(p: Platform, engine: docker.DockerClient) -> Result:
    """Its own titus task with a small memoryMiB: finishes `failed` with "OOM-killed". On Docker's
    defaults (no memory limit) the same bounded allocation."""
    job_id = p.submit(MEMORY_BOMB.command, resources={"cpu": 0.1, "memoryMiB": BOMB_TASK_MIB})
    done = _task_finish(p, job_id, timeout=60)
    t_out = f"[task {done['reason']}: {done.get('message', '')}]"
    facts = {"reason": done["reason"], "message": done.get("message", ""), "host_can_fork": host_can_fork()}
    with docker_default(engine, ["sh", "-c", MEMORY_BOMB.command]) as plain:
        d_rc = int(plain.wait(timeout=60)["StatusCode"])
        d_out = plain.logs().decode(errors="replace").strip()
    return Result(MEMORY_BOMB, t_out, 0 if done["reason"] == "normal" else 1, d_out, d_rc, facts)


PERF_VARIANT = Attempt(
    "perf-variant", "perf_event_open with the perf variant (granted owner)", "{H} perf",
    r"^ESCAPED perf_event_open$", expect_titus="allowed",
    note="by design: the policy grants the perf variant to this owner/app (perf_event_paranoid still applies)",
)


def run_perf_variant(p: Platform, engine: docker.DockerClient, helper: Path, ctx: Context) -> Result:
    """A task with `securityAttributes.seccomp=perf` (granted by POLICY) may call perf_event_open; the
    Docker-default column is the same call under Docker's default profile."""
    job_id = p.submit("sleep 600", killGraceSeconds=1, securityAttributes={"seccomp": "perf"})
    (task,) = wait_for(lambda: p.started(job_id), 60, "perf task Started")
    c = titus_task_container(p, task["id"])
    try:
        install_helper(c, helper)
        t_rc, t_out = exec_attempt(c, PERF_VARIANT, ctx)
        with docker_default(engine, ["sleep", "600"]) as plain:
            install_helper(plain, helper)
            d_rc, d_out = exec_attempt(plain, PERF_VARIANT, ctx)
    finally:
        p.api("POST", f"/v1/jobs/{job_id}/kill", expect=202)
    p.wait_job_finished(job_id, timeout=30)
    return Result(PERF_VARIANT, t_out, t_rc, d_out, d_rc)


def perf_refused_for_others(p: Platform) -> str:
    """The perf variant asked by an owner the policy does not grant: refused at submit. Returns the message."""
    spec = {
        "appName": "other-app", "owner": "someone-else",
        "container": {"image": IMAGE, "command": ["true"], "securityAttributes": {"seccomp": "perf"}},
        "batch": {"size": 1},
    }
    r = p.http.post(f"{p.url}/v1/jobs", json=spec, timeout=10)
    assert r.status_code == 400, r.text
    problems = r.json()["error"]["problems"]
    assert any(x["field"] == "container.securityAttributes.seccomp" for x in problems), problems
    return str(problems)


def host_can_fork() -> bool:
    return subprocess.run(["true"], check=False).returncode == 0


def titus_cell(r: Result) -> str:
    if r.attempt.expect_titus == "allowed":
        return ("allowed" if not r.titus_denied else "denied") + f" — {r.attempt.note}"
    if not r.titus_denied:
        return "**ESCAPED**"
    return ("denied" if r.titus_specific else "denied (unexpected message)") + (
        f" — {r.attempt.note}" if r.attempt.note else "")


def docker_cell(r: Result) -> str:
    if r.attempt.key == "chroot" and "reached the container's own root" in r.docker_output:
        return "chroot allowed; breakout reaches only the container's root"
    if r.attempt.key == "setuid" and not r.docker_denied:
        return "allowed (euid 0: container root, an unprivileged host UID under userns-remap)"
    if r.attempt.key == "fork-bomb" and not r.docker_denied:
        return f"not limited ({FORK_CAP} children, no limit hit)"
    if r.attempt.key == "memory-bomb" and not r.docker_denied:
        return f"not limited ({MEMORY_BOMB_MIB} MiB allocated)"
    return "denied" if r.docker_denied else "allowed"


def table(results: list[Result]) -> str:
    lines = ["| attempt | titus | Docker default |", "|---|---|---|"]
    lines += [f"| {r.attempt.name} | {titus_cell(r)} | {docker_cell(r)} |" for r in results]
    return "\n".join(lines)


def summary(results: list[Result]) -> tuple[int, int, int]:
    """(attempts, denied by titus with the specific denial, denied by Docker's defaults); rows that are
    allowed by design are not escape attempts and are not counted."""
    escapes = [r for r in results if r.attempt.expect_titus == "denied"]
    return len(escapes), sum(r.titus_specific for r in escapes), sum(r.docker_denied for r in escapes)
