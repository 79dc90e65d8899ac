"""Members of the simulated world: calendar, latent traits, traps and behavioural rates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import PLATFORMS
from kocrank.simulation.config import (
    CAMPAIGNS_PER_MONTH,
    CATEGORIES,
    CHURNED_ACCEPT_FACTOR,
    DAY,
    LONG_AGO,
    MONTH_DAYS,
    NEVER,
    SimConfig,
)
from kocrank.simulation.scenarios import Scenario

SPENDER_TRAP, REGULAR_TRAP = 1, 2
REGULAR_LOG_INTERACTIONS = -1.0  # median 7-day interactions of a campaign regular's post: floor(e^-1) = 0

# --------------------------------------------------------------------------- calendar


@dataclass(frozen=True)
class Calendar:
    starts: np.ndarray  # month start (cutoff) in seconds since epoch, months + 1 values
    month_of_year: np.ndarray
    campaigns: tuple[str, ...]  # every campaign id; codes index into it
    seeding: tuple[np.ndarray, ...]  # per month: codes of its seeding campaigns
    trial: np.ndarray  # per month: code of its product-trial campaign

    @property
    def end(self) -> int:
        return int(self.starts[-1])

    def intensity(self, m: int) -> float:
        return _intensity(int(self.month_of_year[m]))

    def ahead(self, m: int, months: int) -> tuple[list[float], list[float]]:
        """From cutoff `m`: the next `months + 1` month starts in days after it, and the months' intensities.

        Runs past the end of the history where the horizon does.
        """
        stamps = pd.date_range(pd.Timestamp(int(self.starts[m]), unit="s"), periods=months + 1, freq="MS")
        days = ((stamps - stamps[0]) / pd.Timedelta(days=1)).tolist()
        return days, [_intensity(month) for month in stamps.month[:-1]]


def _intensity(month_of_year: int) -> float:
    """Campaign intensity of a month: its number of seeding campaigns relative to a typical 2.5."""
    return CAMPAIGNS_PER_MONTH[month_of_year] / 2.5


def make_calendar(cfg: SimConfig) -> Calendar:
    stamps = pd.date_range(pd.Timestamp(cfg.start), periods=cfg.months + 1, freq="MS")
    starts = stamps.to_numpy().astype("datetime64[s]").astype(np.int64)
    campaigns: list[str] = []
    seeding, trial = [], []
    for stamp in stamps[:-1]:
        tag = stamp.strftime("%y%m")
        first = len(campaigns)
        campaigns += [f"C{tag}{k + 1:02d}" for k in range(CAMPAIGNS_PER_MONTH[stamp.month])]
        seeding.append(np.arange(first, len(campaigns)))
        trial.append(len(campaigns))
        campaigns.append(f"T{tag}01")
    return Calendar(starts, stamps.month.to_numpy()[:-1], tuple(campaigns), tuple(seeding), np.array(trial))


# --------------------------------------------------------------------------- members


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def new_members(
    rng: np.random.Generator,
    joined_at: np.ndarray,
    channel: np.ndarray,
    start: int,
    anchor_affinity: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Latent traits, profile and initial programme state of `len(joined_at)` new members."""
    n = len(joined_at)
    z = rng.standard_normal((9, n))
    affinity = z[0] if anchor_affinity is None else 0.35 * anchor_affinity + 0.94 * z[0]
    sociability = 0.3 * affinity + 0.95 * z[1]
    creativity = 0.25 * sociability + 0.15 * affinity + 0.95 * z[2]
    responsiveness = 0.4 * affinity + 0.92 * z[3]
    city_tier = rng.choice(6, size=n, p=[0.15, 0.25, 0.2, 0.15, 0.15, 0.1]) + 1
    log_spend = np.log(160.0) + 0.45 * z[4] + 0.1 * affinity + 0.08 * (3 - city_tier)
    churn_hazard = sigmoid(-3.4 - 0.7 * affinity)
    followers = np.exp(4.0 + 0.9 * creativity + 0.6 * sociability + 1.0 * z[5])
    linked = rng.random(n) < sigmoid(-1.2 + 0.35 * (np.log(followers) - 4.0) + 0.4 * sociability)
    preferred = rng.choice(len(PLATFORMS), size=n, p=[0.45, 0.25, 0.1, 0.15, 0.05])
    second = np.where(rng.random(n) < 0.3, (preferred + rng.integers(1, len(PLATFORMS), n)) % len(PLATFORMS), -1)
    # members who joined before the history may already have lapsed
    tenure_months = np.maximum(start - joined_at, 0) / (MONTH_DAYS * DAY)
    alive = rng.random(n) < np.exp(-0.5 * churn_hazard * tenure_months)
    birth_year = np.clip(np.round(1992 + 8 * z[6]), 1950, 2008)
    return {
        "joined_at": joined_at.astype(np.int64),
        "channel": channel.astype(np.int8),
        "gender": rng.choice(3, size=n, p=[0.68, 0.27, 0.05]).astype(np.int8),
        "gender_missing": rng.random(n) < 0.01,
        "birth_year": np.where(rng.random(n) < 0.03, -1, birth_year).astype(np.int32),
        "city_tier": np.where(rng.random(n) < 0.02, -1, city_tier).astype(np.int8),
        "consent": rng.random(n) >= 0.06,
        "affinity": affinity,
        "sociability": sociability,
        "creativity": creativity,
        "responsiveness": responsiveness,
        "log_spend": log_spend,
        "order_rate": np.exp(-1.3 + 0.45 * affinity + 0.35 * z[7]),
        "feedback_prob": sigmoid(2.3 + 1.2 * z[8]),
        "churn_hazard": churn_hazard,
        "favourite_category": rng.integers(len(CATEGORIES), size=n).astype(np.int8),
        "followers": followers,
        "linked": linked,
        "platform": preferred.astype(np.int8),
        "second_platform": second.astype(np.int8),
        "alive": alive,
        "koc_active": np.zeros(n, dtype=bool),
        "enrolled_at": np.full(n, LONG_AGO, dtype=np.int64),
        "upgraded": np.zeros(n, dtype=bool),
        "blacklisted_at": np.full(n, NEVER, dtype=np.int64),
        "cooldown_from": np.full(n, LONG_AGO, dtype=np.int64),
        "trap": np.zeros(n, dtype=np.int8),  # set by `assign_traps` in scenarios that plant them
    }


