"""Point-in-time feature pipeline: one row per `(member_id, as_of)`, computed in DuckDB SQL.

For each cutoff `as_of` the validated tables are filtered to rows whose own timestamp is
strictly before `as_of`, and every feature of `features.registry` is computed by one SQL
query (`feature_sql`). Post interactions are used only when `posted_at + 7 days < as_of`;
a referral's join / first order only when that timestamp is before `as_of`.

Portability: the SQL uses only CASE WHEN, COUNT(DISTINCT), SUM/AVG/MIN/MAX/MEDIAN,
ROW_NUMBER, CAST, EXTRACT and DATE_DIFF('microsecond', ...). Window bounds are computed
in Python and inlined as TIMESTAMP literals, so no interval arithmetic is needed.
`sqlglot.transpile(feature_sql(t), read="duckdb", write="spark")` yields Spark SQL.

Determinism: amounts are summed as DECIMAL(38, 6) (exact, so the result does not depend
on DuckDB's parallel summation order) and only converted to DOUBLE at the end.

Out of core: DuckDB spills large aggregations and sorts to disk when `EngineConfig`
sets `memory_limit` (e.g. "2GB") and `temp_directory`; the input tables themselves
are the pandas frames already in memory (registered zero-copy).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from features.contract import BrandData, parse_as_of
from features.registry import (
    ALL_EVENT_TYPES,
    CATEGORY_LEVELS,
    FEATURES,
    PLATFORMS,
    feature_names,
)

logger = logging.getLogger(__name__)

# Columns each table contributes to the SQL (only these are registered with DuckDB).
SQL_COLUMNS: dict[str, tuple[str, ...]] = {
    "members": ("member_id", "joined_at", "birth_year", "gender", "city_tier", "channel"),
    "orders": ("member_id", "ordered_at", "amount", "category", "refunded"),
    "events": ("member_id", "event_at", "event_type", "campaign_id"),
    "posts": ("member_id", "posted_at", "platform", "likes_7d", "comments_7d", "saves_7d", "campaign_id"),
    "referrals": ("referrer_id", "referred_at", "referee_id", "referee_joined_at", "referee_first_order_at"),
    "program": ("member_id", "event_at", "status"),
    "social": ("member_id", "platform", "followers", "observed_at"),
}

# Which table each feature group is computed from; a group whose tables are all absent
# is reported by `absent_groups`.
GROUP_TABLES: dict[str, tuple[str, ...]] = {
    "consumption": ("orders",),
    "loyalty": ("members", "orders", "events"),
    "activity": ("events",),
    "content": ("posts", "events"),
    "social": ("events", "referrals", "social"),
    "programme": ("program",),
    "profile": ("members",),
}

_MICROS_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class EngineConfig:
    """DuckDB settings for the feature pipeline.

    `threads=None` uses min(2, CPU count); `memory_limit` (e.g. "2GB") with a
    `temp_directory` lets DuckDB spill aggregations to disk instead of failing.
    """

    threads: int | None = None
    memory_limit: str | None = None
    temp_directory: str | None = None


def _timestamp_literal(ts: pd.Timestamp) -> str:
    return f"TIMESTAMP '{ts.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _quote(text: str) -> str:
    """A SQL string literal (values come from the registry, never from data)."""
    return "'" + text.replace("'", "''") + "'"


def _month(column: str) -> str:
    return f"(EXTRACT(YEAR FROM {column}) * 100 + EXTRACT(MONTH FROM {column}))"


def feature_sql(as_of: pd.Timestamp | str) -> str:
    """The SQL (DuckDB dialect, Spark-transpilable) computing every feature at one cutoff.

    It reads the tables `members, orders, events, posts, referrals, program, social`
    (canonical columns) and returns `member_id` plus `feature_names()` for members with
    `joined_at < as_of`, ordered by `member_id`.
    """
    cutoff = pd.Timestamp(as_of)
    if cutoff.tzinfo is not None:
        raise ValueError(f"as_of must be a naive business-time timestamp, got {cutoff}")
    t = _timestamp_literal(cutoff)

    def since(days: int) -> str:
        return _timestamp_literal(cutoff - pd.Timedelta(days=days))

    def days_before(column: str) -> str:
        return f"(DATE_DIFF('microsecond', {column}, {t}) / {_MICROS_PER_DAY}.0)"

    def count_if(condition: str) -> str:
        return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"

    known_types = ", ".join(_quote(e) for e in ALL_EVENT_TYPES if e != "other")
    matured_before = since(7)

    order_windows = []
    for days in (30, 90, 365):
        order_windows.append(f"{count_if(f'ordered_at >= {since(days)}')} AS orders_{days}d")
        order_windows.append(f"SUM(CASE WHEN ordered_at >= {since(days)} THEN amount ELSE 0 END) AS spend_{days}d")
    event_windows = [
        f"{count_if(f'event_type = {_quote(etype)} AND event_at >= {since(days)}')} AS events_{etype}_{days}d"
        for days in (30, 90)
        for etype in ALL_EVENT_TYPES
    ]
    follower_columns = [
        f"SUM(CASE WHEN platform = {_quote(platform)} THEN followers ELSE 0 END) AS followers_{platform}"
        for platform in PLATFORMS
    ]
    programme_counts = [
        f"{count_if(f'status = {_quote(status)}')} AS times_{status}"
        for status in ("invited", "declined", "enrolled", "eliminated", "upgraded")
    ]

    def zero(column: str) -> str:
        return f"CAST(COALESCE({column}, 0) AS DOUBLE)"

    select = {
        # consumption
        "recency_days": days_before("oa.last_order_at"),
        **{f"orders_{d}d": zero(f"oa.orders_{d}d") for d in (30, 90, 365)},
        **{f"spend_{d}d": zero(f"oa.spend_{d}d") for d in (30, 90, 365)},
        "orders_total": zero("oa.orders_total"),
        "spend_total": zero("oa.spend_total"),
        "avg_order_value": "CAST(oa.spend_total AS DOUBLE) / oa.orders_total",
        "categories_bought_365d": zero("oa.categories_bought_365d"),
        "repeat_category_share": "CAST(ca.categories_repeated AS DOUBLE) / ca.categories_total",
        "purchase_interval_mean_days": (
            "CASE WHEN oa.orders_total >= 2 THEN "
            f"DATE_DIFF('microsecond', oa.first_order_at, oa.last_order_at) / {_MICROS_PER_DAY}.0 / (oa.orders_total - 1) END"
        ),
        "spend_trend_90d": (
            "CAST(oa.spend_90d - oa.spend_prev_90d AS DOUBLE) / NULLIF(CAST(oa.spend_90d + oa.spend_prev_90d AS DOUBLE), 0)"
        ),
        # loyalty
        "tenure_days": days_before("m.joined_at"),
        "active_months_12m": zero("am.active_months_12m"),
        "campaigns_joined": zero("ea.campaigns_joined"),
        "campaign_join_months": zero("ea.campaign_join_months"),
        # activity
        **{f"events_{e}_{d}d": zero(f"ea.events_{e}_{d}d") for d in (30, 90) for e in ALL_EVENT_TYPES},
        "events_90d": zero("ea.events_90d"),
        "active_days_90d": zero("ea.active_days_90d"),
        "days_since_last_event": days_before("ea.last_event_at"),
        # content
        **{f"posts_{d}d": zero(f"pa.posts_{d}d") for d in (30, 90, 180)},
        "posts_total": zero("pa.posts_total"),
        "post_interactions_mean_180d": "pa.post_interactions_mean_180d",
        "post_interactions_median_180d": "pa.post_interactions_median_180d",
        "post_interactions_mean_total": "pa.post_interactions_mean_total",
        "post_interactions_median_total": "pa.post_interactions_median_total",
        "post_interactions_max_total": "CAST(pa.post_interactions_max_total AS DOUBLE)",
        "platforms_posted": zero("pa.platforms_posted"),
        "campaign_posts_total": zero("pa.campaign_posts_total"),
        "trials_applied": zero("ea.trials_applied"),
        "trial_feedbacks": zero("ea.trial_feedbacks"),
        "trial_feedback_ratio": "CAST(ea.trial_feedbacks AS DOUBLE) / NULLIF(ea.trials_applied, 0)",
        # social
        "shares_total": zero("ea.shares_total"),
        "referral_invites_total": zero("ea.referral_invites_total"),
        "referrals_sent": zero("ra.referrals_sent"),
        "referees_joined": zero("ra.referees_joined"),
        "referees_ordered": zero("ra.referees_ordered"),
        "referral_reach_2hop": zero("rr.referral_reach_2hop"),
        **{f"followers_{p}": zero(f"sa.followers_{p}") for p in PLATFORMS},
        "followers_total": zero("sa.followers_total"),
        # programme
        **{f"times_{s}": zero(f"pg.times_{s}") for s in ("invited", "declined", "enrolled", "eliminated", "upgraded")},
        "days_since_last_invitation": days_before("pg.last_invited_at"),
        # profile
        "age": f"CAST({cutoff.year} - m.birth_year AS DOUBLE)",
        "gender": "m.gender",
        "city_tier": "CAST(m.city_tier AS VARCHAR)",
        "channel": "m.channel",
    }
    missing = set(feature_names()) ^ set(select)
    if missing:  # the registry and the SQL must describe the same features
        raise RuntimeError(f"feature SQL out of sync with the registry: {sorted(missing)}")
    select_list = ",\n    ".join(f"{select[name]} AS {name}" for name in feature_names())
    nl = ",\n        "
    return f"""
