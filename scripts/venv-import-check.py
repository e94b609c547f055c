"""Import every module of titus-node's packages, and the optional ones the daemons load by name.

Run with the installed package's interpreter (/opt/titus-node/venv/bin/python) by
scripts/deb-cycle.sh: a module that imports fine in the developers' venv but not in the .deb's
(a dependency missing from packaging/requirements.lock, a shared object broken by the build)
fails here, not on a host. Prints one line per failure and exits 1 if any.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

PACKAGES = ("agent", "canary", "scheduler", "titus_common", "titusctl", "cpuset", "netns",
            "health", "imds", "security", "fleetsim")
# Loaded with importlib.import_module at run time (titus_common/sdnotify.py, titus_common/logs.py),
# so a walk of our own modules would not see them; the C core is cpuset's cffi extension.
BY_NAME = ("systemd.daemon", "systemd.journal", "cpuset._cpuset_core", "numpy", "cryptography.x509")


def main() -> int:
    names: list[str] = []
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        names.append(pkg)
        names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
    names += BY_NAME
    failed = 0
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # report every failure, not the first
            failed += 1
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            print(f"import {name}: {last}", file=sys.stderr)
    print(f"imported {len(names) - failed}/{len(names)} modules from {sys.prefix}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
