"""A throw-away network namespace that plays a task for the metadata self-probe (the `imds` health
check, agent/host/metadata_probe.py), and one HTTP exchange from inside a namespace.

Cleanup contract: the probe namespace is never pinned; it lives only as long as the descriptor this
object holds. Closing it (or the agent dying, even by kill -9) lets the kernel destroy the namespace,
and with it its `imds0` end of the metadata veth, which deletes the peer `tm…` in the metadata
namespace too: a probe can leave no namespace and no link behind. The metadata link GC
(`MetadataNetwork.gc`) is told to keep the probe's link while a probe runs.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

from netns.errors import WiringError
from netns.nsenter import thread_in_netns
from netns.wiring import LOOPBACK_INDEX, _libc, enter_netns_fd, iproute_in

__all__ = ["PROBE_ADDRESS", "ProbeNamespace", "http_exchange"]

CLONE_NEWNET = 0x40000000
# The probe's "task address": link-local, never a VPC address, so never a real task's in the
# metadata namespace; local on the probe namespace's lo (the metadata routes' `src`).
PROBE_ADDRESS = "169.254.100.2"


class ProbeNamespace:
    """`with ProbeNamespace() as path:` a fresh network namespace with lo up and PROBE_ADDRESS/32 on
    it; `path` (/proc/<pid>/fd/<n>) opens it for setns and netlink while the block runs."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def __enter__(self) -> str:
        fds: list[int] = []
        errors: list[BaseException] = []

        def run() -> None:
            # A dedicated thread: unshare() changes only this thread's namespace; it goes back before ending.
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                if _libc.unshare(CLONE_NEWNET) != 0:
                    raise OSError(os.strerror(_errno()))
                try:
                    fds.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY))
                finally:
                    enter_netns_fd(own)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                errors.append(e)
            finally:
                os.close(own)

        t = threading.Thread(target=run, name="titus-probe-netns")
        t.start()
        t.join()
        if errors or not fds:
            raise WiringError(f"creating the probe namespace: {errors[0] if errors else 'no descriptor'}")
        self._fd = fds[0]
        path = self.path
        try:
            with iproute_in(path) as ipr:
                ipr.link("set", index=LOOPBACK_INDEX, state="up")
                ipr.addr("add", index=LOOPBACK_INDEX, address=PROBE_ADDRESS, prefixlen=32)
        except BaseException:
            self.close()
            raise
        return path

    @property
    def path(self) -> str:
        if self._fd is None:
            raise WiringError("the probe namespace is closed")
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def _errno() -> int:
    return ctypes.get_errno()


def http_exchange(netns_path: str, address: str, port: int, request: bytes, timeout: float) -> tuple[int, bytes]:
    """Send one HTTP/1.0 request from a socket inside `netns_path`; (status, body). Raises OSError
    (refused, timed out) or WiringError (no namespace, not HTTP)."""
    with thread_in_netns(netns_path):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # stays in that namespace
    with sock:
        sock.settimeout(timeout)
        sock.connect((address, port))
        sock.sendall(request)
        data = b""
        while len(data) < 65536 and (chunk := sock.recv(4096)):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise WiringError(f"not an HTTP answer: {head[:80]!r}")
    return int(parts[1]), body
