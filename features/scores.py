"""Source-material member scores computed from the feature frame: RFM layering and member value.

Both are pure functions of `build_features` output, computed within each `as_of`
(so scores at different cutoffs never mix). Ties are handled with the "min" rank:
tied members share the lowest score their group could take, so e.g. every member
without orders lands in the lowest frequency quintile. Used by training baselines and
shown next to the model's ranking.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

# The 8 classic RFM segments keyed by (R high, F high, M high) vs the per-cutoff mean.
RFM_SEGMENTS: dict[tuple[bool, bool, bool], str] = {
    (True, True, True): "important_value",
    (True, False, True): "important_development",
    (False, True, True): "important_retention",
    (False, False, True): "important_winback",
    (True, True, False): "general_value",
    (True, False, False): "general_development",
    (False, True, False): "general_retention",
    (False, False, False): "general_winback",
}
RFM_SEGMENT_NAMES_ZH: dict[str, str] = {
    "important_value": "重要价值",
    "important_development": "重要发展",
    "important_retention": "重要保持",
    "important_winback": "重要挽留",
    "general_value": "一般价值",
    "general_development": "一般发展",
    "general_retention": "一般保持",
    "general_winback": "一般挽留",
}

# Member value components: each is 100 x the mean percentile rank (within as_of) of
# these features, higher = better. `recency_days` and `days_since_*` are inverted
# (recent is better); nulls rank lowest.
VALUE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "consumption": ("spend_365d", "orders_365d", "recency_days"),
    "interaction": ("active_days_90d", "events_90d", "campaigns_joined"),
    "content": ("posts_180d", "post_interactions_median_180d", "post_interactions_max_total"),
    "social": ("followers_total", "referees_joined", "shares_total"),
}
_LOWER_IS_BETTER = frozenset({"recency_days"})
DEFAULT_VALUE_WEIGHTS: Mapping[str, float] = {"consumption": 0.25, "interaction": 0.25, "content": 0.25, "social": 0.25}


def _oriented(values: pd.Series, lower_is_better: bool) -> pd.Series:
    """Values turned so that higher is better and nulls are the worst."""
    numeric = values.astype("float64")
    if lower_is_better:
        numeric = -numeric
    return numeric.fillna(-np.inf)


def _percentile(values: pd.Series, as_of: pd.Series) -> pd.Series:
    """(min rank - 1) / (n - 1) within each as_of, in [0, 1]; 0 when a cutoff has one member."""
    ranks = values.groupby(as_of).rank(method="min")
    sizes = values.groupby(as_of).transform("size")
    return ((ranks - 1) / (sizes - 1).where(sizes > 1)).fillna(0.0)


def _quintile(values: pd.Series, as_of: pd.Series) -> pd.Series:
    """Quintile 1-5 within each as_of: 1 + floor(5 x (min rank - 1) / n)."""
    ranks = values.groupby(as_of).rank(method="min")
    sizes = values.groupby(as_of).transform("size")
    return (1 + np.floor(5 * (ranks - 1) / sizes)).astype("int64")


def _require(feats: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in ["as_of", *columns] if c not in feats.columns]
    if missing:
        raise KeyError(f"feature frame lacks {missing}; pass the output of features.build.build_features")


def rfm_scores(feats: pd.DataFrame) -> pd.DataFrame:
    """Classic RFM layering per as_of: quintiles 1-5 of recency, frequency and monetary value.

    R from `recency_days` (fewer days = 5, no order = lowest), F from `orders_365d`,
    M from `spend_365d`. `rfm_score` = R + F + M (3-15). `rfm_segment` is one of the 8
    classic segments (`RFM_SEGMENTS`; Chinese names in `RFM_SEGMENT_NAMES_ZH`) from
    whether each of R, F, M is strictly above its mean within the same as_of.
    """
    _require(feats, ["recency_days", "orders_365d", "spend_365d"])
    as_of = feats["as_of"]
    r = _quintile(_oriented(feats["recency_days"], lower_is_better=True), as_of)
    f = _quintile(_oriented(feats["orders_365d"], lower_is_better=False), as_of)
    m = _quintile(_oriented(feats["spend_365d"], lower_is_better=False), as_of)
    high = {name: score > score.groupby(as_of).transform("mean") for name, score in (("r", r), ("f", f), ("m", m))}
    segments = [RFM_SEGMENTS[key] for key in zip(high["r"], high["f"], high["m"], strict=True)]
    return pd.DataFrame(
        {
            "rfm_r": r,
            "rfm_f": f,
            "rfm_m": m,
            "rfm_score": r + f + m,
            "rfm_segment": pd.Categorical(segments, categories=list(RFM_SEGMENTS.values())),
        },
        index=feats.index,
    )


def value_scores(feats: pd.DataFrame, weights: Mapping[str, float] = DEFAULT_VALUE_WEIGHTS) -> pd.DataFrame:
    """Member value = weighted consumption + interaction + content + social value, each 0-100.

    Each component is 100 x the mean percentile rank (within the same as_of) of its
    features in `VALUE_COMPONENTS`; `value_score` is the weighted mean of the components
    (weights are normalised to sum to 1, missing components weigh 0), so it is 0-100 too.
    """
    unknown = set(weights) - set(VALUE_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown value components {sorted(unknown)}; use {list(VALUE_COMPONENTS)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"value weights must be >= 0 with a positive sum, got {dict(weights)}")
    _require(feats, [c for cols in VALUE_COMPONENTS.values() for c in cols])
    as_of = feats["as_of"]
    out = pd.DataFrame(index=feats.index)
    for component, columns in VALUE_COMPONENTS.items():
        ranks = [_percentile(_oriented(feats[c], c in _LOWER_IS_BETTER), as_of) for c in columns]
        out[f"{component}_value"] = 100.0 * sum(ranks) / len(ranks)
    total = float(sum(weights.values()))
    out["value_score"] = sum(out[f"{c}_value"] * (weights.get(c, 0.0) / total) for c in VALUE_COMPONENTS)
    return out
