"""What the ops page shows about one member: scores, value breakdown, reasons, recent activity."""

from __future__ import annotations

from typing import Any

import pandas as pd

from features.contract import TABLES, BrandData
from serving.output import split_reason

VALUE_LABELS = {
    "consumption_value": "consumption",
    "interaction_value": "interaction",
    "content_value": "content",
    "social_value": "social",
}
ACTIVITY_TABLES = ("orders", "events", "posts", "referrals", "program")


def _describe(table: str, row: dict[str, Any]) -> str:
    """One line for an activity row: its non-id, non-time values."""
    skip = {"member_id", "referrer_id", TABLES[table].time_column}
    parts = []
    for key, value in row.items():
        if key in skip or value is None or (not isinstance(value, list | tuple) and pd.isna(value)):
            continue
        if key.endswith("_id"):
            continue
        parts.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(parts)


def recent_activity(data: BrandData | None, member_id: str, as_of: pd.Timestamp, n: int = 12) -> list[dict[str, str]]:
    """The member's latest `n` rows strictly before `as_of` across the activity tables, newest first."""
    if data is None:
        return []
    rows: list[tuple[pd.Timestamp, str, str]] = []
    for table in ACTIVITY_TABLES:
        if table in data.absent or table not in data.tables:
            continue
        frame = data.tables[table]
        id_column = "referrer_id" if table == "referrals" else "member_id"
        time_column = TABLES[table].time_column
        mine = frame.loc[(frame[id_column] == member_id) & (frame[time_column] < as_of)]
        for record in mine.nlargest(n, time_column).to_dict("records"):
            rows.append((record[time_column], table, _describe(table, record)))
    rows.sort(key=lambda item: item[0], reverse=True)
    return [{"at": f"{at:%Y-%m-%d %H:%M}", "table": table, "what": what} for at, table, what in rows[:n]]


def member_card(model: Any, result: Any, data: BrandData | None, member_id: str, n_reasons: int) -> dict[str, Any] | None:
    """Everything the member page shows, or None when the id is not a member who joined before the cutoff."""
    from serving.rank import explain_members, lookup_members

    rows, unknown = lookup_members(result.scored, [member_id], result.positions)
    if unknown:
        return None
    row = rows.iloc[0].to_dict()
    listed = result.candidates.loc[result.candidates["member_id"] == member_id]
    if len(listed):
        reason_row = listed.iloc[0].to_dict()
    else:
        explained = explain_members(model, result.features, [member_id], n_reasons, result.population)
        reason_row = explained.iloc[0].to_dict()
    reasons = []
    for i in range(1, n_reasons + 1):
        zh, en = split_reason(reason_row.get(f"reason_{i}"))
        if zh is not None:
            reasons.append({"zh": reason_row.get(f"reason_{i}_zh") or zh, "en": reason_row.get(f"reason_{i}_en") or en,
                            "feature": reason_row.get(f"reason_feature_{i}")})
    exclusions = [rule.removeprefix("excl_") for rule in row if rule.startswith("excl_") and bool(row[rule])]
    as_of = pd.Timestamp(result.meta["as_of"])
    return {
        "member_id": member_id,
        "score": row.get("score"),
        "percentile": row.get("percentile"),
        "tier": row.get("tier"),
        "eligible": bool(row.get("eligible")),
        "exclusions": exclusions,
        "rank": int(listed.iloc[0]["rank"]) if len(listed) else None,
        "values": [(label, row.get(column)) for column, label in VALUE_LABELS.items()],
        "segment": {k: row.get(k) for k in ("rfm_segment", "trial_category", "city_tier", "channel", "gender")},
        "reasons": reasons,
        "why_not_higher": reason_row.get("why_not_higher"),
        "activity": recent_activity(data, member_id, as_of),
    }
