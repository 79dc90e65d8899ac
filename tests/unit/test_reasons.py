"""Reasons generated from the registry: positive contributions only, one per concept, the member's own values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.worlds import AS_OF, build_world, fit_tiny_koc_model

from features.build import build_features
from features.registry import FEATURES, categorical_features, feature_names
from serving.reasons import explain, phrase, reason_columns, sorted_population, top_reasons


def test_every_registry_feature_phrases_a_value_and_a_missing_value():
    for feature in FEATURES:
        value = "store" if feature.dtype == "category" else 12.0
        zh, en = phrase(feature, value)
        assert zh and en and "{" not in zh + en, feature.name
        assert feature.concept, feature.name
        missing_zh, missing_en = phrase(feature, None)
        assert missing_zh and missing_en, feature.name


def test_phrases_show_the_members_own_values():
    by_name = {f.name: f for f in FEATURES}
    assert phrase(by_name["posts_90d"], 12.0) == ("近90天发布12篇笔记", "12 posts in 90 days")
    assert phrase(by_name["recency_days"], 3.4)[1] == "last order 3 days ago"
    assert phrase(by_name["recency_days"], np.nan)[1] == "no purchases yet"
    assert phrase(by_name["channel"], "ads")[1] == "joined via ads"
    assert phrase(by_name["spend_total"], 2.5e6)[1] == "spent 2,500,000 in total"  # large values phrase too
    assert phrase(by_name["post_log_interactions_mean_last10"], np.log1p(99))[1].startswith("typical post reaches about 99")


def _frames():
    values = pd.DataFrame(
        {"posts_30d": [3.0, 0.0], "posts_90d": [9.0, 1.0], "orders_90d": [2.0, 0.0], "spend_365d": [500.0, 0.0],
         "recency_days": [2.0, np.nan], "channel": pd.Categorical(["store", None])},
        index=["a", "b"],
    )
    contributions = pd.DataFrame(
        {"posts_30d": [0.8, -0.1], "posts_90d": [0.9, -0.4], "orders_90d": [0.3, 0.0], "spend_365d": [-0.2, 0.0],
         "recency_days": [0.1, 0.2], "channel": [-0.5, 0.0], "bias": [1.0, 1.0]},
        index=["a", "b"],
    )
    return contributions, values


def test_reasons_are_positive_one_per_concept_strongest_first():
    contributions, values = _frames()
    out = top_reasons(contributions, values, 3)
    assert list(out.columns) == reason_columns(3)
    a = out.loc["a"]
    # posts_30d and posts_90d are one concept: only the stronger (90d) is listed
    assert [a.reason_feature_1, a.reason_feature_2, a.reason_feature_3] == ["posts_90d", "orders_90d", "recency_days"]
    assert a.reason_1_en == "9 posts in 90 days" and a.reason_1 == f"{a.reason_1_zh} / {a.reason_1_en}"
    assert [r["feature"] for r in a.reasons] == ["posts_90d", "orders_90d", "recency_days"]
    assert a.reasons[0] == {"feature": "posts_90d", "value": 9.0, "contribution": 0.9, "zh": a.reason_1_zh,
                            "en": "9 posts in 90 days", "percentile": None}
    assert a.why_not_higher_en == "joined via store"  # the strongest negative concept
    b = out.loc["b"]
    assert b.reason_feature_1 == "recency_days" and b.reason_1_en == "no purchases yet"
    assert b.reason_2 == b.reason_feature_2 == b.reason_3 == "" and len(b.reasons) == 1
    assert b.why_not_higher_en == "1 posts in 90 days"


def test_percentile_is_judged_in_the_population():
    contributions, values = _frames()
    population = sorted_population(pd.DataFrame({"posts_90d": [0.0, 1.0, 5.0, 9.0]}), ["posts_90d"])
    out = top_reasons(contributions, values, 1, population)
    assert out.loc["a", "reasons"][0]["percentile"] == 1.0


@pytest.mark.slow
def test_no_reason_listed_for_an_invited_member_pushes_its_score_down():
    """With a real LightGBM model: every listed reason has a positive contribution for that member."""
    model = fit_tiny_koc_model()
    feats = build_features(build_world(), [AS_OF]).set_index("member_id")[feature_names()]
    population = sorted_population(feats, [c for c in feats.columns if c not in categorical_features()])
    out = explain(model, feats, list(feats.index), 3, population)
    contributions = model.contributions(feats)
    listed = 0
    for member, row in out.iterrows():
        for reason in row["reasons"]:
            assert contributions.loc[member, reason["feature"]] > 0, (member, reason)
            listed += 1
        concepts = [next(f.concept for f in FEATURES if f.name == r["feature"]) for r in row["reasons"]]
        assert len(concepts) == len(set(concepts)), member
        if row["why_not_higher"]:
            assert contributions.loc[member, feature_names()].min() < 0
    assert listed > 0
