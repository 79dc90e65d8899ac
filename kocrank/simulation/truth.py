"""The simulator's truth: each eligible member's chance of becoming a productive KOC, invited or not.

Both probabilities are computed from the latent traits at the cutoff by the same rates
the simulation draws from (`kocrank.simulation.population`), so they are what the
simulated outcomes converge to — `tests/data/test_scenarios.py` checks that, among
invited and among not-invited members, the realised rate matches the mean truth.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kocrank.simulation.config import INTERACTION_SIGMA, INVITE_DELAY_H, MONTH_DAYS, TRUTH_DELAYS_D, SimConfig
from kocrank.simulation.population import accept_prob, event_rates, koc_post_rate, log_interactions, post_rate

SELF_ENROL_HAZARD = 0.09  # per campaign join of the last three months, before the member's own factor
_MOOD_SHAPE = 4.0  # monthly mood ~ Gamma(4, 1/4): campaign joins are negative binomial
_MAX_JOINS = 15  # campaign joins per month tracked exactly; the tail is lumped into the last count


def self_enrol_hazard(pop: Mapping[str, np.ndarray], joins: np.ndarray, rate: float) -> np.ndarray:
    """Monthly self-enrolment hazard given the campaign joins of the last three months.

    `joins` may carry extra trailing axes (counts to sum over); `rate` is the scenario's multiplier.
    """
    own = np.exp(0.5 * pop["creativity"] + 0.2 * pop["affinity"])
    own = own.reshape(own.shape + (1,) * (np.ndim(joins) - own.ndim))
    return SELF_ENROL_HAZARD * joins * own * rate


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
        total = np.cumsum(np.floor(np.exp(mu + INTERACTION_SIGMA * z)), axis=1)
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


@dataclass(frozen=True)
class CutoffContext:
    """What truth needs to know about the months around one cutoff.

    `month_starts_days`: start of the cutoff's month and the following ones, in days after
    the cutoff (the first is 0), enough to cover the horizon; `intensities`: campaign
    intensity of each of those months; `recent_joins`: each member's campaign joins in the
    three months before the cutoff (oldest first, indexed like the population).
    """

    month_starts_days: Sequence[float]
    intensities: Sequence[float]
    recent_joins: Sequence[np.ndarray]


def _posting_success(
    sub: Mapping[str, np.ndarray], enrol_day: np.ndarray, pre_rate: np.ndarray, cfg: SimConfig
) -> np.ndarray:
    """P(productive | enrolled `enrol_day` days after the cutoff): enough posts and interactions in the window."""
    koc_rate = koc_post_rate(sub)
    mu = log_interactions(sub["creativity"], sub["followers"], sub["trap"])
    expected = (koc_rate * (cfg.horizon_days - enrol_day) + pre_rate * enrol_day) / MONTH_DAYS
    return _p_productive(expected, mu, cfg.min_posts, cfg.min_interactions)


def _join_pmf(mean: np.ndarray) -> np.ndarray:
    """P(k campaign joins in a month), k = 0.._MAX_JOINS (tail in the last), negative binomial with `mean`."""
    odds = mean / (_MOOD_SHAPE + mean)
    pmf = np.empty((len(mean), _MAX_JOINS + 1))
    pmf[:, 0] = (1.0 - odds) ** _MOOD_SHAPE
    for k in range(_MAX_JOINS):
        pmf[:, k + 1] = pmf[:, k] * (k + _MOOD_SHAPE) / (k + 1) * odds
    pmf[:, -1] += np.clip(1.0 - pmf.sum(axis=1), 0.0, 1.0)
    return pmf


def _sum_pmf(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distribution of the sum of two independent counts."""
    out = np.zeros((len(a), a.shape[1] + b.shape[1] - 1))
    for k in range(b.shape[1]):
        out[:, k : k + a.shape[1]] += a * b[:, k : k + 1]
    return out


