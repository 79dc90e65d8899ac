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


ROLES = ("exploit", "explore", "control", "band", "none")


def control_rng(seed: int, as_of: pd.Timestamp) -> np.random.Generator:
    """The generator of one list's control draw: seeded like `exploration_rng`, on its own stream.

    A separate stream keeps the exploration draw of a list unchanged when `control_share` changes.
    """
    cutoff = pd.Timestamp(as_of).isoformat().encode("ascii")
    return np.random.default_rng(np.random.SeedSequence([seed, *cutoff], spawn_key=(1,)))


def draw_policy(ordered: pd.DataFrame, k: int, cfg: RankConfig, *, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every row of `ordered` (eligible members in score order) with its part in this list's policy.

    The policy, all of it seeded with (`cfg.seed`, `as_of`):
    - exploit block: the first `K - n_explore + n_control` quota-admissible rows in score
      order (`n_explore = round(K * exploration_share)`, `n_control = round(K * control_share)`);
      `n_control` of them, drawn uniformly, are the **control group**: deliberately not
      invited, so that "invited" against "held out" inside the block is a randomised comparison.
      The others are invited (`exploit`). Every block member is invited with probability
      (block size - n_control) / block size. When the pool is short, the control shrinks first.
    - exploration band: the next `exploration_band_size` (default K) quota-admissible rows;
      `n_explore` drawn uniformly are invited (`explore`), the rest are `band`
      (probability n_explore / band size each).
    - everyone else: `none`, probability 0.

    Returns `ordered` with `position` (1 = highest score), `role`, `invited` and `p_invite`
    (the exact probability of being invited under this policy; exact unless a quota fills up
    during the exploration draw, which then skips that segment — see `quota_limited`).
    `attrs["rows_examined"]`: how many leading rows the walk read; rows after them play no
    part, so a caller may pass only a head of the score order if the walk ends inside it.
    """
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    missing = [column for column in cfg.quotas if column not in ordered.columns]
    if missing:
        raise ValueError(f"quota columns {missing} are not in the candidate table; available: {list(ordered.columns)}")
    n_explore = int(round(k * cfg.exploration_share))
    n_exploit = k - n_explore
    n_control = int(round(k * cfg.control_share))
    tracker = _QuotaTracker(quota_caps(k, cfg.quotas))
    segments = ordered[list(cfg.quotas)].to_dict("records") if cfg.quotas else [{}] * len(ordered)

    block: list[int] = []
    position = 0
    while position < len(ordered) and len(block) < n_exploit + n_control:
        if tracker.fits(segments[position]):
            tracker.add(segments[position])
            block.append(position)
        position += 1
    held_out = max(0, min(n_control, len(block) - n_exploit))
    control_positions: list[int] = []
    if held_out:
        control_positions = sorted(block[int(i)] for i in control_rng(cfg.seed, as_of).choice(len(block), held_out, replace=False))
    held = set(control_positions)
    exploit_positions = [p for p in block if p not in held]
    p_block = len(exploit_positions) / len(block) if block else 0.0

    band_size = cfg.exploration_band_size or k
    band: list[int] = []
    while position < len(ordered) and len(band) < band_size and n_explore > 0:
        if tracker.fits(segments[position]):
            band.append(position)
        position += 1

    explore_positions: list[int] = []
    p_band = 0.0
    quota_limited = False
    if n_explore > 0 and band:
        p_band = min(1.0, n_explore / len(band))
        rng = exploration_rng(cfg.seed, as_of)
        for drawn in rng.permutation(len(band)):
            if len(explore_positions) == n_explore:
                break
            candidate = band[int(drawn)]
            if tracker.fits(segments[candidate]):
                tracker.add(segments[candidate])
                explore_positions.append(candidate)
            else:
                quota_limited = True
    if len(exploit_positions) + len(explore_positions) < min(k, len(ordered)):
        logger.info(
            "filled %d of %d slots (%d eligible); quotas %s limited the list",
            len(exploit_positions) + len(explore_positions), k, len(ordered), dict(cfg.quotas),
        )

    role = np.full(len(ordered), "none", dtype=object)
    p_invite = np.zeros(len(ordered), dtype="float64")
    role[block] = "exploit"
    p_invite[block] = p_block
    role[control_positions] = "control"
    role[band] = "band"
    p_invite[band] = p_band
    role[explore_positions] = "explore"
    out = ordered.reset_index(drop=True).copy()
    out.insert(0, "position", np.arange(1, len(out) + 1, dtype="int64"))
    out["role"] = pd.Series(role, dtype="str")
    out["invited"] = out["role"].isin(["exploit", "explore"])
    out["p_invite"] = p_invite
    out.attrs["quota_limited"] = quota_limited
    out.attrs["rows_examined"] = position
    return out


def select_candidates(ordered: pd.DataFrame, k: int, cfg: RankConfig, *, as_of: pd.Timestamp) -> pd.DataFrame:
    """Pick up to K rows from `ordered` (already in score order) under quotas, exploration and control.

    The invited rows of `draw_policy`, with `exploration` (bool) and `selection_probability`
    (their `p_invite`: 1.0 for exploit rows when there is no control group, otherwise
    (block - n_control) / block; n_explore / band size for exploration rows). Control-group
    members are never in the returned list.
    """
    policy = draw_policy(ordered, k, cfg, as_of=as_of)
    chosen = policy.loc[policy["invited"]]
    chosen = ordered.iloc[(chosen["position"] - 1).to_numpy()].copy()
    invited = policy.loc[policy["invited"]]
    chosen["exploration"] = (invited["role"] == "explore").to_numpy()
    chosen["selection_probability"] = invited["p_invite"].to_numpy()
    chosen = order_by_score(chosen)
    chosen.insert(0, "rank", np.arange(1, len(chosen) + 1, dtype="int64"))
    chosen.attrs["rows_examined"] = policy.attrs["rows_examined"]
    return chosen


def segment_shares(chosen: pd.DataFrame, columns: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts per value of each segment column in the chosen list (for reporting)."""
    return {
        column: {str(_segment_key(value)): int(count) for value, count in Counter(map(_segment_key, chosen[column])).most_common()}
        for column in columns
    }
