"""A simulated brand world: every contract table plus the simulator's own truth.

Members carry latent traits (brand affinity, spend level, purchase rate, sociability,
creativity, responsiveness to campaigns, reliability, audience size) that drive their
behaviour month by month, with churn, shopping-festival seasonality (618 in June,
Double 11 in November, year end / CNY) and members joining over time, some of them
referred by other members. A historical programme policy invites a few eligible
members at every monthly cutoff (mostly by recent spend and activity, partly at
random); members also self-enrol after repeated campaign participation. Enrolled
KOCs post more, get upgraded or eliminated, and trial takers who never deliver
feedback are blacklisted.

Two things make the world usable for model work:

* `truth` holds, for every member eligible at a cutoff, the probability that the
  member becomes a productive KOC within the horizon *if invited* then
  (see `_p_productive_if_invited` for the approximation used).
* `outcomes` is the simulator's own bookkeeping of the default label and eligibility
  at every cutoff, computed from its internal arrays (independently of
  `features.labels`), so tests can check that the label code agrees with it.

Post interactions are counted exactly 7 days after posting; posts whose 7 days have
not passed by the end of the history carry null counts. Everything is vectorised over
members (one Python iteration per month, never per member or row) and driven by one
`numpy` generator seeded from `SimConfig.seed`: the same config gives identical tables.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import EVENT_TYPES, PLATFORMS

logger = logging.getLogger(__name__)

DAY = 86_400
HOUR = 3_600
MONTH_DAYS = 30.4375
_NEVER = np.iinfo(np.int64).max // 4
_LONG_AGO = -_NEVER

CHANNELS = ("store", "mini_program", "official_account", "ads", "referral")
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
PROGRAM_STATUSES = ("invited", "declined", "enrolled", "upgraded", "eliminated", "blacklisted")
INVITED, DECLINED, ENROLLED, UPGRADED, ELIMINATED, BLACKLISTED = range(6)
SIM_TABLES = ("members", "orders", "events", "posts", "referrals", "program", "social", "truth")

# month-of-year multipliers: orders peak at 618 (June) and Double 11 (November), plus year end / CNY
_ORDER_SEASON = {1: 1.25, 2: 1.15, 3: 0.9, 4: 0.9, 5: 1.0, 6: 1.5, 7: 0.9, 8: 0.9, 9: 1.0, 10: 1.0, 11: 1.9, 12: 1.3}
_CAMPAIGNS_PER_MONTH = {1: 3, 2: 2, 3: 2, 4: 2, 5: 3, 6: 4, 7: 2, 8: 2, 9: 2, 10: 3, 11: 4, 12: 3}
_FESTIVAL_DAYS = {6: (1, 19), 11: (1, 12)}  # presale + main days, where orders concentrate
_HOUR_WEIGHTS = np.array(
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

# programme policy
_INVITE_SHARE = 0.01  # invitations per cutoff, as a share of eligible members
_EXPLORE_SHARE = 0.2  # of those, chosen uniformly at random
_CHURNED_ACCEPT_FACTOR = 0.15  # a churned member rarely answers an invitation
_INVITE_DELAY_H = (2.0, 12.0)  # `invited` this many hours after the cutoff
_RESPONSE_DELAY_D = (1.0, 7.0)  # `enrolled` / `declined` this many days after the invitation
_ELIMINATE_AFTER_D = 100  # a KOC is judged only after this many days in the programme
_INTERACTION_SIGMA = 1.0  # log-scale spread of a post's 7-day interactions
_TRUTH_DELAYS_D = (2.0, 4.0, 6.0)  # midpoint rule over the uniform response delay


@dataclass(frozen=True)
class SimConfig:
    """Size, seed and calendar of the simulated world, plus the default label settings."""

    members: int = 5000
    seed: int = 0
    start: str = "2024-01-01"  # first day of history (local business time); must be a month start
    months: int = 24
    dirty: bool = False
    horizon_days: int = 90
    min_posts: int = 3
    min_interactions: int = 100
    cooldown_days: int = 60

    def __post_init__(self) -> None:
        if self.members < 1 or self.months < 1:
            raise ValueError("members and months must be positive")
        start = pd.Timestamp(self.start)
        if start != start.normalize() or start.day != 1:
            raise ValueError(f"start must be the first day of a month, got {self.start!r}")


@dataclass(frozen=True)
class SimulatedWorld:
    """Contract tables (canonical columns, naive local timestamps, str ids) and realised outcomes.

    Cutoffs are the month starts after `start` up to and including the end of the
    history (so a ranking made at the end can be scored against `truth`).
    `outcomes` has one row per member who joined before each monthly cutoff:
    `member_id, as_of, eligible, productive, window_complete` — `productive` is the
    default label as the simulator booked it; `window_complete` says whether
    `as_of + horizon + 7 days` lies within the data (only those labels are final).
    """

    tables: dict[str, pd.DataFrame]
    outcomes: pd.DataFrame

    @property
    def base_rate(self) -> float:
        """Share of productive members among eligible ones, over cutoffs with a complete window."""
        done = self.outcomes.loc[self.outcomes["eligible"] & self.outcomes["window_complete"], "productive"]
        return float(done.mean()) if len(done) else float("nan")


# --------------------------------------------------------------------------- calendar


@dataclass(frozen=True)
class _Calendar:
    starts: np.ndarray  # month start (cutoff) in seconds since epoch, months + 1 values
    month_of_year: np.ndarray
    campaigns: tuple[str, ...]  # every campaign id; codes index into it
    seeding: tuple[np.ndarray, ...]  # per month: codes of its seeding campaigns
    trial: np.ndarray  # per month: code of its product-trial campaign

    @property
    def end(self) -> int:
        return int(self.starts[-1])

    def intensity(self, m: int) -> float:
        return len(self.seeding[m]) / 2.5


def _calendar(cfg: SimConfig) -> _Calendar:
    stamps = pd.date_range(pd.Timestamp(cfg.start), periods=cfg.months + 1, freq="MS")
    starts = stamps.to_numpy().astype("datetime64[s]").astype(np.int64)
    campaigns: list[str] = []
    seeding, trial = [], []
    for stamp in stamps[:-1]:
        tag = stamp.strftime("%y%m")
        first = len(campaigns)
        campaigns += [f"C{tag}{k + 1:02d}" for k in range(_CAMPAIGNS_PER_MONTH[stamp.month])]
        seeding.append(np.arange(first, len(campaigns)))
        trial.append(len(campaigns))
        campaigns.append(f"T{tag}01")
    return _Calendar(starts, stamps.month.to_numpy()[:-1], tuple(campaigns), tuple(seeding), np.array(trial))


# --------------------------------------------------------------------------- members


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _new_members(
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
    churn_hazard = _sigmoid(-3.4 - 0.7 * affinity)
    followers = np.exp(4.0 + 0.9 * creativity + 0.6 * sociability + 1.0 * z[5])
    linked = rng.random(n) < _sigmoid(-1.2 + 0.35 * (np.log(followers) - 4.0) + 0.4 * sociability)
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
        "feedback_prob": _sigmoid(2.3 + 1.2 * z[8]),
        "churn_hazard": churn_hazard,
        "favourite_category": rng.integers(len(CATEGORIES), size=n).astype(np.int8),
        "followers": followers,
        "linked": linked,
        "platform": preferred.astype(np.int8),
        "second_platform": second.astype(np.int8),
        "alive": alive,
        "koc_active": np.zeros(n, dtype=bool),
        "enrolled_at": np.full(n, _LONG_AGO, dtype=np.int64),
        "upgraded": np.zeros(n, dtype=bool),
        "blacklisted_at": np.full(n, _NEVER, dtype=np.int64),
        "cooldown_from": np.full(n, _LONG_AGO, dtype=np.int64),
    }


# behavioural rates (per month, before mood, season and exposure) as functions of the traits
def _event_rates(pop: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    aff, soc, cre, resp = pop["affinity"], pop["sociability"], pop["creativity"], pop["responsiveness"]
    return {
        "campaign_join": np.exp(-2.3 + 0.8 * resp + 0.35 * aff + 0.35 * cre),
        "trial_apply": np.exp(-3.7 + 0.7 * resp + 0.3 * aff),
        "group_message": np.exp(-1.5 + 0.8 * soc + 0.3 * aff),
        "checkin": np.exp(-1.5 + 0.6 * aff),
        "survey": np.exp(-2.6 + 0.5 * resp + 0.3 * aff),
        "content_like": np.exp(-1.3 + 0.5 * aff + 0.3 * resp),
        "content_comment": np.exp(-2.0 + 0.5 * soc + 0.5 * cre + 0.2 * aff),
        "share": np.exp(-2.2 + 0.8 * soc + 0.3 * aff),
        "referral_invite": np.exp(-3.6 + 0.9 * soc + 0.4 * aff),
    }


def _post_rate(pop: Mapping[str, np.ndarray]) -> np.ndarray:
    """Posts per month of a member outside the programme (before mood and campaign boost)."""
    return np.exp(-3.5 + 1.0 * pop["creativity"] + 0.3 * pop["affinity"] + 0.2 * pop["sociability"])


def _koc_post_rate(pop: Mapping[str, np.ndarray]) -> np.ndarray:
    """Posts per month of an enrolled KOC (a Poisson process, no mood, no churn)."""
    return np.exp(0.3 + 0.6 * pop["creativity"] + 0.3 * pop["affinity"] + 0.2 * pop["responsiveness"])


def _log_interactions(creativity: np.ndarray, followers: np.ndarray) -> np.ndarray:
    """Median log 7-day interactions of one post."""
    return 1.6 + 0.55 * creativity + 0.3 * np.log1p(followers)


def _accept_prob(pop: Mapping[str, np.ndarray]) -> np.ndarray:
    p = _sigmoid(-0.4 + 0.9 * pop["affinity"] + 0.7 * pop["responsiveness"])
    return np.where(pop["alive"], p, _CHURNED_ACCEPT_FACTOR * p)


# --------------------------------------------------------------------------- helpers


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    return values if len(values) >= n else np.concatenate([values, np.zeros(n - len(values), values.dtype)])


def _uniform_times(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Times in `[lo, hi)` with a day/night rhythm (kept uniform where the rhythm would leave the range)."""
    t = lo + np.floor(rng.random(len(lo)) * (hi - lo)).astype(np.int64)
    hour = rng.choice(24, size=len(lo), p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    shifted = t - t % DAY + hour * HOUR + rng.integers(0, HOUR, len(lo))
    keep = (shifted >= lo) & (shifted < hi)
    return np.where(keep, shifted, t)


def _distinct_times(member: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Shift colliding times of one member by whole seconds so no two rows of a chunk are identical."""
    order = np.lexsort((at, member))
    m_sorted, at_sorted = member[order], at[order].copy()
    while True:
        clash = np.flatnonzero((m_sorted[1:] == m_sorted[:-1]) & (at_sorted[1:] <= at_sorted[:-1])) + 1
        if not len(clash):
            break
        at_sorted[clash] = at_sorted[clash - 1] + 1
    out = np.empty_like(at)
    out[order] = at_sorted
    return out


class _Rows:
    """Row chunks per table, concatenated once at the end."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[dict[str, np.ndarray]]] = {}

    def add(self, table: str, **columns: np.ndarray) -> None:
        if len(next(iter(columns.values()))):
            compact = {k: v.astype(np.int32) if k in ("member", "referrer") else v for k, v in columns.items()}
            self.chunks.setdefault(table, []).append(compact)

    def take(self, table: str, columns: Mapping[str, type]) -> dict[str, np.ndarray]:
        """All rows of `table` as one array per column; the chunks are released."""
        parts = self.chunks.pop(table, [])
        out = {}
        for c, dt in columns.items():
            out[c] = np.concatenate([p.pop(c) for p in parts]) if parts else np.zeros(0, dt)
        return out


# --------------------------------------------------------------------------- truth


@functools.lru_cache(maxsize=8)
def _success_table(min_interactions: int, max_posts: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """P(sum of n posts' interactions >= threshold) on a grid of median log interactions.

    Monte Carlo with common random numbers and a fixed seed (independent of the
    world's seed), so truth is a deterministic function of the traits.
    Returns (grid of mu, table[len(grid), max_posts + 1]) with table[:, n] for n posts.
    """
    grid = np.arange(-2.0, 9.0001, 0.05)
    z = np.random.default_rng(20240601).standard_normal((4000, max_posts))
    table = np.zeros((len(grid), max_posts + 1))
    for i, mu in enumerate(grid):
        total = np.cumsum(np.floor(np.exp(mu + _INTERACTION_SIGMA * z)), axis=1)
        table[i, 1:] = (total >= min_interactions).mean(axis=0)
    return grid, table


def _p_productive(expected_posts: np.ndarray, mu: np.ndarray, min_posts: int, min_interactions: int) -> np.ndarray:
    """P(N >= min_posts and the N posts' interactions reach min_interactions), N ~ Poisson."""
    grid, table = _success_table(min_interactions)
    max_posts = table.shape[1] - 1
    pos = np.clip((mu - grid[0]) / (grid[1] - grid[0]), 0, len(grid) - 1.000001)
    lo = pos.astype(np.int64)
    w = pos - lo
    pmf = np.exp(-expected_posts)
    cdf = pmf.copy()
    acc = np.zeros_like(expected_posts)
    for n in range(1, max_posts + 1):
        pmf = pmf * expected_posts / n
        cdf += pmf
        if n >= min_posts:
            acc += pmf * ((1 - w) * table[lo, n] + w * table[lo + 1, n])
    acc += np.clip(1 - cdf, 0, 1) * ((1 - w) * table[lo, max_posts] + w * table[lo + 1, max_posts])
    return np.clip(acc, 0.0, 1.0)


def _p_productive_if_invited(
    pop: Mapping[str, np.ndarray], idx: np.ndarray, intensity: float, cfg: SimConfig
) -> np.ndarray:
    """The true probability that member `idx` becomes a productive KOC if invited at this cutoff.

    = P(accept) x P(>= min_posts posts in the window whose interactions reach the threshold).
    After accepting, a KOC posts as a Poisson process at `_koc_post_rate` for the rest of
    the window (KOCs neither churn nor get eliminated within 100 days); before, at the
    ordinary rate with mood and campaign boost at their expected values. Each post's
    interactions are floor(lognormal(mu, 1)) with mu from creativity and the current
    audience (its growth within the window is ignored). The response delay is averaged
    by the midpoint rule; the sum of interactions comes from `_success_table`.
    """
    sub = {k: v[idx] for k, v in pop.items()}
    rates = _event_rates(sub)
    pre_rate = _post_rate(sub) * sub["alive"] * (1 + 0.6 * rates["campaign_join"] * intensity)
    koc_rate = _koc_post_rate(sub)
    mu = _log_interactions(sub["creativity"], sub["followers"])
    invite_delay = np.mean(_INVITE_DELAY_H) / 24
    p_posts = np.zeros(len(idx))
    for delay in _TRUTH_DELAYS_D:
        before = invite_delay + delay
        expected = (koc_rate * (cfg.horizon_days - before) + pre_rate * before) / MONTH_DAYS
        p_posts += _p_productive(expected, mu, cfg.min_posts, cfg.min_interactions)
    return _accept_prob(sub) * p_posts / len(_TRUTH_DELAYS_D)


# --------------------------------------------------------------------------- the world


class _World:
    """Mutable simulation state; `simulate` drives it one month at a time."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.cal = _calendar(cfg)
        self.rows = _Rows()
        self.recent: deque[dict[str, np.ndarray]] = deque(maxlen=3)  # last 3 months' aggregates
        self.eligible_at: dict[int, np.ndarray] = {}
        self.truth: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.pending: list[
            tuple[np.ndarray, np.ndarray]
        ] = []  # referees (referrer, joined_at) admitted after the month
        self.pop = self._initial_members()

    @property
    def size(self) -> int:
        return len(self.pop["joined_at"])

    def _initial_members(self) -> dict[str, np.ndarray]:
        rng, cal, n = self.rng, self.cal, self.cfg.members
        start, end = int(cal.starts[0]), cal.end
        before = rng.random(n) < 0.4
        # joins during the history grow slowly and bump in festival months
        weights = (1 + 0.02 * np.arange(self.cfg.months)) * np.where(np.isin(cal.month_of_year, (6, 11)), 1.5, 1.0)
        month = rng.choice(self.cfg.months, size=n, p=weights / weights.sum())
        during = cal.starts[month] + np.floor(rng.random(n) * (cal.starts[month + 1] - cal.starts[month])).astype(
            np.int64
        )
        early = start - np.floor(rng.random(n) * 730 * DAY).astype(np.int64) - 1
        joined = np.sort(np.where(before, early, during))
        joined = np.minimum(joined, end - 1)
        channel = rng.choice(len(CHANNELS), size=n, p=[0.3, 0.32, 0.18, 0.15, 0.05])
        return _new_members(rng, joined, channel, start)

    def _aggregate(self, name: str) -> np.ndarray:
        n = self.size
        return sum((_pad(month[name], n) for month in self.recent), np.zeros(n))

    # ----------------------------------------------------------------- cutoff

    def eligible(self, t: int) -> np.ndarray:
        """Contract eligibility at cutoff `t` from the simulator's state (all events before `t`)."""
        p = self.pop
        cooldown = self.cfg.cooldown_days * DAY
        return (
            (p["joined_at"] < t)
            & p["consent"]
            & ~(p["blacklisted_at"] < t)
            & ~p["koc_active"]
            & ~(p["cooldown_from"] >= t - cooldown)
        )

    def cutoff(self, m: int) -> None:
        idx = np.flatnonzero(self.eligible(int(self.cal.starts[m])))
        self.eligible_at[m] = idx
        intensity = self.cal.intensity(min(m, self.cfg.months - 1))
        self.truth.append((m, idx, _p_productive_if_invited(self.pop, idx, intensity, self.cfg)))

    def programme(self, m: int, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eliminations, upgrades and invitations at cutoff `m`; returns (invited, eliminated) masks."""
        rng, p, n, t = self.rng, self.pop, self.size, int(self.cal.starts[m])
        posts, interactions = self._aggregate("posts"), self._aggregate("interactions")
        # never judged within the label horizon, so an invited KOC keeps posting through the window (truth relies on it)
        judge_after = max(_ELIMINATE_AFTER_D, self.cfg.horizon_days + 10) * DAY
        judged = p["koc_active"] & (p["enrolled_at"] < t - judge_after)
        poor = judged & ((posts < 2) | (interactions < 60))
        eliminated = poor & (rng.random(n) < 0.6)
        eliminated_idx = np.flatnonzero(eliminated)
        eliminated_at = t + rng.integers(HOUR, 30 * HOUR, len(eliminated_idx))
        self._status(eliminated_idx, eliminated_at, ELIMINATED)
        p["koc_active"] &= ~eliminated
        p["cooldown_from"][eliminated_idx] = eliminated_at  # an elimination starts a cool-down too
        upgraded = p["koc_active"] & ~p["upgraded"] & (posts >= 4) & (interactions >= 400)
        self._status(np.flatnonzero(upgraded), t + rng.integers(HOUR, 48 * HOUR, int(upgraded.sum())), UPGRADED)
        p["upgraded"] |= upgraded

        invited = np.zeros(n, dtype=bool)
        if len(eligible):
            k = max(1, round(_INVITE_SHARE * len(eligible)))
            explore = round(_EXPLORE_SHARE * k)
            score = np.log1p(self._aggregate("spend")[eligible]) + 0.5 * np.log1p(self._aggregate("activity")[eligible])
            score = score + 0.3 * rng.gumbel(size=len(eligible))
            ranked = eligible[np.argsort(-score, kind="stable")]
            chosen = ranked[: k - explore]
            rest = ranked[k - explore :]
            chosen = np.concatenate([chosen, rng.choice(rest, size=min(explore, len(rest)), replace=False)])
            invited[chosen] = True
        idx = np.flatnonzero(invited)
        invited_at = t + np.floor(rng.uniform(*_INVITE_DELAY_H, len(idx)) * HOUR).astype(np.int64)
        answered_at = invited_at + np.floor(rng.uniform(*_RESPONSE_DELAY_D, len(idx)) * DAY).astype(np.int64)
        accepts = rng.random(len(idx)) < _accept_prob(p)[idx]
        self._status(idx, invited_at, INVITED)
        self._status(idx[accepts], answered_at[accepts], ENROLLED)
        self._status(idx[~accepts], answered_at[~accepts], DECLINED)
        p["cooldown_from"][idx] = np.where(accepts, invited_at, answered_at)
        self._enrol(idx[accepts], answered_at[accepts])
        return invited, eliminated

    def _status(self, idx: np.ndarray, at: np.ndarray, status: int) -> None:
        self.rows.add(
            "program", member=idx.astype(np.int64), at=at.astype(np.int64), status=np.full(len(idx), status, np.int8)
        )

    def _enrol(self, idx: np.ndarray, at: np.ndarray) -> None:
        p = self.pop
        p["koc_active"][idx] = True
        p["enrolled_at"][idx] = at
        p["upgraded"][idx] = False
        p["alive"][idx] = True

    # ----------------------------------------------------------------- a month of behaviour

    def month(self, m: int, invited: np.ndarray, eliminated: np.ndarray) -> None:
        rng, cal, p, n = self.rng, self.cal, self.pop, self.size
        t0, t1 = int(cal.starts[m]), int(cal.starts[m + 1])
        span = t1 - t0
        month_of_year = int(cal.month_of_year[m])
        intensity = cal.intensity(m)

        # self-enrolment after repeated campaign participation
        campaigns_3m = self._aggregate("campaign_joins")
        candidates = (
            (p["joined_at"] < t0)
            & p["consent"]
            & ~(p["blacklisted_at"] < t0)
            & ~p["koc_active"]
            & ~invited
            & ~eliminated
            & p["alive"]
            & (campaigns_3m >= 2)
        )
        hazard = 0.09 * campaigns_3m * np.exp(0.5 * p["creativity"] + 0.2 * p["affinity"])
        self_enrol = np.flatnonzero(candidates & (rng.random(n) < 1 - np.exp(-hazard)))
        self_at = t0 + np.floor(rng.random(len(self_enrol)) * (span - HOUR)).astype(np.int64)
        self._status(self_enrol, self_at, ENROLLED)
        self._enrol(self_enrol, self_at)

        # exposure: the part of the month the member belonged to the brand, split at enrolment
        active_from = np.maximum(p["joined_at"], t0)
        exposure = np.clip(t1 - active_from, 0, span)
        koc_from = np.where(p["koc_active"], np.clip(p["enrolled_at"], t0, t1), t1)  # KOC posting starts at enrolment
        before_koc = np.clip(koc_from - active_from, 0, span)
        share = exposure / span
        koc_share = (t1 - koc_from) / span
        mood = rng.gamma(4.0, 0.25, n)
        level = mood * p["alive"] * share

        spend, orders = self._orders(m, level * _ORDER_SEASON[month_of_year], active_from, t1)
        event_counts = self._events(m, level, koc_share, intensity, active_from, t1)
        posts, interactions = self._posts(
            m, mood, before_koc / span, active_from, koc_from, t1, event_counts["campaign_join"]
        )
        if month_of_year in (1, 4, 7, 10):
            self._social(t0)

        self.recent.append(
            {
                "spend": spend,
                "orders": orders,
                "activity": sum(event_counts.values()).astype(np.float64),
                "campaign_joins": event_counts["campaign_join"].astype(np.float64),
                "posts": posts.astype(np.float64),
                "interactions": interactions,
            }
        )
        growth = 0.004 + 0.015 * np.minimum(posts, 6) + 0.015 * p["koc_active"] + 0.02 * rng.standard_normal(n)
        p["followers"] = p["followers"] * np.exp(growth)
        churned = p["alive"] & ~p["koc_active"] & (rng.random(n) < p["churn_hazard"] * share)
        p["alive"] &= ~churned
        self.admit_referees()

    def _orders(self, m: int, expected: np.ndarray, lo: np.ndarray, t1: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        counts = rng.poisson(self.pop["order_rate"] * expected)
        member = np.repeat(np.arange(len(counts)), counts)
        at = _uniform_times(rng, lo[member], np.full(len(member), t1))
        festival = _FESTIVAL_DAYS.get(int(self.cal.month_of_year[m]))
        if festival is not None:
            t0 = int(self.cal.starts[m])
            f_lo = np.maximum(lo[member], t0 + (festival[0] - 1) * DAY)
            f_hi = t0 + (festival[1] - 1) * DAY
            move = (rng.random(len(member)) < 0.45) & (f_lo < f_hi)
            at = np.where(move, f_lo + np.floor(rng.random(len(member)) * (f_hi - f_lo)).astype(np.int64), at)
        amount, refunded = self._add_orders(member, at)
        spend = np.bincount(member, weights=amount * ~refunded, minlength=len(counts))
        return spend, counts.astype(np.float64)

    def _add_orders(self, member: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Order rows for `member` at `at`; returns their amounts and refund flags."""
        rng, p = self.rng, self.pop
        k = len(member)
        amount = np.round(np.exp(p["log_spend"][member] + 0.45 * rng.standard_normal(k)), 2)
        category = np.where(
            rng.random(k) < 0.55, p["favourite_category"][member], rng.integers(len(CATEGORIES), size=k)
        )
        refunded = rng.random(k) < 0.03 + 0.03 * (p["affinity"][member] < -1)
        self.rows.add(
            "orders", member=member, at=at, amount=amount, category=category.astype(np.int8), refunded=refunded
        )
        return amount, refunded

    def _events(
        self, m: int, level: np.ndarray, koc_share: np.ndarray, intensity: float, lo: np.ndarray, t1: int
    ) -> dict[str, np.ndarray]:
        rng, cal, p = self.rng, self.cal, self.pop
        n = self.size
        counts: dict[str, np.ndarray] = {}
        for name, rate in _event_rates(p).items():
            boost = 1.0
            if name in ("campaign_join", "trial_apply"):
                boost = intensity * (1 + 1.5 * koc_share if name == "campaign_join" else 1.0)
            elif name == "content_comment":
                boost = 1 + koc_share
            counts[name] = rng.poisson(rate * level * boost)
        for name, count in counts.items():
            member = np.repeat(np.arange(n), count)
            at = _distinct_times(member, _uniform_times(rng, lo[member], np.full(len(member), t1)))
            campaign = np.full(len(member), -1, dtype=np.int32)
            if name == "campaign_join":
                campaign = rng.choice(cal.seeding[m], size=len(member)).astype(np.int32)
            elif name == "trial_apply":
                campaign[:] = cal.trial[m]
                self._trial_feedback(member, at, campaign)
            elif name == "referral_invite":
                self._referrals(member, at)
            self.rows.add(
                "events",
                member=member,
                at=at,
                type=np.full(len(member), EVENT_TYPES.index(name), np.int8),
                campaign=campaign,
            )
        return counts

    def _trial_feedback(self, member: np.ndarray, applied_at: np.ndarray, campaign: np.ndarray) -> None:
        rng, p = self.rng, self.pop
        delivered = rng.random(len(member)) < p["feedback_prob"][member]
        feedback_at = _distinct_times(
            member, applied_at + np.floor(rng.uniform(2, 18, len(member)) * DAY).astype(np.int64)
        )
        keep = delivered & (feedback_at < self.cal.end)
        self.rows.add(
            "events",
            member=member[keep],
            at=feedback_at[keep],
            type=np.full(int(keep.sum()), EVENT_TYPES.index("trial_feedback"), np.int8),
            campaign=campaign[keep],
        )
        overdue = applied_at + np.floor(rng.uniform(21, 23, len(member)) * DAY).astype(np.int64)
        np.minimum.at(p["blacklisted_at"], member[~delivered], overdue[~delivered])

    def _referrals(self, referrer: np.ndarray, referred_at: np.ndarray) -> None:
        rng, p = self.rng, self.pop
        k = len(referrer)
        converts = rng.random(k) < _sigmoid(-2.0 + 0.5 * p["sociability"][referrer] + 0.4 * p["affinity"][referrer])
        joined_at = referred_at + HOUR + np.floor(rng.exponential(3.0, k) * DAY).astype(np.int64)
        converts &= joined_at < self.cal.end
        referee = np.full(k, -1, dtype=np.int64)
        new = np.flatnonzero(converts)
        referee[new] = self.size + sum(len(r) for r, _ in self.pending) + np.arange(len(new))
        self.rows.add("referrals", referrer=referrer, at=referred_at, referee=referee)
        if len(new):
            self.pending.append((referrer[new], joined_at[new]))

    def admit_referees(self) -> None:
        """Add this month's referees as members (after the month, so arrays keep their size within it)."""
        if not self.pending:
            return
        rng, p = self.rng, self.pop
        referrer = np.concatenate([r for r, _ in self.pending])
        joined_at = np.concatenate([j for _, j in self.pending])
        self.pending.clear()
        first_index = self.size
        fresh = _new_members(
            rng,
            joined_at,
            np.full(len(joined_at), CHANNELS.index("referral")),
            int(self.cal.starts[0]),
            p["affinity"][referrer],
        )
        for key, values in fresh.items():
            p[key] = np.concatenate([p[key], values])
        # a welcome order for most referees, shortly after joining
        first_at = joined_at + 600 + np.floor(rng.exponential(2.0, len(joined_at)) * DAY).astype(np.int64)
        buys = (rng.random(len(joined_at)) < 0.6) & (first_at < self.cal.end)
        self._add_orders(first_index + np.flatnonzero(buys), first_at[buys])

    def _posts(
        self,
        m: int,
        mood: np.ndarray,
        before_share: np.ndarray,
        lo: np.ndarray,
        koc_from: np.ndarray,
        t1: int,
        campaign_joins: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        rng, cal, p = self.rng, self.cal, self.pop
        n = len(mood)
        ordinary = rng.poisson(_post_rate(p) * mood * p["alive"] * before_share * (1 + 0.6 * campaign_joins))
        koc = rng.poisson(_koc_post_rate(p) * (t1 - koc_from) / (MONTH_DAYS * DAY))
        member_o = np.repeat(np.arange(n), ordinary)
        member_k = np.repeat(np.arange(n), koc)
        at = np.concatenate(
            [
                _uniform_times(rng, lo[member_o], koc_from[member_o]),
                _uniform_times(rng, koc_from[member_k], np.full(len(member_k), t1)),
            ]
        )
        member = np.concatenate([member_o, member_k])
        is_koc = np.concatenate([np.zeros(len(member_o), bool), np.ones(len(member_k), bool)])
        k = len(member)
        platform = np.where(rng.random(k) < 0.75, p["platform"][member], rng.integers(len(PLATFORMS), size=k))
        mu = _log_interactions(p["creativity"][member], p["followers"][member])
        total = np.floor(np.exp(mu + _INTERACTION_SIGMA * rng.standard_normal(k))).astype(np.int64)
        with_campaign = np.where(is_koc, rng.random(k) < 0.6, (campaign_joins[member] > 0) & (rng.random(k) < 0.5))
        campaign = np.where(with_campaign, rng.choice(cal.seeding[m], size=k), -1).astype(np.int32)
        self.rows.add(
            "posts", member=member, at=at, platform=platform.astype(np.int8), interactions=total, campaign=campaign
        )
        counts = (ordinary + koc).astype(np.float64)
        return counts, np.bincount(member, weights=total, minlength=n)

    def _social(self, t0: int) -> None:
        rng, p = self.rng, self.pop
        observed_at = t0 + np.floor(rng.uniform(0, 10, self.size) * DAY).astype(np.int64)
        seen = p["linked"] & (p["joined_at"] < observed_at) & (observed_at < self.cal.end)
        idx = np.flatnonzero(seen)
        second = idx[p["second_platform"][idx] >= 0]
        ratio = rng.uniform(0.2, 0.6, len(second))
        member = np.concatenate([idx, second])
        self.rows.add(
            "social",
            member=member,
            at=observed_at[member],
            platform=np.concatenate([p["platform"][idx], p["second_platform"][second]]).astype(np.int8),
            followers=np.round(np.concatenate([p["followers"][idx], p["followers"][second] * ratio])).astype(np.int64),
        )

    def finish_blacklist(self) -> None:
        p = self.pop
        idx = np.flatnonzero(p["blacklisted_at"] < self.cal.end)
        self._status(idx, p["blacklisted_at"][idx], BLACKLISTED)


# --------------------------------------------------------------------------- assembly


def _timestamps(seconds: np.ndarray) -> np.ndarray:
    return seconds.astype("datetime64[s]").astype("datetime64[us]")


def _text(values: pa.Array) -> pd.Series:
    return pd.Series(values, dtype="str")


def _codes_to_text(codes: np.ndarray, labels: tuple[str, ...]) -> pd.Series:
    """Text column from integer codes; negative codes are null."""
    indices = pa.array(codes.astype(np.int64), mask=codes < 0)
    return _text(pa.array(labels, type=pa.string()).take(indices))


def _ids(prefix: str, count: int) -> pa.Array:
    width = max(7, len(str(max(count - 1, 0))))
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(count)), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "") if prefix else digits


def _nullable_int(values: np.ndarray, missing: np.ndarray) -> pd.Series:
    return pd.Series(pd.array(np.where(missing, 0, values), dtype="Int64")).mask(missing)


def _assemble(world: _World) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, np.ndarray]]]:
    """Canonical contract tables from the simulator's arrays, plus the sorted post and programme arrays."""
    p, rows, cal = world.pop, world.rows, world.cal
    member_ids = _ids("", world.size)

    def mid(idx: np.ndarray) -> pd.Series:
        return _text(member_ids.take(pa.array(idx.astype(np.int64), mask=idx < 0)))

    members = pd.DataFrame(
        {
            "member_id": mid(np.arange(world.size)),
            "joined_at": _timestamps(p["joined_at"]),
            "birth_year": _nullable_int(p["birth_year"], p["birth_year"] < 0),
            "gender": _codes_to_text(np.where(p["gender_missing"], -1, p["gender"]), ("F", "M", "U")),
            "city_tier": _nullable_int(p["city_tier"], p["city_tier"] < 0),
            "channel": _codes_to_text(p["channel"], CHANNELS),
            "marketing_consent": p["consent"].copy(),
        }
    )
    for trait in [k for k in p if k != "joined_at"]:
        del p[trait]  # only join times are needed from here on

    o = rows.take(
        "orders", {"member": np.int64, "at": np.int64, "amount": float, "category": np.int8, "refunded": bool}
    )
    keep = o["at"] < cal.end
    o = {k: v[keep] for k, v in o.items()}
    order = np.lexsort((o["member"], o["at"]))
    for key in list(o):
        o[key] = o[key][order]
    orders = pd.DataFrame(
        {
            "order_id": _text(_ids("O", len(order))),
            "member_id": mid(o["member"]),
            "ordered_at": _timestamps(o["at"]),
            "amount": o["amount"].astype(np.float64),
            "category": _codes_to_text(o["category"], CATEGORIES),
            "refunded": o["refunded"],
        }
    )

    e = rows.take("events", {"member": np.int32, "at": np.int64, "type": np.int8, "campaign": np.int32})
    order = np.lexsort((e["type"], e["member"], e["at"]))
    events = pd.DataFrame(
        {
            "member_id": mid(e.pop("member")[order]),
            "event_at": _timestamps(e.pop("at")[order]),
            "event_type": _codes_to_text(e.pop("type")[order], EVENT_TYPES),
            "campaign_id": _codes_to_text(e.pop("campaign")[order], cal.campaigns),
        },
        copy=False,
    )
    del order

    q = rows.take(
        "posts",
        {"member": np.int64, "at": np.int64, "platform": np.int8, "interactions": np.int64, "campaign": np.int32},
    )
    order = np.lexsort((q["member"], q["at"]))
    for key in list(q):
        q[key] = q[key][order]
    rng = np.random.default_rng([world.cfg.seed, 7])  # the split is cosmetic; keep it off the main stream
    likes = rng.binomial(q["interactions"], 0.72)
    comments = rng.binomial(q["interactions"] - likes, 0.3)
    saves = q["interactions"] - likes - comments
    unknown = q["at"] + 7 * DAY > cal.end
    posts = pd.DataFrame(
        {
            "post_id": _text(_ids("P", len(order))),
            "member_id": mid(q["member"]),
            "posted_at": _timestamps(q["at"]),
            "platform": _codes_to_text(q["platform"], PLATFORMS),
            "likes_7d": _nullable_int(likes, unknown),
            "comments_7d": _nullable_int(comments, unknown),
            "saves_7d": _nullable_int(saves, unknown),
            "campaign_id": _codes_to_text(q["campaign"], cal.campaigns),
        }
    )

    first_order = np.full(world.size, _NEVER, dtype=np.int64)
    np.minimum.at(first_order, o["member"], o["at"])
    r = rows.take("referrals", {"referrer": np.int64, "at": np.int64, "referee": np.int64})
    order = np.lexsort((r["referrer"], r["at"]))
    r = {k: v[order] for k, v in r.items()}
    has = r["referee"] >= 0
    safe = np.where(has, r["referee"], 0)
    joined = np.where(has, p["joined_at"][safe], 0)
    first = np.where(has, first_order[safe], _NEVER)
    referrals = pd.DataFrame(
        {
            "referrer_id": mid(r["referrer"]),
            "referred_at": _timestamps(r["at"]),
            "referee_id": mid(r["referee"]),
            "referee_joined_at": pd.Series(_timestamps(joined)).where(has),
            "referee_first_order_at": pd.Series(_timestamps(np.where(first == _NEVER, 0, first))).where(
                first != _NEVER
            ),
        }
    )

    g = rows.take("program", {"member": np.int64, "at": np.int64, "status": np.int8})
    keep = g["at"] < cal.end
    g = {k: v[keep] for k, v in g.items()}
    order = np.lexsort((g["status"], g["member"], g["at"]))
    g = {k: v[order] for k, v in g.items()}
    program = pd.DataFrame(
        {
            "member_id": mid(g["member"]),
            "event_at": _timestamps(g["at"]),
            "status": _codes_to_text(g["status"], PROGRAM_STATUSES),
        }
    )

    s = rows.take("social", {"member": np.int64, "at": np.int64, "platform": np.int8, "followers": np.int64})
    order = np.lexsort((s["platform"], s["member"], s["at"]))
    social = pd.DataFrame(
        {
            "member_id": mid(s["member"][order]),
            "platform": _codes_to_text(s["platform"][order], PLATFORMS),
            "followers": s["followers"][order].astype(np.int64),
            "observed_at": _timestamps(s["at"][order]),
        }
    )

    truth_m = np.concatenate([np.full(len(idx), m) for m, idx, _ in world.truth])
    truth_idx = np.concatenate([idx for _, idx, _ in world.truth])
    truth_p = np.concatenate([prob for _, _, prob in world.truth])
    truth = pd.DataFrame(
        {
            "member_id": mid(truth_idx),
            "as_of": _timestamps(cal.starts[truth_m]),
            "p_productive_if_invited": truth_p.astype(np.float64),
        }
    )
    tables = {
        "members": members,
        "orders": orders,
        "events": events,
        "posts": posts,
        "referrals": referrals,
        "program": program,
        "social": social,
        "truth": truth,
    }
    q["interactions"] = np.where(unknown, 0, q["interactions"])  # unknown counts add nothing
    internals = {"posts": q, "program": g}
    return tables, internals


