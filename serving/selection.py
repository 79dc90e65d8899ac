"""Pure selection rules of the invitation list: ordering, tiers, percentiles, quotas and exploration."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd

from serving.config import RankConfig

logger = logging.getLogger(__name__)

TIERS = ("A", "B", "C")


def order_by_score(scored: pd.DataFrame) -> pd.DataFrame:
    """Sort by score descending, ties broken by member_id ascending; fresh RangeIndex."""
    return scored.sort_values(["score", "member_id"], ascending=[False, True], kind="mergesort").reset_index(drop=True)


def assign_tiers(scores: pd.Series, cfg: RankConfig) -> pd.Series:
    """A/B/C by the configured score bands (A: >= tier_a_min_score, B: >= tier_b_min_score)."""
    values = scores.to_numpy(dtype="float64")
    tiers = np.where(values >= cfg.tier_a_min_score, "A", np.where(values >= cfg.tier_b_min_score, "B", "C"))
    return pd.Series(tiers, index=scores.index, name="tier", dtype="str")


def score_percentiles(scores: pd.Series) -> pd.Series:
    """Percentile (0-100] of each score among `scores`: share of members scoring at most as high."""
    return (scores.rank(method="max", pct=True) * 100.0).round(2).rename("percentile")


def quota_caps(k: int, quotas: Mapping[str, float]) -> dict[str, int]:
    """Maximum number of slots any single value of each quota column may take (at least 1)."""
    return {column: max(1, math.floor(share * k + 1e-9)) for column, share in quotas.items()}


def _segment_key(value: object) -> Hashable:
    """Missing segment values share one bucket ('unknown')."""
    return "<unknown>" if pd.isna(value) else value


class _QuotaTracker:
    """Counts filled slots per segment value and answers whether a candidate still fits."""

    def __init__(self, caps: Mapping[str, int]) -> None:
        self.caps = dict(caps)
        self.counts: dict[str, Counter[Hashable]] = {column: Counter() for column in caps}

    def fits(self, segments: Mapping[str, object]) -> bool:
        return all(self.counts[c][_segment_key(segments[c])] < cap for c, cap in self.caps.items())

    def add(self, segments: Mapping[str, object]) -> None:
        for column in self.caps:
            self.counts[column][_segment_key(segments[column])] += 1


def exploration_rng(seed: int, as_of: pd.Timestamp) -> np.random.Generator:
    """The generator of one list's exploration draw, seeded from (seed, cutoff).

    The same seed and cutoff always give the same draw; another cutoff gives an independent
    one, so across lists every band position has the recorded probability of being explored
    (a generator seeded from `seed` alone would pick the same rank slots in every list).
    """
    cutoff = pd.Timestamp(as_of).isoformat().encode("ascii")
    return np.random.default_rng(np.random.SeedSequence([seed, *cutoff]))


def select_candidates(ordered: pd.DataFrame, k: int, cfg: RankConfig, *, as_of: pd.Timestamp) -> pd.DataFrame:
    """Pick up to K rows from `ordered` (already in score order) under quotas and exploration.

    Exploit: greedy fill of `K - n_explore` slots in score order, skipping candidates whose
    segment is full. Explore: `n_explore = round(K * exploration_share)` slots drawn uniformly
    (seeded with `cfg.seed` and `as_of`, see `exploration_rng`) from the next
    `exploration_band_size` quota-admissible candidates after the last exploited one.
    Returns the chosen rows with `exploration` (bool) and
    `selection_probability` (1.0 for exploit rows, n_explore / band size for exploration rows;
    exact unless a quota fills up during the draw, in which case later draws skip that segment).
    """
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    missing = [column for column in cfg.quotas if column not in ordered.columns]
    if missing:
        raise ValueError(f"quota columns {missing} are not in the candidate table; available: {list(ordered.columns)}")
    n_explore = int(round(k * cfg.exploration_share))
    n_exploit = k - n_explore
    tracker = _QuotaTracker(quota_caps(k, cfg.quotas))
    segments = ordered[list(cfg.quotas)].to_dict("records") if cfg.quotas else [{}] * len(ordered)

    exploit_positions: list[int] = []
    position = 0
    while position < len(ordered) and len(exploit_positions) < n_exploit:
        if tracker.fits(segments[position]):
            tracker.add(segments[position])
            exploit_positions.append(position)
        position += 1

    band_size = cfg.exploration_band_size or k
    band: list[int] = []
    while position < len(ordered) and len(band) < band_size and n_explore > 0:
        if tracker.fits(segments[position]):
            band.append(position)
        position += 1

    explore_positions: list[int] = []
    probability = 1.0
    if n_explore > 0 and band:
        probability = min(1.0, n_explore / len(band))
        rng = exploration_rng(cfg.seed, as_of)
        for drawn in rng.permutation(len(band)):
            if len(explore_positions) == n_explore:
                break
            candidate = band[int(drawn)]
            if tracker.fits(segments[candidate]):
                tracker.add(segments[candidate])
                explore_positions.append(candidate)
        explore_positions.sort()
    if len(exploit_positions) + len(explore_positions) < min(k, len(ordered)):
        logger.info(
            "filled %d of %d slots (%d eligible); quotas %s limited the list",
            len(exploit_positions) + len(explore_positions), k, len(ordered), dict(cfg.quotas),
        )

    chosen = ordered.iloc[exploit_positions + explore_positions].copy()
    chosen["exploration"] = [False] * len(exploit_positions) + [True] * len(explore_positions)
    chosen["selection_probability"] = [1.0] * len(exploit_positions) + [probability] * len(explore_positions)
    chosen = order_by_score(chosen)
    chosen.insert(0, "rank", np.arange(1, len(chosen) + 1, dtype="int64"))
    return chosen


def segment_shares(chosen: pd.DataFrame, columns: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts per value of each segment column in the chosen list (for reporting)."""
    return {
        column: {str(_segment_key(value)): int(count) for value, count in Counter(map(_segment_key, chosen[column])).most_common()}
        for column in columns
    }
