"""The brand's historical invitation rule, and the probability it gives each eligible member.

Every rule ranks eligible members by a score on their last three months (spend, orders,
activity, campaign joins, posts) perturbed by Gumbel noise of scale `NOISE`, takes the
top `k - explore` and then `explore` more uniformly at random from the rest. Top-k under
Gumbel noise is sampling without replacement with weights `exp(score / NOISE)`, whose
inclusion probabilities are very close to `1 - exp(-lam * w)` with `lam` chosen so they
add up to the number drawn (Rosén's successive-sampling approximation; exact for the
random rule). `invitation_probability` returns that per member, so targets and off-policy
estimators can be checked against the policy that produced the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kocrank.simulation.config import INVITE_SHARE
from kocrank.simulation.scenarios import Scenario

NOISE = 0.3  # scale of the Gumbel noise on the rule's score


def rule_score(policy: str, recent: Mapping[str, np.ndarray]) -> np.ndarray:
    """The historical rule's score from three-month aggregates (arrays over the eligible members)."""
    spend, activity = np.log1p(recent["spend"]), np.log1p(recent["activity"])
    if policy == "spend_activity":
        return spend + 0.5 * activity
    if policy == "spend":
        return spend + 0.3 * np.log1p(recent["orders"])
    if policy == "activity":
        return activity + 0.5 * np.log1p(recent["campaign_joins"])
    if policy == "mixed":
        return 0.5 * spend + 0.5 * activity + 0.5 * np.log1p(recent["posts"])
    if policy == "random":
        return np.zeros(len(spend))
    raise ValueError(f"unknown invitation policy {policy!r}")


@dataclass(frozen=True)
class Budget:
    """How many members one cutoff invites: `k` in all, `explore` of them uniformly at random."""

    k: int
    explore: int

    @classmethod
    def for_eligible(cls, n_eligible: int, spec: Scenario) -> Budget:
        k = max(1, round(INVITE_SHARE * n_eligible)) if n_eligible else 0
        return cls(k, round(spec.explore_share * k))


def invite(rng: np.random.Generator, eligible: np.ndarray, score: np.ndarray, budget: Budget) -> np.ndarray:
    """Members (from `eligible`) the rule invites: noisy top `k - explore`, then `explore` at random."""
    noisy = score + NOISE * rng.gumbel(size=len(eligible))
    ranked = eligible[np.argsort(-noisy, kind="stable")]
    top = budget.k - budget.explore
    chosen, rest = ranked[:top], ranked[top:]
    return np.concatenate([chosen, rng.choice(rest, size=min(budget.explore, len(rest)), replace=False)])


def invitation_probability(score: np.ndarray, budget: Budget) -> np.ndarray:
    """P(invited) per member under `invite` (see the module docstring for the approximation)."""
    n = len(score)
    top = min(budget.k - budget.explore, n)
    if n == 0:
        return np.zeros(0)
    if top <= 0:
        exploit = np.zeros(n)
    elif top >= n:
        exploit = np.ones(n)
    else:
        w = np.exp((score - score.max()) / NOISE)
        w = np.maximum(w, 1e-300)

        lo, hi = -np.log(w.max()) - 40.0, -np.log(w.min()) + 40.0  # bracket for log(lam)
        for _ in range(60):  # bisection: sum of probabilities is increasing in lam
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if (-np.expm1(-np.exp(mid) * w)).sum() < top else (lo, mid)
        exploit = -np.expm1(-np.exp(0.5 * (lo + hi)) * w)
    rest = n - top
    explore = min(budget.explore, rest) / rest if rest > 0 else 0.0
    return np.clip(exploit + (1.0 - exploit) * explore, 0.0, 1.0)