def _data_end(tables: Mapping[str, pd.DataFrame]) -> int:
    """Latest timestamp in any behavioural table, in seconds (as `BrandData.data_end`)."""
    latest = []
    for df in tables.values():
        for col in df.columns:
            if col != "as_of" and pd.api.types.is_datetime64_any_dtype(df[col].dtype) and df[col].notna().any():
                latest.append(int(np.datetime64(df[col].max(), "s").astype(np.int64)))
    return max(latest)


def _outcomes(
    world: _World, tables: dict[str, pd.DataFrame], internals: dict[str, dict[str, np.ndarray]]
) -> pd.DataFrame:
    """The simulator's own bookkeeping of eligibility and the default label at every cutoff."""
    cfg, cal, p = world.cfg, world.cal, world.pop
    posts, program = internals["posts"], internals["program"]
    post_at, post_member = posts["at"], posts["member"]
    post_interactions = posts["interactions"]  # sorted by time
    enrolled = program["status"] == ENROLLED
    enrol_at, enrol_member = program["at"][enrolled], program["member"][enrolled]
    data_end = _data_end(tables)
    horizon = cfg.horizon_days * DAY
    cutoffs = cal.starts[1:]
    joined_counts = np.array([np.count_nonzero(p["joined_at"] < t) for t in cutoffs])
    bounds = np.concatenate([[0], np.cumsum(joined_counts)])
    member = np.empty(bounds[-1], dtype=np.int64)
    as_of = np.empty(bounds[-1], dtype=np.int64)
    eligible_col = np.empty(bounds[-1], dtype=bool)
    productive_col = np.empty(bounds[-1], dtype=bool)
    complete_col = np.empty(bounds[-1], dtype=bool)
    for m, t in enumerate(cutoffs.tolist(), start=1):
        rows = slice(bounds[m - 1], bounds[m])
        joined = np.flatnonzero(p["joined_at"] < t)
        lo, hi = np.searchsorted(post_at, [t, t + horizon])
        n_posts = np.bincount(post_member[lo:hi], minlength=world.size)
        n_interactions = np.bincount(post_member[lo:hi], weights=post_interactions[lo:hi], minlength=world.size)
        in_window = (enrol_at >= t) & (enrol_at < t + horizon)
        was_enrolled = np.zeros(world.size, dtype=bool)
        was_enrolled[enrol_member[in_window]] = True
        productive = was_enrolled & (n_posts >= cfg.min_posts) & (n_interactions >= cfg.min_interactions)
        eligible = np.zeros(world.size, dtype=bool)
        eligible[world.eligible_at[m]] = True
        member[rows] = joined
        as_of[rows] = t
        eligible_col[rows] = eligible[joined]
        productive_col[rows] = productive[joined]
        complete_col[rows] = t + horizon + 7 * DAY <= data_end
    member_ids = pa.array(tables["members"]["member_id"].array)
    out = pd.DataFrame(
        {
            "member_id": _text(member_ids.take(pa.array(member))),
            "as_of": _timestamps(as_of),
            "eligible": eligible_col,
            "productive": productive_col,
            "window_complete": complete_col,
        },
        copy=False,
    )
    return out


