"""Ranking and probability metrics for the model and every baseline on one test cutoff.

Conventions (documented because they change numbers):
- A ranking orders members by score, highest first; ties are broken by `member_id`
  ascending, so every metric is deterministic.
- K given as a percentage (`"1%"`) means `ceil(pct / 100 * n_eligible)`; any K is capped
  at the number of ranked members. Metric names spell it `1pct` (`precision_at_1pct`).
- PR AUC is average precision (scikit-learn `average_precision_score`).
- NDCG@K uses the label as gain and `1 / log2(rank + 1)` discounts; the ideal ordering puts
  every positive first. It is NaN when the test cutoff holds no positive.
- Brier score and the reliability table only exist for scorers that output
  probabilities (the model and the logistic regression). RFM, value and random scores are
  not probabilities, so their Brier score is omitted (NaN) rather than faked by rescaling.
- yield@K (only when the simulator's `truth` is supplied) is the mean true
  `p_productive_if_invited` of the top K; `yield_ratio@K` divides it by the same mean for
  the oracle ranking by truth. Members without a truth row are ignored in both means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from training.config import KSpec, validate_k_spec


def resolve_k(spec: KSpec, n_ranked: int) -> int:
    """Absolute K for `spec` among `n_ranked` members (percentages round up, capped at n)."""
    spec = validate_k_spec(spec)
    if isinstance(spec, int):
        k = spec
    else:
        k = math.ceil(float(spec.rstrip("%").strip()) / 100.0 * n_ranked - 1e-9)
    return max(0, min(max(k, 1), n_ranked))


def k_label(spec: KSpec) -> str:
    """Metric-name-safe spelling of a K spec: `100` -> `100`, `"1%"` -> `1pct`, `"0.5%"` -> `0_5pct`."""
    spec = validate_k_spec(spec)
    if isinstance(spec, int):
        return str(spec)
    return spec.rstrip("%").strip().replace(".", "_") + "pct"


def rank_order(scores: np.ndarray | pd.Series, member_ids: np.ndarray | pd.Series) -> np.ndarray:
    """Positions of rows from best to worst: score descending, ties by member_id ascending."""
    score_values = np.asarray(scores, dtype="float64")
    if np.isnan(score_values).any():
        raise ValueError("scores contain NaN; every ranked member needs a score")
    ids = np.asarray(pd.Series(member_ids).astype(str).to_numpy(), dtype=object)
    # np.lexsort sorts by the last key first: primary key -score, secondary member_id.
    id_rank = pd.Series(ids).rank(method="first").to_numpy()  # ascending order of ids
    return np.lexsort((id_rank, -score_values))


def precision_at_k(labels_ranked: np.ndarray, k: int) -> float:
    """Share of positives among the first `k` ranked labels."""
    if k <= 0:
        return float("nan")
    return float(np.asarray(labels_ranked[:k], dtype="float64").sum() / k)


def recall_at_k(labels_ranked: np.ndarray, k: int) -> float:
    """Share of all positives that are within the first `k` ranked labels (NaN with no positive)."""
    total = float(np.asarray(labels_ranked, dtype="float64").sum())
    if total == 0 or k <= 0:
        return float("nan")
    return float(np.asarray(labels_ranked[:k], dtype="float64").sum() / total)


def lift_at_k(labels_ranked: np.ndarray, k: int) -> float:
    """precision@K divided by the base rate of the whole ranked population."""
    base_rate = float(np.mean(labels_ranked)) if len(labels_ranked) else float("nan")
    if not base_rate:
        return float("nan")
    return precision_at_k(labels_ranked, k) / base_rate


def ndcg_at_k(labels_ranked: np.ndarray, k: int) -> float:
    """Normalised discounted cumulative gain of the first `k` ranked labels (labels as gains)."""
    gains = np.asarray(labels_ranked, dtype="float64")
    k = min(k, len(gains))
    if k <= 0:
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((gains[:k] * discounts).sum())
    ideal = np.sort(gains)[::-1][:k]
    idcg = float((ideal * discounts).sum())
    return dcg / idcg if idcg > 0 else float("nan")


def yield_at_k(truth_ranked: np.ndarray, k: int) -> tuple[float, float]:
    """(mean truth of the first `k`, that mean divided by the oracle's) ignoring missing truth."""
    truth = np.asarray(truth_ranked, dtype="float64")[:]
    top = truth[:k]
    top = top[~np.isnan(top)]
    known = truth[~np.isnan(truth)]
    if len(top) == 0 or len(known) == 0:
        return float("nan"), float("nan")
    achieved = float(top.mean())
    oracle = float(np.sort(known)[::-1][: len(top)].mean())
    return achieved, (achieved / oracle if oracle > 0 else float("nan"))


def reliability_table(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Equal-width probability bins with their count, mean prediction and observed positive rate."""
    probs = np.clip(np.asarray(probabilities, dtype="float64"), 0.0, 1.0)
    y = np.asarray(labels, dtype="float64")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probs, edges[1:-1], right=False), 0, bins - 1)
    rows = []
    for b in range(bins):
        in_bin = index == b
        count = int(in_bin.sum())
        rows.append(
            {
                "bin": b,
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "mean_predicted": float(probs[in_bin].mean()) if count else float("nan"),
                "observed_rate": float(y[in_bin].mean()) if count else float("nan"),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ScorerResult:
    """Metrics of one scorer on the test cutoff, plus its reliability table if probabilistic."""

    name: str
    metrics: dict[str, float]
    reliability: pd.DataFrame | None


def evaluate_scores(
    name: str,
    scores: np.ndarray,
    labels: np.ndarray,
    member_ids: np.ndarray | pd.Series,
    k_list: Sequence[KSpec],
    *,
    is_probability: bool,
    truth: np.ndarray | None = None,
    reliability_bins: int = 10,
) -> ScorerResult:
    """All metrics for one scorer; `truth` (aligned with rows, NaN where unknown) adds yield@K."""
    y = np.asarray(labels, dtype="int64")
    score_values = np.asarray(scores, dtype="float64")
    order = rank_order(score_values, member_ids)
    labels_ranked = y[order]
    n = len(y)
    both_classes = 0 < y.sum() < n
    metrics: dict[str, float] = {
        "n_ranked": float(n),
        "n_positive": float(y.sum()),
        "base_rate": float(y.mean()) if n else float("nan"),
        "roc_auc": float(roc_auc_score(y, score_values)) if both_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, score_values)) if both_classes else float("nan"),
        "brier": float(brier_score_loss(y, np.clip(score_values, 0, 1))) if is_probability and n else float("nan"),
    }
    truth_ranked = np.asarray(truth, dtype="float64")[order] if truth is not None else None
    for spec in k_list:
        k = resolve_k(spec, n)
        suffix = k_label(spec)
        metrics[f"k_at_{suffix}"] = float(k)
        metrics[f"precision_at_{suffix}"] = precision_at_k(labels_ranked, k)
        metrics[f"recall_at_{suffix}"] = recall_at_k(labels_ranked, k)
        metrics[f"lift_at_{suffix}"] = lift_at_k(labels_ranked, k)
        metrics[f"ndcg_at_{suffix}"] = ndcg_at_k(labels_ranked, k)
        if truth_ranked is not None:
            achieved, ratio = yield_at_k(truth_ranked, k)
            metrics[f"yield_at_{suffix}"] = achieved
            metrics[f"yield_ratio_at_{suffix}"] = ratio
    reliability = reliability_table(score_values, y, reliability_bins) if is_probability else None
    return ScorerResult(name=name, metrics=metrics, reliability=reliability)


def metrics_table(results: Sequence[ScorerResult]) -> pd.DataFrame:
    """One row per scorer (index `scorer`), one column per metric, in first-seen column order."""
    columns: list[str] = []
    for result in results:
        columns.extend(m for m in result.metrics if m not in columns)
    table = pd.DataFrame([{**result.metrics} for result in results], columns=columns)
    table.index = pd.Index([r.name for r in results], name="scorer")
    return table


def flat_metrics(results: Sequence[ScorerResult]) -> dict[str, float]:
    """`{"model.pr_auc": ..., "rfm.precision_at_100": ...}` without NaN values (MLflow-ready)."""
    flat: dict[str, float] = {}
    for result in results:
        for metric, value in result.metrics.items():
            if value is not None and not math.isnan(value):
                flat[f"{result.name}.{metric}"] = float(value)
    return flat


def gains_curve(scores: np.ndarray, labels: np.ndarray, member_ids: np.ndarray | pd.Series) -> pd.DataFrame:
    """Cumulative share of positives captured against share of members contacted, best first."""
    y = np.asarray(labels, dtype="float64")
    order = rank_order(scores, member_ids)
    captured = np.cumsum(y[order])
    total = captured[-1] if len(captured) else 0.0
    n = len(y)
    return pd.DataFrame(
        {
            "contacted_share": np.arange(1, n + 1) / n,
            "captured_share": captured / total if total else np.zeros(n),
            "lift": (captured / np.arange(1, n + 1)) / (total / n) if total else np.full(n, np.nan),
        }
    )


def truth_for(truth_table: pd.DataFrame, member_ids: pd.Series, as_of: pd.Timestamp) -> np.ndarray:
    """True probabilities aligned with `member_ids` at cutoff `as_of` (NaN where the simulator has none)."""
    at_cutoff = truth_table.loc[truth_table["as_of"] == as_of, ["member_id", "p_productive_if_invited"]]
    # reversed, so the first match `index_in` finds is the table's last row for a member (as a dict would keep)
    known = pa.array(at_cutoff["member_id"].astype("str").iloc[::-1])
    values = at_cutoff["p_productive_if_invited"].to_numpy(dtype="float64")[::-1]
    found = pc.index_in(pa.array(pd.Series(member_ids).astype("str")), value_set=known)
    positions = found.fill_null(-1).to_numpy(zero_copy_only=False)
    return np.where(positions >= 0, values[np.maximum(positions, 0)], np.nan) if len(values) else np.full(len(positions), np.nan)
