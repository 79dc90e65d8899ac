"""The feature registry: every model feature declared once.

An entry (`Feature`) carries the feature's name, group, dtype and one-line meaning, the
SQL that computes it (the aggregate columns it needs in its source's CTE and the
expression that turns them into the feature), the source it is computed from
(`SOURCES`: one CTE per table, assembled by `features.build.feature_sql` from the
entries that use it), the reason concept and the bilingual reason phrases filled with
the member's own value. The SQL, the README table (`markdown_table()`), `koc features
--list` and the ranked list's reasons are all generated from these entries.

All windows are relative to the cutoff `as_of` and half-open: "30d" means rows with
`as_of - 30 days <= timestamp < as_of`; "total" means every row strictly before
`as_of`. Days are fractional (`(as_of - timestamp) / 1 day`). "Month k" is the 30-day
bucket `[as_of - 30k days, as_of - 30(k-1) days)` (k = 1 is the latest).

SQL templates use `string.Template` placeholders resolved per cutoff by
`features.build`: `$t` (the cutoff as a TIMESTAMP literal), `$since_N` (`as_of - N days`),
`$year` (the cutoff's calendar year), `$refund_rule` (the point-in-time refund filter)
and, in a feature's `value`, `$src` (its source CTE's name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from features.contract import EVENT_TYPES, GENDERS, OTHER_EVENT, PLATFORMS
from features.labels import LabelConfig

# Bump rule: any change to the names, definitions or order of FEATURES (or to
# CATEGORY_LEVELS) changes this version. Breaking changes (removed/renamed/redefined
# features) bump the major part; purely added features bump the minor part.
# 2.0.0: refunds count point in time (`orders.refunded_at`), multi-scale windows,
# monthly sequences with trends, post quality, follower growth, earlier KOC spells, BG/NBD.
FEATURE_SET_VERSION = "2.0.0"

FeatureGroup = Literal["consumption", "loyalty", "activity", "content", "social", "programme", "profile"]
FeatureDtype = Literal["float", "int", "category"]

GROUPS: tuple[FeatureGroup, ...] = ("consumption", "loyalty", "activity", "content", "social", "programme", "profile")
DTYPES: tuple[FeatureDtype, ...] = ("float", "int", "category")

ALL_EVENT_TYPES: tuple[str, ...] = (*EVENT_TYPES, OTHER_EVENT)
CHANNELS: tuple[str, ...] = ("store", "mini_program", "official_account", "ads", "referral", "ecommerce", "other")
PROGRAMME_COUNTS: tuple[str, ...] = ("invited", "declined", "enrolled", "eliminated", "upgraded")

# Fixed levels for categoricals. Values outside the list map to "other" for `channel`
# (brands name their channels freely) and to missing (NaN) for `gender`/`city_tier`
# (the contract already restricts those, so only nulls can be left).
CATEGORY_LEVELS: dict[str, list[str]] = {
    "gender": list(GENDERS),
    "city_tier": [str(tier) for tier in range(1, 7)],
    "channel": list(CHANNELS),
}

MICROS_PER_DAY = 86_400_000_000
MONTHS = 6  # monthly sequences: the last 6 30-day buckets
POST_QUALITY_LAST_N = 10  # post quality looks at the member's last N matured posts
SPELL_DAYS = 90  # earlier KOC spells: the 90 days after each earlier enrolment
FOLLOWER_GROWTH_DAYS = (30, 90, 180)
# A post "above the productivity bar" carries at least its share of the default label's
# interaction bar: min_interactions / min_posts (100 / 3 with the contract defaults).
POST_BAR = LabelConfig().min_interactions / LabelConfig().min_posts
BGNBD_HORIZON_DAYS = LabelConfig().horizon_days  # expected purchases within H (the label horizon)


@dataclass(frozen=True)
class Source:
    """One CTE of the feature SQL: the rows it reads (`rows`: named row-level CTEs, in order)
    and, when `aggregated`, a `GROUP BY key` CTE named `name` holding the columns the
    features of this source declare. `tables`: the contract tables it reads.
    `kind="base"`: the member rows every feature is joined onto."""

    name: str
    tables: tuple[str, ...]
    rows: tuple[tuple[str, str], ...] = ()
    key: str = "member_id"
    kind: Literal["aggregate", "base"] = "aggregate"


@dataclass(frozen=True)
class Feature:
    """One declared model feature.

    `columns`: (column, aggregate SQL) pairs this feature needs in its source's CTE (shared
    helper columns may be declared by several features with the same SQL); `value`: the
    expression of the final SELECT (`$src.column`). `python`: instead of `value`, the
    feature is computed in Python (`features.clv`) from its `columns`. `zh`/`en`: reason phrases with
    `{value}` (Python format, e.g. `{value:.0f}`), `zh_missing`/`en_missing` when null.
    """

    name: str
    group: FeatureGroup
    dtype: FeatureDtype
    description: str
    source: str
    columns: tuple[tuple[str, str], ...] = ()
    value: str = ""
    concept: str = ""
    zh: str = ""
    en: str = ""
    zh_missing: str = ""
    en_missing: str = ""
    python: str = ""


# --------------------------------------------------------------------------- SQL helpers


def days_before(column: str) -> str:
    """Fractional days from `column` to the cutoff."""
    return f"(DATE_DIFF('microsecond', {column}, $t) / {MICROS_PER_DAY}.0)"


def count_if(condition: str) -> str:
    # COUNT of a CASE without ELSE, not SUM(CASE ... ELSE 0): the same number (0 for a member
    # with rows but no match), but DuckDB counts into a BIGINT instead of summing into a
    # 128-bit integer, which halves the time of the wide events aggregate
    return f"COUNT(CASE WHEN {condition} THEN 1 END)"


def sum_if(condition: str, value: str) -> str:
    if value == "1":
        return count_if(condition)
    return f"SUM(CASE WHEN {condition} THEN {value} ELSE 0 END)"


def zero(column: str) -> str:
    """A count or sum that is 0 for members without rows in the source."""
    return f"CAST(COALESCE({column}, 0) AS DOUBLE)"


def as_double(column: str) -> str:
    return f"CAST({column} AS DOUBLE)"


def month_key(column: str) -> str:
    return f"(EXTRACT(YEAR FROM {column}) * 100 + EXTRACT(MONTH FROM {column}))"


def in_month(column: str, k: int) -> str:
    """`column` falls in month bucket k (1 = the latest 30 days)."""
    upper = "$t" if k == 1 else f"$since_{30 * (k - 1)}"
    return f"{column} >= $since_{30 * k} AND {column} < {upper}"


def _slope_weights() -> list[float]:
    """Least-squares slope weights over months 1..6 with time running forward (month 6 first)."""
    xs = [MONTHS - k for k in range(1, MONTHS + 1)]  # month 1 is the latest: x = 5
    mean = sum(xs) / len(xs)
    denominator = sum((x - mean) ** 2 for x in xs)
    return [(x - mean) / denominator for x in xs]


def slope(columns: list[str]) -> str:
    """Least-squares slope per month of a 6-month sequence (columns ordered month 1..6)."""
    return " + ".join(f"({w:.10f}) * {zero(c)}" for w, c in zip(_slope_weights(), columns, strict=True))


# --------------------------------------------------------------------------- sources

SOURCES: tuple[Source, ...] = (
    Source(
        "m",
        ("members",),
        (("m", "SELECT member_id, joined_at, birth_year, gender, city_tier, channel FROM members WHERE joined_at < $t"),),
        kind="base",
    ),
    Source(
        "orders_agg",
        ("orders",),
        (
            (
                "o",
                "SELECT member_id, ordered_at, CAST(amount AS DECIMAL(38, 6)) AS amount, category\n"
                "    FROM orders WHERE ordered_at < $t AND $refund_rule",
            ),
        ),
    ),
    # one row per (member, category) of the counted orders: the category counts group these
    # rows instead of counting distinct categories over every order (a window and three
    # COUNT(DISTINCT) over 5M orders at 1M members; see features.build._aggregate_ctes)
    Source(
        "categories_agg",
        ("orders",),
        (
            (
                "order_categories",
                "SELECT member_id, category, COUNT(*) AS orders_in_category, MAX(ordered_at) AS last_ordered_at\n"
                "    FROM o WHERE category IS NOT NULL GROUP BY member_id, category",
            ),
        ),
    ),
    Source(
        "events_agg",
        ("events",),
        (
            (
                "e",
                "SELECT member_id, event_at, campaign_id,\n"
                "        CASE WHEN event_type IN ($known_event_types) THEN event_type ELSE 'other' END AS event_type\n"
                "    FROM events WHERE event_at < $t",
            ),
        ),
    ),
    Source(
        "activity_agg",
        ("orders", "events"),
        (
            (
                "activity",
                f"SELECT member_id, {month_key('ordered_at')} AS activity_month FROM o WHERE ordered_at >= $since_365\n"
                f"    UNION ALL\n"
                f"    SELECT member_id, {month_key('event_at')} AS activity_month FROM e WHERE event_at >= $since_365",
            ),
        ),
    ),
    Source(
        "posts_agg",
        ("posts",),
        (
            (
                "p_raw",
                "SELECT post_id, member_id, posted_at, platform, campaign_id,\n"
                "        CASE WHEN posted_at < $since_7\n"
                "              AND (likes_7d IS NOT NULL OR comments_7d IS NOT NULL OR saves_7d IS NOT NULL)\n"
                "            THEN COALESCE(likes_7d, 0) + COALESCE(comments_7d, 0) + COALESCE(saves_7d, 0) END"
                " AS interactions\n"
                "    FROM posts WHERE posted_at < $t",
            ),
            (
                "p",
                "SELECT *, CASE WHEN interactions IS NOT NULL THEN ROW_NUMBER() OVER (\n"
                "            PARTITION BY member_id, CASE WHEN interactions IS NULL THEN 0 ELSE 1 END\n"
                "            ORDER BY posted_at DESC, post_id DESC) END AS matured_rank\n"
                "    FROM p_raw",
            ),
        ),
    ),
    Source(
        "referrals_agg",
        ("referrals",),
        (
            (
                "r",
                "SELECT referrer_id, referee_id, referee_joined_at, referee_first_order_at\n"
                "    FROM referrals WHERE referred_at < $t",
            ),
        ),
        key="referrer_id",
    ),
    Source(
        "reach_agg",
        ("referrals",),
        (
            (
                "joined_referral",
                "SELECT referrer_id, referee_id FROM r WHERE referee_joined_at < $t AND referee_id IS NOT NULL",
            ),
            (
                "reach",
                "SELECT first_hop.referrer_id AS member_id, second_hop.referee_id AS friend_id\n"
                "    FROM joined_referral first_hop\n"
                "    JOIN joined_referral second_hop\n"
                "        ON second_hop.referrer_id = first_hop.referee_id"
                " AND second_hop.referee_id <> first_hop.referrer_id",
            ),
        ),
    ),
    Source(
        "programme_agg",
        ("program",),
        (("pg", "SELECT member_id, event_at, status FROM program WHERE event_at < $t"),),
    ),
    Source(
        "spells_agg",
        ("program", "posts"),
        (
            (
                "spell_posts",
                "SELECT en.member_id, en.event_at AS enrolled_at, sp.posted_at, sp.interactions\n"
                "    FROM pg en\n"
                "    LEFT JOIN p sp ON sp.member_id = en.member_id AND sp.posted_at >= en.event_at\n"
                f"        AND DATE_DIFF('microsecond', en.event_at, sp.posted_at) < {SPELL_DAYS * MICROS_PER_DAY}\n"
                "    WHERE en.status = 'enrolled'",
            ),
        ),
    ),
    Source(
        "social_agg",
        ("social",),
        (
            (
                "social_bounds",
                "SELECT 0 AS lag_days, $t AS bound"
                + "".join(f"\n    UNION ALL SELECT {d}, $since_{d}" for d in FOLLOWER_GROWTH_DAYS),
            ),
            (
                "social_latest",
                "SELECT s.member_id, s.platform, s.followers, b.lag_days,\n"
                "        ROW_NUMBER() OVER (PARTITION BY s.member_id, s.platform, b.lag_days\n"
                "            ORDER BY s.observed_at DESC, s.followers DESC) AS recency_rank\n"
                "    FROM social s JOIN social_bounds b ON s.observed_at < b.bound",
            ),
            ("social_rows", "SELECT * FROM social_latest WHERE recency_rank = 1"),
        ),
    ),
)
SOURCE_BY_NAME: dict[str, Source] = {s.name: s for s in SOURCES}


# --------------------------------------------------------------------------- entries

_WINDOW_ZH = {7: "近7天", 30: "近30天", 90: "近90天", 180: "近180天", 365: "近一年"}
_WINDOW_EN = {7: "in 7 days", 30: "in 30 days", 90: "in 90 days", 180: "in 180 days", 365: "in the last year"}


def _month_zh(k: int) -> str:
    return "近30天" if k == 1 else f"{30 * (k - 1)}-{30 * k}天前"


def _month_en(k: int) -> str:
    return "in the last 30 days" if k == 1 else f"{30 * (k - 1)}-{30 * k} days ago"


def counted(
    name: str,
    group: FeatureGroup,
    description: str,
    source: str,
    sql: str,
    zh: str,
    en: str,
    *,
    concept: str = "",
    dtype: FeatureDtype = "int",
) -> Feature:
    """A count/sum aggregated in `source` (0 for members without rows there)."""
    return Feature(
        name, group, dtype, description, source, ((name, sql),), zero(f"$src.{name}"), concept or name, zh, en
    )


def measured(
    name: str,
    group: FeatureGroup,
    description: str,
    source: str,
    columns: Iterable[tuple[str, str]],
    value: str,
    zh: str,
    en: str,
    zh_missing: str,
    en_missing: str,
    *,
    concept: str = "",
) -> Feature:
    """A float that may be null (no rows, or undefined), from `columns` via `value`."""
    return Feature(
        name, group, "float", description, source, tuple(columns), value,
        concept or name, zh, en, zh_missing, en_missing,
    )


_NO_ORDERS = ("尚无购买", "no purchases yet")


def _consumption() -> Iterable[Feature]:
    g: FeatureGroup = "consumption"
    last_order = ("last_order_at", "MAX(ordered_at)")
    first_order = ("first_order_at", "MIN(ordered_at)")
    orders_total = ("orders_total", "COUNT(*)")
    spend_total = ("spend_total", "SUM(amount)")
    yield measured(
        "recency_days", g, "days since the last counted order (null if none)", "orders_agg", [last_order],
        days_before("$src.last_order_at"), "上次购买在{value:.0f}天前", "last order {value:.0f} days ago", *_NO_ORDERS,
    )
    for days in (7, 30, 90, 180, 365):
        yield counted(
            f"orders_{days}d", g, f"counted orders in the last {days} days", "orders_agg",
            count_if(f"ordered_at >= $since_{days}"),
            f"{_WINDOW_ZH[days]}下单{{value:.0f}}次", f"{{value:.0f}} orders {_WINDOW_EN[days]}", concept="orders",
        )
    for days in (30, 90, 180, 365):
        yield counted(
            f"spend_{days}d", g, f"net amount of counted orders in the last {days} days", "orders_agg",
            sum_if(f"ordered_at >= $since_{days}", "amount"),
            f"{_WINDOW_ZH[days]}消费{{value:,.0f}}元", f"spent {{value:,.0f}} {_WINDOW_EN[days]}",
            concept="spend", dtype="float",
        )
    yield counted(
        "orders_total", g, "counted orders before as_of", "orders_agg", "COUNT(*)",
        "累计下单{value:.0f}次", "{value:.0f} orders in total", concept="orders",
    )
    yield counted(
        "spend_total", g, "net amount of counted orders before as_of", "orders_agg", "SUM(amount)",
        "累计消费{value:,.0f}元", "spent {value:,.0f} in total", concept="spend", dtype="float",
    )
    yield measured(
        "avg_order_value", g, "spend_total / orders_total (null if no orders)", "orders_agg",
        [orders_total, spend_total], "CAST($src.spend_total AS DOUBLE) / $src.orders_total",
        "客单价{value:,.0f}元", "average order {value:,.0f}", *_NO_ORDERS,
    )
    yield counted(
        "categories_bought_365d", g, "distinct product categories of counted orders in the last 365 days",
        "categories_agg", "COUNT(CASE WHEN last_ordered_at >= $since_365 THEN 1 END)",
        "近一年购买{value:.0f}个品类", "{value:.0f} categories bought in the last year",
    )
    yield measured(
        "repeat_category_share", g,
        "share of the categories ever bought (counted orders) that were bought in 2+ orders (null if none)",
        "categories_agg",
        [("categories_total", "COUNT(*)"), ("categories_repeated", "COUNT(CASE WHEN orders_in_category >= 2 THEN 1 END)")],
        "CAST($src.categories_repeated AS DOUBLE) / NULLIF($src.categories_total, 0)",
        "{value:.0%}的品类有回购", "rebought {value:.0%} of categories", *_NO_ORDERS,
    )
    yield measured(
        "purchase_interval_mean_days", g,
        "mean days between consecutive counted orders: (last - first) / (orders - 1) (null if < 2 orders)",
        "orders_agg", [first_order, last_order, orders_total],
        f"CASE WHEN $src.orders_total >= 2 THEN DATE_DIFF('microsecond', $src.first_order_at, $src.last_order_at)"
        f" / {MICROS_PER_DAY}.0 / ($src.orders_total - 1) END",
        "平均每{value:.0f}天购买一次", "buys every {value:.0f} days on average", "购买不足两次", "fewer than two orders",
    )
    yield measured(
        "spend_trend_90d", g, "(spend last 90d - spend the 90d before) / (their sum), in [-1, 1] (null if both 0)",
        "orders_agg",
        [
            ("spend_90d", sum_if("ordered_at >= $since_90", "amount")),
            ("spend_prev_90d", sum_if("ordered_at >= $since_180 AND ordered_at < $since_90", "amount")),
        ],
        "CAST($src.spend_90d - $src.spend_prev_90d AS DOUBLE)"
        " / NULLIF(CAST($src.spend_90d + $src.spend_prev_90d AS DOUBLE), 0)",
        "近90天消费环比{value:+.0%}", "spend {value:+.0%} vs the 90 days before", "近半年无消费",
        "no spend in the last 180 days", concept="spend_trend",
    )
    yield from _monthly(
        "orders", g, "counted orders", "orders_agg", "ordered_at", "1", "下单{value:.0f}次", "{value:.0f} orders"
    )
    yield from _bgnbd()


def _monthly(
    stem: str, group: FeatureGroup, what: str, source: str, column: str, counted_value: str, zh: str, en: str,
    condition: str = "",
) -> Iterable[Feature]:
    """`{stem}_m1..m6` (30-day buckets) and `{stem}_trend_6m`, their least-squares slope per month."""
    where = f"{condition} AND " if condition else ""
    names = [f"{stem}_m{k}" for k in range(1, MONTHS + 1)]
    for k, name in enumerate(names, start=1):
        yield counted(
            name, group, f"{what} in month {k} (the 30-day bucket ending {30 * (k - 1)} days before as_of)",
            source, sum_if(f"{where}{in_month(column, k)}", counted_value),
            f"{_month_zh(k)}{zh}", f"{en} {_month_en(k)}", concept=f"{stem}_monthly",
        )
    yield Feature(
        f"{stem}_trend_6m", group, "float",
        f"least-squares slope per month of {stem}_m6..m1 (positive = rising)", source, (),
        slope([f"$src.{n}" for n in names]), f"{stem}_trend",
        "近半年每月变化{value:+.1f}", "trend {value:+.1f} per month over 6 months",
    )


def _bgnbd() -> Iterable[Feature]:
    """Computed in Python (`features.clv`) from each member's RFM summary in `orders_agg`."""
    rfm = (
        ("first_order_at", "MIN(ordered_at)"),
        ("last_order_at", "MAX(ordered_at)"),
        ("purchase_days", "COUNT(DISTINCT CAST(ordered_at AS DATE))"),
    )
    fitted = "a BG/NBD model fitted on every member's counted orders before as_of (null if no orders)"
    yield Feature(
        "bgnbd_p_alive", "consumption", "float", f"P(still an active buyer) at as_of from {fitted}", "orders_agg",
        rfm, "", "bgnbd_p_alive", "仍活跃概率{value:.0%}", "{value:.0%} likely still an active buyer",
        *_NO_ORDERS, python="bgnbd",
    )
    yield Feature(
        "bgnbd_expected_purchases_h", "consumption", "float",
        f"expected purchase days in the next {BGNBD_HORIZON_DAYS} days (the label horizon) from {fitted}",
        "orders_agg", rfm, "", "bgnbd_expected", f"预计{BGNBD_HORIZON_DAYS}天内购买{{value:.1f}}次",
        f"expected {{value:.1f}} purchases in the next {BGNBD_HORIZON_DAYS} days", *_NO_ORDERS, python="bgnbd",
    )


