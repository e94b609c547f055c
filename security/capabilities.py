"""The capability set every container gets: Docker's default list minus what ordinary programs do
not need. Everything else is dropped ("drop ALL, add back these").

Kept (root-in-container still has to behave like root on its own files):
  CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID  file ownership/permission changes (package installs)
  CAP_SETUID, CAP_SETGID                              dropping to an unprivileged user (su, gosu, nginx workers)
  CAP_KILL                                             signalling processes of other users in the container
  CAP_NET_BIND_SERVICE                                 ports below 1024 (the container has its own IP)

Dropped although Docker keeps them:
  CAP_NET_RAW     raw/packet sockets: ARP/ICMP spoofing on the host network (CVE-2020-14386 needed it)
  CAP_MKNOD       device nodes; the device cgroup stops use, but there is no need to create them
  CAP_SYS_CHROOT  chroot is a classic ingredient of breakouts; ordinary services do not need it
  CAP_SETPCAP     changing capability bounding sets
  CAP_SETFCAP     setting file capabilities (a setuid-like escalation path inside the image)
  CAP_AUDIT_WRITE writing to the host's audit log
"""

from __future__ import annotations

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
)

# What Docker 20.10 grants by default (oci/caps/defaults.go), for the comparison in docs and tests.
DOCKER_DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
