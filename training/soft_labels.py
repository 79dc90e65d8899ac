"""Denoised productivity labels: how likely a member's posting is to meet the bar, not whether it did once.

The default label's productivity rule thresholds two counts of one window: at least
`min_posts` posts whose summed 7-day interactions reach `min_interactions`. The 0/1 outcome
keeps one bit of what the window showed: a member with nine well-liked posts and one who
scraped past the bar both read 1, and one with two good posts reads 0 like a member who never
posted. Where the rows a component learns from are few (the enrolled rows are ~1-4% of the
snapshot), that bit is the noise the target gap is made of.

`posterior_productive` replaces the bit, for the rows a component learns from, by the
probability that a fresh window *like this member's* meets the bar, under an empirical-Bayes
model of the window's posts:
- posts per window N ~ Poisson(λ), λ ~ Gamma(a, b) across members; a member with n posts has
  λ ~ Gamma(a + n, b + 1);
- each post's log(1 + interactions) ~ Normal(θ, σ²), θ ~ Normal(θ0, τ²) across members; a
  member whose n posts sum to S1 on that scale has θ ~ Normal((θ0/τ² + S1/σ²) / P, 1 / P),
  P = 1/τ² + n/σ²;
- soft label = P(N' ≥ min_posts and Σ interactions' ≥ min_interactions): exact over N' (its
  posterior predictive is negative binomial), Gauss-Hermite quadrature over θ, and a seeded Monte
  Carlo table of P(k posts' interactions reach the bar | θ) (`interaction_table`).
The priors (a, b, θ0, τ², σ²) are fitted per cutoff by the method of moments on that cutoff's
enrolled members (`fit_prior`), so a row's soft label depends only on its own cutoff's window:
the test cutoff's outcomes never shape a training label. Nothing here reads a feature.

The soft label is learnt as a probability: LightGBM's `cross_entropy` objective on the soft
label itself (`with_soft_label`), the same loss as entering each row twice (a positive weighted
by `weight × soft`, a negative by `weight × (1 - soft)`) with half the rows. Early stopping and
calibration keep the observed 0/1 outcome of the validation rows.

It needs the default label's own evidence (the posts of the window): with a brand-supplied
`labels` table the rule behind the label is unknown, and the soft components are unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.targets import POSTING_COLUMNS  # per row: the window's post count, sum and sum of squares of log(1 + v)

MAX_POSTS = 64  # posts per window counted apart; more are lumped at 64 (past the count bar and any sane interaction bar)
MIN_TAU2 = 0.05  # floor of the between-member variance of θ (a cutoff with few posters estimates ~0)
QUADRATURE_NODES = 24  # Gauss-Hermite nodes over a member's θ
THETA_GRID = 256  # θ values of the interaction table (linear interpolation between them)
TABLE_DRAWS = 20_000  # Monte Carlo draws of the interaction table, shared by every θ and k
CHUNK_ROWS = 2000


@dataclass(frozen=True)
class PostingPrior:
    """The population a cutoff's enrolled members' windows are drawn from (method of moments)."""

    shape: float  # a: Gamma shape of the posts-per-window rate
    rate: float  # b: Gamma rate
    theta0: float  # mean of the members' mean log(1 + interactions)
    tau2: float  # between-member variance of that mean
    sigma2: float  # within-member variance of a post's log(1 + interactions)


def fit_prior(posts: np.ndarray, log_sum: np.ndarray, log_sq: np.ndarray) -> PostingPrior:
    """The method-of-moments prior of one cutoff's windows (`posts` count, sum and sum of squares of log(1 + v))."""
    posts = np.asarray(posts, dtype=float)
    mean, var = float(posts.mean()), float(posts.var())
    # overdispersed counts: negative binomial moments; near-Poisson: a tight Gamma around the mean
    rate = mean / (var - mean) if var > mean * 1.01 else 100.0
    shape = max(mean * rate, 1e-3)
    several = posts >= 2
    within = (log_sq - log_sum**2 / np.maximum(posts, 1))[several].sum()
    sigma2 = max(float(within / max((posts[several] - 1).sum(), 1)), 1e-3)
    some = posts >= 1
    if not some.any():
        return PostingPrior(shape, rate, 0.0, MIN_TAU2, sigma2)
    means = log_sum[some] / posts[some]
    tau2 = max(float(means.var() - (sigma2 / posts[some]).mean()), MIN_TAU2)
    return PostingPrior(shape, rate, float(means.mean()), tau2, sigma2)


def interaction_table(
    theta: np.ndarray, sigma2: float, min_posts: int, min_interactions: int, *, seed: np.random.SeedSequence | int = 0
) -> np.ndarray:
    """T[g, k]: P(k posts' interactions sum to `min_interactions` | θ = theta[g]) for k ≥ `min_posts`, else 0.

    k = 0..MAX_POSTS; each post's interactions exp(θ + σZ) - 1. The sum of k of them reaches the
    bar when S_k = Σ exp(σZ_j) ≥ (min_interactions + k) exp(-θ), so one seeded Monte Carlo sample
    of S_k (`TABLE_DRAWS` draws, shared by every θ and k: T rises in θ and k) serves every θ.
    """
    z = np.random.default_rng(seed).standard_normal((TABLE_DRAWS, MAX_POSTS))
    sums = np.sort(np.cumsum(np.exp(np.sqrt(sigma2) * z), axis=1), axis=0)  # [draws, k - 1], each column sorted
    table = np.zeros((len(theta), MAX_POSTS + 1))
    for k in range(max(min_posts, 1), MAX_POSTS + 1):
        needed = (min_interactions + k) * np.exp(-np.asarray(theta, dtype=float))
        table[:, k] = 1.0 - np.searchsorted(sums[:, k - 1], needed, side="left") / TABLE_DRAWS
    return table