def _loyalty() -> Iterable[Feature]:
    g: FeatureGroup = "loyalty"
    yield Feature(
        "tenure_days", g, "float", "days since the member joined", "m", (), days_before("m.joined_at"),
        "tenure_days", "入会{value:.0f}天", "member for {value:.0f} days",
    )
    yield counted(
        "active_months_12m", g, "distinct calendar months with a counted order or an event in the last 365 days",
        "activity_agg", "COUNT(DISTINCT activity_month)",
        "近一年{value:.0f}个月有活跃", "active in {value:.0f} of the last 12 months",
    )
    yield counted(
        "campaigns_joined", g, "distinct campaign ids of campaign_join events (null ids not counted)", "events_agg",
        "COUNT(DISTINCT CASE WHEN event_type = 'campaign_join' THEN campaign_id END)",
        "参与过{value:.0f}个种草活动", "joined {value:.0f} brand campaigns",
    )
    yield counted(
        "campaign_join_months", g, "distinct calendar months with a campaign_join event (2+ = repeat participant)",
        "events_agg", f"COUNT(DISTINCT CASE WHEN event_type = 'campaign_join' THEN {month_key('event_at')} END)",
        "{value:.0f}个月参与过种草活动", "joined campaigns in {value:.0f} different months",
    )
    yield from _monthly(
        "campaign_joins", g, "campaign_join events", "events_agg", "event_at", "1",
        "参与种草活动{value:.0f}次", "{value:.0f} campaign sign-ups", condition="event_type = 'campaign_join'",
    )


