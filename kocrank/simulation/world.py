"""A simulated brand world: every contract table plus the simulator's own truth.

Members carry latent traits (brand affinity, spend level, purchase rate, sociability,
creativity, responsiveness to campaigns, reliability, audience size) that drive their
behaviour month by month, with churn, shopping-festival seasonality (618 in June,
Double 11 in November, year end / CNY) and members joining over time, some of them
referred by other members. A historical programme policy invites a few eligible
members at every monthly cutoff (the scenario's rule, partly at random; or an outside
policy, see `Simulation.run`); members also self-enrol after repeated campaign
participation. Enrolled KOCs post more, get upgraded or eliminated, and trial takers
who never deliver feedback are blacklisted. `kocrank.simulation.scenarios` names
worlds that differ in the policy, self-enrolment, organic posting and planted traps.

Two things make the world usable for model work:

* `truth` holds, for every member eligible at a cutoff, the probability that the
  member becomes a productive KOC within the horizon if invited then and if not
  (`kocrank.simulation.truth`), and the probability that the historical policy invited
  her (`kocrank.simulation.policy`).
* `outcomes` is the simulator's own bookkeeping of the default label and eligibility
  at every cutoff, computed from its internal arrays (independently of
  `features.labels`), so tests can check that the label code agrees with it.

Post interactions are counted exactly 7 days after posting; posts whose 7 days have
not passed by the end of the history carry null counts. Everything is vectorised over
members (one Python iteration per month, never per member or row) and driven by one
`numpy` generator seeded from `SimConfig.seed`: the same config gives identical tables.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.contract import EVENT_TYPES, PLATFORMS
from kocrank.simulation.assemble import assemble, dirty_copy, outcomes_table, snapshot_tables
from kocrank.simulation.config import (
    BLACKLISTED,
    CATEGORIES,
    DAY,
    DECLINED,
    ELIMINATE_AFTER_D,
    ELIMINATED,
    ENROLLED,
    FESTIVAL_DAYS,
    HOUR,
    HOUR_WEIGHTS,
    INTERACTION_SIGMA,
    INVITE_DELAY_H,
    INVITED,
    MONTH_DAYS,
    ORDER_SEASON,
    RESPONSE_DELAY_D,
    SIM_CHANNELS,
    UPGRADED,
    SimConfig,
)
from kocrank.simulation.policy import Budget, invitation_probability, invite, rule_score
from kocrank.simulation.population import (
    SPENDER_TRAP,
    accept_prob,
    assign_traps,
    event_rates,
    koc_post_rate,
    log_interactions,
    make_calendar,
    new_members,
    post_rate,
    sigmoid,
)
from kocrank.simulation.truth import CutoffContext, productive_probabilities, self_enrol_hazard

logger = logging.getLogger(__name__)


@dataclass
class TruthRows:
    """Truth at one cutoff for the eligible members `idx` (indices into the population)."""

    idx: np.ndarray
    if_invited: np.ndarray
    if_not_invited: np.ndarray
    p_invited: np.ndarray  # P(invited) under the policy that chose this cutoff's invitations; NaN if unknown
    accept: np.ndarray  # the invitation's two paths (`truth.PathProbabilities`)
    if_accepted: np.ndarray
    after_decline: np.ndarray


@dataclass(frozen=True)
class Invitations:
    """An outside policy's invitations at one cutoff: member indices, and P(invited) per eligible member if known."""

    members: np.ndarray
    probability: np.ndarray | None = None


@dataclass(frozen=True)
class SimulatedWorld:
    """Contract tables (canonical columns, naive local timestamps, str ids) and realised outcomes.

    Cutoffs are the month starts after `start` up to and including the end of the
    history (so a ranking made at the end can be scored against `truth`).
    `outcomes` has one row per member who joined before each monthly cutoff:
    `member_id, as_of, eligible, productive, window_complete` — `productive` is the
    default label as the simulator booked it; `window_complete` says whether
    `as_of + horizon + 7 days` lies within the data (only those labels are final).
    `traps`: the scenario's planted traps, `member_id, trap` (`spender` or `regular`).
    """

    tables: dict[str, pd.DataFrame]
    outcomes: pd.DataFrame
    traps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"member_id": [], "trap": []}, dtype="str"))

    @property
    def base_rate(self) -> float:
        """Share of productive members among eligible ones, over cutoffs with a complete window."""
        done = self.outcomes.loc[self.outcomes["eligible"] & self.outcomes["window_complete"], "productive"]
        return float(done.mean()) if len(done) else float("nan")


# --------------------------------------------------------------------------- helpers


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    return values if len(values) >= n else np.concatenate([values, np.zeros(n - len(values), values.dtype)])