# --------------------------------------------------------------------------- public API


def simulate(cfg: SimConfig, progress: Callable[[int, int], None] | None = None) -> SimulatedWorld:
    """Simulate a brand world; `progress(done, total)` is called after every month."""
    world = _World(cfg)
    for m in range(cfg.months + 1):
        if m >= 1:
            world.cutoff(m)
        if m == cfg.months:
            break
        invited = eliminated = np.zeros(world.size, dtype=bool)
        if m >= 1:
            invited, eliminated = world.programme(m, world.eligible_at[m])
        world.month(m, invited, eliminated)
        if progress is not None:
            progress(m + 1, cfg.months)
    world.finish_blacklist()
    tables, internals = _assemble(world)
    outcomes = _outcomes(world, tables, internals)
    if cfg.dirty:
        tables = dirty_copy(tables, cfg.seed)
    logger.info("simulated %d members over %d months (seed %d)", len(tables["members"]), cfg.months, cfg.seed)
    return SimulatedWorld(tables=tables, outcomes=outcomes)


def _iso_text(stamps: pd.Series, aware: np.ndarray, utc_offset_hours: int = 8) -> pd.Series:
    """Timestamps as ISO text: naive local time, or UTC with a `+00:00` offset where `aware`."""
    naive = stamps.dt.strftime("%Y-%m-%d %H:%M:%S")
    utc = (stamps - pd.Timedelta(hours=utc_offset_hours)).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return naive.where(~aware, utc).astype("str")


