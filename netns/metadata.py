"""Datapath of the per-container EC2 metadata proxy (IMDS 169.254.169.254:80, ECS 169.254.170.2:80).

The proxy must know which task is calling without trusting anything the caller says, so the caller
is identified structurally, by the link its SYN arrives on:

    container netns                              metadata netns (one per agent, pinned)
     imds0 ───────────────── veth ──────────────── tm<sha256(task)[:10]>
     169.254.169.254/32 dev imds0 src <task ip>     lo: 169.254.169.254/32, 169.254.170.2/32
     169.254.170.2/32   dev imds0 src <task ip>     <task ip>/32 dev tm…
     neigh 169.254.169.254, 169.254.170.2           neigh <task ip> -> imds0's MAC (permanent)
           -> tm…'s MAC (permanent)                 listeners on 169.254.169.254:80 and
                                                    169.254.170.2:80, SO_BINDTODEVICE=tm…

Why this shape:
- No port is taken inside the container's namespace: a listener on 169.254.169.254:80 there would make
  the task's own `bind(0.0.0.0:80)` fail with EADDRINUSE. The metadata addresses are local only in the
  metadata namespace; the container only has routes to them.
- 169.254.169.254 is never a local address of the host's namespace: on EC2 the host itself needs the
  real IMDS. Nothing here touches the host's namespace at all.
- Linux allows many TCP listeners on one addr:port when each is bound to a different device, and a
  SYN that arrives on tm_A only matches the socket bound to tm_A: the socket a connection is accepted
  on names the task. A packet with a spoofed source still arrives on the sender's own link (and strict
  rp_filter in the metadata namespace drops it).
- IPv4 forwarding is switched off explicitly in the metadata namespace, so containers cannot reach
  each other through it. It is NOT off by default: a new namespace inherits net.ipv4.ip_forward (and
  conf/all, conf/default) from the initial namespace (`net.core.devconf_inherit_init_net` = 0), and
  Docker hosts run with ip_forward=1.
- The veth is created by one RTM_NEWLINK whose peer already carries the container's net_ns_fd (as in
  wiring.py: moving a device between namespaces costs an RCU barrier under rtnl_lock).

Contracts: every function is blocking netlink (run it in a thread from async code), idempotent, and
safe after a partial run of itself or of its counterpart. `attach` must run after the task's data
path (wiring.Wiring.setup): the routes' `src` must be a local address of the container. The listening
sockets belong to the caller; they keep the metadata namespace alive until closed. Only links named
`tm…` in the metadata namespace are ever deleted.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import ipaddress
import os
import socket
import threading
from pathlib import Path
from typing import Any

from netns.rtnl import IPRoute, NetlinkError

from netns.errors import WiringError
from netns.wiring import (
    HOST_IF_PREFIX,
    LOOPBACK_INDEX,
    MS_BIND,
    NETNS_DIR,
    NETNS_PREFIX,
    RT_PROTO_TITUS,
    RT_SCOPE_LINK,
    _libc,
    _link_index,
    enter_netns_fd,
    iproute_in,
    unpin_netns_path,
)

IMDS_ADDRESS = "169.254.169.254"
ECS_ADDRESS = "169.254.170.2"
METADATA_ADDRESSES = (IMDS_ADDRESS, ECS_ADDRESS)
PROXY_PORT = 80
LISTEN_BACKLOG = 512
META_IF_PREFIX = "tm"  # must differ from the data links' prefix (wiring.HOST_IF_PREFIX, "tn")
CONTAINER_IFNAME = "imds0"
# Not under NETNS_PREFIX: the task-namespace GC (wiring.gc) must never match the shared one.
METADATA_NETNS_PREFIX = "titusmd-"
RECORD_VERSION = 1
NUD_PERMANENT = 0x80
CLONE_NEWNET = 0x40000000
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

# Inside the metadata namespace. rp_filter 1 = strict: a source must be routed back out of the link
# it came in on (conf/all and the device's value: the maximum applies).
_METADATA_SYSCTLS = (
    ("net/ipv4/ip_forward", "0"),
    ("net/ipv4/conf/all/forwarding", "0"),
    ("net/ipv4/conf/default/forwarding", "0"),
    ("net/ipv4/conf/all/rp_filter", "1"),
    ("net/ipv4/conf/default/rp_filter", "1"),
)

assert META_IF_PREFIX != HOST_IF_PREFIX


def _digest(label: str, value: str) -> bytes:
    return hashlib.sha256(label.encode() + value.encode()).digest()


def meta_ifname(task_id: str) -> str:
    """The metadata-namespace end of a task's veth: `tm` + 10 hex of sha256(task) (<= 15 bytes)."""
    return META_IF_PREFIX + hashlib.sha256(task_id.encode()).hexdigest()[:10]


