"""A private Docker engine whose data root is a small loop-mounted ext4, for tests that fill the
engine's disk: the shared engine is never filled nor restarted. Its own data root, exec root (hence
its own managed containerd), socket, containerd namespaces and cgroup parent; no bridge, no
iptables; user namespaces remapped as the agent requires. `stop` removes everything it made and
raises if something is left (a mount, a loop device, a process)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import docker
import psutil

from tests.harness import Proc, wait_for


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


class PrivateEngine:
    def __init__(self, tmp: Path, size_mib: int = 400) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.name = f"titus-test-{self.run_id}"
        self.image_file = tmp / "engine-disk.img"
        # Sockets live under a short path (sun_path is 108 bytes; containerd's go under exec-root),
        # and so does the mount: the remapped root must traverse every directory above its graph
        # root (o+x), which pytest's 0700 tmp_path does not allow.
        self.run_dir = Path(tempfile.mkdtemp(prefix="tde-", dir="/tmp"))
        self.run_dir.chmod(0o711)
        self.mount = self.run_dir / "disk"
        self.socket = self.run_dir / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.size_mib = size_mib
        self.proc: Proc | None = None
        self.client: docker.DockerClient | None = None
        self._log = tmp / "private-dockerd.log"

    # ---- start --------------------------------------------------------------------------------

    def start(self) -> docker.DockerClient:
        self.mount.mkdir()
        with open(self.image_file, "wb") as f:
            f.truncate(self.size_mib * 2**20)
        for argv in (["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image_file)],  # -m 0: no root reserve
                     ["mount", "-o", "loop", str(self.image_file), str(self.mount)]):
            done = _run(*argv)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        config = self.run_dir / "daemon.json"
        config.write_text(json.dumps({}))  # not /etc/docker/daemon.json: nothing of the shared engine's
        self.proc = Proc("private-dockerd", [
            "dockerd", "--config-file", str(config),
            "--data-root", str(self.mount / "docker"), "--exec-root", str(self.run_dir / "exec"),
            "--pidfile", str(self.run_dir / "dockerd.pid"), "-H", self.url,
            "--containerd-namespace", self.name, "--containerd-plugins-namespace", f"{self.name}-plugins",
            "--cgroup-parent", self.name,
            "--iptables=false", "--ip-masq=false", "--bridge=none", "--userns-remap=default",
        ], self._log)

        def answers() -> docker.DockerClient | None:
            if self.proc is not None and not self.proc.alive():
                raise AssertionError(f"the private dockerd exited {self.proc.p.returncode}:\n{self.proc.log_tail()}")
            try:  # the client asks the engine's API version as it is made
                client = docker.DockerClient(base_url=self.url, timeout=60)
                return client if client.ping() else None
            except (docker.errors.DockerException, OSError):
                return None

        self.client = self.proc.wait_for(answers, 60, "the private dockerd's socket answering")
        return self.client

    def root_dir(self) -> Path:
        assert self.client is not None
        return Path(self.client.info()["DockerRootDir"])  # <data-root>/<uid>.<gid> under userns-remap

    # ---- stop ---------------------------------------------------------------------------------

    def _ours(self) -> list[psutil.Process]:
        """This engine's processes: dockerd, its containerd and shims (named by exec root or namespace)."""
        marks = (str(self.run_dir), self.name)
        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if any(m in cmd for m in marks):
                found.append(p)
        return found

    def stop(self) -> None:
        problems: list[str] = []
        if self.client is not None:
            with contextlib.suppress(Exception):
                for c in self.client.containers.list(all=True):
                    c.remove(force=True)
            self.client.close()
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=20)  # SIGKILL after that (tests/harness.py)
        left = self._ours()
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=10)
        for cg in glob.glob(f"/sys/fs/cgroup/*/{self.name}") + glob.glob(f"/sys/fs/cgroup/{self.name}"):
            with contextlib.suppress(OSError):
                os.rmdir(cg)
        if self.mount.is_mount():
            if _run("umount", str(self.mount)).returncode != 0:
                lazy = _run("umount", "-l", str(self.mount))
                if lazy.returncode != 0:
                    problems.append(f"umount -l {self.mount}: {lazy.stderr.strip()}")
        loops = _run("losetup", "-j", str(self.image_file)).stdout.split()
        for dev in (d.rstrip(":") for d in loops if d.startswith("/dev/loop")):
            _run("losetup", "-d", dev)  # autoclear usually did it at umount
        if not self.mount.is_mount():  # never recurse into a filesystem still mounted
            shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.image_file.unlink()
        # What must not outlive the test.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self._ours(), 10, "the private engine's processes gone")
        if alive := self._ours():
            problems.append(f"processes left: {[p.pid for p in alive]}")
        if str(self.mount) in Path("/proc/mounts").read_text():
            problems.append(f"{self.mount} still mounted")
        if _run("losetup", "-j", str(self.image_file)).stdout.strip():
            problems.append(f"loop device left on {self.image_file}")
        if problems:
            raise RuntimeError("private engine teardown: " + "; ".join(problems))


def disk_used_pct(path: Path) -> float:
    """As df (and health/checks/disk.py): used / (used + available)."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return 100.0 * used / (used + st.f_bavail * st.f_frsize)

