"""Outcome columns behind the training targets, point in time: everything from `[as_of, as_of + H)`.

The default label ("enrolled and productive within H") mixes who was invited, who would
have enrolled anyway and who is productive once in. Ops decide *invitations*, so training
can also learn the pieces apart (see `training.targets`). For every labelled
(member, cutoff) row this module adds:

- `invited`: the member received an `invited` status within the window;
- `accepted`: the answer to the member's first invitation within the window: an `enrolled` status
  within `accept_days` of it (at or after it), before any `declined` one (the "accept | invited"
  outcome). A decline followed later by a self-enrolment is a decline. The answer may fall after the
  window ends; `invited_at` (the first invitation's time) says when it is known:
  `invited_at + accept_days`;
- `enrolled`: an `enrolled` status within the window, invited or self-driven;
- `productive`: at least `min_posts` posts within the window whose 7-day likes + comments +
  saves reach `min_interactions` (the default label's productivity rule *without* the
  enrolment requirement; unknown counts add nothing);
- the window's posting, behind `productive` (`POSTING_COLUMNS`): the number of posts, and the
  sum and sum of squares of log(1 + 7-day interactions) over them. `training.soft_labels`
  turns them into how likely the member's posting is to meet the bar (a denoised label).

With the default label, `label == enrolled & productive` holds exactly. Without a
`program` table nobody is known to be invited or enrolled (all zero); without `posts`
nobody is productive. Pure functions of validated tables and explicit cutoffs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import duckdb
import numpy as np
import pandas as pd

from features.build import EngineConfig, configure
from features.contract import BrandData
from features.frames import is_in
from features.labels import COOLDOWN_STATUSES, LabelConfig, as_cutoff, labels_for
from features.store import StoredBrandData

OUTCOME_COLUMNS = ("invited", "accepted", "enrolled", "productive")
ACCEPT_DAYS = 30  # days an invitation's answer is awaited (`training.config.TrainConfig.accept_days`)
INTERACTION_COLUMNS = ("likes_7d", "comments_7d", "saves_7d")
# the window's posts: count (int16), sum and sum of squares of log(1 + 7-day interactions) (float32)
POSTING_COLUMNS = ("window_posts", "window_log_interactions", "window_log_interactions_sq")
POSTING_DTYPES = {"window_posts": "int16", "window_log_interactions": "float32", "window_log_interactions_sq": "float32"}


def _window(frame: pd.DataFrame, column: str, as_of: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    stamps = frame[column]
    return frame.loc[(stamps >= as_of) & (stamps < end)]


def productive_members(data: BrandData, as_of: pd.Timestamp, cfg: LabelConfig) -> pd.Index:
    """Members whose posts within `[as_of, as_of + H)` meet the default label's productivity bar."""
    window = _window(data.posts, "posted_at", as_of, as_of + cfg.horizon)
    if window.empty:
        return pd.Index([], dtype="object")
    counts = window[list(INTERACTION_COLUMNS)].fillna(0).astype("int64").sum(axis=1)
    totals = counts.groupby(window["member_id"], observed=True).agg(["size", "sum"])
    keep = (totals["size"] >= cfg.min_posts) & (totals["sum"] >= cfg.min_interactions)
    return pd.Index(totals.index[keep].astype(str))


def window_posting(data: BrandData, as_of: pd.Timestamp, cfg: LabelConfig) -> pd.DataFrame:
    """`POSTING_COLUMNS` per member with posts within `[as_of, as_of + H)` (index `member_id`)."""
    window = _window(data.posts, "posted_at", as_of, as_of + cfg.horizon)
    counts = window[list(INTERACTION_COLUMNS)].fillna(0).astype("int64").sum(axis=1)
    logs = np.log1p(counts.to_numpy(dtype="float64"))
    frame = pd.DataFrame({"member_id": window["member_id"].astype(str).to_numpy(), "log": logs, "log_sq": logs**2})
    grouped = frame.groupby("member_id", sort=False)
    return pd.DataFrame(
        {
            "window_posts": grouped.size(),
            "window_log_interactions": grouped["log"].sum(),
            "window_log_interactions_sq": grouped["log_sq"].sum(),
        }
    )


