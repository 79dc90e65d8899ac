"""Named simulated worlds: what the brand's past invitation policy looked like and who its members are.

Each scenario changes a few knobs of the same world (`kocrank.simulation.world`); the
`default` scenario is the world the simulator has always produced. The knobs:

* `policy`: the historical invitation rule that produced the `invited` rows —
  `spend_activity` (recent spend plus half the recent activity, today's rule),
  `spend` (an RFM-style rule on recent spend and order count), `activity` (campaign
  participation and interactions), `random` (uniform among eligible members) or `mixed`
  (a blend of spend, activity and posting, with half the slots random);
* `explore_share`: the share of each month's invitations drawn uniformly at random;
* `self_enrol_rate` / `self_enrol_min_campaigns`: how readily members enrol on their own
  after campaign participation (the share of enrolments that are self-driven);
* `organic_posting`: how much members post before anyone invites them;
* `spender_trap_share`: heavy spenders and resellers who top any spend/RFM ranking,
  accept perks, and never post;
* `regular_trap_share`: campaign regulars (many joins and trial applications) whose
  posts get almost no interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Policy = Literal["spend_activity", "spend", "activity", "random", "mixed"]
POLICIES: tuple[str, ...] = ("spend_activity", "spend", "activity", "random", "mixed")


@dataclass(frozen=True)
class Scenario:
    """The knobs one named world sets (see the module docstring)."""

    name: str
    description: str
    policy: Policy = "spend_activity"
    explore_share: float = 0.2
    self_enrol_rate: float = 1.0
    self_enrol_min_campaigns: int = 2
    organic_posting: float = 1.0
    spender_trap_share: float = 0.0
    regular_trap_share: float = 0.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"scenario {self.name!r}: unknown policy {self.policy!r}; use one of {POLICIES}")
        for knob in ("explore_share", "spender_trap_share", "regular_trap_share"):
            if not 0.0 <= getattr(self, knob) <= 1.0:
                raise ValueError(f"scenario {self.name!r}: {knob} must lie in [0, 1], got {getattr(self, knob)}")
        if self.spender_trap_share + self.regular_trap_share > 1.0:
            raise ValueError(f"scenario {self.name!r}: trap shares add up to more than 1")
        if self.self_enrol_rate < 0 or self.organic_posting < 0 or self.self_enrol_min_campaigns < 0:
            raise ValueError(f"scenario {self.name!r}: rates and thresholds must not be negative")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "default",
            "Today's world: invitations by recent spend plus activity (20% random), moderate self-enrolment, "
            "no planted traps.",
        ),
        Scenario(
            "spend_led",
            "RFM practice: invitations by recent spend and order count (5% random); few self-driven enrolments "
            "(about 20%); 3% heavy spenders/resellers who never post and 3% campaign regulars without reach.",
            policy="spend",
            explore_share=0.05,
            self_enrol_rate=0.05,
            self_enrol_min_campaigns=3,
            spender_trap_share=0.03,
            regular_trap_share=0.03,
        ),
        Scenario(
            "activity_led",
            "Invitations by campaign participation and interactions (10% random); most enrolments self-driven "
            "(70%+); 5% campaign regulars whose posts get no interactions.",
            policy="activity",
            explore_share=0.1,
            self_enrol_rate=3.0,
            self_enrol_min_campaigns=1,
            regular_trap_share=0.05,
        ),
        Scenario(
            "random_organic",
            "Invitations uniformly at random; many members post organically before anyone invites them "
            "(2.5x the default posting rate outside the programme).",
            policy="random",
            explore_share=1.0,
            organic_posting=2.5,
        ),
        Scenario(
            "mixed_quiet",
            "A blended rule on spend, activity and posts with half the slots random; self-enrolment at 40% of "
            "the default rate; few organic creators (0.4x posting outside the programme); both traps at 2%.",
            policy="mixed",
            explore_share=0.5,
            self_enrol_rate=0.4,
            organic_posting=0.4,
            spender_trap_share=0.02,
            regular_trap_share=0.02,
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    """The scenario called `name`, or a ValueError listing the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}") from None