def _uniform_times(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Times in `[lo, hi)` with a day/night rhythm (kept uniform where the rhythm would leave the range)."""
    t = lo + np.floor(rng.random(len(lo)) * (hi - lo)).astype(np.int64)
    hour = rng.choice(24, size=len(lo), p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
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

    def peek(self, table: str, columns: Mapping[str, type]) -> dict[str, np.ndarray]:
        """All rows of `table` so far as one array per column; the chunks stay."""
        parts = self.chunks.get(table, [])
        return {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0, dt) for c, dt in columns.items()}

    def take(self, table: str, columns: Mapping[str, type]) -> dict[str, np.ndarray]:
        """All rows of `table` as one array per column; the chunks are released."""
        parts = self.chunks.pop(table, [])
        out = {}
        for c, dt in columns.items():
            out[c] = np.concatenate([p.pop(c) for p in parts]) if parts else np.zeros(0, dt)
        return out


# --------------------------------------------------------------------------- the world


class World:
    """Mutable simulation state; `simulate` drives it one month at a time."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.cal = make_calendar(cfg)
        self.rows = _Rows()
        self.recent: deque[dict[str, np.ndarray]] = deque(maxlen=3)  # last 3 months' aggregates
        self.eligible_at: dict[int, np.ndarray] = {}
        self.spec = cfg.spec
        self.trap_rng = np.random.default_rng([cfg.seed, 31])  # traps draw from their own stream
        self.truth: dict[int, TruthRows] = {}
        self.pending: list[
            tuple[np.ndarray, np.ndarray]
        ] = []  # referees (referrer, joined_at) admitted after the month
        self.pop = self._initial_members()
        assign_traps(self.trap_rng, self.pop, self.spec)

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
        channel = rng.choice(len(SIM_CHANNELS), size=n, p=[0.3, 0.32, 0.18, 0.15, 0.05])
        return new_members(rng, joined, channel, start)

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
        """Eligibility and truth at cutoff `m` (before its invitations)."""
        idx = np.flatnonzero(self.eligible(int(self.cal.starts[m])))
        self.eligible_at[m] = idx
        n = self.size
        joins = [np.zeros(n)] * (3 - len(self.recent)) + [_pad(month["campaign_joins"], n) for month in self.recent]
        after = self.cal.ahead(m, months=max(4, int(np.ceil(self.cfg.horizon_days / 28)) + 1))
        ctx = CutoffContext(after[0], after[1], [j[idx] for j in joins])
        paths = productive_probabilities(self.pop, idx, ctx, self.cfg)
        self.truth[m] = TruthRows(
            idx, paths.if_invited, paths.if_not_invited, np.full(len(idx), np.nan),
            paths.accept, paths.if_accepted, paths.after_decline,
        )

    def recent_aggregates(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Last three months' spend, orders, activity, campaign joins and posts of members `idx`."""
        return {name: self._aggregate(name)[idx] for name in ("spend", "orders", "activity", "campaign_joins", "posts")}

    def programme(
        self, m: int, eligible: np.ndarray, outside: Invitations | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Eliminations, upgrades and invitations at cutoff `m`; returns (invited, eliminated) masks.

        The scenario's historical rule picks the invitations unless `outside` (another
        policy's decision at this cutoff) is given.
        """
        rng, p, n, t = self.rng, self.pop, self.size, int(self.cal.starts[m])
        posts, interactions = self._aggregate("posts"), self._aggregate("interactions")
        # never judged within the label horizon, so an invited KOC keeps posting through the window (truth relies on it)
        judge_after = max(ELIMINATE_AFTER_D, self.cfg.horizon_days + 10) * DAY
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
        if outside is not None:
            chosen = np.asarray(outside.members, dtype=np.int64)
            stray = np.setdiff1d(chosen, eligible)
            if len(stray) or len(np.unique(chosen)) != len(chosen):
                raise ValueError(
                    f"the outside policy invited {len(stray)} member(s) not eligible at cutoff {m} "
                    f"(e.g. {stray[:5].tolist()}) or the same member twice"
                )
            invited[chosen] = True
            if outside.probability is not None:
                self.truth[m].p_invited[:] = outside.probability
        elif len(eligible):
            budget = Budget.for_eligible(len(eligible), self.spec)
            score = rule_score(self.spec.policy, self.recent_aggregates(eligible))
            invited[invite(rng, eligible, score, budget)] = True
            if m in self.truth:
                self.truth[m].p_invited[:] = invitation_probability(score, budget)
        idx = np.flatnonzero(invited)
        invited_at = t + np.floor(rng.uniform(*INVITE_DELAY_H, len(idx)) * HOUR).astype(np.int64)
        answered_at = invited_at + np.floor(rng.uniform(*RESPONSE_DELAY_D, len(idx)) * DAY).astype(np.int64)
        accepts = rng.random(len(idx)) < accept_prob(p)[idx]
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
            & (campaigns_3m >= self.spec.self_enrol_min_campaigns)
        )
        hazard = self_enrol_hazard(p, campaigns_3m, self.spec.self_enrol_rate)
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

        spend, orders = self._orders(m, level * ORDER_SEASON[month_of_year], active_from, t1)
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
        festival = FESTIVAL_DAYS.get(int(self.cal.month_of_year[m]))
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
        for name, rate in event_rates(p).items():
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
        converts = rng.random(k) < sigmoid(-2.0 + 0.5 * p["sociability"][referrer] + 0.4 * p["affinity"][referrer])
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
        fresh = new_members(
            rng,
            joined_at,
            np.full(len(joined_at), SIM_CHANNELS.index("referral")),
            int(self.cal.starts[0]),
            p["affinity"][referrer],
        )
        assign_traps(self.trap_rng, fresh, self.spec)
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
        ordinary = rng.poisson(
            post_rate(p, self.spec.organic_posting) * mood * p["alive"] * before_share * (1 + 0.6 * campaign_joins)
        )
        koc = rng.poisson(koc_post_rate(p) * (t1 - koc_from) / (MONTH_DAYS * DAY))
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
        mu = log_interactions(p["creativity"][member], p["followers"][member], p["trap"][member])
        total = np.floor(np.exp(mu + INTERACTION_SIGMA * rng.standard_normal(k))).astype(np.int64)
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


# --------------------------------------------------------------------------- public API


OutsidePolicy = Callable[["Simulation", int, np.ndarray], Invitations]


class Simulation:
    """A world advanced month by month, whose invitations may come from an outside policy.

    `run(until, policy)` simulates months `[next_month, until)`; at each cutoff `m >= 1`
    (the start of month `m`) `policy(simulation, m, eligible)` returns the `Invitations`,
    or the scenario's historical rule decides when `policy` is None. `snapshot()` gives
    the contract tables as a brand would export them just before the next cutoff, and
    `branch()` an independent copy, so counterfactual policies can start from one history.
    """

    def __init__(self, cfg: SimConfig, progress: Callable[[int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.world = World(cfg)
        self.next_month = 0
        self._progress = progress

    def as_of(self, m: int) -> pd.Timestamp:
        """Cutoff `m` (the first instant of month `m`) as a naive local timestamp."""
        return pd.Timestamp(int(self.world.cal.starts[m]), unit="s")

    def run(self, until: int, policy: OutsidePolicy | None = None) -> None:
        """Simulate months up to (not including) `until`."""
        world = self.world
        if not self.next_month <= until <= self.cfg.months:
            raise ValueError(f"cannot run to month {until}: at month {self.next_month} of {self.cfg.months}")
        for m in range(self.next_month, until):
            invited = eliminated = np.zeros(world.size, dtype=bool)
            if m >= 1:
                world.cutoff(m)
                outside = policy(self, m, world.eligible_at[m]) if policy is not None else None
                invited, eliminated = world.programme(m, world.eligible_at[m], outside)
            world.month(m, invited, eliminated)
            self.next_month = m + 1
            if self._progress is not None:
                self._progress(m + 1, self.cfg.months)

    def snapshot(self) -> dict[str, pd.DataFrame]:
        """Contract tables of everything that happened before cutoff `next_month` (no truth)."""
        return snapshot_tables(self.world, int(self.world.cal.starts[self.next_month]))

    def branch(self) -> Simulation:
        """An independent copy: both continue from the same state and random stream."""
        return copy.deepcopy(self)

    def finish(self) -> SimulatedWorld:
        """Run the remaining months with the historical rule, then assemble tables, truth and outcomes."""
        self.run(self.cfg.months)
        world, cfg = self.world, self.cfg
        world.cutoff(cfg.months)
        world.finish_blacklist()
        tables, internals = assemble(world)
        outcomes = outcomes_table(world, tables, internals)
        trap = internals["trap"]["code"]
        planted = np.flatnonzero(trap > 0)
        traps = pd.DataFrame(
            {
                "member_id": tables["members"]["member_id"].to_numpy()[planted],
                "trap": np.where(trap[planted] == SPENDER_TRAP, "spender", "regular"),
            },
            dtype="str",
        )
        if cfg.dirty:
            tables = dirty_copy(tables, cfg.seed)
        logger.info(
            "simulated %d members over %d months (seed %d, scenario %s)",
            len(tables["members"]),
            cfg.months,
            cfg.seed,
            cfg.scenario,
        )
        return SimulatedWorld(tables=tables, outcomes=outcomes, traps=traps)


def simulate(cfg: SimConfig, progress: Callable[[int, int], None] | None = None) -> SimulatedWorld:
    """Simulate a brand world under its scenario's historical rule; `progress(done, total)` after every month."""
    return Simulation(cfg, progress).finish()
