"""What a simulated world looks like: invitations, self-driven enrolment, positives, and truth against outcomes.

`koc simulate` prints these, the README's scenario table comes from them, and the tests
use `truth_check` to hold the truth to the simulated outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

INVITE_RESPONSE_DAYS = 8  # an enrolment within this many days of an invitation answers it


def _invitations(program: pd.DataFrame) -> pd.DataFrame:
    invited = program.loc[program["status"] == "invited", ["member_id", "event_at"]]
    month = invited["event_at"].dt.to_period("M").dt.to_timestamp().astype("datetime64[us]")
    return invited.assign(as_of=month)


def self_driven_enrolments(program: pd.DataFrame) -> pd.Series:
    """For each `enrolled` row, whether it was self-driven (no invitation in the days before)."""
    enrolled = program.loc[program["status"] == "enrolled", ["member_id", "event_at"]].reset_index(drop=True)
    invited = program.loc[program["status"] == "invited", ["member_id", "event_at"]]
    last_invite = pd.merge_asof(
        enrolled.reset_index().sort_values("event_at"),
        invited.rename(columns={"event_at": "invited_at"}).sort_values("invited_at"),
        left_on="event_at",
        right_on="invited_at",
        by="member_id",
        direction="backward",
    ).set_index("index")
    answered = (last_invite["event_at"] - last_invite["invited_at"]) <= pd.Timedelta(days=INVITE_RESPONSE_DAYS)
    return ~answered.reindex(enrolled.index).fillna(False).astype(bool)


@dataclass(frozen=True)
class TruthCheck:
    """Realised productive rate against the mean truth, for one group of (member, cutoff) rows."""

    group: str
    rows: int
    realised: float
    expected: float

    @property
    def standard_error(self) -> float:
        return float(np.sqrt(max(self.expected * (1 - self.expected), 1e-12) / max(self.rows, 1)))

    @property
    def z(self) -> float:
        return (self.realised - self.expected) / self.standard_error


def truth_check(tables: dict[str, pd.DataFrame], outcomes: pd.DataFrame, horizon_days: int = 90) -> list[TruthCheck]:
    """Invited vs not-invited eligible members at cutoffs with a complete label window.

    Invited: invited at the cutoff, compared with `p_productive_if_invited`. Not invited:
    neither invited at the cutoff nor at any later cutoff within the horizon (the truth's
    definition), compared with `p_productive_if_not_invited`.
    """
    truth = tables["truth"]
    done = outcomes.loc[outcomes["window_complete"] & outcomes["eligible"], ["member_id", "as_of", "productive"]]
    rows = done.merge(truth, on=["member_id", "as_of"], validate="one_to_one")
    invites = _invitations(tables["program"])
    now = rows.merge(
        invites[["member_id", "as_of"]].drop_duplicates(), on=["member_id", "as_of"], how="left", indicator=True
    )
    invited_now = (now["_merge"] == "both").to_numpy()
    later = rows[["member_id", "as_of"]].reset_index().merge(invites[["member_id", "event_at"]], on="member_id")
    within = (later["event_at"] >= later["as_of"]) & (
        later["event_at"] < later["as_of"] + pd.Timedelta(days=horizon_days)
    )
    touched = np.zeros(len(rows), dtype=bool)
    touched[later.loc[within, "index"].to_numpy()] = True
    groups = {
        "invited": (invited_now, "p_productive_if_invited"),
        "not invited": (~touched, "p_productive_if_not_invited"),
    }
    checks = []
    for name, (mask, column) in groups.items():
        part = rows.loc[mask]
        checks.append(TruthCheck(name, len(part), float(part["productive"].mean()), float(part[column].mean())))
    return checks


def world_stats(tables: dict[str, pd.DataFrame], outcomes: pd.DataFrame) -> dict[str, float]:
    """Headline figures of a world: invitations per cutoff, self-driven share of enrolments, positives rate."""
    program = tables["program"]
    invites = _invitations(program)
    eligible = outcomes.loc[outcomes["eligible"]].groupby("as_of").size()
    per_cutoff = invites.groupby("as_of").size().reindex(eligible.index, fill_value=0)
    self_driven = self_driven_enrolments(program)
    done = outcomes.loc[outcomes["eligible"] & outcomes["window_complete"]]
    truth = tables.get("truth")
    return {
        "members": float(len(tables["members"])),
        "eligible_per_cutoff": float(eligible.mean()),
        "invitations_per_cutoff": float(per_cutoff.iloc[:-1].mean()) if len(per_cutoff) > 1 else 0.0,
        "enrolments": float(len(self_driven)),
        "self_driven_share": float(self_driven.mean()) if len(self_driven) else float("nan"),
        "positives_rate": float(done["productive"].mean()) if len(done) else float("nan"),
        "mean_p_if_invited": float(truth["p_productive_if_invited"].mean()) if truth is not None else float("nan"),
        "mean_p_if_not_invited": float(truth["p_productive_if_not_invited"].mean())
        if truth is not None
        else float("nan"),
    }
