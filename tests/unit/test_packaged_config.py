"""The .deb's /etc/titus/agent.toml (packaging/agent.toml) loads, and the directories it makes the
agent bind into tasks pass the hardening audit (a state_dir under /var/lib/titus with the default
identity root did not: every task crashed "exposes /var/lib/titus", found in the VM test)."""

from __future__ import annotations

from pathlib import Path

from agent.config import load_config
from security.hardening import bind_problems

PACKAGED = Path(__file__).resolve().parents[2] / "packaging" / "agent.toml"


def test_packaged_agent_config_binds_only_what_the_audit_allows() -> None:
    config = load_config(["--config", str(PACKAGED)], environ={})
    identity_root = Path(config.identity_dir or Path(config.state_dir) / "identity")
    assert bind_problems([f"{identity_root / 'task-1'}:/run/titus-identity:ro"]) == []
    # the default (<state_dir>/identity) is what failed: keep the test honest about why
    assert bind_problems([f"{Path(config.state_dir) / 'identity' / 'task-1'}:/x:ro"]) != []
