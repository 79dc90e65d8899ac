"""The monitor flags a deliberately shifted feature and stays quiet on an unshifted copy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.issued import IssuedList, LoopConfig
from serving.monitor import monitor, reference_profile, render_html, top_k_overlap


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"m{i:06d}" for i in range(n)], name="member_id")
    features = pd.DataFrame(
        {
            "orders_365d": rng.poisson(3.0, n).astype("float64"),
            "monetary_365d": rng.lognormal(5.0, 1.0, n),
            "recency_days": np.where(rng.random(n) < 0.1, np.nan, rng.exponential(60.0, n)),
            "posts_180d": rng.poisson(0.5, n).astype("float64"),
            "channel": pd.Categorical(rng.choice(["store", "ads", "referral"], n, p=[0.5, 0.3, 0.2])),
        },
        index=ids,
    )
    logit = -4.0 + 0.3 * features["orders_365d"] + 0.8 * features["posts_180d"]
    return features, pd.Series(1 / (1 + np.exp(-logit)), index=ids, name="score")


def _previous(features: pd.DataFrame, scores: pd.Series) -> IssuedList:
    members = scores.sort_values(ascending=False).rename_axis("member_id").reset_index()
    members["position"] = np.arange(1, len(members) + 1)
    members["invited"] = members["position"] <= 100
    members["role"] = np.where(members["invited"], "exploit", "none")
    members["p_invite"] = members["invited"].astype(float)
    members["reasons"] = np.where(members["invited"], "many posts | frequent orders", None)
    meta = {"list_id": "prev", "as_of": "2026-05-01", "k": 100, "counts": {"exploit": 100, "explore": 0, "control": 0},
            "segments": {"channel": {"store": 60, "ads": 40}}, "rank_config": {"quotas": {"channel": 0.6}}}
    return IssuedList("prev", meta, members, reference_profile(features, scores))


@pytest.fixture(scope="module")
def reference():
    features, scores = _frame(20_000, seed=1)
    return features, scores, reference_profile(features, scores)


def test_quiet_on_an_unshifted_copy(reference):
    features, scores, profile = reference
    report = monitor(pd.Timestamp("2026-06-01"), features.copy(), scores.copy(), LoopConfig(), k=100,
                     reference=profile, previous=_previous(features, scores), latest=_previous(features, scores))
    assert not report.retrain_recommended, report.tripped()
    assert report.feature_psi["vs_reference"].max() < 1e-9 and report.metrics["top_k_overlap"] == 1.0
    # a fresh sample of the same distribution (other members) does not drift either
    fresh, fresh_scores = _frame(20_000, seed=2)
    sample = monitor(pd.Timestamp("2026-06-01"), fresh, fresh_scores, LoopConfig(), k=100, reference=profile)
    assert not sample.retrain_recommended and sample.feature_psi["vs_reference"].max() < 0.02
    assert report.tables["reasons"].set_index("reason")["members"].to_dict() == {"many posts": 100, "frequent orders": 100}
    assert report.tables["quota_fill"]["fill"].iloc[0] == 1.0


def test_flags_a_shifted_feature_by_name(reference):
    features, scores, profile = reference
    shifted = features.copy()
    shifted["monetary_365d"] = shifted["monetary_365d"] * 1.8  # prices up 80%
    report = monitor(pd.Timestamp("2026-06-01"), shifted, scores, LoopConfig(), k=100,
                     reference=profile, previous=_previous(features, scores))
    tripped = {check.name: check for check in report.tripped()}
    assert set(tripped) == {"feature drift vs training reference", "feature drift vs previous list"}
    assert "monetary_365d" in tripped["feature drift vs training reference"].detail
    assert report.feature_psi.index[0] == "monetary_365d"
    assert report.feature_psi.drop(index="monetary_365d")["vs_reference"].max() < 0.02
    page = render_html(report, LoopConfig())
    assert "RETRAIN RECOMMENDED" in page and page.count("data:image/png;base64,") >= 3
    assert "src='http" not in page and "<script" not in page  # self-contained


def test_calibration_and_rank_stability_trip():
    features, scores = _frame(5_000, seed=3)
    members = scores.rename_axis("member_id").reset_index()
    members["productive"] = (np.random.default_rng(0).random(len(members)) < 2.0 * members["score"]).astype(int)
    members["invited"] = False
    matured = (IssuedList("old", {"list_id": "old"}, members, {}), members)
    shuffled = pd.Series(np.random.default_rng(1).permutation(scores.to_numpy()), index=scores.index)
    report = monitor(pd.Timestamp("2026-06-01"), features, shuffled, LoopConfig(), k=100,
                     previous=_previous(features, scores), matured=matured)
    names = {check.name for check in report.tripped()}
    assert names == {"calibration on latest matured list", "rank stability (top-K overlap)"}
    assert report.metrics["calibration_ratio"] == pytest.approx(2.0, rel=0.15)


def test_top_k_overlap_and_tau():
    previous = pd.Series([0.9, 0.8, 0.7, 0.1], index=["a", "b", "c", "d"])
    current = pd.Series([0.9, 0.1, 0.8, 0.7], index=["a", "b", "c", "e"])
    overlap, tau, both = top_k_overlap(previous, current, 2)
    # common members a, b, c: previous order a > b > c, current a > c > b -> 2 of 3 pairs agree
    assert overlap == 0.5 and set(both.index) == {"a", "b", "c"} and tau == pytest.approx(1 / 3)
