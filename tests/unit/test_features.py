"""Feature registry, feature pipeline and score tests on a tiny hand-built world with exact values."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import sqlglot
from sqlglot import ErrorLevel

from features.build import EngineConfig, absent_groups, build_features, feature_sql
from features.contract import from_frames
from features.registry import (
    CATEGORY_LEVELS,
    DTYPES,
    FEATURE_SET_VERSION,
    FEATURES,
    GROUPS,
    categorical_features,
    feature_names,
    features_by_group,
    markdown_table,
)
from features.scores import RFM_SEGMENT_NAMES_ZH, RFM_SEGMENTS, VALUE_COMPONENTS, rfm_scores, value_scores

T = pd.Timestamp("2026-06-01")
US = pd.Timedelta(microseconds=1)


def ts(value: str) -> pd.Timestamp:
    return pd.Timestamp(value)


def world_frames() -> dict[str, pd.DataFrame]:
    """Members a1, b2 and e5 exist before T; c3 joins exactly at T and d4 after it."""
    members = pd.DataFrame(
        {
            "member_id": ["a1", "b2", "c3", "d4", "e5"],
            "joined_at": ["2025-06-01", "2026-03-01", "2026-06-01", "2026-07-01", "2026-04-01"],
            "birth_year": [1990, None, 2000, 1995, 1985],
            "gender": ["F", None, "M", "F", "U"],
            "city_tier": [1, None, 3, 2, 6],
            "channel": ["store", "tiktok_shop", "ads", "referral", "referral"],
        }
    )
    orders = pd.DataFrame(
        {
            "order_id": ["o1", "o2", "o3", "o4", "o5", "o6"],
            "member_id": ["a1", "a1", "a1", "a1", "a1", "b2"],
            "ordered_at": [
                T - pd.Timedelta(days=10),
                T - pd.Timedelta(days=60),
                ts("2026-05-30"),
                T - pd.Timedelta(days=180),
                T,
                T - US,
            ],
            "amount": [100.0, 50.0, 999.0, 30.0, 500.0, 20.0],
            "category": ["skincare", "skincare", "skincare", "makeup", "makeup", None],
            "refunded": [False, False, True, False, False, False],
            "refunded_at": [None, None, ts("2026-05-31"), None, None, None],  # o3 refunded before T
        }
    )
    events = pd.DataFrame(
        {
            "member_id": ["a1"] * 9,
            "event_at": [
                ts("2026-05-25"),
                ts("2026-03-10"),
                ts("2026-03-15"),
                ts("2026-05-01"),
                ts("2026-04-01"),
                ts("2026-05-20"),
                ts("2026-05-31"),
                T,
                ts("2026-05-29"),
            ],
            "event_type": [
                "campaign_join",
                "campaign_join",
                "campaign_join",
                "trial_apply",
                "trial_apply",
                "trial_feedback",
                "share",
                "checkin",
                "weird_type",
            ],
            "campaign_id": ["c1", "c2", "c2", None, None, None, None, None, None],
        }
    )
    posts = pd.DataFrame(
        {
            "post_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
            "member_id": ["a1"] * 6,
            "posted_at": [
                T - pd.Timedelta(days=7),
                T - pd.Timedelta(days=7) - US,
                ts("2026-01-01"),
                ts("2025-10-01"),
                T,
                ts("2026-05-20"),
            ],
            "platform": ["weibo", "xhs", "douyin", "xhs", "xhs", "xhs"],
            "likes_7d": [1000, 10, 30, 100, 5000, None],
            "comments_7d": [0, 5, 0, 0, 0, None],
            "saves_7d": [0, None, 0, 0, 0, None],
            "campaign_id": [None, "c1", None, None, "c1", None],
        }
    )
    referrals = pd.DataFrame(
        {
            "referrer_id": ["a1", "a1", "a1", "b2", "b2"],
            "referred_at": [ts("2026-02-20"), ts("2026-05-20"), T, ts("2026-03-20"), ts("2026-05-01")],
            "referee_id": ["b2", "d4", None, "e5", "c3"],
            "referee_joined_at": [ts("2026-03-01"), ts("2026-07-01"), None, ts("2026-04-01"), T],
            "referee_first_order_at": [T - US, None, None, T, None],
        }
    )
    program = pd.DataFrame(
        {
            "member_id": ["a1", "a1", "a1", "a1"],
            "event_at": [ts("2026-01-10"), ts("2026-01-12"), ts("2026-05-01"), T],
            "status": ["invited", "declined", "invited", "enrolled"],
        }
    )
    social = pd.DataFrame(
        {
            "member_id": ["a1", "a1", "a1", "a1"],
            "platform": ["xhs", "xhs", "xhs", "douyin"],
            "followers": [100, 250, 9999, 40],
            "observed_at": [ts("2026-01-01"), ts("2026-05-01"), T, ts("2026-02-01")],
        }
    )
    return {
        "members": members,
        "orders": orders,
        "events": events,
        "posts": posts,
        "referrals": referrals,
        "program": program,
        "social": social,
    }


@pytest.fixture(scope="module")
def world():
    return from_frames(world_frames())


@pytest.fixture(scope="module")
def feats(world) -> pd.DataFrame:
    return build_features(world, [T])


def row(feats: pd.DataFrame, member_id: str) -> pd.Series:
    (index,) = feats.index[feats["member_id"] == member_id]
    return feats.loc[index]


# --------------------------------------------------------------------------- registry


def test_registry_is_consistent():
    names = feature_names()
    assert len(names) == len(set(names)) == len(FEATURES)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    assert {f.group for f in FEATURES} == set(GROUPS)
    assert {f.dtype for f in FEATURES} <= set(DTYPES)
    assert all(f.description for f in FEATURES)
    assert categorical_features() == ["gender", "city_tier", "channel"]
    assert set(CATEGORY_LEVELS) == set(categorical_features())
    assert [f.name for fs in features_by_group().values() for f in fs] == names  # groups are contiguous
    assert re.fullmatch(r"\d+\.\d+\.\d+", FEATURE_SET_VERSION)


def test_markdown_table_lists_every_feature():
    table = markdown_table()
    assert table.count("\n| `") == len(FEATURES)
    for f in FEATURES:
        assert f"| `{f.name}` | {f.group} | {f.dtype} |" in table


def test_output_columns_and_dtypes(feats):
    assert list(feats.columns) == ["member_id", "as_of", *feature_names()]
    assert feats["member_id"].tolist() == ["a1", "b2", "e5"]  # c3 joined at T, d4 after T
    assert (feats["as_of"] == T).all() and feats["as_of"].dtype == "datetime64[us]"
    for f in FEATURES:
        if f.dtype == "category":
            assert isinstance(feats[f.name].dtype, pd.CategoricalDtype)
            assert list(feats[f.name].cat.categories) == CATEGORY_LEVELS[f.name]
        else:
            assert feats[f.name].dtype == "float64", f.name


# --------------------------------------------------------------------------- exact values


def test_consumption_excludes_refunds_and_future_orders(feats):
    a = row(feats, "a1")
    assert a["recency_days"] == 10.0
    assert (a["orders_30d"], a["spend_30d"]) == (1.0, 100.0)
    assert (a["orders_90d"], a["spend_90d"]) == (2.0, 150.0)
    assert (a["orders_365d"], a["spend_365d"]) == (3.0, 180.0)
    assert (a["orders_total"], a["spend_total"], a["avg_order_value"]) == (3.0, 180.0, 60.0)
    assert a["categories_bought_365d"] == 2.0
    assert a["repeat_category_share"] == 0.5  # skincare bought twice, makeup once
    assert a["purchase_interval_mean_days"] == 85.0  # (180 - 10) / 2
    assert a["spend_trend_90d"] == pytest.approx((150 - 30) / 180)  # o4 exactly 180 days back is in the earlier window

    b = row(feats, "b2")
    assert b["recency_days"] == pytest.approx(1 / 86_400_000_000)  # ordered 1 microsecond before T
    assert (b["orders_30d"], b["spend_30d"], b["spend_trend_90d"]) == (1.0, 20.0, 1.0)
    assert math.isnan(b["repeat_category_share"]) and math.isnan(b["purchase_interval_mean_days"])

    e = row(feats, "e5")
    assert e["orders_total"] == 0.0 and e["spend_total"] == 0.0
    assert math.isnan(e["recency_days"]) and math.isnan(e["avg_order_value"]) and math.isnan(e["spend_trend_90d"])


@pytest.mark.parametrize(
    ("refunded", "refunded_at", "rule", "counted"),
    [
        (True, T - US, "count", False),  # refunded 1us before T: gone
        (True, T, "count", True),  # refunded exactly at T: not yet known at T
        (True, T + pd.Timedelta(days=3), "drop", True),  # refunded later: counts, whatever the fallback
        (False, T - US, "count", False),  # refunded_at is the fact; the flag may lag
        (True, None, "count", True),  # no refund time: the measured default counts every order
        (True, None, "drop", False),  # the v1.0 rule, still selectable
    ],
)
def test_refunds_count_point_in_time(refunded, refunded_at, rule, counted):
    frames = world_frames()
    orders = frames["orders"].copy()
    orders.loc[orders["order_id"] == "o6", ["refunded", "refunded_at"]] = [refunded, refunded_at]
    data = from_frames({**frames, "orders": orders})
    b = row(build_features(data, [T], EngineConfig(refunds_without_time=rule)), "b2")
    assert b["orders_total"] == (1.0 if counted else 0.0)
    assert b["spend_30d"] == (20.0 if counted else 0.0)


def test_loyalty_and_activity(feats):
    a = row(feats, "a1")
    assert a["tenure_days"] == 365.0
    assert a["active_months_12m"] == 4.0  # 2025-12, 2026-03, 2026-04, 2026-05
    assert (a["campaigns_joined"], a["campaign_join_months"]) == (2.0, 2.0)
    assert (a["events_campaign_join_30d"], a["events_campaign_join_90d"]) == (1.0, 3.0)
    assert (a["events_trial_apply_30d"], a["events_trial_apply_90d"]) == (0.0, 2.0)
    assert a["events_checkin_30d"] == 0.0  # the check-in is exactly at T
    assert a["events_other_30d"] == 1.0  # unknown type counted as other
    assert a["events_90d"] == 8.0 and a["active_days_90d"] == 8.0
    assert a["days_since_last_event"] == 1.0
    e = row(feats, "e5")
    assert e["events_90d"] == 0.0 and math.isnan(e["days_since_last_event"])


def test_content_uses_interactions_only_after_their_7_day_window(feats):
    a = row(feats, "a1")
    assert (a["posts_30d"], a["posts_90d"], a["posts_180d"], a["posts_total"]) == (3.0, 3.0, 4.0, 5.0)
    # p1 posted exactly 7 days before T: counted as a post, its 1000 likes not yet known
    assert a["post_interactions_mean_180d"] == 22.5 and a["post_interactions_median_180d"] == 22.5
    assert a["post_interactions_mean_total"] == pytest.approx(145 / 3)
    assert a["post_interactions_median_total"] == 30.0
    assert a["post_interactions_max_total"] == 100.0
    assert a["platforms_posted"] == 3.0 and a["campaign_posts_total"] == 1.0
    assert (a["trials_applied"], a["trial_feedbacks"], a["trial_feedback_ratio"]) == (2.0, 1.0, 0.5)
    b = row(feats, "b2")
    assert (
        b["posts_total"] == 0.0
        and math.isnan(b["post_interactions_max_total"])
        and math.isnan(b["trial_feedback_ratio"])
    )


def test_social_referrals_and_followers(feats):
    a = row(feats, "a1")
    assert a["shares_total"] == 1.0
    assert a["referrals_sent"] == 2.0  # the referral made exactly at T is ignored
    assert a["referees_joined"] == 1.0  # d4 joins after T
    assert a["referees_ordered"] == 1.0  # b2's first order 1 microsecond before T
    assert a["referral_reach_2hop"] == 1.0  # e5 via b2; c3 joined at T
    assert (a["followers_xhs"], a["followers_douyin"], a["followers_weibo"], a["followers_total"]) == (
        250.0,
        40.0,
        0.0,
        290.0,
    )
    b = row(feats, "b2")
    assert (b["referrals_sent"], b["referees_joined"], b["referees_ordered"], b["referral_reach_2hop"]) == (
        2.0,
        1.0,
        0.0,
        0.0,
    )


def test_programme_and_profile(feats):
    a = row(feats, "a1")
    assert (a["times_invited"], a["times_declined"], a["times_enrolled"], a["times_eliminated"]) == (2.0, 1.0, 0.0, 0.0)
    assert a["days_since_last_invitation"] == 31.0
    assert (a["age"], a["gender"], a["city_tier"], a["channel"]) == (36.0, "F", "1", "store")
    b = row(feats, "b2")
    assert math.isnan(b["age"]) and pd.isna(b["gender"]) and pd.isna(b["city_tier"])
    assert b["channel"] == "other"  # unknown channel mapped to other
    assert math.isnan(b["days_since_last_invitation"])


def test_missing_optional_tables_give_zero_counts_and_null_ratios():
    frames = world_frames()
    data = from_frames({"members": frames["members"], "orders": frames["orders"]})
    feats = build_features(data, [T])
    a = row(feats, "a1")
    assert a["orders_total"] == 3.0  # orders still used
    zero = [
        "events_90d",
        "posts_total",
        "referrals_sent",
        "followers_total",
        "times_invited",
        "campaigns_joined",
        "trials_applied",
    ]
    assert all(a[c] == 0.0 for c in zero)
    null = [
        "days_since_last_event",
        "post_interactions_median_180d",
        "trial_feedback_ratio",
        "days_since_last_invitation",
    ]
    assert all(math.isnan(a[c]) for c in null)
    assert a["active_months_12m"] == 3.0  # order months only
    assert absent_groups(data) == ["activity", "content", "social", "programme"]
    assert absent_groups(from_frames(world_frames())) == []


def test_multiple_cutoffs_equal_single_builds_and_are_deterministic(world):
    cutoffs = [T, pd.Timestamp("2026-04-15 12:00")]
    both = build_features(world, [pd.Timestamp("2026-06-01"), cutoffs[1]], EngineConfig(threads=1))
    assert both["as_of"].is_monotonic_increasing
    for cutoff in cutoffs:
        single = build_features(world, [cutoff])
        part = both[both["as_of"] == cutoff].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, single, check_exact=True)
    pd.testing.assert_frame_equal(both, build_features(world, cutoffs[::-1]), check_exact=True)
    assert build_features(world, [pd.Timestamp("2025-06-01")]).empty  # nobody joined before


def test_feature_sql_transpiles_to_spark_without_unsupported_constructs():
    sql = feature_sql(T)
    (spark,) = sqlglot.transpile(sql, read="duckdb", write="spark", unsupported_level=ErrorLevel.RAISE)
    assert "MEDIAN(" in spark and "ROW_NUMBER()" in spark
    assert "2026-06-01 00:00:00" in spark


# --------------------------------------------------------------------------- scores


def _score_frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 40
    frame = pd.DataFrame(
        {
            "member_id": [f"m{i:02d}" for i in range(n)] * 2,
            "as_of": [pd.Timestamp("2026-05-01")] * n + [T] * n,
        }
    )
    for columns in VALUE_COMPONENTS.values():
        for c in columns:
            frame[c] = rng.integers(0, 6, 2 * n).astype("float64")
    frame.loc[frame.index[::5], "recency_days"] = np.nan
    frame["orders_365d"] = rng.integers(0, 4, 2 * n).astype("float64")
    return frame


def test_rfm_quintiles_and_segments_exact():
    frame = pd.DataFrame(
        {
            "as_of": [T] * 5,
            "recency_days": [1.0, 5.0, 30.0, 400.0, np.nan],
            "orders_365d": [9.0, 1.0, 1.0, 0.0, 0.0],
            "spend_365d": [900.0, 10.0, 500.0, 0.0, 0.0],
        }
    )
    scores = rfm_scores(frame)
    assert scores["rfm_r"].tolist() == [5, 4, 3, 2, 1]
    assert scores["rfm_f"].tolist() == [5, 3, 3, 1, 1]  # ties share the lowest quintile
    assert scores["rfm_m"].tolist() == [5, 3, 4, 1, 1]
    assert scores["rfm_score"].tolist() == [15, 10, 10, 4, 3]
    # means: R 3, F 2.6, M 2.8
    assert scores["rfm_segment"].tolist() == [
        "important_value",
        "important_value",
        "important_retention",  # R 3 is not above the mean 3
        "general_winback",
        "general_winback",
    ]
    assert set(RFM_SEGMENTS.values()) == set(RFM_SEGMENT_NAMES_ZH)


def test_rfm_and_value_scores_ranges_per_cutoff_and_determinism():
    frame = _score_frame()
    rfm = rfm_scores(frame)
    assert rfm["rfm_r"].between(1, 5).all() and rfm["rfm_score"].between(3, 15).all()
    values = value_scores(frame)
    assert list(values.columns) == [
        "consumption_value",
        "interaction_value",
        "content_value",
        "social_value",
        "value_score",
    ]
    assert values.ge(0).all().all() and values.le(100).all().all()
    later = frame["as_of"] == T  # each cutoff is ranked on its own
    pd.testing.assert_frame_equal(values[later], value_scores(frame[later]), check_exact=True)
    pd.testing.assert_frame_equal(rfm[later], rfm_scores(frame[later]), check_exact=True)
    expected = values[["consumption_value", "interaction_value", "content_value", "social_value"]].mean(axis=1)
    np.testing.assert_allclose(values["value_score"], expected)
    pd.testing.assert_frame_equal(values, value_scores(frame.copy()), check_exact=True)
    pd.testing.assert_frame_equal(rfm, rfm_scores(frame.copy()), check_exact=True)
    consumption_only = value_scores(frame, {"consumption": 2.0})
    pd.testing.assert_series_equal(consumption_only["value_score"], values["consumption_value"], check_names=False)
    with pytest.raises(ValueError, match="unknown value components"):
        value_scores(frame, {"loyalty": 1.0})


def test_scores_on_real_features(feats):
    values = value_scores(feats)
    assert values.loc[feats["member_id"] == "a1", "content_value"].item() == 100.0
    # recency a1 10 days, b2 1 microsecond, e5 never ordered: 1 + floor(5 * (min rank - 1) / 3)
    assert rfm_scores(feats)["rfm_r"].tolist() == [2, 4, 1]


def test_multi_scale_monthly_and_post_quality_exact(feats):
    a = row(feats, "a1")
    assert a["posts_7d"] == 1.0  # p1 exactly 7 days before T is inside; p5 at T is not
    # months 1, 2 and 6 hold one counted order each (o1 10 days, o2 60 days, o4 180 days back)
    assert [a[f"orders_m{k}"] for k in range(1, 7)] == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert a["orders_trend_6m"] == pytest.approx(1.5 / 17.5)  # least-squares slope per month
    # matured posts: p2 (15), p3 (30), p4 (100); p1's 7-day window closes exactly at T
    assert a["post_log_interactions_mean_last10"] == pytest.approx(np.mean(np.log1p([15, 30, 100])))
    assert a["post_log_interactions_std_last10"] == pytest.approx(np.std(np.log1p([15, 30, 100]), ddof=1))
    assert a["post_share_above_bar_last10"] == pytest.approx(1 / 3)  # bar 100 / 3 per post
    e = row(feats, "e5")
    assert math.isnan(e["post_share_above_bar_last10"]) and e["posts_m1"] == 0.0
    assert math.isnan(e["bgnbd_p_alive"])  # no orders (and too few buyers for a fit anyway)
