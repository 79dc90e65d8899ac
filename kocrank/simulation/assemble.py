"""Contract tables from the simulator's arrays: the final world, or a snapshot of the data before a cutoff."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import EVENT_TYPES, PLATFORMS, PROGRAM_STATUSES
from features.registry import CHANNELS
from kocrank.simulation.config import BLACKLISTED, CATEGORIES, DAY, ENROLLED, NEVER

if TYPE_CHECKING:
    from kocrank.simulation.world import World


def _timestamps(seconds: np.ndarray) -> np.ndarray:
    return seconds.astype("datetime64[s]").astype("datetime64[us]")


def _text(values: pa.Array) -> pd.Series:
    return pd.Series(values, dtype="str")


def _codes_to_text(codes: np.ndarray, labels: tuple[str, ...]) -> pd.Series:
    """Text column from integer codes; negative codes are null."""
    indices = pa.array(codes.astype(np.int64), mask=codes < 0)
    return _text(pa.array(labels, type=pa.string()).take(indices))


def _ids(prefix: str, count: int) -> pa.Array:
    width = max(7, len(str(max(count - 1, 0))))
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(count)), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "") if prefix else digits


def _nullable_int(values: np.ndarray, missing: np.ndarray) -> pd.Series:
    return pd.Series(pd.array(np.where(missing, 0, values), dtype="Int64")).mask(missing)


def snapshot_tables(world: World, end: int) -> dict[str, pd.DataFrame]:
    """The contract tables a brand would export just before `end` (seconds), without truth; the world is untouched."""
    tables, _ = assemble(world, end)
    return tables


def assemble(world: World, end: int | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, np.ndarray]]]:
    """Canonical contract tables from the simulator's arrays, plus the sorted post and programme arrays.

    Without `end`, the whole history and the truth, consuming the world's rows and traits
    (it is finished). With `end`, a snapshot of the rows before `end`, leaving the world as it was.
    """
    p, cal = world.pop, world.cal
    final = end is None
    end = cal.end if end is None else end
    member_ids = _ids("", world.size)

    def take(table: str, columns: Mapping[str, type]) -> dict[str, np.ndarray]:
        out = world.rows.take(table, columns) if final else world.rows.peek(table, columns)
        if not final or table in ("orders", "program"):
            keep = out["at"] < end
            out = {k: v[keep] for k, v in out.items()}
        return out

    def mid(idx: np.ndarray) -> pd.Series:
        return _text(member_ids.take(pa.array(idx.astype(np.int64), mask=idx < 0)))

    joined = np.arange(world.size) if final else np.flatnonzero(p["joined_at"] < end)
    members = pd.DataFrame(
        {
            "member_id": mid(joined),
            "joined_at": _timestamps(p["joined_at"][joined]),
            "birth_year": _nullable_int(p["birth_year"][joined], p["birth_year"][joined] < 0),
            "gender": _codes_to_text(np.where(p["gender_missing"], -1, p["gender"])[joined], ("F", "M", "U")),
            "city_tier": _nullable_int(p["city_tier"][joined], p["city_tier"][joined] < 0),
            "channel": _codes_to_text(p["channel"][joined], CHANNELS),
            "marketing_consent": p["consent"][joined].copy(),
        }
    )
    blacklisted = np.flatnonzero(p["blacklisted_at"] < end)
    blacklisted_at = p["blacklisted_at"][blacklisted]
    trap = p["trap"].copy()
    if final:
        for trait in [k for k in p if k != "joined_at"]:
            del p[trait]  # only join times are needed from here on

    o = take("orders", {"member": np.int64, "at": np.int64, "amount": float, "category": np.int8, "refunded": bool})
    order = np.lexsort((o["member"], o["at"]))
    for key in list(o):
        o[key] = o[key][order]
    orders = pd.DataFrame(
        {
            "order_id": _text(_ids("O", len(order))),
            "member_id": mid(o["member"]),
            "ordered_at": _timestamps(o["at"]),
            "amount": o["amount"].astype(np.float64),
            "category": _codes_to_text(o["category"], CATEGORIES),
            "refunded": o["refunded"],
        }
    )

    e = take("events", {"member": np.int32, "at": np.int64, "type": np.int8, "campaign": np.int32})
    order = np.lexsort((e["type"], e["member"], e["at"]))
    events = pd.DataFrame(
        {
            "member_id": mid(e.pop("member")[order]),
            "event_at": _timestamps(e.pop("at")[order]),
            "event_type": _codes_to_text(e.pop("type")[order], EVENT_TYPES),
            "campaign_id": _codes_to_text(e.pop("campaign")[order], cal.campaigns),
        },
        copy=False,
    )
    del order

    q = take(
        "posts",
        {"member": np.int64, "at": np.int64, "platform": np.int8, "interactions": np.int64, "campaign": np.int32},
    )
    order = np.lexsort((q["member"], q["at"]))
    for key in list(q):
        q[key] = q[key][order]
    rng = np.random.default_rng([world.cfg.seed, 7])  # the split is cosmetic; keep it off the main stream
    likes = rng.binomial(q["interactions"], 0.72)
    comments = rng.binomial(q["interactions"] - likes, 0.3)
    saves = q["interactions"] - likes - comments
    unknown = q["at"] + 7 * DAY > end
    posts = pd.DataFrame(
        {
            "post_id": _text(_ids("P", len(order))),
            "member_id": mid(q["member"]),
            "posted_at": _timestamps(q["at"]),
            "platform": _codes_to_text(q["platform"], PLATFORMS),
            "likes_7d": _nullable_int(likes, unknown),
            "comments_7d": _nullable_int(comments, unknown),
            "saves_7d": _nullable_int(saves, unknown),
            "campaign_id": _codes_to_text(q["campaign"], cal.campaigns),
        }
    )

    first_order = np.full(world.size, NEVER, dtype=np.int64)
    np.minimum.at(first_order, o["member"], o["at"])
    r = take("referrals", {"referrer": np.int64, "at": np.int64, "referee": np.int64})
    order = np.lexsort((r["referrer"], r["at"]))
    r = {k: v[order] for k, v in r.items()}
    r["referee"] = np.where(p["joined_at"][np.maximum(r["referee"], 0)] < end, r["referee"], -1)  # not joined yet
    has = r["referee"] >= 0
    safe = np.where(has, r["referee"], 0)
    joined = np.where(has, p["joined_at"][safe], 0)
    first = np.where(has, first_order[safe], NEVER)
    referrals = pd.DataFrame(
        {
            "referrer_id": mid(r["referrer"]),
            "referred_at": _timestamps(r["at"]),
            "referee_id": mid(r["referee"]),
            "referee_joined_at": pd.Series(_timestamps(joined)).where(has),
            "referee_first_order_at": pd.Series(_timestamps(np.where(first == NEVER, 0, first))).where(first != NEVER),
        }
    )

    g = take("program", {"member": np.int64, "at": np.int64, "status": np.int8})
    if not final:  # the finished world books blacklistings once at the end
        g = {
            "member": np.concatenate([g["member"], blacklisted]),
            "at": np.concatenate([g["at"], blacklisted_at]),
            "status": np.concatenate([g["status"], np.full(len(blacklisted), BLACKLISTED, np.int8)]),
        }
    order = np.lexsort((g["status"], g["member"], g["at"]))
    g = {k: v[order] for k, v in g.items()}
    program = pd.DataFrame(
        {
            "member_id": mid(g["member"]),
            "event_at": _timestamps(g["at"]),
            "status": _codes_to_text(g["status"], PROGRAM_STATUSES),
        }
    )

    s = take("social", {"member": np.int64, "at": np.int64, "platform": np.int8, "followers": np.int64})
    order = np.lexsort((s["platform"], s["member"], s["at"]))
    social = pd.DataFrame(
        {
            "member_id": mid(s["member"][order]),
            "platform": _codes_to_text(s["platform"][order], PLATFORMS),
            "followers": s["followers"][order].astype(np.int64),
            "observed_at": _timestamps(s["at"][order]),
        }
    )

    tables = {
        "members": members,
        "orders": orders,
        "events": events,
        "posts": posts,
        "referrals": referrals,
        "program": program,
        "social": social,
    }
    if final:
        tables["truth"] = _truth(world, mid)
    q["interactions"] = np.where(unknown, 0, q["interactions"])  # unknown counts add nothing
    internals = {"posts": q, "program": g, "trap": {"code": trap}}
    return tables, internals


def _truth(world: World, mid: Callable[[np.ndarray], pd.Series]) -> pd.DataFrame:
    """One row per eligible member and cutoff: P(productive) if invited and if not, P(invited), and the
    invitation's paths (P(accept), P(productive) if accepted and after a decline)."""
    months = sorted(world.truth)
    rows = [world.truth[m] for m in months]

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in rows]).astype(np.float64)

    cutoff = np.concatenate([np.full(len(r.idx), m) for m, r in zip(months, rows, strict=True)])
    return pd.DataFrame(
        {
            "member_id": mid(np.concatenate([r.idx for r in rows])),
            "as_of": _timestamps(world.cal.starts[cutoff]),
            "p_productive_if_invited": column("if_invited"),
            "p_productive_if_not_invited": column("if_not_invited"),
            "p_invited": column("p_invited"),
            "p_accept_if_invited": column("accept"),
            "p_productive_if_accepted": column("if_accepted"),
            "p_productive_after_decline": column("after_decline"),
        }
    )


