"""Issue 8's done-when on a brand that exports only members, orders and its own labels table.

The labels are the brand's ("two or more orders within 90 days", base rate ~24%), at monthly
cutoffs; no programme,
posts or events exist, so the treatment-aware default target falls back to `observed` and
says so. At the test cutoff the model must beat the BG/NBD expected-purchases ranking on
precision at 5% and on ROC AUC.
"""

from __future__ import annotations

import pandas as pd
import pytest

from features.contract import from_frames
from features.registry import feature_names
from kocrank.simulation import SimConfig, simulate
from training.baselines import BGNBD_FEATURE
from training.config import TrainConfig
from training.train import MODEL_ROW, run_training

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BGNBD_FEATURE not in feature_names(), reason=f"the feature set has no {BGNBD_FEATURE} (features branch)"
    ),
]


def _repeat_order_labels(members: pd.DataFrame, orders: pd.DataFrame, cutoffs: pd.DatetimeIndex) -> pd.DataFrame:
    """label 1 when the member places 2+ orders in [as_of, as_of + 90 days); members who joined before as_of."""
    frames = []
    for as_of in cutoffs:
        window = orders.loc[(orders["ordered_at"] >= as_of) & (orders["ordered_at"] < as_of + pd.Timedelta(days=90))]
        counts = window.groupby("member_id").size()
        known = members.loc[members["joined_at"] < as_of, "member_id"]
        frames.append(pd.DataFrame({"member_id": known, "as_of": as_of, "label": known.map(counts).fillna(0) >= 2}))
    out = pd.concat(frames, ignore_index=True)
    return out.assign(label=out["label"].astype("int64"))


def test_model_beats_bgnbd_on_orders_and_labels_only(tmp_path) -> None:
    tables = simulate(SimConfig(members=4000, months=24, seed=5)).tables
    members = tables["members"].assign(marketing_consent=True)
    orders = tables["orders"]
    cutoffs = pd.date_range("2024-07-01", "2025-09-01", freq="MS")
    labels = _repeat_order_labels(members, orders, cutoffs)
    data = from_frames({"members": members, "orders": orders, "labels": labels})
    assert {"program", "posts", "events"} <= set(data.absent)

    result = run_training(data, TrainConfig(target="if_invited"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert result.model.target_ == "observed"  # nothing tells who was invited: the run says it fell back
    metrics = result.metrics
    assert metrics.loc[MODEL_ROW, "precision_at_5pct"] > metrics.loc["bgnbd", "precision_at_5pct"]
    assert metrics.loc[MODEL_ROW, "roc_auc"] > metrics.loc["bgnbd", "roc_auc"]