def assign_traps(rng: np.random.Generator, pop: dict[str, np.ndarray], spec: Scenario) -> None:
    """Turn a share of freshly drawn members into the scenario's traps, in place.

    Spender traps (heavy spenders and resellers) buy about eight times as much as their
    peers, so they top any spend or RFM ranking, but never post; campaign regulars join
    campaigns four times as often and apply for trials, but their posts reach nobody.
    `rng` is a stream of its own, so scenarios without traps draw nothing from it.
    """
    n = len(pop["trap"])
    shares = (spec.spender_trap_share, spec.regular_trap_share)
    if not n or not any(shares):
        return
    trap = rng.choice(3, size=n, p=[1.0 - sum(shares), *shares]).astype(np.int8)
    spender = trap == SPENDER_TRAP
    pop["trap"] = trap
    pop["log_spend"] = pop["log_spend"] + np.where(spender, 1.2, 0.0)
    pop["order_rate"] = pop["order_rate"] * np.where(spender, 2.5, 1.0)


# behavioural rates (per month, before mood, season and exposure) as functions of the traits
def event_rates(pop: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    aff, soc, cre, resp = pop["affinity"], pop["sociability"], pop["creativity"], pop["responsiveness"]
    regular = pop["trap"] == REGULAR_TRAP
    return {
        "campaign_join": np.exp(-2.3 + 0.8 * resp + 0.35 * aff + 0.35 * cre) * np.where(regular, 4.0, 1.0),
        "trial_apply": np.exp(-3.7 + 0.7 * resp + 0.3 * aff) * np.where(regular, 2.5, 1.0),
        "group_message": np.exp(-1.5 + 0.8 * soc + 0.3 * aff),
        "checkin": np.exp(-1.5 + 0.6 * aff),
        "survey": np.exp(-2.6 + 0.5 * resp + 0.3 * aff),
        "content_like": np.exp(-1.3 + 0.5 * aff + 0.3 * resp),
        "content_comment": np.exp(-2.0 + 0.5 * soc + 0.5 * cre + 0.2 * aff),
        "share": np.exp(-2.2 + 0.8 * soc + 0.3 * aff),
        "referral_invite": np.exp(-3.6 + 0.9 * soc + 0.4 * aff),
    }


def post_rate(pop: Mapping[str, np.ndarray], organic: float = 1.0) -> np.ndarray:
    """Posts per month of a member outside the programme (before mood and campaign boost).

    `organic` is the scenario's `organic_posting` multiplier; spender traps never post.
    """
    base = np.exp(-3.5 + 1.0 * pop["creativity"] + 0.3 * pop["affinity"] + 0.2 * pop["sociability"])
    return base * organic * (pop["trap"] != SPENDER_TRAP)


def koc_post_rate(pop: Mapping[str, np.ndarray]) -> np.ndarray:
    """Posts per month of an enrolled KOC (a Poisson process, no mood, no churn)."""
    base = np.exp(0.3 + 0.6 * pop["creativity"] + 0.3 * pop["affinity"] + 0.2 * pop["responsiveness"])
    return base * (pop["trap"] != SPENDER_TRAP)


def log_interactions(creativity: np.ndarray, followers: np.ndarray, trap: np.ndarray) -> np.ndarray:
    """Median log 7-day interactions of one post (campaign regulars' posts reach nobody)."""
    mu = 1.6 + 0.55 * creativity + 0.3 * np.log1p(followers)
    return np.where(trap == REGULAR_TRAP, REGULAR_LOG_INTERACTIONS, mu)


def accept_prob(pop: Mapping[str, np.ndarray]) -> np.ndarray:
    p = sigmoid(-0.4 + 0.9 * pop["affinity"] + 0.7 * pop["responsiveness"])
    return np.where(pop["alive"], p, CHURNED_ACCEPT_FACTOR * p)