def _self_enrolment_paths(
    sub: Mapping[str, np.ndarray], ctx: CutoffContext, cfg: SimConfig, n_months: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """P(first self-enrolment in month j), j < n_months, counting from month 0 and from month 1.

    A member self-enrols in a month with probability `1 - exp(-factor * c)` when `c`, the
    campaign joins of the three months before, is at least the scenario's minimum; she
    must be alive (churn strikes at each month end). Months 1 and 2 are exact over the
    joins of the months after the cutoff; later months (horizons beyond three months)
    treat their join counts as independent of the earlier months'.
    Returns (from_0, from_1): `from_1` is for a member who could not enrol in month 0
    (she was invited and declined).
    """
    spec = cfg.spec
    n = len(sub["creativity"])
    rate = event_rates(sub)["campaign_join"]
    counts = np.arange(_MAX_JOINS + 1)

    def q(c: np.ndarray) -> np.ndarray:
        return -np.expm1(-self_enrol_hazard(sub, c, spec.self_enrol_rate)) * (c >= spec.self_enrol_min_campaigns)

    a1, a2, a3 = (np.asarray(j, dtype=np.float64) for j in ctx.recent_joins)
    pmfs = [_join_pmf(rate * ctx.intensities[j]) for j in range(n_months)]
    survive = (1.0 - sub["churn_hazard"]) ** np.arange(n_months)[:, None] * sub["alive"]
    q0 = q(a1 + a2 + a3)
    from_0, from_1 = [survive[0] * q0], [np.zeros(n)]
    if n_months > 1:
        q1 = q((a2 + a3)[:, None] + counts[None, :])  # [n, k0]
        enrol1 = (pmfs[0] * q1).sum(axis=1)
        from_0.append(survive[1] * (1.0 - q0) * enrol1)
        from_1.append(survive[1] * enrol1)
    if n_months > 2:
        joint = np.zeros(n)  # sum over k0, k1 of P(k0) P(k1) (1 - q1(k0)) q2(k0 + k1)
        for k0 in range(_MAX_JOINS + 1):
            q2 = q((a3 + k0)[:, None] + counts[None, :])
            joint += pmfs[0][:, k0] * (1.0 - q1[:, k0]) * (pmfs[1] * q2).sum(axis=1)
        from_0.append(survive[2] * (1.0 - q0) * joint)
        from_1.append(survive[2] * joint)
    for j in range(3, n_months):
        c = _sum_pmf(_sum_pmf(pmfs[j - 3], pmfs[j - 2]), pmfs[j - 1])
        qj = (c * q(np.broadcast_to(np.arange(c.shape[1], dtype=np.float64), c.shape))).sum(axis=1)
        none_1 = np.clip(1.0 - sum(from_1[i] / np.maximum(survive[i], 1e-12) for i in range(1, j)), 0.0, 1.0)
        from_0.append(survive[j] * (1.0 - q0) * none_1 * qj)
        from_1.append(survive[j] * none_1 * qj)
    return from_0, from_1


def productive_probabilities(
    pop: Mapping[str, np.ndarray], idx: np.ndarray, ctx: CutoffContext, cfg: SimConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(P(productive | invited at this cutoff), P(productive | not invited)) for members `idx`.

    Invited: she accepts with `accept_prob`, then posts as a KOC (a Poisson process at
    `koc_post_rate`; KOCs neither churn nor get eliminated within the horizon) after
    posting at the ordinary rate until she answers; if she declines she may still
    self-enrol in a later month of the window. Not invited (now or later in the window):
    only self-enrolment (`_self_enrolment_paths`), after which she posts as a KOC.
    Productive means at least `min_posts` posts in the window whose 7-day interactions
    (floor(lognormal(mu, 1)) each, mu from creativity and the audience at the cutoff)
    reach `min_interactions`. Mood and the campaign boost of ordinary posting enter at
    their expected values; response delays and self-enrolment times by the midpoint
    rule; blacklisting within the window is ignored.
    """
    sub = {k: v[idx] for k, v in pop.items()}
    rates = event_rates(sub)
    organic = post_rate(sub, cfg.spec.organic_posting) * sub["alive"]
    pre_rate = organic * (1 + 0.6 * rates["campaign_join"] * ctx.intensities[0])

    invite_delay = np.mean(INVITE_DELAY_H) / 24
    on_acceptance = np.zeros(len(idx))
    for delay in TRUTH_DELAYS_D:
        on_acceptance += _posting_success(sub, np.full(len(idx), invite_delay + delay), pre_rate, cfg)
    on_acceptance /= len(TRUTH_DELAYS_D)

    starts = list(ctx.month_starts_days)
    n_months = sum(1 for s in starts[:-1] if s < cfg.horizon_days)
    from_0, from_1 = _self_enrolment_paths(sub, ctx, cfg, n_months)
    not_invited = np.zeros(len(idx))
    after_decline = np.zeros(len(idx))
    for j in range(n_months):
        lo, hi = starts[j], starts[j + 1]
        success = np.zeros(len(idx))
        for point in (1 / 6, 1 / 2, 5 / 6):
            day = lo + point * (hi - lo)
            if day < cfg.horizon_days:
                month_pre = organic * (1 + 0.6 * rates["campaign_join"] * ctx.intensities[j])
                success += _posting_success(sub, np.full(len(idx), day), month_pre, cfg)
        success /= 3
        not_invited += from_0[j] * success
        after_decline += from_1[j] * success
    accept = accept_prob(sub)
    invited = accept * on_acceptance + (1.0 - accept) * after_decline
    return np.clip(invited, 0.0, 1.0), np.clip(not_invited, 0.0, 1.0)