WITH
m AS (
    SELECT member_id, joined_at, birth_year, gender, city_tier, channel
    FROM members WHERE joined_at < {t}
),
o AS (
    SELECT member_id, ordered_at, CAST(amount AS DECIMAL(38, 6)) AS amount, category
    FROM orders WHERE ordered_at < {t} AND NOT refunded
),
e AS (
    SELECT member_id, event_at, campaign_id,
        CASE WHEN event_type IN ({known_types}) THEN event_type ELSE 'other' END AS event_type
    FROM events WHERE event_at < {t}
),
p AS (
    SELECT member_id, posted_at, platform, campaign_id,
        CASE WHEN posted_at < {matured_before}
              AND (likes_7d IS NOT NULL OR comments_7d IS NOT NULL OR saves_7d IS NOT NULL)
            THEN COALESCE(likes_7d, 0) + COALESCE(comments_7d, 0) + COALESCE(saves_7d, 0) END AS interactions
    FROM posts WHERE posted_at < {t}
),
r AS (
    SELECT referrer_id, referee_id, referee_joined_at, referee_first_order_at
    FROM referrals WHERE referred_at < {t}
),
order_agg AS (
    SELECT member_id,
        MIN(ordered_at) AS first_order_at,
        MAX(ordered_at) AS last_order_at,
        {nl.join(order_windows)},
        SUM(CASE WHEN ordered_at >= {since(180)} AND ordered_at < {since(90)} THEN amount ELSE 0 END) AS spend_prev_90d,
        COUNT(*) AS orders_total,
        SUM(amount) AS spend_total,
        COUNT(DISTINCT CASE WHEN ordered_at >= {since(365)} THEN category END) AS categories_bought_365d
    FROM o GROUP BY member_id
),
category_agg AS (
    SELECT member_id, COUNT(*) AS categories_total, {count_if("orders_in_category >= 2")} AS categories_repeated
    FROM (
        SELECT member_id, category, COUNT(*) AS orders_in_category
        FROM o WHERE category IS NOT NULL GROUP BY member_id, category
    ) per_category
    GROUP BY member_id
),
event_agg AS (
    SELECT member_id,
        {nl.join(event_windows)},
        {count_if(f"event_at >= {since(90)}")} AS events_90d,
        COUNT(DISTINCT CASE WHEN event_at >= {since(90)} THEN CAST(event_at AS DATE) END) AS active_days_90d,
        MAX(event_at) AS last_event_at,
        COUNT(DISTINCT CASE WHEN event_type = 'campaign_join' THEN campaign_id END) AS campaigns_joined,
        COUNT(DISTINCT CASE WHEN event_type = 'campaign_join' THEN {_month("event_at")} END) AS campaign_join_months,
        {count_if("event_type = 'trial_apply'")} AS trials_applied,
        {count_if("event_type = 'trial_feedback'")} AS trial_feedbacks,
        {count_if("event_type = 'share'")} AS shares_total,
        {count_if("event_type = 'referral_invite'")} AS referral_invites_total
    FROM e GROUP BY member_id
),
active_month_agg AS (
    SELECT member_id, COUNT(DISTINCT activity_month) AS active_months_12m
    FROM (
        SELECT member_id, {_month("ordered_at")} AS activity_month FROM o WHERE ordered_at >= {since(365)}
        UNION ALL
        SELECT member_id, {_month("event_at")} AS activity_month FROM e WHERE event_at >= {since(365)}
    ) activity
    GROUP BY member_id
),
post_agg AS (
    SELECT member_id,
        {count_if(f"posted_at >= {since(30)}")} AS posts_30d,
        {count_if(f"posted_at >= {since(90)}")} AS posts_90d,
        {count_if(f"posted_at >= {since(180)}")} AS posts_180d,
        COUNT(*) AS posts_total,
        AVG(CASE WHEN posted_at >= {since(180)} THEN interactions END) AS post_interactions_mean_180d,
        MEDIAN(CASE WHEN posted_at >= {since(180)} THEN interactions END) AS post_interactions_median_180d,
        AVG(interactions) AS post_interactions_mean_total,
        MEDIAN(interactions) AS post_interactions_median_total,
        MAX(interactions) AS post_interactions_max_total,
        COUNT(DISTINCT platform) AS platforms_posted,
        {count_if("campaign_id IS NOT NULL")} AS campaign_posts_total
    FROM p GROUP BY member_id
),
referral_agg AS (
    SELECT referrer_id AS member_id,
        COUNT(*) AS referrals_sent,
        {count_if(f"referee_joined_at < {t}")} AS referees_joined,
        {count_if(f"referee_first_order_at < {t}")} AS referees_ordered
    FROM r GROUP BY referrer_id
),
joined_referral AS (
    SELECT referrer_id, referee_id FROM r WHERE referee_joined_at < {t} AND referee_id IS NOT NULL
),
reach_agg AS (
    SELECT first_hop.referrer_id AS member_id, COUNT(DISTINCT second_hop.referee_id) AS referral_reach_2hop
    FROM joined_referral first_hop
    JOIN joined_referral second_hop
        ON second_hop.referrer_id = first_hop.referee_id AND second_hop.referee_id <> first_hop.referrer_id
    GROUP BY first_hop.referrer_id
),
programme_agg AS (
    SELECT member_id,
        {nl.join(programme_counts)},
        MAX(CASE WHEN status = 'invited' THEN event_at END) AS last_invited_at
    FROM program WHERE event_at < {t} GROUP BY member_id
),
latest_followers AS (
    SELECT member_id, platform, followers,
        ROW_NUMBER() OVER (PARTITION BY member_id, platform ORDER BY observed_at DESC, followers DESC) AS recency_rank
    FROM social WHERE observed_at < {t}
),
social_agg AS (
    SELECT member_id,
        {nl.join(follower_columns)},
        SUM(followers) AS followers_total
    FROM latest_followers WHERE recency_rank = 1 GROUP BY member_id
)
SELECT m.member_id AS member_id,
    {select_list}