_EVENT_WORDS: dict[str, tuple[str, str]] = {
    "campaign_join": ("参与种草活动", "seeding-campaign sign-ups"),
    "trial_apply": ("申请试用", "trial applications"),
    "trial_feedback": ("提交试用反馈", "trial reviews delivered"),
    "group_message": ("社群发言", "community group messages"),
    "checkin": ("签到", "check-ins"),
    "survey": ("参与问卷", "surveys answered"),
    "content_like": ("点赞品牌内容", "likes on brand content"),
    "content_comment": ("评论品牌内容", "comments on brand content"),
    "share": ("分享品牌内容", "shares of brand content"),
    "referral_invite": ("邀请好友", "friend invitations"),
    "other": ("其他互动", "other interactions"),
}


def _activity() -> Iterable[Feature]:
    g: FeatureGroup = "activity"
    for event_type in ALL_EVENT_TYPES:
        zh_word, en_word = _EVENT_WORDS[event_type]
        windows = (7, 30, 90, 180, 365) if event_type == "campaign_join" else (30, 90)
        for days in windows:
            yield counted(
                f"events_{event_type}_{days}d", g, f"{event_type} events in the last {days} days", "events_agg",
                count_if(f"event_type = '{event_type}' AND event_at >= $since_{days}"),
                f"{_WINDOW_ZH[days]}{zh_word}{{value:.0f}}次", f"{{value:.0f}} {en_word} {_WINDOW_EN[days]}",
                concept=f"events_{event_type}",
            )
    for days in (7, 30, 90, 180, 365):
        yield counted(
            f"events_{days}d", g, f"events of any type in the last {days} days", "events_agg",
            count_if(f"event_at >= $since_{days}"),
            f"{_WINDOW_ZH[days]}私域互动{{value:.0f}}次", f"{{value:.0f}} brand interactions {_WINDOW_EN[days]}",
            concept="events",
        )
    yield counted(
        "active_days_90d", g, "distinct calendar days with an event in the last 90 days", "events_agg",
        "COUNT(DISTINCT CASE WHEN event_at >= $since_90 THEN CAST(event_at AS DATE) END)",
        "近90天{value:.0f}天有互动", "active on {value:.0f} days in the last 90 days",
    )
    yield measured(
        "days_since_last_event", g, "days since the latest event (null if none)", "events_agg",
        [("last_event_at", "MAX(event_at)")], days_before("$src.last_event_at"),
        "上次互动在{value:.0f}天前", "last interaction {value:.0f} days ago", "尚无私域互动", "no interactions yet",
    )
    yield from _monthly(
        "events", g, "events of any type", "events_agg", "event_at", "1", "互动{value:.0f}次", "{value:.0f} interactions"
    )


