"""Container networking: one VPC IP per container from ENIs (issue 4).

Modules: `ipam` (pure pool logic), `limits` (ENI/IP limits per instance type), `providers/` (where
IPs come from: `local` or `aws`), `pool` (async driver of ipam + provider + checkpoint), `wiring`
(netlink: veth into the container netns, routes, policy routing), `isolation` (control-plane
firewall), `step` (the API the agent's network launch step calls). See docs/network.md.
"""