def _mac(label: str, task_id: str) -> str:
    digest = _digest(label, task_id)
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))  # locally administered unicast


def meta_mac(task_id: str) -> str:
    """MAC of the `tm…` end (the container's static neighbour for the metadata addresses)."""
    return _mac("imds-meta:", task_id)


def container_mac(task_id: str) -> str:
    """MAC of the container's `imds0` (the metadata namespace's static neighbour for the task ip)."""
    return _mac("imds-task:", task_id)


def metadata_netns_name(owner: str) -> str:
    return METADATA_NETNS_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:10]


def _ignore(codes: tuple[int, ...], fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in codes:
            raise


class MetadataNetwork:
    """The metadata namespace of one agent (`owner` = node id) and the per-task links into it.

    `netns_dir` is where the namespace is pinned (tests pass a temporary directory)."""

    def __init__(self, owner: str, netns_dir: Path = NETNS_DIR) -> None:
        self.owner = owner
        self.path = netns_dir / metadata_netns_name(owner)
        self._lock = threading.Lock()
        self._configured = False

    # ---- the shared namespace ---------------------------------------------------------------------

    def pinned(self) -> bool:
        return self.path.exists() and os.path.ismount(self.path)

    def ensure(self) -> str:
        """Create (or adopt, if already pinned) and configure the metadata namespace; returns its path.
        Idempotent; cheap after the first call of this object (one stat)."""
        with self._lock:
            if self._configured and self.pinned():
                return str(self.path)
            if not self.pinned():
                self._create()
            self._configure()
            self._configured = True
            return str(self.path)

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o444, exist_ok=True)
        errors: list[BaseException] = []

        def run() -> None:
            # A dedicated, short-lived thread: unshare() changes only this thread's namespace, and the
            # thread ends right after the bind mount, so no other code ever runs in the new namespace.
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                if _libc.unshare(CLONE_NEWNET) != 0:
                    err = _errno()
                    raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
                try:
                    source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
                    if _libc.mount(source, str(self.path).encode(), None, MS_BIND, None) != 0:
                        err = _errno()
                        raise OSError(err, f"pinning the metadata namespace: {os.strerror(err)}")
                finally:
                    enter_netns_fd(own)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                errors.append(e)
            finally:
                os.close(own)

        thread = threading.Thread(target=run, name="titus-imds-netns")
        thread.start()
        thread.join()
        if errors:
            if not os.path.ismount(self.path):
                self.path.unlink(missing_ok=True)
            raise WiringError(f"creating metadata namespace {self.path}: {errors[0]}")

    def _configure(self) -> None:
        self._sysctls()
        with iproute_in(str(self.path)) as ipr:
            ipr.link("set", index=LOOPBACK_INDEX, state="up")
            for address in METADATA_ADDRESSES:
                _ignore((errno.EEXIST,), ipr.addr, "add", index=LOOPBACK_INDEX, address=address,
                        prefixlen=32)

    def _sysctls(self) -> None:
        # /proc/sys/net resolves against the opening thread's namespace: write from a thread that
        # setns'd into the metadata namespace.
        errors: list[BaseException] = []

        def run() -> None:
            try:
                target = os.open(self.path, os.O_RDONLY)
                try:
                    enter_netns_fd(target)  # this thread only; it ends right after
                finally:
                    os.close(target)
                for key, value in _METADATA_SYSCTLS:
                    with open(f"/proc/sys/{key}", "w") as f:
                        f.write(value)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                errors.append(e)

        thread = threading.Thread(target=run, name="titus-imds-sysctl")
        thread.start()
        thread.join()
        if errors:
            raise WiringError(f"configuring metadata namespace {self.path}: {errors[0]}")

    def remove_namespace(self) -> None:
        """Delete every `tm…` link and unpin the namespace (tests; an agent leaving the host for good).
        Open listening sockets keep the (then empty) namespace alive until they are closed."""
        with self._lock:
            if self.pinned():
                with iproute_in(str(self.path)) as ipr:
                    for link in ipr.link("dump"):
                        if (link.get("IFLA_IFNAME") or "").startswith(META_IF_PREFIX):
                            _ignore((errno.ENODEV,), ipr.link, "del", index=link["index"])
            if self.path.exists():
                unpin_netns_path(self.path, METADATA_NETNS_PREFIX)
            self._configured = False

    def close(self) -> None:
        """Nothing to release: no descriptor is held between calls (the sockets are the caller's)."""
        self._configured = False

    # ---- per task ---------------------------------------------------------------------------------

    def attach(self, task_id: str, container_netns_path: str, task_ipv4: str, *,
               replace_stale_peer: bool = False) -> dict[str, Any]:
        """Link the task's namespace to the metadata namespace; returns the record to checkpoint.

        Idempotent (a re-run after a restart finds `tm…` by name and re-applies the rest); a `tm…`
        whose peer is not in `container_netns_path` (the task got a new namespace) is replaced, and
        then the record's `meta_ifindex` changes: SO_BINDTODEVICE holds an ifindex, so listeners opened
        for the old link no longer match and must be re-opened.
        An `imds0` in the container without its `tm…` here (the metadata namespace was replaced: its
        peer is in the old one) is refused, or deleted and re-made with `replace_stale_peer`.
        Raises WiringError; a failure can leave a `tm…` link behind: `detach` removes it."""
        address = str(ipaddress.IPv4Address(task_ipv4))
        name = meta_ifname(task_id)
        record: dict[str, Any] = {
            "version": RECORD_VERSION,
            "meta_ifname": name,
            "container_ifname": CONTAINER_IFNAME,
            "address": address,
            "netns_path": container_netns_path,
            "metadata_netns": str(self.path),
        }
        meta_path = self.ensure()
        try:
            with iproute_in(meta_path) as meta, iproute_in(container_netns_path) as inner:
                index = _link_index(meta, name)
                peer = _link_index(inner, CONTAINER_IFNAME)
                if index is not None and peer is None:
                    # Left from an earlier namespace of this task: its peer is elsewhere (or gone).
                    _ignore((errno.ENODEV,), meta.link, "del", index=index)
                    index = None
                if index is None and peer is not None and replace_stale_peer:
                    _ignore((errno.ENODEV,), inner.link, "del", index=peer)  # takes its old tm… with it
                    peer = None
                if index is None:
                    if peer is not None:
                        raise WiringError(
                            f"{CONTAINER_IFNAME} already exists in {container_netns_path} but {name} is "
                            f"not in the metadata namespace {meta_path}"
                        )
                    self._create_veth(meta, name, task_id, container_netns_path)
                    index = _link_index(meta, name)
                    peer = _link_index(inner, CONTAINER_IFNAME)
                    if index is None or peer is None:
                        raise WiringError(f"veth {name}/{CONTAINER_IFNAME} vanished right after creation")
                record["meta_ifindex"] = index  # changes when the link is re-created: re-open listeners
                meta.link("set", index=index, state="up")
                meta.route("replace", dst=f"{address}/32", oif=index, scope=RT_SCOPE_LINK,
                           proto=RT_PROTO_TITUS)
                meta.neigh("replace", dst=address, lladdr=container_mac(task_id), ifindex=index,
                           state=NUD_PERMANENT)
                inner.link("set", index=peer, state="up")
                for dst in METADATA_ADDRESSES:
                    # `src` must be local in the container: EINVAL before the data path is wired.
                    inner.route("replace", dst=f"{dst}/32", oif=peer, scope=RT_SCOPE_LINK,
                                prefsrc=address, proto=RT_PROTO_TITUS)
                    inner.neigh("replace", dst=dst, lladdr=meta_mac(task_id), ifindex=peer,
                                state=NUD_PERMANENT)
        except NetlinkError as e:
            raise WiringError(f"attaching task {task_id} to the metadata proxy: {e}") from None
        return record

    def _create_veth(self, meta: IPRoute, name: str, task_id: str, container_netns_path: str) -> None:
        try:
            target = os.open(container_netns_path, os.O_RDONLY)
        except OSError as e:
            raise WiringError(f"container namespace {container_netns_path} not available: {e}") from None
        try:
            meta.link(
                "add",
                ifname=name,
                kind="veth",
                address=meta_mac(task_id),
                peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": target, "address": container_mac(task_id)},
            )
        except NetlinkError as e:
            raise WiringError(f"creating veth {name}/{CONTAINER_IFNAME}: {e}") from None
        finally:
            os.close(target)

    def listeners(self, task_id: str, ecs: bool = True) -> tuple[list[socket.socket], list[socket.socket]]:
        """Listening sockets for one task: (IMDS sockets, ECS sockets; none without `ecs`),
        non-blocking, each bound to <address>:80 in the metadata namespace and to the task's `tm…`
        device. Call again after a restart (the veth survives the process, the sockets do not); the
        caller closes them."""
        name = meta_ifname(task_id)
        path = self.ensure()
        groups: tuple[list[socket.socket], list[socket.socket]] = ([], [])
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                target = os.open(path, os.O_RDONLY)
                try:
                    enter_netns_fd(target)
                    try:  # a socket stays in the namespace it was created in
                        for group in groups[: 2 if ecs else 1]:
                            group.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    finally:
                        enter_netns_fd(own)  # if this fails the thread is in the wrong namespace
                finally:
                    os.close(target)
            finally:
                os.close(own)
            for group, address in zip(groups, METADATA_ADDRESSES):
                for sock in group:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, name.encode())
                    except OSError as e:
                        if e.errno == errno.ENODEV:
                            raise WiringError(f"task {task_id} is not attached ({name} missing)") from None
                        raise
                    sock.bind((address, PROXY_PORT))
                    sock.listen(LISTEN_BACKLOG)
                    sock.setblocking(False)
        except BaseException as e:
            for group in groups:
                for sock in group:
                    sock.close()
            if isinstance(e, OSError):
                raise WiringError(f"metadata listeners for task {task_id}: {e}") from None
            raise
        return groups

    def detach(self, task_id: str, record: dict[str, Any] | None = None) -> None:
        """Remove the task's veth (both ends, with their routes and neighbours). Idempotent, safe after
        a partial attach and when the container's namespace is already gone. Refuses any name that
        is not the task's `tm…`."""
        name = (record or {}).get("meta_ifname") or meta_ifname(task_id)
        if name != meta_ifname(task_id):
            raise WiringError(f"refusing to detach {name!r}: not task {task_id}'s metadata link")
        if not self.pinned():
            return  # no metadata namespace: nothing of ours can exist
        with iproute_in(str(self.path)) as meta:
            index = _link_index(meta, name)
            if index is not None:
                _ignore((errno.ENODEV,), meta.link, "del", index=index)

    def links(self) -> list[str]:
        """Names of the `tm…` links in the metadata namespace."""
        if not self.pinned():
            return []
        with iproute_in(str(self.path)) as meta:
            names = [str(link.get("IFLA_IFNAME") or "") for link in meta.link("dump")]
        return sorted(n for n in names if n.startswith(META_IF_PREFIX))

    def gc(self, keep_tasks: set[str]) -> list[str]:
        """Delete `tm…` links of tasks not in `keep_tasks`; returns their names. Only `tm…` links in
        this agent's metadata namespace are looked at; a missing namespace is not created."""
        if not self.pinned():
            return []
        keep = {meta_ifname(t) for t in keep_tasks}
        removed: list[str] = []
        with iproute_in(str(self.path)) as meta:
            for link in meta.link("dump"):
                ifname = link.get("IFLA_IFNAME") or ""
                if ifname.startswith(META_IF_PREFIX) and ifname not in keep:
                    _ignore((errno.ENODEV,), meta.link, "del", index=link["index"])
                    removed.append(ifname)
        return sorted(removed)


def _errno() -> int:
    return ctypes.get_errno()