def _content() -> Iterable[Feature]:
    g: FeatureGroup = "content"
    for days in (7, 30, 90, 180, 365):
        yield counted(
            f"posts_{days}d", g, f"posts published in the last {days} days", "posts_agg",
            count_if(f"posted_at >= $since_{days}"),
            f"{_WINDOW_ZH[days]}发布{{value:.0f}}篇笔记", f"{{value:.0f}} posts {_WINDOW_EN[days]}", concept="posts",
        )
    yield counted(
        "posts_total", g, "posts published before as_of", "posts_agg", "COUNT(*)",
        "累计发布{value:.0f}篇笔记", "{value:.0f} posts in total", concept="posts",
    )
    matured = "posts whose 7-day interaction window closed before as_of (posted_at + 7d < as_of)"
    no_matured = ("尚无已满7天的笔记", "no post older than 7 days yet")
    for stat, sql, zh, en in (
        ("mean", "AVG", "笔记平均互动{value:.0f}", "{value:.0f} interactions per post on average"),
        ("median", "MEDIAN", "笔记互动中位数{value:.0f}", "median {value:.0f} interactions per post"),
    ):
        yield measured(
            f"post_interactions_{stat}_180d", g,
            f"{stat} likes+comments+saves (7d) of {matured}, posted in the last 180 days", "posts_agg",
            [(f"post_interactions_{stat}_180d", f"{sql}(CASE WHEN posted_at >= $since_180 THEN interactions END)")],
            f"$src.post_interactions_{stat}_180d", "近180天" + zh, en + " in the last 180 days",
            "近180天无已满7天的笔记", "no post older than 7 days in the last 180 days", concept="post_interactions",
        )
        yield measured(
            f"post_interactions_{stat}_total", g, f"{stat} likes+comments+saves (7d) of all {matured}", "posts_agg",
            [(f"post_interactions_{stat}_total", f"{sql}(interactions)")], f"$src.post_interactions_{stat}_total",
            zh, en, *no_matured, concept="post_interactions",
        )
    yield measured(
        "post_interactions_max_total", g, f"best likes+comments+saves (7d) of all {matured}", "posts_agg",
        [("post_interactions_max_total", "MAX(interactions)")], as_double("$src.post_interactions_max_total"),
        "最佳笔记互动{value:.0f}", "best post reached {value:.0f} interactions", *no_matured,
    )
    last_n = f"matured_rank <= {POST_QUALITY_LAST_N}"
    yield measured(
        "post_log_interactions_mean_last10", g,
        f"mean of ln(1 + interactions) over the last {POST_QUALITY_LAST_N} {matured}", "posts_agg",
        [("post_log_interactions_mean_last10", f"AVG(CASE WHEN {last_n} THEN LN(1 + interactions) END)")],
        "$src.post_log_interactions_mean_last10",
        "近10篇笔记的典型互动约{value_exp:.0f}", "typical post reaches about {value_exp:.0f} interactions (last 10)",
        *no_matured, concept="post_quality",
    )
    yield measured(
        "post_log_interactions_std_last10", g,
        f"sample standard deviation of ln(1 + interactions) over the last {POST_QUALITY_LAST_N} {matured}"
        " (null if fewer than 2)", "posts_agg",
        [("post_log_interactions_std_last10", f"STDDEV_SAMP(CASE WHEN {last_n} THEN LN(1 + interactions) END)")],
        "$src.post_log_interactions_std_last10",
        "笔记互动波动{value:.2f}", "post interactions vary by {value:.2f} (log scale)",
        "已满7天的笔记不足两篇", "fewer than two posts older than 7 days", concept="post_consistency",
    )
    yield measured(
        "post_share_above_bar_last10", g,
        f"share of the last {POST_QUALITY_LAST_N} {matured} with interactions >= {POST_BAR:.1f}"
        " (the default label's min_interactions / min_posts)", "posts_agg",
        [
            ("posts_above_bar_last10", count_if(f"{last_n} AND interactions >= {POST_BAR:.6f}")),
            ("posts_matured_last10", count_if(last_n)),
        ],
        "CAST($src.posts_above_bar_last10 AS DOUBLE) / NULLIF($src.posts_matured_last10, 0)",
        "近10篇笔记{value:.0%}达到优质标准", "{value:.0%} of the last 10 posts cleared the productivity bar",
        *no_matured, concept="post_quality_share",
    )
    for name, description, source, sql, zh, en in (
        ("platforms_posted", "distinct platforms the member has posted on", "posts_agg", "COUNT(DISTINCT platform)",
         "在{value:.0f}个平台发布内容", "posts on {value:.0f} platforms"),
        ("campaign_posts_total", "posts tied to a brand campaign (campaign_id set)", "posts_agg",
         count_if("campaign_id IS NOT NULL"), "发布活动笔记{value:.0f}篇", "{value:.0f} campaign posts"),
        ("trials_applied", "trial_apply events before as_of", "events_agg", count_if("event_type = 'trial_apply'"),
         "申请试用{value:.0f}次", "applied for {value:.0f} trials"),
        ("trial_feedbacks", "trial_feedback events before as_of", "events_agg",
         count_if("event_type = 'trial_feedback'"), "提交试用反馈{value:.0f}次", "delivered {value:.0f} trial reviews"),
    ):
        yield counted(name, g, description, source, sql, zh, en)
    yield measured(
        "trial_feedback_ratio", g, "trial_feedbacks / trials_applied (null if no trial applied)", "events_agg",
        [
            ("trial_feedbacks", count_if("event_type = 'trial_feedback'")),
            ("trials_applied", count_if("event_type = 'trial_apply'")),
        ],
        "CAST($src.trial_feedbacks AS DOUBLE) / NULLIF($src.trials_applied, 0)",
        "试用反馈完成率{value:.0%}", "delivered feedback on {value:.0%} of trials", "尚未申请试用",
        "has not applied for a trial",
    )
    yield from _monthly("posts", g, "posts", "posts_agg", "posted_at", "1", "发布{value:.0f}篇笔记", "{value:.0f} posts")


