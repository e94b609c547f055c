"""Network namespaces prepared before the task's container exists (docs/launch-netns.md).

The agent creates a task's namespace itself and pins it at `<dir>/titus-<hash>`; the container then
joins it through the `titus` OCI runtime (scripts/titus-runc), so no second container holds it.

With the engine's user-namespace remapping on, the network namespace must be owned by a user
namespace with the engine's mapping, which the container joins too (as a container joining a sandbox
does): otherwise the kernel refuses the container's sysfs mount and the container's root has no say
over its own namespace. The user namespace is pinned next to it, at `<path>.user`.

Creating them costs one short-lived `unshare` child (no fork of the agent itself): it unshares, says
so on stdout, the agent writes its id maps and bind-mounts both namespaces, then the child exits.
All functions block: call them from a thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from netns.errors import WiringError

__all__ = ["NETNS_ROOT", "IdMap", "collect", "engine_id_map", "is_prepared", "prepare", "remove", "userns_path"]

NETNS_ROOT = Path("/run/titus/netns")  # scripts/titus-runc accepts namespaces under this root only
USERNS_SUFFIX = ".user"
MS_BIND = 4096
MNT_DETACH = 2
_NAME = re.compile(r"^titus-[0-9a-f]{16}$")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class IdMap:
    """uid_map / gid_map contents ("inside outside count" lines) of the engine's remapping."""

    uid: str
    gid: str


def engine_id_map(user: str = "dockremap", subuid: Path = Path("/etc/subuid"),
                  subgid: Path = Path("/etc/subgid")) -> IdMap:
    """The mapping dockerd's `--userns-remap=default` gives containers: the user's subordinate ranges,
    in file order, mapped from 0 upwards (as the engine does)."""

    def ranges(path: Path) -> str:
        lines, inside = [], 0
        try:
            text = path.read_text()
        except OSError as e:
            raise WiringError(f"cannot read {path}: {e}") from None
        for line in text.splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[0] == user and parts[1].isdigit() and parts[2].isdigit():
                lines.append(f"{inside} {parts[1]} {parts[2]}")
                inside += int(parts[2])
        if not lines:
            raise WiringError(f"{path} has no range for {user}: cannot mirror the engine's user namespaces")
        return "\n".join(lines) + "\n"

    return IdMap(ranges(subuid), ranges(subgid))


def userns_path(path: Path) -> Path:
    return path.with_name(path.name + USERNS_SUFFIX)


def is_prepared(path: Path) -> bool:
    return os.path.ismount(path)


def _bind(source: str, target: Path) -> None:
    target.touch(mode=0o444, exist_ok=True)
    if _libc.mount(source.encode(), str(target).encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise WiringError(f"pinning {source} at {target}: {os.strerror(err)}")


def _unpin(target: Path) -> None:
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
            raise WiringError(f"unpinning {target}: {os.strerror(err)}")
    target.unlink(missing_ok=True)


def prepare(path: Path, ids: IdMap | None) -> None:
    """Create and pin the namespace at `path` (and its user namespace when `ids`). Idempotent: a
    pinned namespace is kept as it is (a restart mid-launch re-runs this)."""
    if not _NAME.match(path.name):
        raise WiringError(f"refusing to prepare {path}: not a titus namespace name")
    if is_prepared(path) and (ids is None or is_prepared(userns_path(path))):
        return
    _unpin(path)  # half-made before a crash: start again
    _unpin(userns_path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = ["--user", "--net"] if ids is not None else ["--net"]
    child = subprocess.Popen(
        ["unshare", *flags, "--", "sh", "-c", "echo ready && exec cat"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        if child.stdout.readline().strip() != b"ready":
            child.wait(10)
            raise WiringError(f"unshare failed: {child.stderr.read().decode(errors='replace').strip()}")
        proc = Path(f"/proc/{child.pid}")
        if ids is not None:
            (proc / "uid_map").write_text(ids.uid)
            (proc / "gid_map").write_text(ids.gid)
            _bind(str(proc / "ns" / "user"), userns_path(path))
        _bind(str(proc / "ns" / "net"), path)
    except OSError as e:
        _unpin(path)
        _unpin(userns_path(path))
        raise WiringError(f"preparing the network namespace {path}: {e}") from None
    except WiringError:
        _unpin(path)
        _unpin(userns_path(path))
        raise
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()
        child.stderr.close()


def remove(path: Path) -> None:
    """Unpin both namespaces (a container still running keeps its own reference). Idempotent."""
    if not _NAME.match(path.name):
        raise WiringError(f"refusing to remove {path}: not a titus namespace name")
    _unpin(path)
    _unpin(userns_path(path))


def collect(directory: Path, keep: set[str]) -> list[str]:
    """Unpin every prepared namespace in `directory` whose name is not in `keep`; returns the names."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for entry in sorted(directory.iterdir()):
        name = entry.name.removesuffix(USERNS_SUFFIX)
        if _NAME.match(name) and name not in keep:
            _unpin(entry)
            if name not in removed:
                removed.append(name)
    return removed