FROM m
LEFT JOIN order_agg oa ON oa.member_id = m.member_id
LEFT JOIN category_agg ca ON ca.member_id = m.member_id
LEFT JOIN event_agg ea ON ea.member_id = m.member_id
LEFT JOIN active_month_agg am ON am.member_id = m.member_id
LEFT JOIN post_agg pa ON pa.member_id = m.member_id
LEFT JOIN referral_agg ra ON ra.member_id = m.member_id
LEFT JOIN reach_agg rr ON rr.member_id = m.member_id
LEFT JOIN programme_agg pg ON pg.member_id = m.member_id
LEFT JOIN social_agg sa ON sa.member_id = m.member_id
ORDER BY m.member_id
"""


def absent_groups(data: BrandData) -> list[str]:
    """Feature groups none of whose source tables were supplied (they are all zero/null)."""
    return [group for group, tables in GROUP_TABLES.items() if all(t in data.absent for t in tables)]


def _connect(engine: EngineConfig) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    threads = engine.threads or min(2, os.cpu_count() or 1)
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = false")
    if engine.memory_limit:
        con.execute("SET memory_limit = ?", [engine.memory_limit])
    if engine.temp_directory:
        con.execute("SET temp_directory = ?", [engine.temp_directory])
    return con


def _normalise_cutoffs(as_of: Sequence[pd.Timestamp | str] | pd.Timestamp | str, timezone: str) -> list[pd.Timestamp]:
    single = (str, dt.date, np.datetime64)  # pd.Timestamp and datetime are dates too
    values = [as_of] if isinstance(as_of, single) else list(as_of)
    if not values:
        raise ValueError("build_features needs at least one as_of cutoff")
    return sorted({parse_as_of(v, timezone) for v in values})


def _finish(raw: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Canonical output dtypes: float64 numerics, fixed-level categoricals."""
    columns: dict[str, object] = {
        "member_id": raw["member_id"].astype("str"),
        "as_of": pd.Series(cutoff, index=raw.index, dtype="datetime64[us]"),
    }
    for feature in FEATURES:
        values = raw[feature.name]
        if feature.dtype == "category":
            levels = CATEGORY_LEVELS[feature.name]
            text = values.astype("object").where(values.notna(), None)
            if feature.name == "channel":
                text = text.where(text.isna() | text.isin(levels), "other")
            columns[feature.name] = pd.Categorical(text, categories=levels)
        else:
            columns[feature.name] = pd.to_numeric(values).astype("float64")
    return pd.DataFrame(columns, index=raw.index)


