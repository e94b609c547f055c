"""Pieces shared by the scheduler, the agent and the CLI: the task model, the job spec, logging."""
