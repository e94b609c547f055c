"""titusctl: the operator CLI.

Modules: `client` (HTTP to the scheduler and the local agent, `CliError`, exit codes),
`commands` (the verbs), `render` (tables and JSON output), `main` (argparse, dispatch, the
`titusctl` entry point; each verb's module is imported only when that verb runs), `exec` and
`wsclient` (`task exec` on the standard library only: its start-up is part of its latency),
`stats` and `top` (`task stats|top`), `admin` and `trust_admin` (`admin …`).

Import rule: this package may import only `titus_common`, the standard library and
third-party packages, never `agent`, `scheduler`, `security`, `netns`, `cpuset`, `imds` or any
other first-party package. It talks to those over HTTP only, and it must stay installable and
runnable on an operator's machine that is not a node. Enforced by tests/unit/test_layering.py.
"""

__all__ = ["client", "commands", "main", "render"]