_PLATFORM_WORDS: dict[str, tuple[str, str]] = {
    "xhs": ("小红书", "Xiaohongshu"),
    "douyin": ("抖音", "Douyin"),
    "weibo": ("微博", "Weibo"),
    "wechat": ("微信", "WeChat"),
    "other": ("其他平台", "other-platform"),
}


def _social() -> Iterable[Feature]:
    g: FeatureGroup = "social"
    for name, description, source, sql, zh, en in (
        ("shares_total", "share events before as_of", "events_agg", count_if("event_type = 'share'"),
         "分享品牌内容{value:.0f}次", "shared brand content {value:.0f} times"),
        ("referral_invites_total", "referral_invite events before as_of", "events_agg",
         count_if("event_type = 'referral_invite'"), "邀请好友{value:.0f}次", "invited friends {value:.0f} times"),
        ("referrals_sent", "referrals table rows with referred_at < as_of", "referrals_agg", "COUNT(*)",
         "推荐好友{value:.0f}位", "referred {value:.0f} friends"),
        ("referees_joined", "referrals whose friend joined before as_of", "referrals_agg",
         count_if("referee_joined_at < $t"), "推荐的好友中{value:.0f}位已入会", "{value:.0f} referred friends joined"),
        ("referees_ordered", "referrals whose friend placed a first order before as_of", "referrals_agg",
         count_if("referee_first_order_at < $t"), "推荐的好友中{value:.0f}位已下单", "{value:.0f} referred friends bought"),
        ("referral_reach_2hop", "distinct friends of the member's joined referees who joined (via referral) before as_of",
         "reach_agg", "COUNT(DISTINCT friend_id)", "二度传播带来{value:.0f}位会员", "{value:.0f} second-degree referrals"),
    ):
        yield counted(name, g, description, source, sql, zh, en)
    latest = "lag_days = 0"
    for platform in PLATFORMS:
        zh_word, en_word = _PLATFORM_WORDS[platform]
        yield counted(
            f"followers_{platform}", g, f"latest {platform} follower count observed before as_of (0 if none)",
            "social_agg", sum_if(f"{latest} AND platform = '{platform}'", "followers"),
            f"{zh_word}粉丝{{value:,.0f}}", f"{{value:,.0f}} {en_word} followers", concept="followers", dtype="float",
        )
    total = ("followers_total", sum_if(latest, "followers"))
    yield counted(
        "followers_total", g, "sum of the latest follower counts over platforms", "social_agg", total[1],
        "社交粉丝{value:,.0f}", "{value:,.0f} followers in total", concept="followers", dtype="float",
    )
    for days in FOLLOWER_GROWTH_DAYS:
        then = (f"followers_then_{days}d", sum_if(f"lag_days = {days}", "followers"))
        seen = (f"followers_seen_{days}d", count_if(f"lag_days = {days}"))
        yield measured(
            f"followers_growth_{days}d", g,
            f"followers_total minus the same sum over the observations before as_of - {days}d"
            " (null if nothing was observed then)", "social_agg", [total, then, seen],
            f"CASE WHEN $src.followers_seen_{days}d > 0"
            f" THEN CAST($src.followers_total - $src.followers_then_{days}d AS DOUBLE) END",
            f"{_WINDOW_ZH[days]}粉丝增长{{value:+,.0f}}", f"followers {{value:+,.0f}} {_WINDOW_EN[days]}",
            f"{days}天前无粉丝记录", f"no follower count from {days} days ago", concept="followers_growth",
        )


