"""titus-fleetsim: many simulated agents in one process speaking the real agent↔scheduler protocol
(long-poll sync + updates, titus_common.protocol), with a launch model, so the real scheduler is
tested at fleet size (the analogue of kwok / nomad-nodesim). Imports titus_common only.
"""

from fleetsim.sim import Fleet, LaunchModel, SimAgent

__all__ = ["Fleet", "LaunchModel", "SimAgent"]
