"""The metadata proxy's datapath (netns/metadata.py), checked against the kernel: each container
reaches exactly its own task's listener on 169.254.169.254:80 / 169.254.170.2:80, keeps port 80 of
its own namespace, cannot reach another container through the metadata namespace, and the host gets
neither the address nor a link. Containers are plain namespaces with the task address on lo."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from netns.errors import WiringError
from netns.metadata import (
    CONTAINER_IFNAME,
    ECS_ADDRESS,
    IMDS_ADDRESS,
    MetadataNetwork,
    meta_ifname,
)
from tests.netns.world import World, can_connect, listen, sh, socket_in

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def world() -> Iterator[World]:
    w = World(prefix=f"tmd{os.getpid() % 10000}-")
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetadataNetwork]:
    m = MetadataNetwork(f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}", tmp_path / "netns")
    try:
        yield m
    finally:
        m.remove_namespace()


def container(world: World, name: str, address: str) -> str:
    """A namespace playing a wired container: the task address is local (on lo)."""
    path = world.container(name)
    sh("ip", "-n", f"{world.prefix}c{name}", "addr", "add", f"{address}/32", "dev", "lo")
    return path


def in_ns(path: str, *args: str) -> str:
    done = subprocess.run(["nsenter", f"--net={path}", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{args}: {done.stderr.strip()}")
    return done.stdout


def link_names(path: str) -> list[str]:
    out = in_ns(path, "ip", "-o", "link", "show")
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


class EchoServer:
    """Serves the proxy's listening sockets: every answer is `<task id> <peer ip>`."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def serve(self, task_id: str, groups: tuple[list[socket.socket], list[socket.socket]]) -> None:
        for sock in (*groups[0], *groups[1]):
            self.sockets.append(sock)
            self.selector.register(sock, selectors.EVENT_READ, task_id)
        self.wake_w.send(b"x")

    def forget(self, groups: tuple[list[socket.socket], list[socket.socket]]) -> None:
        for sock in (*groups[0], *groups[1]):
            self.selector.unregister(sock)
            self.sockets.remove(sock)
            sock.close()

    def _run(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    if self.wake_r.recv(64) == b"":
                        return
                    continue
                try:
                    conn, (peer, _) = key.fileobj.accept()  # type: ignore[union-attr]
                except (BlockingIOError, OSError):
                    continue
                with conn:
                    conn.setblocking(True)
                    conn.settimeout(2)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    body = f"{key.data} {peer}".encode()
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.wake_w.close()
        self.thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()
        self.wake_r.close()
        self.selector.close()


@pytest.fixture
def server() -> Iterator[EchoServer]:
    s = EchoServer()
    try:
        yield s
    finally:
        s.close()


def ask(netns_path: str, address: str = IMDS_ADDRESS, port: int = 80) -> str:
    """An HTTP GET from inside `netns_path`; returns the body."""
    s = socket_in(netns_path)
    s.settimeout(3)
    try:
        s.connect((address, port))
        s.sendall(f"GET /latest/meta-data/ HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), data
    return body.decode()


def test_each_container_reaches_its_own_listener_only(
    world: World, meta: MetadataNetwork, server: EchoServer
) -> None:
    a = container(world, "a", "10.40.0.1")
    b = container(world, "b", "10.40.0.2")
    meta.attach("task-a", a, "10.40.0.1")
    meta.attach("task-b", b, "10.40.0.2")
    server.serve("task-a", meta.listeners("task-a"))
    b_sockets = meta.listeners("task-b")
    server.serve("task-b", b_sockets)
    for address in (IMDS_ADDRESS, ECS_ADDRESS):
        assert ask(a, address) == "task-a 10.40.0.1"
        assert ask(b, address) == "task-b 10.40.0.2"

    def hammer(i: int) -> tuple[str, str]:
        ns, expected = (a, "task-a 10.40.0.1") if i % 2 else (b, "task-b 10.40.0.2")
        return ask(ns, IMDS_ADDRESS if i % 3 else ECS_ADDRESS), expected

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(hammer, range(200)))
    assert all(got == expected for got, expected in results)

    # B without listeners: its SYN matches no socket (A's is bound to A's link): refused, not A's answer.
    server.forget(b_sockets)
    with pytest.raises(ConnectionRefusedError):
        ask(b)
    assert ask(a) == "task-a 10.40.0.1"
    # A namespace that is not attached has no path at all.
    c = container(world, "c", "10.40.0.3")
    assert not can_connect(c, IMDS_ADDRESS, 80)


def test_task_keeps_its_own_port_80(world: World, meta: MetadataNetwork, server: EchoServer) -> None:
    a = container(world, "a", "10.40.0.1")
    meta.attach("task-a", a, "10.40.0.1")
    server.serve("task-a", meta.listeners("task-a"))
    own = [listen(a, "0.0.0.0", 80), listen(a, "0.0.0.0", 8080)]  # the task's web server
    try:
        assert can_connect(a, "127.0.0.1", 80) and can_connect(a, "10.40.0.1", 8080)
        assert ask(a) == "task-a 10.40.0.1"  # 169.254.169.254 is routed, not local: the proxy answers
        assert ask(a, ECS_ADDRESS) == "task-a 10.40.0.1"
        local = in_ns(a, "ip", "-4", "-o", "addr", "show")
        assert IMDS_ADDRESS not in local and ECS_ADDRESS not in local
    finally:
        for sock in own:
            sock.close()


def test_host_gets_no_metadata_address_nor_link(world: World, meta: MetadataNetwork) -> None:
    a = container(world, "a", "10.40.0.1")
    host_like = f"/var/run/netns/{world.add_ns(world.prefix + 'host')}"
    record = meta.attach("task-a", a, "10.40.0.1")
    with_listeners = meta.listeners("task-a")
    try:
        for ns in (f"/proc/{os.getpid()}/ns/net", host_like):  # this process's = the host
            addresses = in_ns(ns, "ip", "-4", "-o", "addr", "show")
            assert IMDS_ADDRESS not in addresses and ECS_ADDRESS not in addresses
            route = subprocess.run(["nsenter", f"--net={ns}", "ip", "route", "get", IMDS_ADDRESS],
                                   capture_output=True, text=True, timeout=20)
            assert not route.stdout.startswith("local")  # unreachable, or via a gateway: not ours
            assert record["meta_ifname"] not in link_names(ns)
            assert not [n for n in link_names(ns) if n == CONTAINER_IFNAME]
        assert not Path(f"/var/run/netns/{meta.path.name}").exists()  # pinned where asked only
        assert link_names(str(meta.path)).count(record["meta_ifname"]) == 1
        # The metadata namespace: forwarding off although a new namespace inherits the host's
        # ip_forward (1 on a Docker host), strict reverse-path filter, addresses on lo.
        assert in_ns(str(meta.path), "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"
        assert in_ns(str(meta.path), "cat", "/proc/sys/net/ipv4/conf/all/rp_filter").strip() == "1"
        lo = in_ns(str(meta.path), "ip", "-4", "-o", "addr", "show", "dev", "lo")
        assert f"{IMDS_ADDRESS}/32" in lo and f"{ECS_ADDRESS}/32" in lo
    finally:
        for sock in (*with_listeners[0], *with_listeners[1]):
            sock.close()


def test_containers_cannot_reach_each_other_through_the_metadata_namespace(
    world: World, meta: MetadataNetwork
) -> None:
    a = container(world, "a", "10.40.0.1")
    b = container(world, "b", "10.40.0.2")
    meta.attach("task-a", a, "10.40.0.1")
    meta.attach("task-b", b, "10.40.0.2")
    # Both tasks route each other's address via the metadata namespace (what a task with NET_ADMIN
    # could do to its own routing table).
    sh("ip", "-n", f"{world.prefix}ca", "route", "add", "10.40.0.2/32", "via", IMDS_ADDRESS, "dev", "imds0")
    sh("ip", "-n", f"{world.prefix}cb", "route", "add", "10.40.0.1/32", "via", IMDS_ADDRESS, "dev", "imds0")
    service = listen(b, "0.0.0.0", 9000)
    try:
        assert not can_connect(a, "10.40.0.2", 9000)
        # Control: the same path with forwarding on does connect, so the check above is meaningful.
        in_ns(str(meta.path), "sysctl", "-qw", "net.ipv4.ip_forward=1")
        try:
            assert can_connect(a, "10.40.0.2", 9000, timeout=2)
        finally:
            in_ns(str(meta.path), "sysctl", "-qw", "net.ipv4.ip_forward=0")
        assert not can_connect(a, "10.40.0.2", 9000)
        # A source spoofed as B's address, sent on A's link, gets no answer (strict rp_filter drops
        # it in the metadata namespace; without it the SYN-ACK would go to B, which resets).
        spoof = socket_in(a)
        try:
            sh("ip", "-n", f"{world.prefix}ca", "addr", "add", "10.40.0.2/32", "dev", "lo")
            spoof.settimeout(0.5)
            spoof.bind(("10.40.0.2", 0))
            with pytest.raises(OSError):
                spoof.connect((IMDS_ADDRESS, 80))
        finally:
            spoof.close()
    finally:
        service.close()


def test_detach_and_gc_remove_only_what_they_should(world: World, meta: MetadataNetwork) -> None:
    keep = container(world, "keep", "10.40.0.1")
    leak = container(world, "leak", "10.40.0.2")
    gone = container(world, "gone", "10.40.0.3")
    meta.attach("keep", keep, "10.40.0.1")
    meta.attach("leak", leak, "10.40.0.2")
    record = meta.attach("gone", gone, "10.40.0.3")
    meta_ns = str(meta.path)
    in_ns(meta_ns, "ip", "link", "add", "vethfx", "type", "veth", "peer", "name", "vethfy")

    meta.detach("gone", record)
    meta.detach("gone", record)  # repeated
    assert meta_ifname("gone") not in link_names(meta_ns)
    assert CONTAINER_IFNAME not in link_names(gone)
    assert "169.254" not in in_ns(gone, "ip", "route", "show")
    with pytest.raises(WiringError):
        meta.detach("keep", {"meta_ifname": "vethfx"})  # never a link that is not the task's

    assert meta.gc({"keep"}) == [meta_ifname("leak")]
    assert meta.gc({"keep"}) == []
    remaining = link_names(meta_ns)
    assert meta_ifname("keep") in remaining and "vethfx" in remaining and "vethfy" in remaining
    assert CONTAINER_IFNAME not in link_names(leak) and CONTAINER_IFNAME in link_names(keep)
    assert meta.links() == [meta_ifname("keep")]

    # Partial attach: the veth is made, then the container refuses the routes (the task address is
    # not local there yet). detach cleans up.
    partial = container(world, "part", "10.40.0.4")
    with pytest.raises(WiringError):
        meta.attach("part", partial, "10.40.9.9")
    meta.detach("part", None)
    assert meta_ifname("part") not in link_names(meta_ns) and CONTAINER_IFNAME not in link_names(partial)

    # A container whose namespace is deleted takes its veth with it; detach after that is a no-op.
    world.namespaces.remove(f"{world.prefix}cleak")
    sh("ip", "netns", "del", f"{world.prefix}cleak")
    meta.detach("leak", None)
    # An agent whose metadata namespace was never created: gc/detach create nothing.
    other = MetadataNetwork(meta.owner + "-other", meta.path.parent)
    assert other.gc(set()) == [] and not other.pinned()
    other.detach("keep")
    assert not other.pinned()


def test_attach_is_idempotent_and_survives_a_restart(
    world: World, meta: MetadataNetwork, server: EchoServer
) -> None:
    a = container(world, "a", "10.40.0.1")
    record = meta.attach("task-a", a, "10.40.0.1")
    assert meta.attach("task-a", a, "10.40.0.1") == record
    assert link_names(str(meta.path)).count(record["meta_ifname"]) == 1
    assert link_names(a).count(CONTAINER_IFNAME) == 1
    first = meta.listeners("task-a")
    server.serve("task-a", first)
    assert ask(a) == "task-a 10.40.0.1"
    server.forget(first)
    inode = os.stat(meta.path).st_ino

    # Restart: a new object over the same pin adopts the namespace; the veth survived, the sockets
    # did not.
    again = MetadataNetwork(meta.owner, meta.path.parent)
    assert again.attach("task-a", a, "10.40.0.1") == record
    assert os.stat(meta.path).st_ino == inode
    second = again.listeners("task-a")
    server.serve("task-a", second)
    assert ask(a) == "task-a 10.40.0.1"
    with pytest.raises(WiringError):  # two sockets on one device, same addr:port: refused
        again.listeners("task-a")
    with pytest.raises(WiringError):
        again.listeners("never-attached")

    # The task got a new namespace (sandbox re-created): the stale link is replaced.
    a2 = container(world, "a2", "10.40.0.1")
    moved = again.attach("task-a", a2, "10.40.0.1")
    assert moved["netns_path"] == a2 and moved["meta_ifindex"] != record["meta_ifindex"]
    assert CONTAINER_IFNAME in link_names(a2) and CONTAINER_IFNAME not in link_names(a)
    # SO_BINDTODEVICE holds an ifindex, not a name: the old sockets do not match the new link.
    with pytest.raises(ConnectionRefusedError):
        ask(a2)
    server.forget(second)
    server.serve("task-a", again.listeners("task-a"))
    assert ask(a2) == "task-a 10.40.0.1"