def programme_outcomes(data: BrandData, as_of: pd.Timestamp, cfg: LabelConfig, accept_days: int = ACCEPT_DAYS) -> pd.DataFrame:
    """`member_id, invited, accepted, enrolled` (booleans) and `invited_at` for members with any programme event in the window."""
    window = _window(data.program, "event_at", as_of, as_of + cfg.horizon)
    invited_at = window.loc[window["status"] == "invited"].groupby("member_id", observed=True)["event_at"].min()
    enrolled = window.loc[window["status"] == "enrolled", ["member_id", "event_at"]]
    # the answer: the first `enrolled` within accept_days of the first invitation, before any `declined`
    answers = data.program.loc[data.program["status"].isin(["enrolled", "declined"]), ["member_id", "event_at", "status"]]
    pairs = answers.merge(invited_at.rename("invited_at").reset_index(), on="member_id", how="inner")
    after = (pairs["event_at"] >= pairs["invited_at"]) & (pairs["event_at"] < pairs["invited_at"] + pd.Timedelta(days=accept_days))
    first = pairs.loc[after].groupby(["member_id", "status"], observed=True)["event_at"].min().unstack("status")
    enrolled_after = first["enrolled"] if "enrolled" in first.columns else pd.Series(dtype="datetime64[us]")
    declined_after = first["declined"].reindex(enrolled_after.index) if "declined" in first.columns else None
    said_yes = enrolled_after.notna() if declined_after is None else enrolled_after.notna() & ~(declined_after <= enrolled_after)
    accepted = pd.Index(enrolled_after.index[said_yes.to_numpy()])
    members = pd.Index(pd.unique(pd.concat([invited_at.index.to_series(), enrolled["member_id"]]))).astype(str)
    return pd.DataFrame(
        {
            "member_id": members,
            "invited": is_in(members, invited_at.index.astype(str)),
            "accepted": is_in(members, accepted.astype(str)),
            "enrolled": is_in(members, pd.Index(enrolled["member_id"].unique()).astype(str)),
            "invited_at": invited_at.reindex(members).to_numpy(dtype="datetime64[us]"),
        }
    )


def outcomes_for(
    data: BrandData, rows: pd.DataFrame, cfg: LabelConfig | None = None, accept_days: int = ACCEPT_DAYS
) -> pd.DataFrame:
    """`rows` (with `member_id, as_of`) plus the int8 columns of `OUTCOME_COLUMNS` and `invited_at`, in row order.

    Each row's outcomes come only from events in `[as_of, as_of + H)` of its own cutoff, except the
    answer to its first invitation (`accepted`), which may come up to `accept_days` after it.
    """
    cfg = cfg or LabelConfig()
    frames = []
    for as_of in pd.unique(rows["as_of"]):
        cutoff = pd.Timestamp(as_of)
        at = rows.loc[rows["as_of"] == as_of, ["member_id", "as_of"]]
        programme = programme_outcomes(data, cutoff, cfg, accept_days)
        merged = at.merge(programme, on="member_id", how="left")
        merged["productive"] = is_in(merged["member_id"].astype(str), productive_members(data, cutoff, cfg))
        posting = window_posting(data, cutoff, cfg).reindex(merged["member_id"].astype(str).to_numpy())
        for column in POSTING_COLUMNS:
            merged[column] = posting[column].to_numpy()
        frames.append(merged.set_index(at.index))
    columns = list(OUTCOME_COLUMNS)
    if not frames:
        return rows.assign(
            **{c: pd.Series(dtype="int8") for c in columns},
            invited_at=pd.Series(dtype="datetime64[us]"),
            **{c: pd.Series(dtype=t) for c, t in POSTING_DTYPES.items()},
        )
    out = pd.concat(frames).reindex(rows.index)
    return rows.assign(
        **{c: out[c].fillna(False).astype(bool).astype("int8") for c in columns},
        invited_at=out["invited_at"].astype("datetime64[us]"),
        **{c: out[c].fillna(0).astype(t) for c, t in POSTING_DTYPES.items()},
    )


def outcome_rates(outcomes: pd.DataFrame, by: Iterable[str] = ("as_of",)) -> pd.DataFrame:
    """Rows and the share of each outcome per group (for logging what the targets learn from)."""
    present = [c for c in OUTCOME_COLUMNS if c in outcomes.columns]
    grouped = outcomes.groupby(list(by), observed=True, sort=True)
    table = grouped[present].mean().add_suffix("_rate")
    table.insert(0, "rows", grouped.size())
    return table.reset_index()


