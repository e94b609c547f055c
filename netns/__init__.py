"""Container networking: one VPC IP per container from ENIs (issue 4).

Modules: `ipam` (pure pool logic), `limits` (ENI/IP limits per instance type), `providers/` (where
IPs come from: `local` or `aws`), `pool` (async driver of ipam + provider + checkpoint), `wiring`
(netlink: veth into the container netns, routes, policy routing), `isolation` (control-plane
firewall), `metadata` (the per-task metadata datapath), `step` (the API the agent's network host
resource and launch step call). See docs/network.md.

May import: `titus_common`, the standard library and third-party packages (tests/unit/test_layering.py).
"""

__all__ = ["errors", "ipam", "isolation", "limits", "metadata", "pool", "providers", "step", "wiring"]
