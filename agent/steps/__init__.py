"""Launch steps: one module per resource a task holds on the host (see base.LaunchStep)."""
