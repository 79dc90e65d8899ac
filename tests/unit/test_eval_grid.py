"""Exact figures of the evaluation grid's yield/uplift ratio and the per-slice metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.config import TrainConfig
from training.eval_grid import top_k_ratio, truth_column
from training.train import slice_metrics


def test_top_k_ratio_is_the_top_ks_mean_value_over_the_oracles() -> None:
    ids = pd.Series(["a", "b", "c", "d"])
    value = np.array([0.1, 0.4, np.nan, 0.2])
    scores = np.array([0.9, 0.1, 0.8, 0.5])
    # top 2 by score: a (0.1), c (unknown, ignored) -> mean 0.1 over 1 known; oracle top 1 = 0.4
    assert top_k_ratio(scores, value, ids, 2) == pytest.approx(0.1 / 0.4)
    # top 3: a, c, d -> mean(0.1, 0.2) over the oracle's top 2 mean(0.4, 0.2)
    assert top_k_ratio(scores, value, ids, 3) == pytest.approx(0.15 / 0.3)
    assert np.isnan(top_k_ratio(scores, np.full(4, np.nan), ids, 2))


def test_truth_column_aligns_on_member_and_cutoff() -> None:
    rows = pd.DataFrame({"member_id": ["m2", "m1", "m3"], "as_of": pd.to_datetime(["2025-01-01"] * 3)})
    truth = pd.DataFrame(
        {
            "member_id": ["m1", "m2", "m1"],
            "as_of": pd.to_datetime(["2025-01-01", "2025-01-01", "2025-02-01"]),
            "p": [0.1, 0.2, 0.9],
        }
    )
    np.testing.assert_allclose(truth_column(truth, rows, "p"), [0.2, 0.1, np.nan])


def test_slice_metrics_per_city_tier_and_channel() -> None:
    test = pd.DataFrame(
        {
            "label": [1, 0, 0, 1, 0, 0],
            "city_tier": pd.Categorical(["1", "1", "1", "2", "2", None]),
            "channel": pd.Categorical(["app"] * 6),
        }
    )
    scores = np.array([0.9, 0.2, 0.1, 0.3, 0.4, 0.5])
    table = slice_metrics(scores, test, TrainConfig()).set_index(["slice", "value"])
    assert table.loc[("city_tier", "1"), "roc_auc"] == 1.0
    assert table.loc[("city_tier", "2"), "roc_auc"] == 0.0
    assert np.isnan(table.loc[("city_tier", "unknown"), "roc_auc"])  # one class only
    assert table.loc[("channel", "app"), "rows"] == 6 and table.loc[("channel", "app"), "base_rate"] == pytest.approx(
        1 / 3
    )
