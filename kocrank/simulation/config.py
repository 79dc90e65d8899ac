"""Constants and the configuration of the simulated world (sizes, calendar, programme timings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import PROGRAM_STATUSES
from features.registry import CHANNELS
from kocrank.simulation.scenarios import Scenario, get_scenario

DAY = 86_400
HOUR = 3_600
MONTH_DAYS = 30.4375
NEVER = np.iinfo(np.int64).max // 4
LONG_AGO = -NEVER

# the channels members join through here; the registry knows a few more that real brands export
SIM_CHANNELS = CHANNELS[:5]
CATEGORIES = (
    "serum",
    "cleanser",
    "moisturizer",
    "sunscreen",
    "face_mask",
    "lipstick",
    "foundation",
    "eye_makeup",
    "fragrance",
    "body_care",
    "hair_care",
    "gift_set",
)
INVITED, DECLINED, ENROLLED, UPGRADED, ELIMINATED, BLACKLISTED = (
    PROGRAM_STATUSES.index(s) for s in ("invited", "declined", "enrolled", "upgraded", "eliminated", "blacklisted")
)
SIM_TABLES = ("members", "orders", "events", "posts", "referrals", "program", "social", "truth")

# month-of-year multipliers: orders peak at 618 (June) and Double 11 (November), plus year end / CNY
ORDER_SEASON = {1: 1.25, 2: 1.15, 3: 0.9, 4: 0.9, 5: 1.0, 6: 1.5, 7: 0.9, 8: 0.9, 9: 1.0, 10: 1.0, 11: 1.9, 12: 1.3}
CAMPAIGNS_PER_MONTH = {1: 3, 2: 2, 3: 2, 4: 2, 5: 3, 6: 4, 7: 2, 8: 2, 9: 2, 10: 3, 11: 4, 12: 3}
FESTIVAL_DAYS = {6: (1, 19), 11: (1, 12)}  # presale + main days, where orders concentrate
HOUR_WEIGHTS = np.array(
    [
        0.5,
        0.3,
        0.2,
        0.15,
        0.15,
        0.2,
        0.4,
        0.8,
        1.2,
        1.4,
        1.5,
        1.6,
        1.8,
        1.5,
        1.3,
        1.3,
        1.4,
        1.5,
        1.7,
        2.0,
        2.3,
        2.4,
        2.0,
        1.2,
    ]
)

# programme
INVITE_SHARE = 0.01  # invitations per cutoff, as a share of eligible members (the scenario sets the random share)
CHURNED_ACCEPT_FACTOR = 0.15  # a churned member rarely answers an invitation
INVITE_DELAY_H = (2.0, 12.0)  # `invited` this many hours after the cutoff
RESPONSE_DELAY_D = (1.0, 7.0)  # `enrolled` / `declined` this many days after the invitation
ELIMINATE_AFTER_D = 100  # a KOC is judged only after this many days in the programme
INTERACTION_SIGMA = 1.0  # log-scale spread of a post's 7-day interactions
TRUTH_DELAYS_D = (2.0, 4.0, 6.0)  # midpoint rule over the uniform response delay


@dataclass(frozen=True)
class SimConfig:
    """Size, seed, calendar and scenario of the simulated world, plus the default label settings."""

    members: int = 5000
    seed: int = 0
    start: str = "2024-01-01"  # first day of history (local business time); must be a month start
    months: int = 24
    dirty: bool = False
    horizon_days: int = 90
    min_posts: int = 3
    min_interactions: int = 100
    cooldown_days: int = 60
    scenario: str = "default"  # a name in `kocrank.simulation.scenarios.SCENARIOS`

    def __post_init__(self) -> None:
        if self.members < 1 or self.months < 1:
            raise ValueError("members and months must be positive")
        start = pd.Timestamp(self.start)
        if start != start.normalize() or start.day != 1:
            raise ValueError(f"start must be the first day of a month, got {self.start!r}")
        get_scenario(self.scenario)  # fails early, naming the known scenarios

    @property
    def spec(self) -> Scenario:
        """The knobs of `scenario`."""
        return get_scenario(self.scenario)
