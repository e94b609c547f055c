"""The parts of pyroute2 titus uses (rtnetlink: `IPRoute`, its errors and marshal), imported without
pyroute2's package `__init__`.

pyroute2's `__init__` imports every family it supports (NDB, IPDB, wireguard, nl80211, ipvs, plan9,
…): about 10 MB of RSS in a daemon that needs only rtnetlink. Importing a submodule runs its
package's `__init__` first, so this module registers the package without running it; the
submodules then import as usual. The registered package keeps the full API: the first attribute it
does not have (`from pyroute2 import NDB` anywhere in the process) runs the real `__init__` then,
in place, so nothing else can tell the difference. Measured (docs/footprint.md): rtnetlink alone
costs 4.7 MB of RSS, the whole package 9.9 MB.

Everything in titus that talks netlink imports `IPRoute` and `NetlinkError` from here.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any

_lock = threading.RLock()  # the real __init__ may look names up on the package while it runs


def _is_submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"pyroute2.{name}") is not None
    except (ImportError, ValueError):
        return False


def _register_lean_package() -> None:
    if "pyroute2" in sys.modules:
        return  # already imported (lean or whole): nothing to save
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError("pyroute2 is not installed")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader
    state = {"full": False}

    def full_api(name: str) -> Any:
        # PEP 562: called only for an attribute the lean package lacks. A submodule is not an
        # attribute yet while `from pyroute2 import config` runs: say so, and the import system
        # imports it as usual; anything else is the package API, from the real __init__.
        if name.startswith("__") or _is_submodule(name):
            raise AttributeError(name)
        with _lock:
            if not state["full"]:
                state["full"] = True
                loader.exec_module(package)  # the real __init__, into this same module object
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    package.__getattr__ = full_api  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


_register_lean_package()

from pyroute2.iproute import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_LINK  # noqa: E402
from pyroute2.netlink.rtnl.marshal import MarshalRtnl  # noqa: E402

__all__ = ["IPRoute", "MarshalRtnl", "NetlinkError", "RTMGRP_IPV4_IFADDR", "RTMGRP_IPV4_ROUTE", "RTMGRP_IPV4_RULE",
           "RTMGRP_LINK"]
