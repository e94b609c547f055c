"""titus-scheduler: the bundled control plane (job API, placement, persistent state).

The package owns the job API (`api`, `openapi`), the one writer of scheduler state (`core.Scheduler`)
and the decisions it applies — what replaces an ended task (`retries`, `lifecycle`), host liveness
(`liveness`), which hosts may take a job (`eligibility`) and which one does (`placement`) — its
in-memory bookkeeping (`index`, `delivery`), its records and their store (`records`, `store`), its
configuration (`config`), metrics (`metrics`) and the process (`main`). Reconciliation (`reconcile` the
policy, `reconciler` the component, `killpath` its brakes, `clockstep` its guard against wall-clock
steps, `audit`, `admin_api`; docs/reconcile.md)
the start-up integrity check (`integrity`), queue age (`pending`) and backups (`backup`,
`backup_cli`, `backup_schedule`).

May import: `titus_common` and `security`, plus the standard library and third-party packages —
never `agent`, `netns`, `imds`, `cpuset` or `titusctl` (the scheduler runs without any host code).
"""

__all__ = [
    "admin_api",
    "api",
    "audit",
    "backup",
    "backup_cli",
    "backup_schedule",
    "clockstep",
    "config",
    "core",
    "delivery",
    "eligibility",
    "index",
    "integrity",
    "killpath",
    "lifecycle",
    "liveness",
    "main",
    "metrics",
    "openapi",
    "pending",
    "placement",
    "reconcile",
    "reconciler",
    "records",
    "retries",
    "store",
]
