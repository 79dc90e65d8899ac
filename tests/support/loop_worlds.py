"""Hand-built worlds with known invitations, acceptances and posts, for the monthly-loop tests."""

from __future__ import annotations

import pandas as pd

from features.contract import BrandData, from_frames
from features.labels import LabelConfig
from serving.issued import IssuedList

LIST_AS_OF = pd.Timestamp("2026-01-01")
# role of each eligible member in the hand-built list, with its score
ROLES = {
    **{f"e{i}": "exploit" for i in range(1, 7)},
    "c1": "control", "c2": "control",
    "x1": "explore", "x2": "explore",
    "b1": "band", "b2": "band", "b3": "band",
    **{f"n{i}": "none" for i in range(1, 5)},
}
SENT = ("e1", "e2", "e3", "e4", "e5", "e6", "x1", "x2")  # invited within days of the cutoff
ENROLLED = ("e1", "e2", "e3", "e4", "x1", "c1", "b1", "n1")  # enrolled in the window
PRODUCTIVE_POSTS = ("e1", "e2", "e3", "x1", "b1", "n1")  # 3 posts x 40 interactions
FEW_POSTS = ("e4", "c1")  # 2 posts x 60: enrolled but not productive


def hand_issued_list(list_id: str = "koc-2026-01-01", as_of: pd.Timestamp = LIST_AS_OF) -> IssuedList:
    """An issued list over the 17 members of `ROLES` (scores descending by position)."""
    ids = list(ROLES)
    # block of 8 (6 exploit + 2 control): 6/8 each; band of 5 (2 explore + 3 band): 2/5 each
    p = {"exploit": 0.75, "control": 0.75, "explore": 0.4, "band": 0.4, "none": 0.0}
    members = pd.DataFrame(
        {
            "member_id": ids,
            "position": range(1, len(ids) + 1),
            "score": [round(0.9 - 0.05 * i, 2) for i in range(len(ids))],
            "role": [ROLES[m] for m in ids],
            "invited": [ROLES[m] in ("exploit", "explore") for m in ids],
            "p_invite": [p[ROLES[m]] for m in ids],
        }
    )
    members["list_rank"] = pd.Series(range(1, 9), index=members.index[members["invited"]]).reindex(members.index).astype("Int64")
    members["reasons"] = None
    meta = {
        "list_id": list_id, "as_of": as_of.isoformat(), "k": 8, "issued_at": "2026-01-01T00:00:00+00:00",
        "model": {"name": "koc-potential", "version": "3", "run_id": "r3"}, "target": "observed",
        "config_hash": "h", "label_config": LabelConfig().model_dump(mode="json"),
        "counts": {"eligible": 17, "invited": 8, "exploit": 6, "explore": 2, "control": 2, "band": 3},
    }
    return IssuedList(list_id, meta, members, profile={})


def hand_outcome_world(
    data_end: str = "2026-06-30", sent_late: tuple[str, ...] = (), declined_first: tuple[str, ...] = ()
) -> BrandData:
    """Programme events and posts that make the outcome of `hand_issued_list` known by hand.

    Members in `sent_late` get their invitation two months after the cutoff (outside any send window).
    Members in `declined_first` decline their invitation on 2026-01-08, before they enrol.
    """
    ids = list(ROLES)
    members = pd.DataFrame({"member_id": ids, "joined_at": pd.Timestamp("2025-01-01")})
    orders = pd.DataFrame({"order_id": [f"o_{m}" for m in ids], "member_id": ids,
                           "ordered_at": pd.Timestamp("2025-06-01"), "amount": 100.0})
    program = [(m, "2026-03-01" if m in sent_late else "2026-01-05", "invited") for m in SENT]
    program += [("c2", "2026-01-10", "invited")]  # a control member invited by another campaign
    program += [(m, "2026-01-20", "enrolled") for m in ENROLLED]
    program += [(m, "2026-01-08", "declined") for m in ("e5", "e6", "x2", *declined_first)]
    program += [("n4", data_end, "declined")]  # keeps the programme evidence running to data_end
    program = pd.DataFrame(program, columns=["member_id", "event_at", "status"])
    program["event_at"] = pd.to_datetime(program["event_at"])
    posts = []
    for member in PRODUCTIVE_POSTS:
        posts += [(f"p_{member}_{j}", member, pd.Timestamp("2026-02-01") + pd.Timedelta(days=10 * j), 40) for j in range(3)]
    for member in FEW_POSTS:
        posts += [(f"p_{member}_{j}", member, pd.Timestamp("2026-02-01") + pd.Timedelta(days=10 * j), 60) for j in range(2)]
    posts.append(("p_late", "n4", pd.Timestamp(data_end), 0))
    posts = pd.DataFrame(posts, columns=["post_id", "member_id", "posted_at", "likes_7d"])
    posts["platform"] = "xhs"
    posts["comments_7d"] = 0
    posts["saves_7d"] = 0
    return from_frames({"members": members, "orders": orders, "program": program, "posts": posts})