def _data_end(tables: Mapping[str, pd.DataFrame]) -> int:
    """Latest timestamp in any behavioural table, in seconds (as `BrandData.data_end`)."""
    latest = []
    for df in tables.values():
        for col in df.columns:
            if col != "as_of" and pd.api.types.is_datetime64_any_dtype(df[col].dtype) and df[col].notna().any():
                latest.append(int(np.datetime64(df[col].max(), "s").astype(np.int64)))
    return max(latest)


def outcomes_table(
    world: World, tables: dict[str, pd.DataFrame], internals: dict[str, dict[str, np.ndarray]]
) -> pd.DataFrame:
    """The simulator's own bookkeeping of eligibility and the default label at every cutoff."""
    cfg, cal, p = world.cfg, world.cal, world.pop
    posts, program = internals["posts"], internals["program"]
    post_at, post_member = posts["at"], posts["member"]
    post_interactions = posts["interactions"]  # sorted by time
    enrolled = program["status"] == ENROLLED
    enrol_at, enrol_member = program["at"][enrolled], program["member"][enrolled]
    data_end = _data_end(tables)
    horizon = cfg.horizon_days * DAY
    cutoffs = cal.starts[1:]
    joined_counts = np.array([np.count_nonzero(p["joined_at"] < t) for t in cutoffs])
    bounds = np.concatenate([[0], np.cumsum(joined_counts)])
    member = np.empty(bounds[-1], dtype=np.int64)
    as_of = np.empty(bounds[-1], dtype=np.int64)
    eligible_col = np.empty(bounds[-1], dtype=bool)
    productive_col = np.empty(bounds[-1], dtype=bool)
    complete_col = np.empty(bounds[-1], dtype=bool)
    for m, t in enumerate(cutoffs.tolist(), start=1):
        rows = slice(bounds[m - 1], bounds[m])
        joined = np.flatnonzero(p["joined_at"] < t)
        lo, hi = np.searchsorted(post_at, [t, t + horizon])
        n_posts = np.bincount(post_member[lo:hi], minlength=world.size)
        n_interactions = np.bincount(post_member[lo:hi], weights=post_interactions[lo:hi], minlength=world.size)
        in_window = (enrol_at >= t) & (enrol_at < t + horizon)
        was_enrolled = np.zeros(world.size, dtype=bool)
        was_enrolled[enrol_member[in_window]] = True
        productive = was_enrolled & (n_posts >= cfg.min_posts) & (n_interactions >= cfg.min_interactions)
        eligible = np.zeros(world.size, dtype=bool)
        eligible[world.eligible_at[m]] = True
        member[rows] = joined
        as_of[rows] = t
        eligible_col[rows] = eligible[joined]
        productive_col[rows] = productive[joined]
        complete_col[rows] = t + horizon + 7 * DAY <= data_end
    member_ids = pa.array(tables["members"]["member_id"].array)
    out = pd.DataFrame(
        {
            "member_id": _text(member_ids.take(pa.array(member))),
            "as_of": _timestamps(as_of),
            "eligible": eligible_col,
            "productive": productive_col,
            "window_complete": complete_col,
        },
        copy=False,
    )
    return out