def dirty_copy(tables: Mapping[str, pd.DataFrame], seed: int) -> dict[str, pd.DataFrame]:
    """A copy of `tables` with the dirt real exports carry; the inputs are not modified.

    Adds exact duplicate event rows, unknown event types, orders of unknown members,
    negative amounts, unknown post platforms, out-of-range birth years, and writes
    order and event times as ISO text where ~1% carry a `+00:00` offset (the same
    instant in UTC, assuming business time is UTC+8). Validation must reject the result
    (unknown members, negative amounts, platforms, birth years) and report the rest.
    """
    rng = np.random.default_rng([seed, 99])
    out = {name: df.copy() for name, df in tables.items()}

    def pick(df: pd.DataFrame, share: float, minimum: int = 3) -> np.ndarray:
        k = min(len(df), max(minimum, round(share * len(df))))
        return np.sort(rng.choice(len(df), size=k, replace=False))

    members = out["members"]
    bad_years = pick(members, 0.001)
    members.loc[bad_years, "birth_year"] = rng.choice([1850, 1899, 2099, 3024], size=len(bad_years))

    orders = out["orders"]
    negative = pick(orders, 0.001)
    orders.loc[negative, "amount"] = -orders.loc[negative, "amount"]
    strangers = orders.iloc[pick(orders, 0.001)].copy()
    strangers["order_id"] = [f"X{i:07d}" for i in range(len(strangers))]
    strangers["member_id"] = [f"UNKNOWN{i:05d}" for i in range(len(strangers))]
    orders = pd.concat([orders, strangers], ignore_index=True)
    orders["ordered_at"] = _iso_text(orders["ordered_at"], rng.random(len(orders)) < 0.01)
    out["orders"] = orders

    events = out["events"]
    if len(events):
        renamed = pick(events, 0.0005)
        events.loc[renamed, "event_type"] = rng.choice(["page_view", "CAMPAIGN_JOIN", "live_stream"], size=len(renamed))
        events = pd.concat([events, events.iloc[pick(events, 0.003)]], ignore_index=True)
        events["event_at"] = _iso_text(events["event_at"], rng.random(len(events)) < 0.01)
        out["events"] = events

    posts = out["posts"]
    if len(posts):
        odd = pick(posts, 0.002)
        posts.loc[odd, "platform"] = rng.choice(["tiktok", "XHS", "instagram"], size=len(odd))
    return out
