"""Pieces shared by the scheduler, the agent and the CLI: task states (`states`), the job spec
(`jobspec`), the agent↔scheduler protocol (`protocol`), the error root and exit codes (`errors`),
config loading (`config`), the back-off helper (`retry`), daemon plumbing (`daemon`), logging
(`logs`) and atomic files (`files`).

May import: the standard library and third-party packages only — every other package builds on it.
"""

__all__ = ["config", "daemon", "errors", "files", "jobspec", "logs", "protocol", "retry", "states"]