def _iso_text(stamps: pd.Series, aware: np.ndarray, utc_offset_hours: int = 8) -> pd.Series:
    """Timestamps as ISO text: naive local time, or UTC with a `+00:00` offset where `aware`."""
    naive = stamps.dt.strftime("%Y-%m-%d %H:%M:%S")
    utc = (stamps - pd.Timedelta(hours=utc_offset_hours)).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return naive.where(~aware, utc).astype("str")


def dirty_copy(tables: Mapping[str, pd.DataFrame], seed: int) -> dict[str, pd.DataFrame]:
    """A copy of `tables` with the dirt real exports carry; the inputs are not modified.

    Adds exact duplicate event rows, unknown event types, orders of unknown members,
    negative amounts, unknown post platforms, out-of-range birth years, and writes
    order and event times as ISO text where ~1% carry a `+00:00` offset (the same
    instant in UTC, assuming business time is UTC+8). Validation must reject the result
    (unknown members, negative amounts, platforms, birth years) and report the rest.
    """
    rng = np.random.default_rng([seed, 99])
    out = {name: df.copy() for name, df in tables.items()}

    def pick(df: pd.DataFrame, share: float, minimum: int = 3) -> np.ndarray:
        k = min(len(df), max(minimum, round(share * len(df))))
        return np.sort(rng.choice(len(df), size=k, replace=False))

    members = out["members"]
    bad_years = pick(members, 0.001)
    members.loc[bad_years, "birth_year"] = rng.choice([1850, 1899, 2099, 3024], size=len(bad_years))

    orders = out["orders"]
    negative = pick(orders, 0.001)
    orders.loc[negative, "amount"] = -orders.loc[negative, "amount"]
    strangers = orders.iloc[pick(orders, 0.001)].copy()
    strangers["order_id"] = [f"X{i:07d}" for i in range(len(strangers))]
    strangers["member_id"] = [f"UNKNOWN{i:05d}" for i in range(len(strangers))]
    orders = pd.concat([orders, strangers], ignore_index=True)
    orders["ordered_at"] = _iso_text(orders["ordered_at"], rng.random(len(orders)) < 0.01)
    out["orders"] = orders

    events = out["events"]
    if len(events):
        renamed = pick(events, 0.0005)
        events.loc[renamed, "event_type"] = rng.choice(["page_view", "CAMPAIGN_JOIN", "live_stream"], size=len(renamed))
        events = pd.concat([events, events.iloc[pick(events, 0.003)]], ignore_index=True)
        events["event_at"] = _iso_text(events["event_at"], rng.random(len(events)) < 0.01)
        out["events"] = events

    posts = out["posts"]
    if len(posts):
        odd = pick(posts, 0.002)
        posts.loc[odd, "platform"] = rng.choice(["tiktok", "XHS", "instagram"], size=len(odd))
    return out