def _programme() -> Iterable[Feature]:
    g: FeatureGroup = "programme"
    words = {
        "invited": ("被邀请{value:.0f}次", "invited {value:.0f} times before"),
        "declined": ("婉拒邀请{value:.0f}次", "declined {value:.0f} invitations"),
        "enrolled": ("曾{value:.0f}次加入KOC计划", "enrolled as a KOC {value:.0f} times before"),
        "eliminated": ("曾被淘汰{value:.0f}次", "removed from the programme {value:.0f} times"),
        "upgraded": ("曾{value:.0f}次升级为重要KOC", "promoted to productive KOC {value:.0f} times"),
    }
    for status in PROGRAMME_COUNTS:
        yield counted(
            f"times_{status}", g, f"{status} programme events before as_of", "programme_agg",
            count_if(f"status = '{status}'"), *words[status],
        )
    yield measured(
        "days_since_last_invitation", g, "days since the latest invitation (null if never invited)", "programme_agg",
        [("last_invited_at", "MAX(CASE WHEN status = 'invited' THEN event_at END)")],
        days_before("$src.last_invited_at"), "上次邀请在{value:.0f}天前", "last invited {value:.0f} days ago",
        "从未被邀请", "never invited before",
    )
    yield measured(
        "days_since_last_elimination", g, "days since the latest elimination (null if never eliminated)",
        "programme_agg", [("last_eliminated_at", "MAX(CASE WHEN status = 'eliminated' THEN event_at END)")],
        days_before("$src.last_eliminated_at"), "上次被淘汰在{value:.0f}天前", "removed {value:.0f} days ago",
        "从未被淘汰", "never removed from the programme",
    )
    yield measured(
        "invitation_accept_share", g, "times_enrolled / (times_enrolled + times_declined) (null if neither)",
        "programme_agg",
        [("times_enrolled", count_if("status = 'enrolled'")), ("times_declined", count_if("status = 'declined'"))],
        "CAST($src.times_enrolled AS DOUBLE) / NULLIF($src.times_enrolled + $src.times_declined, 0)",
        "接受邀请比例{value:.0%}", "accepted {value:.0%} of invitations", "没有接受或婉拒记录",
        "has neither accepted nor declined",
    )
    spell = f"the {SPELL_DAYS} days after each earlier enrolment (posts before as_of)"
    yield measured(
        "spell_posts_mean", g, f"mean posts in {spell} (null if never enrolled)", "spells_agg",
        [("spells", "COUNT(DISTINCT enrolled_at)"), ("spell_posts", "COUNT(posted_at)")],
        "CAST($src.spell_posts AS DOUBLE) / NULLIF($src.spells, 0)",
        "以往KOC期间每期发布{value:.1f}篇笔记", "{value:.1f} posts per earlier KOC spell",
        "从未加入KOC计划", "never a KOC before", concept="spell_posts",
    )
    yield measured(
        "spell_interactions_mean", g,
        f"mean total 7-day interactions of the matured posts in {spell} (null if never enrolled)", "spells_agg",
        [("spells", "COUNT(DISTINCT enrolled_at)"), ("spell_interactions", "SUM(interactions)")],
        "CAST(COALESCE($src.spell_interactions, 0) AS DOUBLE) / NULLIF($src.spells, 0)",
        "以往KOC期间每期互动{value:.0f}", "{value:.0f} interactions per earlier KOC spell",
        "从未加入KOC计划", "never a KOC before", concept="spell_interactions",
    )