# The default label, eligibility and outcomes of every cutoff in one query over a store's tables
# (`labels_and_outcomes`); the rules are those of `features.labels.eligibility`,
# `features.labels.default_labels`, `programme_outcomes` and `productive_members` above, and a
# test holds the two implementations equal.
_STORED_LABELS_SQL = """
WITH past AS (
    SELECT c.as_of, p.member_id,
        bool_or(p.status = 'blacklisted') AS blacklisted,
        MAX(CASE WHEN p.status IN ('enrolled', 'upgraded') THEN p.event_at END) AS last_in,
        MAX(CASE WHEN p.status = 'eliminated' THEN p.event_at END) AS last_out,
        bool_or(p.status IN ({cooldown}) AND p.event_at >= c.cool_start) AS cooling
    FROM program p JOIN _cutoffs c ON p.event_at < c.as_of
    GROUP BY c.as_of, p.member_id
),
win AS (
    SELECT c.as_of, p.member_id,
        MIN(CASE WHEN p.status = 'invited' THEN p.event_at END) AS invited_at,
        MAX(CASE WHEN p.status = 'enrolled' THEN p.event_at END) AS enrolled_at
    FROM program p JOIN _cutoffs c ON p.event_at >= c.as_of AND p.event_at < c.window_end
    GROUP BY c.as_of, p.member_id
),
inv AS (
    SELECT as_of, member_id, invited_at FROM win WHERE invited_at IS NOT NULL
),
answer_events AS (
    SELECT member_id, event_at, status FROM program WHERE status IN ('enrolled', 'declined')
),
ans AS (
    SELECT inv.as_of, inv.member_id,
        MIN(CASE WHEN p.status = 'enrolled' THEN p.event_at END) AS enrolled_after,
        MIN(CASE WHEN p.status = 'declined' THEN p.event_at END) AS declined_after
    FROM inv JOIN answer_events p ON p.member_id = inv.member_id
        AND p.event_at >= inv.invited_at AND p.event_at < inv.invited_at + INTERVAL {accept_days} DAY
    GROUP BY inv.as_of, inv.member_id
),
post AS (
    SELECT c.as_of, p.member_id,
        CAST(COALESCE(p.likes_7d, 0) AS BIGINT) + COALESCE(p.comments_7d, 0) + COALESCE(p.saves_7d, 0) AS interactions
    FROM posts p JOIN _cutoffs c ON p.posted_at >= c.as_of AND p.posted_at < c.window_end
),
posting AS (
    SELECT as_of, member_id, COUNT(*) AS n, SUM(interactions) AS total,
        SUM(LN(1 + interactions)) AS log_sum, SUM(LN(1 + interactions) * LN(1 + interactions)) AS log_sq
    FROM post
    GROUP BY as_of, member_id
),
prod AS (
    SELECT as_of, member_id, n, log_sum, log_sq, n >= {min_posts} AND total >= {min_interactions} AS productive
    FROM posting
)
SELECT m.member_id, c.as_of,
    CAST(win.enrolled_at IS NOT NULL AND COALESCE(prod.productive, FALSE) AS BIGINT) AS label,
    CAST(win.invited_at IS NOT NULL AS TINYINT) AS invited,
    CAST(COALESCE(ans.enrolled_after IS NOT NULL AND NOT COALESCE(ans.declined_after <= ans.enrolled_after, FALSE), FALSE)
        AS TINYINT) AS accepted,
    CAST(win.enrolled_at IS NOT NULL AS TINYINT) AS enrolled,
    CAST(COALESCE(prod.productive, FALSE) AS TINYINT) AS productive,
    win.invited_at,
    CAST(COALESCE(prod.n, 0) AS SMALLINT) AS window_posts,
    CAST(COALESCE(prod.log_sum, 0) AS REAL) AS window_log_interactions,
    CAST(COALESCE(prod.log_sq, 0) AS REAL) AS window_log_interactions_sq
FROM members m
JOIN _cutoffs c ON m.joined_at < c.as_of
LEFT JOIN past ON past.as_of = c.as_of AND past.member_id = m.member_id
LEFT JOIN win ON win.as_of = c.as_of AND win.member_id = m.member_id
LEFT JOIN prod ON prod.as_of = c.as_of AND prod.member_id = m.member_id
LEFT JOIN ans ON ans.as_of = c.as_of AND ans.member_id = m.member_id
WHERE COALESCE(m.marketing_consent, TRUE)
    AND NOT COALESCE(past.blacklisted, FALSE)
    AND NOT (past.last_in IS NOT NULL AND (past.last_out IS NULL OR past.last_in > past.last_out))
    AND NOT COALESCE(past.cooling, FALSE)
ORDER BY c.as_of, m.member_id
"""


