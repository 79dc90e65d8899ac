"""The feature registry: every model feature's name, group, dtype and one-line meaning.

This is the single source for the feature pipeline's output columns (`features.build`),
the README feature table (`markdown_table()`), `koc features --list` and the feature set a
model records. All windows are relative to the cutoff `as_of` and half-open:
"30d" means rows with `as_of - 30 days <= timestamp < as_of`; "total" means every row
strictly before `as_of`. Days are fractional (`(as_of - timestamp) / 1 day`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from features.contract import EVENT_TYPES, GENDERS, OTHER_EVENT, PLATFORMS

# Bump rule: any change to the names, definitions or order of FEATURES (or to
# CATEGORY_LEVELS) changes this version. Breaking changes (removed/renamed/redefined
# features) bump the major part; purely added features bump the minor part.
FEATURE_SET_VERSION = "1.0.0"

FeatureGroup = Literal["consumption", "loyalty", "activity", "content", "social", "programme", "profile"]
FeatureDtype = Literal["float", "int", "category"]

GROUPS: tuple[FeatureGroup, ...] = ("consumption", "loyalty", "activity", "content", "social", "programme", "profile")
DTYPES: tuple[FeatureDtype, ...] = ("float", "int", "category")

ALL_EVENT_TYPES: tuple[str, ...] = (*EVENT_TYPES, OTHER_EVENT)
CHANNELS: tuple[str, ...] = ("store", "mini_program", "official_account", "ads", "referral", "ecommerce", "other")

# Fixed levels for categoricals. Values outside the list map to "other" for `channel`
# (brands name their channels freely) and to missing (NaN) for `gender`/`city_tier`
# (the contract already restricts those, so only nulls can be left).
CATEGORY_LEVELS: dict[str, list[str]] = {
    "gender": list(GENDERS),
    "city_tier": [str(tier) for tier in range(1, 7)],
    "channel": list(CHANNELS),
}


@dataclass(frozen=True)
class Feature:
    """One declared model feature."""

    name: str
    group: FeatureGroup
    dtype: FeatureDtype
    description: str


def _consumption() -> Iterable[Feature]:
    yield Feature("recency_days", "consumption", "float", "days since the last non-refunded order (null if none)")
    for days in (30, 90, 365):
        yield Feature(f"orders_{days}d", "consumption", "int", f"non-refunded orders in the last {days} days")
        yield Feature(
            f"spend_{days}d", "consumption", "float", f"net amount of non-refunded orders in the last {days} days"
        )
    yield Feature("orders_total", "consumption", "int", "non-refunded orders before as_of")
    yield Feature("spend_total", "consumption", "float", "net amount of non-refunded orders before as_of")
    yield Feature("avg_order_value", "consumption", "float", "spend_total / orders_total (null if no orders)")
    yield Feature(
        "categories_bought_365d",
        "consumption",
        "int",
        "distinct product categories of non-refunded orders in the last 365 days",
    )
    yield Feature(
        "repeat_category_share",
        "consumption",
        "float",
        "share of the categories ever bought (non-refunded) that were bought in 2+ orders (null if none)",
    )
    yield Feature(
        "purchase_interval_mean_days",
        "consumption",
        "float",
        "mean days between consecutive non-refunded orders: (last - first) / (orders - 1) (null if < 2 orders)",
    )
    yield Feature(
        "spend_trend_90d",
        "consumption",
        "float",
        "(spend last 90d - spend the 90d before) / (their sum), in [-1, 1] (null if both 0)",
    )


def _loyalty() -> Iterable[Feature]:
    yield Feature("tenure_days", "loyalty", "float", "days since the member joined")
    yield Feature(
        "active_months_12m",
        "loyalty",
        "int",
        "distinct calendar months with a non-refunded order or an event in the last 365 days",
    )
    yield Feature(
        "campaigns_joined", "loyalty", "int", "distinct campaign ids of campaign_join events (null ids not counted)"
    )
    yield Feature(
        "campaign_join_months",
        "loyalty",
        "int",
        "distinct calendar months with a campaign_join event (2+ = repeat participant)",
    )


def _activity() -> Iterable[Feature]:
    for days in (30, 90):
        for event_type in ALL_EVENT_TYPES:
            yield Feature(
                f"events_{event_type}_{days}d", "activity", "int", f"{event_type} events in the last {days} days"
            )
    yield Feature("events_90d", "activity", "int", "events of any type in the last 90 days")
    yield Feature("active_days_90d", "activity", "int", "distinct calendar days with an event in the last 90 days")
    yield Feature("days_since_last_event", "activity", "float", "days since the latest event (null if none)")


def _content() -> Iterable[Feature]:
    for days in (30, 90, 180):
        yield Feature(f"posts_{days}d", "content", "int", f"posts published in the last {days} days")
    yield Feature("posts_total", "content", "int", "posts published before as_of")
    matured = "posts whose 7-day interaction window closed before as_of (posted_at + 7d < as_of)"
    yield Feature(
        "post_interactions_mean_180d",
        "content",
        "float",
        f"mean likes+comments+saves (7d) of {matured}, posted in the last 180 days",
    )
    yield Feature(
        "post_interactions_median_180d",
        "content",
        "float",
        f"median likes+comments+saves (7d) of {matured}, posted in the last 180 days",
    )
    yield Feature(
        "post_interactions_mean_total", "content", "float", f"mean likes+comments+saves (7d) of all {matured}"
    )
    yield Feature(
        "post_interactions_median_total", "content", "float", f"median likes+comments+saves (7d) of all {matured}"
    )
    yield Feature("post_interactions_max_total", "content", "float", f"best likes+comments+saves (7d) of all {matured}")
    yield Feature("platforms_posted", "content", "int", "distinct platforms the member has posted on")
    yield Feature("campaign_posts_total", "content", "int", "posts tied to a brand campaign (campaign_id set)")
    yield Feature("trials_applied", "content", "int", "trial_apply events before as_of")
    yield Feature("trial_feedbacks", "content", "int", "trial_feedback events before as_of")
    yield Feature(
        "trial_feedback_ratio", "content", "float", "trial_feedbacks / trials_applied (null if no trial applied)"
    )


def _social() -> Iterable[Feature]:
    yield Feature("shares_total", "social", "int", "share events before as_of")
    yield Feature("referral_invites_total", "social", "int", "referral_invite events before as_of")
    yield Feature("referrals_sent", "social", "int", "referrals table rows with referred_at < as_of")
    yield Feature("referees_joined", "social", "int", "referrals whose friend joined before as_of")
    yield Feature("referees_ordered", "social", "int", "referrals whose friend placed a first order before as_of")
    yield Feature(
        "referral_reach_2hop",
        "social",
        "int",
        "distinct friends of the member's joined referees who joined (via referral) before as_of",
    )
    for platform in PLATFORMS:
        yield Feature(
            f"followers_{platform}",
            "social",
            "float",
            f"latest {platform} follower count observed before as_of (0 if none)",
        )
    yield Feature("followers_total", "social", "float", "sum of the latest follower counts over platforms")


def _programme() -> Iterable[Feature]:
    for status, text in (
        ("invited", "invitations to the KOC programme"),
        ("declined", "declined invitations"),
        ("enrolled", "enrolments in the KOC programme"),
        ("eliminated", "eliminations from the KOC programme"),
        ("upgraded", "upgrades to important/productive KOC"),
    ):
        yield Feature(f"times_{status}", "programme", "int", f"{text} before as_of")
    yield Feature(
        "days_since_last_invitation", "programme", "float", "days since the latest invitation (null if never invited)"
    )


def _profile() -> Iterable[Feature]:
    yield Feature("age", "profile", "float", "calendar year of as_of - birth_year (null if unknown)")
    yield Feature("gender", "profile", "category", "F / M / U (null if unknown)")
    yield Feature("city_tier", "profile", "category", "city tier 1-6 as text (null if unknown)")
    yield Feature("channel", "profile", "category", "acquisition channel; values outside the fixed list become 'other'")


FEATURES: tuple[Feature, ...] = (
    *_consumption(),
    *_loyalty(),
    *_activity(),
    *_content(),
    *_social(),
    *_programme(),
    *_profile(),
)


def feature_names() -> list[str]:
    """Feature column names in registry order (the model's column order)."""
    return [f.name for f in FEATURES]


def categorical_features() -> list[str]:
    """Names of the categorical features, in registry order."""
    return [f.name for f in FEATURES if f.dtype == "category"]


def features_by_group() -> dict[str, list[Feature]]:
    """Features grouped by their group, groups in canonical order."""
    return {group: [f for f in FEATURES if f.group == group] for group in GROUPS}


def markdown_table() -> str:
    """The registry as a Markdown table (the README's feature table is generated from it)."""
    lines = [
        f"Feature set version `{FEATURE_SET_VERSION}` — {len(FEATURES)} features.",
        "",
        "| feature | group | dtype | description |",
        "|---|---|---|---|",
    ]
    for f in FEATURES:
        description = f.description.replace("|", "\\|")
        if f.dtype == "category":
            description += f" (levels: {', '.join(CATEGORY_LEVELS[f.name])})"
        lines.append(f"| `{f.name}` | {f.group} | {f.dtype} | {description} |")
    return "\n".join(lines) + "\n"
