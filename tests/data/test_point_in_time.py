"""Point-in-time property: nothing observed at or after `as_of` can change a feature or eligibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from features.build import build_features
from features.contract import EVENT_TYPES, PLATFORMS, PROGRAM_STATUSES, from_frames
from features.labels import eligibility
from features.registry import feature_names

pytestmark = pytest.mark.slow

T = pd.Timestamp("2026-06-01")
US = pd.Timedelta(microseconds=1)
DAY = pd.Timedelta(days=1)

# the column holding each table's own timestamp
TIME_COLUMN = {
    "members": "joined_at",
    "orders": "ordered_at",
    "events": "event_at",
    "posts": "posted_at",
    "referrals": "referred_at",
    "program": "event_at",
    "social": "observed_at",
}


def _offsets(rng: np.random.Generator, n: int, future: bool | None = None) -> list[pd.Timestamp]:
    """Timestamps around T with the edges (T, T - 1us, T - 7d, window starts) over-represented."""
    edges_past = [-US, -7 * DAY, -7 * DAY - US, -30 * DAY, -90 * DAY, -180 * DAY, -365 * DAY]
    out = []
    for _ in range(n):
        is_future = rng.random() < 0.3 if future is None else future
        if is_future:
            delta = pd.Timedelta(0) if rng.random() < 0.4 else pd.Timedelta(minutes=int(rng.integers(1, 60 * 24 * 200)))
        elif rng.random() < 0.35:
            delta = edges_past[int(rng.integers(len(edges_past)))]
        else:
            delta = -pd.Timedelta(minutes=int(rng.integers(1, 60 * 24 * 500)))
        out.append(T + delta)
    return out


def _row(table: str, rng: np.random.Generator, members: list[str], key: str, when: pd.Timestamp) -> dict:
    """One random row of `table` with its own timestamp `when`."""
    member = members[int(rng.integers(len(members)))]
    maybe = lambda value: None if rng.random() < 0.2 else value  # noqa: E731
    if table == "members":
        return {
            "member_id": key,
            "joined_at": when,
            "birth_year": maybe(int(rng.integers(1950, 2008))),
            "gender": maybe(str(rng.choice(["F", "M", "U"]))),
            "city_tier": maybe(int(rng.integers(1, 7))),
            "channel": maybe(str(rng.choice(["store", "ads", "referral", "livestream"]))),
        }
    if table == "orders":
        refunded = bool(rng.random() < 0.3)
        return {
            "order_id": key,
            "member_id": member,
            "ordered_at": when,
            "amount": float(rng.integers(0, 50000)) / 100,
            "category": maybe(str(rng.choice(["skincare", "makeup", "hair"]))),
            "refunded": refunded,
            # v1.1: when the refund happened (sometimes unknown even for a refunded order)
            "refunded_at": when + pd.Timedelta(days=int(rng.integers(0, 40))) if refunded and rng.random() < 0.7 else None,
        }
    if table == "events":
        return {
            "member_id": member,
            "event_at": when,
            "event_type": str(rng.choice([*EVENT_TYPES, "other"])),
            "campaign_id": maybe(str(rng.choice(["c1", "c2", "c3"]))),
        }
    if table == "posts":
        return {
            "post_id": key,
            "member_id": member,
            "posted_at": when,
            "platform": str(rng.choice(PLATFORMS)),
            "likes_7d": maybe(int(rng.integers(0, 300))),
            "comments_7d": maybe(int(rng.integers(0, 30))),
            "saves_7d": maybe(int(rng.integers(0, 30))),
            "campaign_id": maybe("c1"),
        }
    if table == "referrals":
        joined = _offsets(rng, 1)[0] if rng.random() < 0.7 else None
        first_order = _offsets(rng, 1)[0] if joined is not None and rng.random() < 0.6 else None
        return {
            "referrer_id": member,
            "referred_at": when,
            "referee_id": members[int(rng.integers(len(members)))] if joined is not None else None,
            "referee_joined_at": joined,
            "referee_first_order_at": first_order,
        }
    if table == "program":
        return {"member_id": member, "event_at": when, "status": str(rng.choice(PROGRAM_STATUSES))}
    if table == "social":
        return {
            "member_id": member,
            "platform": str(rng.choice(PLATFORMS)),
            "followers": int(rng.integers(0, 5000)),
            "observed_at": when,
        }
    raise ValueError(table)


def random_world(seed: int, large: bool = False) -> dict[str, pd.DataFrame]:
    """A few members and rows per table; `large`: enough buyers (40 members) for the BG/NBD fit."""
    rng = np.random.default_rng(seed)
    n_members = 40 if large else int(rng.integers(3, 7))
    joined = _offsets(rng, n_members)
    joined[0] = T - 400 * DAY  # at least one member before T
    members = [f"m{i:03d}" for i in range(n_members)]
    frames = {
        "members": pd.DataFrame([_row("members", rng, members, m, j) for m, j in zip(members, joined, strict=True)])
    }
    for table in TIME_COLUMN:
        if table == "members":
            continue
        n = int(rng.integers(400, 600)) * (4 if table == "events" else 1) if large else int(rng.integers(2, 9))
        keys = [f"{table[0]}{i}" for i in range(n)]
        frames[table] = pd.DataFrame(
            [_row(table, rng, members, k, w) for k, w in zip(keys, _offsets(rng, n), strict=True)]
        )
    if large:  # every third event a campaign join (monthly sequences are sparse otherwise)
        events = frames["events"]
        frames["events"] = events.assign(event_type=events["event_type"].where(events.index % 3 > 0, "campaign_join"))
    if large:  # every third member stopped buying 200 days before T, so BG/NBD sees dropouts
        orders = frames["orders"]
        lapsed = orders["member_id"].isin(members[::3]) & orders["ordered_at"].between(T - 200 * DAY, T - US)
        frames["orders"] = orders.assign(ordered_at=orders["ordered_at"].where(~lapsed, orders["ordered_at"] - 300 * DAY))
    return frames


def mutate_future(
    frames: dict[str, pd.DataFrame], table: str, action: str, choice: int, rng: np.random.Generator
) -> dict[str, pd.DataFrame] | None:
    """Add, change or delete a row of `table` whose own timestamp is at or after T (None if impossible)."""
    out = dict(frames)
    df = frames[table]
    members = frames["members"]["member_id"].tolist()
    future_rows = df.index[df[TIME_COLUMN[table]] >= T].tolist()
    when = _offsets(rng, 1, future=True)[0]
    if action == "add":
        new = _row(table, rng, members, f"new_{table}", when)
        out[table] = pd.concat([df, pd.DataFrame([new])], ignore_index=True)
        return out
    if table == "members":  # a member row only; keep references valid
        referenced = {
            m
            for name, other in frames.items()
            if name != "members"
            for c in ("member_id", "referrer_id")
            if c in other
            for m in other[c]
        }
        future_rows = (
            [i for i in future_rows if df.at[i, "member_id"] not in referenced] if action == "delete" else future_rows
        )
    if not future_rows:
        return None
    index = future_rows[choice % len(future_rows)]
    if action == "delete":
        out[table] = df.drop(index=index).reset_index(drop=True)
        return out
    key_columns = {"members": "member_id", "orders": "order_id", "posts": "post_id"}
    key = df.at[index, key_columns[table]] if table in key_columns else None
    replacement = _row(table, rng, members, key, when)
    changed = df.copy()
    for column, value in replacement.items():
        changed.at[index, column] = value
    out[table] = changed
    return out


def mutate_late_fields(
    frames: dict[str, pd.DataFrame], choice: int, rng: np.random.Generator
) -> dict[str, pd.DataFrame] | None:
    """Change facts inside past rows that only become known at or after T.

    Post interactions while `posted_at + 7d >= T`; a referral's referee join / first
    order timestamps at or after T; an order before T refunded at or after T, or with no
    known refund time (its `refunded` flag flips: the state at export says nothing about T).
    """
    out = dict(frames)
    orders = frames["orders"]
    flippable = orders.index[(orders["ordered_at"] < T) & ~(orders["refunded_at"] < T)].tolist()
    if flippable and choice % 3 == 2:
        changed = orders.copy()
        index = flippable[choice % len(flippable)]
        changed.at[index, "refunded"] = not bool(changed.at[index, "refunded"])
        if pd.notna(changed.at[index, "refunded_at"]) or rng.random() < 0.5:
            changed.at[index, "refunded_at"] = _offsets(rng, 1, future=True)[0]
        out["orders"] = changed
        return out
    posts = frames["posts"]
    immature = posts.index[(posts["posted_at"] < T) & (posts["posted_at"] + 7 * DAY >= T)].tolist()
    referrals = frames["referrals"]
    unknown_yet = {
        column: referrals["referred_at"].lt(T) & (referrals[column].isna() | referrals[column].ge(T))
        for column in ("referee_joined_at", "referee_first_order_at")
    }
    late = referrals.index[unknown_yet["referee_joined_at"] | unknown_yet["referee_first_order_at"]].tolist()
    if not immature and not late:
        return None
    if immature and (not late or choice % 2 == 0):
        changed = posts.copy()
        index = immature[choice % len(immature)]
        for column in ("likes_7d", "comments_7d", "saves_7d"):
            changed.at[index, column] = int(rng.integers(0, 10_000))
        out["posts"] = changed
    else:
        changed = referrals.copy()
        index = late[choice % len(late)]
        if unknown_yet["referee_joined_at"][index]:  # who the friend is matters only once they joined
            members = frames["members"]["member_id"].tolist()
            changed.at[index, "referee_id"] = members[int(rng.integers(len(members)))]
        for column, is_late in unknown_yet.items():
            if is_late[index]:
                changed.at[index, column] = _offsets(rng, 1, future=True)[0]
        out["referrals"] = changed
    return out


EXPORTED = T + 365 * DAY  # the synthetic world runs up to 200 days past T, which may be after today


def _features(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return build_features(from_frames(frames, export_time=EXPORTED), [T])


def _features_and_eligibility(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """What ranking sees at T: the features and the eligibility flags, one row per member."""
    data = from_frames(frames, export_time=EXPORTED)
    return build_features(data, [T]).merge(eligibility(data, T), on=["member_id", "as_of"], validate="one_to_one")


def _assert_same_at_T(frames: dict[str, pd.DataFrame], mutated: dict[str, pd.DataFrame]) -> None:
    """Every registry feature (taken from the registry, so new ones are covered) and eligibility agree."""
    before, after = _features_and_eligibility(frames), _features_and_eligibility(mutated)
    changed = [
        name
        for name in [*feature_names(), "eligible"]
        if not before[name].equals(after[name])
    ]
    assert not changed, f"features changed by rows at or after as_of: {changed}"
    pd.testing.assert_frame_equal(before, after, check_exact=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    seed=st.integers(0, 2**31 - 1),
    table=st.sampled_from([*TIME_COLUMN, "late_fields"]),
    action=st.sampled_from(["add", "change", "delete"]),
    choice=st.integers(0, 1000),
    large=st.sampled_from([False, False, False, False, True]),
)
def test_rows_at_or_after_as_of_change_no_feature(seed, table, action, choice, large):
    frames = random_world(seed, large)
    rng = np.random.default_rng(seed + 1)
    if table == "late_fields":
        mutated = mutate_late_fields(frames, choice, rng)
    else:
        mutated = mutate_future(frames, table, action, choice, rng)
    assume(mutated is not None)
    _assert_same_at_T(frames, mutated)


@pytest.fixture(scope="module")
def property_world_features() -> pd.DataFrame:
    """Features of a few large property-test worlds."""
    return pd.concat([_features(random_world(seed, large=True)) for seed in (11, 12, 13)], ignore_index=True)


@pytest.mark.parametrize("name", feature_names())
def test_every_registry_feature_varies_in_the_property_worlds(property_world_features, name):
    """The property above is not vacuous for any feature: each takes several values in its worlds."""
    values = property_world_features[name].dropna()
    assert values.nunique() >= 2, f"{name} is constant or null in the property-test worlds"


def _edge_world(offset: pd.Timedelta) -> dict[str, pd.DataFrame]:
    """Member m1 from long ago, plus one row per table at T + offset."""
    when = T + offset
    return {
        "members": pd.DataFrame(
            {
                "member_id": ["m1", "m2", "m3"],
                "joined_at": [T - 400 * DAY, when, T - 100 * DAY],
                "channel": ["store", "ads", "store"],
            }
        ),
        "orders": pd.DataFrame({"order_id": ["o1"], "member_id": ["m1"], "ordered_at": [when], "amount": [42.0]}),
        "events": pd.DataFrame({"member_id": ["m1"], "event_at": [when], "event_type": ["checkin"]}),
        "posts": pd.DataFrame(
            {
                "post_id": ["p1", "p2"],
                "member_id": ["m1", "m1"],
                "posted_at": [when, when - 7 * DAY],
                "platform": ["xhs", "xhs"],
                "likes_7d": [10, 20],
            }
        ),
        "referrals": pd.DataFrame(
            {
                "referrer_id": ["m1", "m1"],
                "referred_at": [when, T - 50 * DAY],
                "referee_id": [None, "m3"],
                "referee_joined_at": [None, when],
                "referee_first_order_at": [None, when],
            }
        ),
        "program": pd.DataFrame({"member_id": ["m1"], "event_at": [when], "status": ["invited"]}),
        "social": pd.DataFrame(
            {"member_id": ["m1"], "platform": ["douyin"], "followers": [777], "observed_at": [when]}
        ),
    }


def test_row_exactly_at_as_of_is_ignored_and_one_microsecond_before_is_used():
    at = _features(_edge_world(pd.Timedelta(0)))
    before = _features(_edge_world(-US))
    assert at["member_id"].tolist() == ["m1", "m3"]
    assert before["member_id"].tolist() == ["m1", "m2", "m3"]
    assert before.loc[1, "tenure_days"] == pytest.approx(1 / 86_400_000_000)

    columns = [
        "orders_total",
        "spend_total",
        "events_checkin_30d",
        "posts_total",
        "referrals_sent",
        "referees_joined",
        "referees_ordered",
        "times_invited",
        "followers_douyin",
        "post_interactions_max_total",
    ]
    m1_at, m1_before = at.iloc[0], before.iloc[0]
    # at T: nothing but the post published 7 days before T (its interactions not yet known)
    assert m1_at[columns[:-1]].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert np.isnan(m1_at["post_interactions_max_total"])
    # 1us before T: every row counts, and the earlier post's 7-day window has just closed
    assert m1_before[columns].tolist() == [1.0, 42.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 777.0, 20.0]


@pytest.mark.parametrize("table", list(TIME_COLUMN))
def test_control_a_row_one_microsecond_before_as_of_does_change_features(table):
    """The property above is not vacuous: the same kind of row just before T is seen."""
    frames = random_world(3)
    rng = np.random.default_rng(0)
    new = _row(table, rng, frames["members"]["member_id"].tolist(), f"new_{table}", T - US)
    if table == "orders":
        new["refunded"] = False
    if table == "social":
        new["followers"] = 123_456
    mutated = dict(frames, **{table: pd.concat([frames[table], pd.DataFrame([new])], ignore_index=True)})
    assert not _features(frames).equals(_features(mutated))
