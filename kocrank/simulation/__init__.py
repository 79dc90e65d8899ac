"""The simulated brand world: members, behaviour, the brand's past invitation policy, and the truth.

It lives apart from `features/` because it is not part of the pipeline a brand runs: it
*produces* contract-shaped data (and the `truth` a real brand never has) for demos,
tests and evaluation. Modules: `config` (sizes, constants), `scenarios` (named worlds),
`population` (traits and behavioural rates), `policy` (the historical invitation rule and
its propensities), `truth`, `world` (the month-by-month simulation), `assemble` (contract
tables), `loop` (kocrank deciding the invitations in a closed loop).
"""

from kocrank.simulation.assemble import dirty_copy
from kocrank.simulation.config import SIM_CHANNELS, SIM_TABLES, SimConfig
from kocrank.simulation.scenarios import SCENARIOS, Scenario, get_scenario
from kocrank.simulation.world import Invitations, SimulatedWorld, Simulation, simulate

__all__ = [
    "SCENARIOS",
    "SIM_CHANNELS",
    "SIM_TABLES",
    "Invitations",
    "Scenario",
    "SimConfig",
    "Simulation",
    "SimulatedWorld",
    "dirty_copy",
    "get_scenario",
    "simulate",
]