def posterior_productive(
    posts: np.ndarray,
    log_sum: np.ndarray,
    prior: PostingPrior,
    min_posts: int,
    min_interactions: int,
    *,
    seed: np.random.SeedSequence | int = 0,
) -> np.ndarray:
    """P(a fresh window meets the bar | this window's posts), per row (see the module docstring).

    Exact over the posts count (its posterior predictive is negative binomial) and by Gauss-Hermite
    quadrature over θ; only the interactions of k posts at a given θ come from a seeded Monte Carlo
    table (`interaction_table`), so the result is deterministic and cheap per row.
    """
    posts = np.asarray(posts, dtype=float)
    log_sum = np.asarray(log_sum, dtype=float)
    if len(posts) == 0:
        return np.empty(0)
    nodes, node_weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    precision = 1.0 / prior.tau2 + posts / prior.sigma2
    centre = (prior.theta0 / prior.tau2 + log_sum / prior.sigma2) / precision
    spread = np.sqrt(2.0 / precision)
    lo, hi = float((centre - spread * nodes.max()).min()), float((centre + spread * nodes.max()).max())
    grid = np.linspace(lo, max(hi, lo + 1e-6), THETA_GRID)
    table = interaction_table(grid, prior.sigma2, min_posts, min_interactions, seed=seed)
    step = grid[1] - grid[0]
    success = (prior.rate + 1.0) / (prior.rate + 2.0)  # negative binomial: Gamma(a + n, b + 1) mixed over Poisson
    out = np.empty(len(posts))
    for start in range(0, len(posts), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        theta = centre[rows, None] + spread[rows, None] * nodes[None, :]  # [rows, nodes]
        position = np.clip((theta - grid[0]) / step, 0.0, THETA_GRID - 1.0)
        below = np.minimum(position.astype(int), THETA_GRID - 2)
        frac = (position - below)[:, :, None]
        at_theta = table[below] * (1.0 - frac) + table[below + 1] * frac  # [rows, nodes, k]
        by_count = np.einsum("rnk,n->rk", at_theta, node_weights) / np.sqrt(np.pi)  # E over θ, per k
        shape = prior.shape + posts[rows]
        pmf = np.empty((len(shape), MAX_POSTS + 1))
        pmf[:, 0] = success**shape
        for k in range(MAX_POSTS - 1):
            pmf[:, k + 1] = pmf[:, k] * (k + shape) / (k + 1) * (1.0 - success)
        pmf[:, MAX_POSTS] = np.clip(1.0 - pmf[:, :MAX_POSTS].sum(axis=1), 0.0, 1.0)  # the tail, at MAX_POSTS
        out[rows] = (pmf * by_count).sum(axis=1)
    return np.clip(out, 0.0, 1.0)


def soft_productive(frame: pd.DataFrame, min_posts: int, min_interactions: int, *, seed: int = 0) -> np.ndarray:
    """The soft productivity label of `frame`'s enrolled rows (NaN elsewhere), priors fitted per cutoff.

    `frame` has `as_of`, `enrolled` and `POSTING_COLUMNS`. Deterministic: each cutoff's interaction
    table is seeded by `seed` and the cutoff; a row's label depends on its own window and its
    cutoff's prior only, not on the order of the rows.
    """
    out = np.full(len(frame), np.nan)
    enrolled = frame["enrolled"].to_numpy() == 1
    stamps = frame["as_of"].to_numpy()
    posts, log_sum, log_sq = (frame[c].to_numpy(dtype=float) for c in POSTING_COLUMNS)
    for as_of in np.unique(stamps[enrolled]):
        at = np.flatnonzero(enrolled & (stamps == as_of))
        prior = fit_prior(posts[at], log_sum[at], log_sq[at])
        cutoff_seed = [seed, int(pd.Timestamp(as_of).value // 10**9)]
        out[at] = posterior_productive(
            posts[at], log_sum[at], prior, min_posts, min_interactions, seed=np.random.SeedSequence(cutoff_seed)
        )
    return out


def with_soft_label(rows: pd.DataFrame, label: str, soft: np.ndarray) -> pd.DataFrame:
    """`rows` with `label` replaced by the soft label (float64 in [0, 1]); weights unchanged.

    `KocModel` learns a fractional label with LightGBM's `cross_entropy` objective, whose gradient
    and hessian per row equal those of the binary log-loss on the row entered twice (a positive
    weighted by `soft`, a negative by `1 - soft`), with half the rows.
    """
    return rows.assign(**{label: np.clip(np.asarray(soft, dtype="float64"), 0.0, 1.0)})