def cutoff_batches(pairs: Sequence[int], budget: int) -> list[slice]:
    """Consecutive runs of cutoffs whose (member, cutoff) pairs add up to at most `budget`
    (a cutoff above it alone): the queries `labels_and_outcomes` splits a store's cutoffs into."""
    batches, start, total = [], 0, 0
    for i, count in enumerate(pairs):
        if i > start and total + count > budget:
            batches.append(slice(start, i))
            start, total = i, 0
        total += count
    if len(pairs):
        batches.append(slice(start, len(pairs)))
    return batches


def _stored_labels_and_outcomes(
    data: StoredBrandData, cutoffs: list[pd.Timestamp], cfg: LabelConfig, engine: EngineConfig, accept_days: int
) -> pd.DataFrame:
    frame = pd.DataFrame({"as_of": pd.Series(cutoffs, dtype="datetime64[us]")})
    frame["window_end"] = frame["as_of"] + cfg.horizon
    frame["cool_start"] = frame["as_of"] - pd.Timedelta(days=cfg.cooldown_days)
    sql = _STORED_LABELS_SQL.format(
        cooldown=", ".join(f"'{status}'" for status in COOLDOWN_STATUSES),
        min_posts=int(cfg.min_posts),
        min_interactions=int(cfg.min_interactions),
        accept_days=int(accept_days),
    )
    parts = []
    with duckdb.connect(data.path, read_only=True) as con:
        configure(con, engine)
        con.register("_all_cutoffs", frame)
        pairs = con.sql(
            "SELECT COUNT(m.member_id) FROM _all_cutoffs c LEFT JOIN members m ON m.joined_at < c.as_of "
            "GROUP BY c.as_of ORDER BY c.as_of"
        ).fetchall()
        # DuckDB builds every join's hash table at once, so the working set follows the pairs of one
        # query: cutoffs in batches of at most `engine.label_rows` pairs (`features.build.LABEL_ROWS`)
        for batch in cutoff_batches([n for (n,) in pairs], engine.label_rows):
            con.register("_cutoffs", frame.iloc[batch])
            parts.append(con.sql(sql).to_arrow_table().to_pandas())
            con.unregister("_cutoffs")
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    out["member_id"] = out["member_id"].astype("str")
    out["as_of"] = out["as_of"].astype("datetime64[us]")
    out["invited_at"] = out["invited_at"].astype("datetime64[us]")
    return out.astype({"label": "int64", **dict.fromkeys(OUTCOME_COLUMNS, "int8"), **POSTING_DTYPES})


def labels_and_outcomes(
    data: BrandData,
    as_ofs: Iterable[pd.Timestamp],
    cfg: LabelConfig | None = None,
    engine: EngineConfig | None = None,
    accept_days: int = ACCEPT_DAYS,
) -> pd.DataFrame:
    """`labels_for(data, as_ofs, cfg)` plus the int8 outcome columns and `invited_at` (`outcomes_for`).

    For a store without a `labels` table this is DuckDB over the database (the tables are never
    read into pandas: at 1M members the pandas path took ~70 s of `koc train`), under `engine`'s
    threads, memory limit and spill folder, one query per batch of cutoffs of at most
    `engine.label_rows` (member, cutoff) pairs; otherwise the pandas functions.
    """
    cfg = cfg or LabelConfig()
    cutoffs = sorted({as_cutoff(raw, data.timezone) for raw in as_ofs})
    if isinstance(data, StoredBrandData) and "labels" in data.absent and cutoffs:
        return _stored_labels_and_outcomes(data, cutoffs, cfg, engine or EngineConfig(), accept_days)
    return outcomes_for(data, labels_for(data, cutoffs, cfg), cfg, accept_days)
