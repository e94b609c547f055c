"""titus-scheduler: the bundled control plane (job API, placement, persistent state)."""
