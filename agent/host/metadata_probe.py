"""The metadata self-probe of the `imds` check: the agent plays a task and asks its own metadata
service through a task-side link, end to end, as a task's SDK would.

One probe (blocking; on the check's own thread, health/blocking.py):
1. a fresh, unpinned namespace (netns/probe.py) with the probe address on lo;
2. the metadata step's own calls: `MetadataNetwork.attach` (the veth `imds0` ↔ `tm…`, routes,
   permanent neighbours) and `listeners` (sockets bound to the probe's `tm…`), served by the running
   `MetadataService` as task `PROBE_TASK_ID` (no role: no STS call);
3. from inside the namespace: IMDSv2 `PUT /latest/api/token`, then `GET
   /latest/meta-data/instance-id` with the token; the answer must be the probe's own instance id
   (so it came from the probe's own listener, not another task's);
4. always: the service stops serving it, its `tm…` is deleted, the namespace's descriptor is closed
   (the kernel then frees the namespace; a kill -9 mid-probe frees it too).
`MetadataResource.gc` keeps the probe's link while a probe runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.host.metadata import PROBE_TASK_ID, HostMetadata
from imds.identity import TaskIdentity
from imds.service import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER
from netns.metadata import IMDS_ADDRESS, PROXY_PORT
from netns.probe import PROBE_ADDRESS, ProbeNamespace, http_exchange

__all__ = ["PROBE_TASK_ID", "MetadataProbe", "ProbeResult"]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    step: str  # where it stopped: namespace | attach | listen | serve | token | get | answer | done
    error: str = ""
    elapsed_ms: float = 0.0


class MetadataProbe:
    def __init__(self, host: HostMetadata, node_id: str, timeout: float = 3.0) -> None:
        self.host = host
        self.node_id = node_id
        self.timeout = timeout
        self.instance_id = f"probe-{node_id}"[:64]

    def identity(self) -> TaskIdentity:
        return TaskIdentity(
            task_id=PROBE_TASK_ID, job_id="titus-health", role_arn=None, ipv4=PROBE_ADDRESS,
            mac="00:00:00:00:00:00", hostname="titus-health-probe", instance_id=self.instance_id,
            instance_type=self.host.instance_type, availability_zone=self.host.availability_zone,
            region=self.host.region, account_id=self.host.account_id or "000000000000",
        )

    def run(self) -> ProbeResult:
        started = time.monotonic()
        step = "namespace"
        served = False
        attached = False
        try:
            with ProbeNamespace() as ns:
                try:
                    step = "attach"
                    attached = True
                    self.host.path.attach(PROBE_TASK_ID, ns, PROBE_ADDRESS)
                    step = "listen"
                    imds_sockets, _ = self.host.path.listeners(PROBE_TASK_ID, ecs=False)
                    step = "serve"
                    self.host.service.submit(self.host.service.service.remove_task(PROBE_TASK_ID)).result(self.timeout)
                    served = True
                    self.host.service.submit(
                        self.host.service.service.add_task(self.identity(), imds_sockets, ())).result(self.timeout)
                    step = "token"
                    status, token = http_exchange(ns, IMDS_ADDRESS, PROXY_PORT, (
                        f"PUT {TOKEN_PATH} HTTP/1.0\r\nHost: {IMDS_ADDRESS}\r\n{TTL_HEADER}: 60\r\n\r\n").encode(),
                        self.timeout)
                    if status != 200 or not token:
                        return self._result(False, step, f"token: HTTP {status}", started)
                    step = "get"
                    status, body = http_exchange(ns, IMDS_ADDRESS, PROXY_PORT, (
                        f"GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: {IMDS_ADDRESS}\r\n"
                        f"{TOKEN_HEADER}: {token.decode(errors='replace').strip()}\r\n\r\n").encode(), self.timeout)
                    if status != 200:
                        return self._result(False, step, f"instance-id: HTTP {status}", started)
                    if body.decode(errors="replace").strip() != self.instance_id:
                        return self._result(False, "answer", f"instance-id answered {body[:64]!r}, "
                                                             f"not the probe's {self.instance_id!r}", started)
                    return self._result(True, "done", "", started)
                finally:
                    self._cleanup(served, attached)
        except Exception as e:  # netlink, sockets, the service's loop: the probe failed at `step`
            return self._result(False, step, f"{type(e).__name__}: {e}"[:200], started)

    def _cleanup(self, served: bool, attached: bool) -> None:
        if served:
            try:
                self.host.service.submit(self.host.service.service.remove_task(PROBE_TASK_ID)).result(self.timeout)
            except Exception:  # the service's loop is stuck: the link below still goes
                pass
        if attached:
            self.host.path.detach(PROBE_TASK_ID)

    @staticmethod
    def _result(ok: bool, step: str, error: str, started: float) -> ProbeResult:
        return ProbeResult(ok, step, error, round((time.monotonic() - started) * 1000, 1))
