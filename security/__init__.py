"""Container isolation policy, shared by the scheduler (submit-time admission) and the agent (launch).

Owns: the seccomp profile catalog (`seccomp/*.json`), AppArmor templates, the variant allow-list
policy, the host-posture model and the hardening options that turn a decision into Docker HostConfig.

Submit time (scheduler):  profiles.validate_security_request(spec, policy) -> [(field, message)]
                          posture.reported_posture_problem(...) for placement
Launch time (agent step): profiles.resolve_security(container, policy, posture, owner=, app=) -> SecurityDecision
                          hardening.hardening_options(decision, memory_mib=...) -> HardeningOptions
May import: the standard library and `titus_common`. Never `agent`, `scheduler` or `titusctl`.
See docs/security.md.
"""

__all__ = ["apparmor", "attributes", "capabilities", "errors", "hardening", "posture", "profiles", "seccomp_profile"]