def _profile() -> Iterable[Feature]:
    g: FeatureGroup = "profile"
    yield Feature(
        "age", g, "float", "calendar year of as_of - birth_year (null if unknown)", "m", (),
        "CAST($year - m.birth_year AS DOUBLE)", "age", "{value:.0f}岁", "aged {value:.0f}", "年龄未知", "age unknown",
    )
    for name, description, value, zh, en in (
        ("gender", "F / M / U (null if unknown)", "m.gender", "性别：{value}", "gender: {value}"),
        ("city_tier", "city tier 1-6 as text (null if unknown)", "CAST(m.city_tier AS VARCHAR)",
         "{value}线城市", "tier-{value} city"),
        ("channel", "acquisition channel; values outside the fixed list become 'other'", "m.channel",
         "获客渠道：{value}", "joined via {value}"),
    ):
        yield Feature(name, g, "category", description, "m", (), value, name, zh, en, "未知", "unknown")


FEATURES: tuple[Feature, ...] = (
    *_consumption(),
    *_loyalty(),
    *_activity(),
    *_content(),
    *_social(),
    *_programme(),
    *_profile(),
)
FEATURE_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}


def feature_names() -> list[str]:
    """Feature column names in registry order (the model's column order)."""
    return [f.name for f in FEATURES]


