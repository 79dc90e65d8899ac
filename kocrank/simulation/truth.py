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
from scipy.special import gammaln

from kocrank.simulation.config import INTERACTION_SIGMA, INVITE_DELAY_H, MONTH_DAYS, TRUTH_DELAYS_D, SimConfig
from kocrank.simulation.population import accept_prob, event_rates, koc_post_rate, log_interactions, post_rate

SELF_ENROL_HAZARD = 0.09  # per campaign join of the last three months, before the member's own factor
_MOOD_SHAPE = 4.0  # monthly mood ~ Gamma(4, 1/4): campaign joins are negative binomial
_MAX_JOINS = 15  # campaign joins per month tracked exactly; the tail is lumped into the last count
_NEGLIGIBLE = 1e-9  # self-enrolment probabilities below this are not worth the posting calculation


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


@functools.lru_cache(maxsize=8)
def _productive_table(min_interactions: int, min_posts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(N >= min_posts and N posts reach the threshold), N ~ Poisson(lam), on a (mu, log lam) grid.

    Counts beyond the success table's last column count as that many posts.
    """
    grid, table = _success_table(min_interactions)
    log_lam = np.arange(np.log(1e-4), np.log(400.0) + 1e-9, 0.01)
    lam = np.exp(log_lam)[None, :]
    n = np.arange(table.shape[1])[:, None]
    pmf = np.exp(n * np.log(lam) - lam - gammaln(n + 1))  # [posts, lam]
    pmf[-1] += np.clip(1.0 - pmf.sum(axis=0), 0.0, 1.0)
    pmf[:min_posts] = 0.0
    return grid, log_lam, np.clip(table @ pmf, 0.0, 1.0)


def _p_productive(expected_posts: np.ndarray, mu: np.ndarray, min_posts: int, min_interactions: int) -> np.ndarray:
    """P(N >= min_posts and the N posts' interactions reach min_interactions), N ~ Poisson(expected_posts).

    Bilinear interpolation in `_productive_table` (median log interactions `mu`, log of the expected posts).
    """
    grid, log_lam, table = _productive_table(min_interactions, min_posts)

    def position(values: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.clip((values - axis[0]) / (axis[1] - axis[0]), 0, len(axis) - 1.000001)
        lo = pos.astype(np.int64)
        return lo, pos - lo

    i, u = position(mu, grid)
    j, v = position(np.log(np.maximum(expected_posts, 1e-300)), log_lam)
    return (
        (1 - u) * (1 - v) * table[i, j]
        + u * (1 - v) * table[i + 1, j]
        + (1 - u) * v * table[i, j + 1]
        + u * v * table[i + 1, j + 1]
    )


@dataclass(frozen=True)
class CutoffContext:
    """What truth needs to know about the months around one cutoff.

    `month_starts_days`: start of the cutoff's month and the following ones, in days after
    the cutoff (the first is 0), enough to cover the horizon; `intensities`: campaign
    intensity of each of those months; `recent_joins`: each member's campaign joins in the
    three months before the cutoff (oldest first, aligned with the members scored).
    """

    month_starts_days: Sequence[float]
    intensities: Sequence[float]
    recent_joins: Sequence[np.ndarray]


def _posting_success(
    koc_rate: np.ndarray, pre_rate: np.ndarray, mu: np.ndarray, enrol_day: float, cfg: SimConfig
) -> np.ndarray:
    """P(productive | enrolled `enrol_day` days after the cutoff): enough posts and interactions in the window."""
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

    A member self-enrols in a month with probability `1 - exp(-hazard)` (`self_enrol_hazard`
    of `c`, the campaign joins of the three months before) when `c` is at least the
    scenario's minimum; she must be alive (churn strikes at each month end). Months 1 and
    2 are exact over the joins of the months after the cutoff; later months (horizons
    beyond three months) treat their join counts as independent of the earlier months'.
    Returns (from_0, from_1): `from_1` is for a member who could not enrol in month 0
    (she was invited and declined).
    """
    spec = cfg.spec
    n = len(sub["creativity"])
    rate = event_rates(sub)["campaign_join"]
    k = np.arange(_MAX_JOINS + 1)
    a1, a2, a3 = (np.asarray(j, dtype=np.int64) for j in ctx.recent_joins)
    grid = np.arange(int((a1 + a2 + a3).max(initial=0)) + 3 * _MAX_JOINS + 1)
    q = -np.expm1(-self_enrol_hazard(sub, grid[None, :], spec.self_enrol_rate)) * (
        grid >= spec.self_enrol_min_campaigns
    )

    def q_at(c: np.ndarray) -> np.ndarray:  # q for join counts c[n, ...]
        return np.take_along_axis(q, c.reshape(n, -1), axis=1).reshape(c.shape)

    pmfs = [_join_pmf(rate * ctx.intensities[j]) for j in range(n_months)]
    survive = (1.0 - sub["churn_hazard"]) ** np.arange(n_months)[:, None] * sub["alive"]
    q0 = q_at(a1 + a2 + a3)
    from_0, from_1 = [survive[0] * q0], [np.zeros(n)]
    if n_months > 1:
        q1 = q_at((a2 + a3)[:, None] + k[None, :])  # [n, joins in month 0]
        enrol1 = (pmfs[0] * q1).sum(axis=1)
        from_0.append(survive[1] * (1.0 - q0) * enrol1)
        from_1.append(survive[1] * enrol1)
    if n_months > 2:  # sum over joins k0, k1 of P(k0) (1 - q1(k0)) P(k1) q(a3 + k0 + k1), by s = k0 + k1
        by_sum = _sum_pmf(pmfs[0] * (1.0 - q1), pmfs[1])
        joint = (by_sum * q_at(a3[:, None] + np.arange(by_sum.shape[1])[None, :])).sum(axis=1)
        from_0.append(survive[2] * (1.0 - q0) * joint)
        from_1.append(survive[2] * joint)
    for j in range(3, n_months):
        c = _sum_pmf(_sum_pmf(pmfs[j - 3], pmfs[j - 2]), pmfs[j - 1])
        qj = (c * q[:, : c.shape[1]]).sum(axis=1)
        none_1 = np.clip(1.0 - sum(from_1[i] / np.maximum(survive[i], 1e-12) for i in range(1, j)), 0.0, 1.0)
        from_0.append(survive[j] * (1.0 - q0) * none_1 * qj)
        from_1.append(survive[j] * none_1 * qj)
    return from_0, from_1


def _spread(values: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[at] = values
    return out


@dataclass(frozen=True)
class PathProbabilities:
    """Truth at one cutoff for members `idx`, and the two paths an invitation opens.

    `if_invited = accept * if_accepted + (1 - accept) * after_decline`: what `two_path`
    (training/targets.py) estimates factor by factor, so `koc eval --decompose` can tell which
    factor the target gap sits in.
    """

    if_invited: np.ndarray
    if_not_invited: np.ndarray
    accept: np.ndarray  # P(accepts | invited now)
    if_accepted: np.ndarray  # P(productive | accepted now)
    after_decline: np.ndarray  # P(productive | declined now): a later self-enrolment


def productive_probabilities(
    pop: Mapping[str, np.ndarray], idx: np.ndarray, ctx: CutoffContext, cfg: SimConfig
) -> PathProbabilities:
    """P(productive | invited at this cutoff), P(productive | not invited) and the paths, for members `idx`.

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

    koc_rate = koc_post_rate(sub)
    mu = log_interactions(sub["creativity"], sub["followers"], sub["trap"])
    invite_delay = np.mean(INVITE_DELAY_H) / 24
    on_acceptance = np.zeros(len(idx))
    for delay in TRUTH_DELAYS_D:
        on_acceptance += _posting_success(koc_rate, pre_rate, mu, invite_delay + delay, cfg)
    on_acceptance /= len(TRUTH_DELAYS_D)

    starts = list(ctx.month_starts_days)
    n_months = sum(1 for s in starts[:-1] if s < cfg.horizon_days)
    alive = np.flatnonzero(sub["alive"])  # a lapsed member never self-enrols
    alive_ctx = CutoffContext(ctx.month_starts_days, ctx.intensities, [j[alive] for j in ctx.recent_joins])
    paths = _self_enrolment_paths({k: v[alive] for k, v in sub.items()}, alive_ctx, cfg, n_months)
    from_0, from_1 = ([_spread(p, alive, len(idx)) for p in months] for months in paths)
    not_invited = np.zeros(len(idx))
    after_decline = np.zeros(len(idx))
    for j in range(n_months):
        some = np.flatnonzero((from_0[j] > _NEGLIGIBLE) | (from_1[j] > _NEGLIGIBLE))  # the rest add nothing
        month_pre = organic[some] * (1 + 0.6 * rates["campaign_join"][some] * ctx.intensities[j])
        lo, hi = starts[j], starts[j + 1]
        days = [day for day in (lo + point * (hi - lo) for point in (1 / 6, 1 / 2, 5 / 6)) if day < cfg.horizon_days]
        productive = (
            sum(
                (_posting_success(koc_rate[some], month_pre, mu[some], day, cfg) for day in days),
                np.zeros(len(some)),
            )
            / 3
        )
        not_invited[some] += from_0[j][some] * productive
        after_decline[some] += from_1[j][some] * productive
    accept = accept_prob(sub)
    invited = accept * on_acceptance + (1.0 - accept) * after_decline
    return PathProbabilities(
        if_invited=np.clip(invited, 0.0, 1.0),
        if_not_invited=np.clip(not_invited, 0.0, 1.0),
        accept=accept,
        if_accepted=np.clip(on_acceptance, 0.0, 1.0),
        after_decline=np.clip(after_decline, 0.0, 1.0),
    )
