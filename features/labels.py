"""Eligibility at a cutoff and the default label, exactly as the data contract defines them.

Both are pure functions of validated tables (`BrandData`) and an explicit `as_of`.
Eligibility looks only at rows strictly before `as_of`; the label looks only at
`[as_of, as_of + horizon)` (post interactions are the 7-day counts of those posts,
which is why a label is only complete once `as_of + horizon + 7 days` has passed).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from features.contract import DEFAULT_TIMEZONE, BrandData, parse_as_of
from features.frames import is_in

logger = logging.getLogger(__name__)

INTERACTIONS_KNOWN_AFTER = pd.Timedelta(days=7)
EXCLUSION_RULES = ("excl_no_consent", "excl_blacklisted", "excl_active_koc", "excl_cooldown")
COOLDOWN_STATUSES = ("invited", "declined", "eliminated")


class LabelConfig(BaseModel):
    """Default-label and eligibility settings (contract defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    horizon_days: int = Field(90, gt=0, description="label window length H in days")
    min_posts: int = Field(3, ge=1, description="posts needed within the window")
    min_interactions: int = Field(100, ge=0, description="total likes+comments+saves (7-day counts) of those posts")
    cooldown_days: int = Field(60, ge=0, description="days after an invitation or a decline before re-inviting")

    @property
    def horizon(self) -> pd.Timedelta:
        return pd.Timedelta(days=self.horizon_days)


def as_cutoff(value: pd.Timestamp, timezone: str = DEFAULT_TIMEZONE) -> pd.Timestamp:
    """A cutoff given as a `pd.Timestamp` (or datetime), in naive business time, microseconds.

    Text is parsed once at the edge (CLI, API, config) with `features.contract.parse_as_of`;
    the feature and label code refuses it so a date is never read two ways.
    """
    if isinstance(value, str) or not isinstance(value, dt.datetime):
        raise TypeError(
            f"as_of must be a pd.Timestamp, got {type(value).__name__} {value!r}; "
            "parse text at the edge with features.contract.parse_as_of"
        )
    return parse_as_of(pd.Timestamp(value), timezone)


def _members_before(data: BrandData, as_of: pd.Timestamp) -> pd.DataFrame:
    members = data.members
    return members.loc[members["joined_at"] < as_of, ["member_id", "marketing_consent"]]


def eligibility(data: BrandData, as_of: pd.Timestamp, cfg: LabelConfig | None = None) -> pd.DataFrame:
    """Who may be invited at `as_of`, with one flag per exclusion rule.

    Returns `member_id, as_of, eligible, excl_no_consent, excl_blacklisted,
    excl_active_koc, excl_cooldown` for every member who joined before `as_of`,
    sorted by member_id. A member can break several rules; each flag is reported.
    """
    cfg = cfg or LabelConfig()
    as_of = as_cutoff(as_of, data.timezone)
    members = _members_before(data, as_of)
    program = data.program
    past = program.loc[program["event_at"] < as_of]

    blacklisted = past.loc[past["status"] == "blacklisted", "member_id"].unique()

    # active KOC: the latest enrol/upgrade/eliminate event before as_of is not an elimination
    # (an upgrade proves enrolment when a log starts after it; on a timestamp tie the
    # elimination wins: it is the later step of the lifecycle)
    life = past.loc[past["status"].isin(["enrolled", "upgraded", "eliminated"]), ["member_id", "event_at", "status"]]
    life = life.assign(step=(life["status"] == "eliminated").astype("int8"))
    last = life.sort_values(["member_id", "event_at", "step"]).drop_duplicates("member_id", keep="last")
    active = last.loc[last["status"] != "eliminated", "member_id"].unique()

    # cool-down after an invitation, a decline, or an elimination ("may be re-invited after a cool-down")
    window_start = as_of - pd.Timedelta(days=cfg.cooldown_days)
    recent = past.loc[past["status"].isin(COOLDOWN_STATUSES) & (past["event_at"] >= window_start)]
    cooling = recent["member_id"].unique()

    out = pd.DataFrame({"member_id": members["member_id"].to_numpy(), "as_of": as_of})
    out["as_of"] = out["as_of"].astype("datetime64[us]")
    out["excl_no_consent"] = ~members["marketing_consent"].to_numpy(dtype=bool)
    out["excl_blacklisted"] = is_in(out["member_id"], blacklisted)
    out["excl_active_koc"] = is_in(out["member_id"], active)
    out["excl_cooldown"] = is_in(out["member_id"], cooling)
    out["eligible"] = ~out[list(EXCLUSION_RULES)].any(axis=1)
    cols = ["member_id", "as_of", "eligible", *EXCLUSION_RULES]
    return out[cols].sort_values("member_id", ignore_index=True)


def exclusion_counts(elig: pd.DataFrame) -> dict[str, int]:
    """How many members each rule excluded (rules overlap), plus totals."""
    counts = {rule.removeprefix("excl_"): int(elig[rule].sum()) for rule in EXCLUSION_RULES}
    counts["members"] = int(len(elig))
    counts["eligible"] = int(elig["eligible"].sum())
    return counts


def default_labels(data: BrandData, as_of: pd.Timestamp, cfg: LabelConfig | None = None) -> pd.DataFrame:
    """The contract's default label for every member who joined before `as_of`.

    label = 1 when within `[as_of, as_of + H)` the member has an `enrolled` status
    AND published at least `min_posts` posts whose summed 7-day likes + comments +
    saves reach `min_interactions` (unknown counts add nothing).
    """
    cfg = cfg or LabelConfig()
    as_of = as_cutoff(as_of, data.timezone)
    end = as_of + cfg.horizon
    members = _members_before(data, as_of)["member_id"]

    program = data.program
    in_window = (program["event_at"] >= as_of) & (program["event_at"] < end)
    enrolled = program.loc[in_window & (program["status"] == "enrolled"), "member_id"].unique()

    posts = data.posts
    window_posts = posts.loc[(posts["posted_at"] >= as_of) & (posts["posted_at"] < end)]
    interactions = (
        window_posts[["likes_7d", "comments_7d", "saves_7d"]].fillna(0).astype("int64").sum(axis=1)
    )
    per_member = (
        window_posts.assign(interactions=interactions)
        .groupby("member_id", observed=True)
        .agg(posts=("interactions", "size"), interactions=("interactions", "sum"))
    )
    productive = per_member.index[
        (per_member["posts"] >= cfg.min_posts) & (per_member["interactions"] >= cfg.min_interactions)
    ]

    out = pd.DataFrame({"member_id": members.to_numpy(), "as_of": as_of})
    out["as_of"] = out["as_of"].astype("datetime64[us]")
    out["label"] = (is_in(out["member_id"], enrolled) & is_in(out["member_id"], productive)).astype("int64")
    return out.sort_values("member_id", ignore_index=True)


def label_data_end(data: BrandData) -> pd.Timestamp:
    """How far the default label's own evidence reaches: the earlier of the last programme
    event and the last post (an export whose posts stop early must not read as "no posts").
    Without both tables it is the end of the data."""
    ends = [data.latest("program", "event_at"), data.latest("posts", "posted_at")]
    if "program" in data.absent or "posts" in data.absent or any(pd.isna(e) for e in ends):
        return data.data_end
    return min(ends)


def label_window_complete(data: BrandData, as_of: pd.Timestamp, cfg: LabelConfig | None = None) -> bool:
    """True once `as_of + H + 7 days` has passed in the label's evidence (all counts are known)."""
    cfg = cfg or LabelConfig()
    as_of = as_cutoff(as_of, data.timezone)
    return bool(as_of + cfg.horizon + INTERACTIONS_KNOWN_AFTER <= label_data_end(data))


def labels_for(
    data: BrandData, as_ofs: Iterable[pd.Timestamp], cfg: LabelConfig | None = None
) -> pd.DataFrame:
    """Labels of eligible members at each cutoff: `member_id, as_of, label`.

    Where the brand supplied a `labels` table it overrides the default label: its
    rows for eligible members are used, and rows for members who were not eligible
    (or not yet members) at that cutoff are dropped and reported.
    """
    cfg = cfg or LabelConfig()
    user = None if "labels" in data.absent else data.labels
    frames = []
    for raw in as_ofs:
        as_of = as_cutoff(raw, data.timezone)
        elig = eligibility(data, as_of, cfg)
        eligible = elig.loc[elig["eligible"], ["member_id", "as_of"]]
        if user is None:
            labelled = eligible.merge(default_labels(data, as_of, cfg), on=["member_id", "as_of"], how="left")
        else:
            given = user.loc[user["as_of"] == as_of, ["member_id", "as_of", "label"]]
            labelled = eligible.merge(given, on=["member_id", "as_of"], how="inner")
            dropped = len(given) - len(labelled)
            if dropped:
                logger.warning(
                    "labels at %s: %d row(s) dropped because the member was not eligible then "
                    "(not yet joined, no consent, blacklisted, active KOC or in cool-down)",
                    as_of.date(),
                    dropped,
                )
            unlabelled = len(eligible) - len(labelled)
            if unlabelled:
                logger.warning(
                    "labels at %s: %d eligible member(s) have no label row and are left out of this cutoff",
                    as_of.date(),
                    unlabelled,
                )
        frames.append(labelled)
    if not frames:
        return pd.DataFrame({"member_id": pd.Series(dtype="str"), "as_of": pd.Series(dtype="datetime64[us]"), "label": pd.Series(dtype="int64")})
    out = pd.concat(frames, ignore_index=True)
    out["label"] = out["label"].astype("int64")
    return out.sort_values(["as_of", "member_id"], ignore_index=True)
