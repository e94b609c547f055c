"""titusctl: the operator CLI.

Modules: `client` (HTTP to the scheduler and the local agent, `CliError`, exit codes),
`commands` (the verbs), `render` (tables and JSON output), `main` (argparse, dispatch, the
`titusctl` entry point).

Import rule: this package may import only `titus_common`, the standard library and
third-party packages, never `agent`, `scheduler`, `security`, `netns`, `cpuset`, `imds` or any
other first-party package. It talks to those over HTTP only, and it must stay installable and
runnable on an operator's machine that is not a node. Enforced by tests/unit/test_layering.py.
"""

__all__ = ["client", "commands", "main", "render"]
