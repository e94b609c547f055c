"""Container isolation: seccomp/AppArmor profiles, variant policy, host posture and hardening options.

Submit time (scheduler):  profiles.validate_security_request(spec, policy) -> [(field, message)]
Launch time (agent step): profiles.resolve_security(container, policy, posture, owner=, app=) -> SecurityDecision
                          hardening.hardening_options(decision, memory_mib=...) -> HardeningOptions
See docs/security.md.
"""