def build_features(
    data: BrandData,
    as_of: Sequence[pd.Timestamp | str] | pd.Timestamp | str,
    engine: EngineConfig | None = None,
) -> pd.DataFrame:
    """Features for every member with `joined_at < as_of`, for each cutoff in `as_of`.

    Returns columns `member_id, as_of` then `feature_names()`, sorted by `as_of, member_id`.
    Cutoffs are naive business-time timestamps (aware ones are converted with
    `data.timezone`); duplicates are built once.
    """
    engine = engine or EngineConfig()
    cutoffs = _normalise_cutoffs(as_of, data.timezone)
    con = _connect(engine)
    try:
        for table, columns in SQL_COLUMNS.items():
            con.register(table, data.tables[table].loc[:, list(columns)])
        parts = []
        for cutoff in cutoffs:
            started = time.perf_counter()
            raw = con.execute(feature_sql(cutoff)).df()
            parts.append(_finish(raw, cutoff))
            logger.info("features at %s: %d members in %.2fs", cutoff, len(raw), time.perf_counter() - started)
    finally:
        con.close()
    result = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    result = result.sort_values(["as_of", "member_id"], kind="stable", ignore_index=True)
    for name in CATEGORY_LEVELS:  # concat keeps categories only when identical; make sure
        result[name] = pd.Categorical(result[name], categories=CATEGORY_LEVELS[name])
    return result
