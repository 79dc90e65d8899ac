"""Exact metric values on tiny hand-made rankings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.evaluate import (
    evaluate_scores,
    flat_metrics,
    gains_curve,
    k_label,
    lift_at_k,
    metrics_table,
    ndcg_at_k,
    precision_at_k,
    rank_order,
    recall_at_k,
    reliability_table,
    resolve_k,
    truth_for,
    yield_at_k,
)

IDS = np.array(["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10"])
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
LABELS = np.array([1, 0, 1, 0, 0, 0, 0, 1, 0, 0])  # ranked order = row order


def test_resolve_k_counts_and_percentages() -> None:
    assert resolve_k(100, 5000) == 100
    assert resolve_k(100, 40) == 40  # capped at the ranked population
    assert resolve_k("1%", 5000) == 50
    assert resolve_k("1%", 5001) == 51  # percentages round up
    assert resolve_k("5%", 10) == 1
    assert k_label("1%") == "1pct" and k_label("0.5%") == "0_5pct" and k_label(500) == "500"
    with pytest.raises(ValueError, match="percentage"):
        resolve_k("abc", 10)
    with pytest.raises(ValueError, match="positive"):
        resolve_k(0, 10)


def test_precision_recall_lift_exact() -> None:
    ranked = LABELS
    assert precision_at_k(ranked, 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, 3) == pytest.approx(2 / 3)
    assert lift_at_k(ranked, 3) == pytest.approx((2 / 3) / 0.3)
    assert precision_at_k(ranked, 10) == pytest.approx(0.3)
    assert lift_at_k(ranked, 10) == pytest.approx(1.0)
    assert recall_at_k(np.zeros(5), 2) != recall_at_k(np.zeros(5), 2)  # NaN without positives


def test_ndcg_exact() -> None:
    # positives at ranks 1 and 3 within K=3; the ideal ranking fills all 3 places with the 3 positives
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(LABELS, 3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(np.array([1, 1, 0]), 2) == pytest.approx(1.0)
    assert math.isnan(ndcg_at_k(np.array([0, 0, 0]), 2))


def test_yield_exact_and_oracle_ratio() -> None:
    truth_ranked = np.array([0.2, 0.9, np.nan, 0.5, 0.1])
    achieved, ratio = yield_at_k(truth_ranked, 3)
    # top 3 with known truth: 0.2, 0.9 -> mean 0.55; oracle's best 2 known: 0.9, 0.5 -> 0.7
    assert achieved == pytest.approx(0.55)
    assert ratio == pytest.approx(0.55 / 0.7)


def test_ties_are_broken_by_member_id() -> None:
    scores = np.array([0.5, 0.5, 0.9, 0.5])
    ids = np.array(["b", "c", "z", "a"])
    assert list(rank_order(scores, ids)) == [2, 3, 0, 1]  # z, then a, b, c
    labels = np.array([0, 1, 0, 0])
    result = evaluate_scores("tied", scores, labels, ids, [2], is_probability=False)
    assert result.metrics["precision_at_2"] == 0.0  # z and a come first; c (the positive) is 4th


def test_evaluate_scores_full_record() -> None:
    truth = np.linspace(1.0, 0.1, 10)
    result = evaluate_scores("model", SCORES, LABELS, IDS, [3, "50%"], is_probability=True, truth=truth)
    m = result.metrics
    assert m["n_ranked"] == 10 and m["n_positive"] == 3 and m["base_rate"] == pytest.approx(0.3)
    assert m["k_at_50pct"] == 5
    assert m["precision_at_3"] == pytest.approx(2 / 3)
    assert m["precision_at_50pct"] == pytest.approx(2 / 5)
    assert m["yield_at_3"] == pytest.approx(truth[:3].mean())
    assert m["yield_ratio_at_3"] == pytest.approx(1.0)  # ranking by score equals ranking by truth here
    assert m["brier"] == pytest.approx(np.mean((SCORES - LABELS) ** 2))
    assert result.reliability is not None and int(result.reliability["count"].sum()) == 10
    rfm = evaluate_scores("rfm", SCORES * 15, LABELS, IDS, [3], is_probability=False)
    assert math.isnan(rfm.metrics["brier"]) and rfm.reliability is None
    flat = flat_metrics([result, rfm])
    assert flat["model.precision_at_3"] == pytest.approx(2 / 3)
    assert "rfm.brier" not in flat  # NaN metrics are not logged
    table = metrics_table([result, rfm])
    assert list(table.index) == ["model", "rfm"] and math.isnan(table.loc["rfm", "yield_at_3"])


def test_reliability_table_bins() -> None:
    probs = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    labels = np.array([0, 1, 0, 1, 1])
    table = reliability_table(probs, labels, bins=10)
    assert len(table) == 10
    assert table.loc[1, "count"] == 2 and table.loc[1, "observed_rate"] == pytest.approx(0.5)
    assert table.loc[9, "count"] == 2 and table.loc[9, "mean_predicted"] == pytest.approx(0.975)


def test_gains_curve_and_truth_lookup() -> None:
    curve = gains_curve(SCORES, LABELS, IDS)
    assert curve["captured_share"].iloc[-1] == pytest.approx(1.0)
    assert curve["captured_share"].iloc[2] == pytest.approx(2 / 3)
    truth_table = pd.DataFrame(
        {
            "member_id": ["m1", "m2", "m1"],
            "as_of": pd.to_datetime(["2025-01-01", "2025-01-01", "2025-02-01"]),
            "p_productive_if_invited": [0.1, 0.2, 0.9],
        }
    )
    values = truth_for(truth_table, pd.Series(["m2", "m1", "m3"]), pd.Timestamp("2025-01-01"))
    assert values[0] == 0.2 and values[1] == 0.1 and np.isnan(values[2])


def test_truth_for_keeps_the_last_row_of_a_member_and_handles_empty_inputs() -> None:
    at = pd.Timestamp("2025-01-01")
    table = pd.DataFrame(
        {"member_id": ["a", "b", "a"], "as_of": [at, at, at], "p_productive_if_invited": [0.1, 0.2, 0.4]}
    )
    np.testing.assert_array_equal(truth_for(table, pd.Series(["a", "x", "b", "a"]), at), [0.4, np.nan, 0.2, 0.4])
    assert np.isnan(truth_for(table, pd.Series(["a"]), pd.Timestamp("2025-02-01"))).all()
    assert truth_for(table, pd.Series([], dtype="str"), at).shape == (0,)
