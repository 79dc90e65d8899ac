"""The simulated brand world: members, behaviour, the brand's past invitation policy, and the truth.

It lives apart from `features/` because it is not part of the pipeline a brand runs: it
*produces* contract-shaped data (and the `truth` a real brand never has) for demos,
tests and evaluation.
"""

from kocrank.simulation.world import (
    CHANNELS,
    PROGRAM_STATUSES,
    SIM_TABLES,
    SimConfig,
    SimulatedWorld,
    dirty_copy,
    simulate,
)

__all__ = ["CHANNELS", "PROGRAM_STATUSES", "SIM_TABLES", "SimConfig", "SimulatedWorld", "dirty_copy", "simulate"]
