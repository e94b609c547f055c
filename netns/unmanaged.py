"""Keep the OS's network managers off the container ENIs the agent owns.

systemd-networkd (and Amazon Linux's ec2-net-utils, which configures hot-plugged ENIs through
networkd `.network` files of its own) would DHCP a new ENI, add its secondary IPs as host aliases and
rewrite routing tables. Per ENI the agent writes a runtime `.network` file matching the ENI's MAC
with `Unmanaged=yes`, named to sort before the distribution's files (networkd applies the first file
that matches), and removes it when the ENI goes. `/run` is cleared at boot, as the ENIs' state is.
Blocking file I/O (plus `networkctl reload` when networkd runs): call from a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["PREFIX", "mark_unmanaged", "unmark"]

PREFIX = "05-titus-eni-"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _path(directory: Path, mac: str) -> Path:
    mac = mac.lower()
    if not _MAC.match(mac):
        raise ValueError(f"not a MAC address: {mac!r}")
    return directory / f"{PREFIX}{mac.replace(':', '')}.network"


def _reload() -> None:
    networkctl = shutil.which("networkctl")
    if networkctl is not None and Path("/run/systemd/netif").exists():
        subprocess.run([networkctl, "reload"], capture_output=True, timeout=10)


def mark_unmanaged(directory: Path, mac: str, eni_id: str) -> bool:
    """Write the ENI's file; True if it was missing (so a reload was needed)."""
    path = _path(directory, mac)
    text = (f"# titus-agent: container ENI {eni_id}; the agent owns this link (docs/ec2-host.md)\n"
            f"[Match]\nMACAddress={mac.lower()}\n\n[Link]\nUnmanaged=yes\n")
    if path.exists() and path.read_text() == text:
        return False
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    _reload()
    return True


def unmark(directory: Path, mac: str) -> None:
    try:
        _path(directory, mac).unlink()
    except FileNotFoundError:
        return
    _reload()