def categorical_features() -> list[str]:
    """Names of the categorical features, in registry order."""
    return [f.name for f in FEATURES if f.dtype == "category"]


def coerce_features(
    frame: pd.DataFrame,
    names: Sequence[str] | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
    *,
    as_text: bool = False,
    keep_other_columns: bool = False,
) -> pd.DataFrame:
    """Feature columns in their canonical dtypes: float64 numerics, fixed-level categoricals.

    The one coercion that feature building, training, baselines, the pyfunc and ranking
    share. `names`: the feature columns (default: the registry's, in order); `categories`:
    the levels per categorical (default `CATEGORY_LEVELS`; a fitted model passes its own).
    A `channel` outside its levels becomes "other"; other unknown levels become missing.
    `as_text`: categoricals as object strings with None for missing (MLflow's schema).
    `keep_other_columns`: return the whole frame with the feature columns coerced in place.
    """
    names = feature_names() if names is None else list(names)
    levels = CATEGORY_LEVELS if categories is None else categories
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(f"feature rows lack columns {missing}; build them with features.build.build_features")
    columns: dict[str, object] = {}
    numeric = [name for name in names if name not in levels]
    block = frame[numeric]
    text_columns = [c for c in numeric if not pd.api.types.is_numeric_dtype(block[c].dtype)]
    if text_columns:
        block = block.assign(**{c: pd.to_numeric(block[c], errors="raise") for c in text_columns})
    block = block.astype("float64")
    for name in names:
        if name not in levels:
            columns[name] = block[name]
            continue
        column = frame[name]
        text = column.astype("object").where(column.notna(), None)
        if name == "channel" and "other" in levels[name]:
            text = text.where(text.isna() | text.isin(levels[name]), "other")
        coerced = pd.Series(pd.Categorical(text, categories=list(levels[name])), index=frame.index)
        columns[name] = coerced.astype("object").where(coerced.notna(), None) if as_text else coerced
    if keep_other_columns:
        return frame.assign(**columns)
    return pd.DataFrame(columns, index=frame.index)


def features_by_group() -> dict[str, list[Feature]]:
    """Features grouped by their group, groups in canonical order."""
    return {group: [f for f in FEATURES if f.group == group] for group in GROUPS}


def source_columns(source: str) -> dict[str, str]:
    """The aggregate columns `source`'s CTE must hold: every column its features declare, once.

    A column declared by several features must carry the same SQL (a shared helper such as
    `orders_total`); a clash is a registry bug and raises.
    """
    out: dict[str, str] = {}
    for feature in FEATURES:
        if feature.source != source:
            continue
        for column, sql in feature.columns:
            if out.setdefault(column, sql) != sql:
                raise ValueError(f"registry: column {source}.{column} declared with two different SQL expressions")
    return out


def group_tables(group: str) -> set[str]:
    """The contract tables a feature group is computed from."""
    return {t for f in FEATURES if f.group == group for t in SOURCE_BY_NAME[f.source].tables}


def feature_description(feature: Feature) -> str:
    """The one-line description, with the fixed levels of a categorical."""
    if feature.dtype == "category":
        return f"{feature.description} (levels: {', '.join(CATEGORY_LEVELS[feature.name])})"
    return feature.description


def markdown_table() -> str:
    """The registry as a Markdown table (the README's feature table is generated from it)."""
    lines = [
        f"Feature set version `{FEATURE_SET_VERSION}` — {len(FEATURES)} features.",
        "",
        "| feature | group | dtype | source | description | reason (en) |",
        "|---|---|---|---|---|---|",
    ]
    for f in FEATURES:
        description = feature_description(f).replace("|", "\\|")
        reason = re.sub(r"\{value[^}]*\}", "N", f.en)
        lines.append(f"| `{f.name}` | {f.group} | {f.dtype} | {f.source} | {description} | {reason} |")
    return "\n".join(lines) + "\n"
