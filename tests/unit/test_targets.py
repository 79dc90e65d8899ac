"""Outcome columns behind the target modes (features.targets) and how targets compose (training.targets)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import from_frames
from features.labels import LabelConfig, default_labels
from features.targets import outcomes_for
from training.targets import components_for, inverse_propensity_weights, logged_propensity

AS_OF = pd.Timestamp("2024-10-01")
MEMBERS = ["m1", "m2", "m3", "m4", "m5"]


def _data():
    members = pd.DataFrame({"member_id": MEMBERS, "joined_at": pd.to_datetime(["2024-01-01"] * 5)})
    orders = pd.DataFrame(
        {"order_id": ["o1"], "member_id": ["m1"], "ordered_at": pd.to_datetime(["2024-02-01"]), "amount": [10.0]}
    )
    program = pd.DataFrame(
        {
            "member_id": ["m1", "m1", "m2", "m2", "m3", "m5", "m5", "m4"],
            "event_at": pd.to_datetime(
                [
                    "2024-10-02",  # m1 invited, then accepts
                    "2024-10-05",
                    "2024-10-02",  # m2 invited, declines
                    "2024-10-06",
                    "2024-10-10",  # m3 enrols without an invitation
                    "2024-10-03",  # m5 enrols, *then* is invited: not an acceptance
                    "2024-10-04",
                    "2024-12-30",  # m4 invited exactly at as_of + 90 days: outside the window
                ]
            ),
            "status": ["invited", "enrolled", "invited", "declined", "enrolled", "enrolled", "invited", "invited"],
        }
    )
    posts = pd.DataFrame(
        {
            "post_id": [f"p{i}" for i in range(7)],
            "member_id": ["m1", "m1", "m1", "m4", "m4", "m4", "m3"],
            "posted_at": pd.to_datetime(
                ["2024-10-06", "2024-10-07", "2024-10-08", "2024-11-01", "2024-11-02", "2024-09-30", "2024-10-11"]
            ),
            "platform": ["xhs"] * 7,
            "likes_7d": [40, 40, 40, 60, 60, 60, 500],
            "comments_7d": [0] * 7,
            "saves_7d": [0] * 7,
        }
    )
    return from_frames({"members": members, "orders": orders, "program": program, "posts": posts})


def test_outcomes_split_the_default_label_into_invitation_acceptance_enrolment_and_productivity():
    data = _data()
    rows = pd.DataFrame({"member_id": MEMBERS, "as_of": AS_OF}).astype({"as_of": "datetime64[us]"})
    out = outcomes_for(data, rows, LabelConfig()).set_index("member_id")
    expected = pd.DataFrame(
        {
            "invited": [1, 1, 0, 0, 1],
            "accepted": [1, 0, 0, 0, 0],
            "enrolled": [1, 0, 1, 0, 1],
            # m4's third post is before as_of; m3 has one post only
            "productive": [1, 0, 0, 0, 0],
        },
        index=pd.Index(MEMBERS, name="member_id"),
    ).astype("int8")
    pd.testing.assert_frame_equal(out[expected.columns], expected)
    label = default_labels(data, AS_OF).set_index("member_id")["label"]
    np.testing.assert_array_equal(label.to_numpy(), (out["enrolled"] & out["productive"]).to_numpy())
    # the window's posting behind `productive` (the soft label's evidence): m4's September post is before as_of
    assert out["window_posts"].tolist() == [3, 0, 1, 2, 0]
    np.testing.assert_allclose(out["window_log_interactions"], [3 * np.log(41), 0, np.log(501), 2 * np.log(61), 0], rtol=1e-6)
    np.testing.assert_allclose(out["window_log_interactions_sq"], [3 * np.log(41) ** 2, 0, np.log(501) ** 2, 2 * np.log(61) ** 2, 0], rtol=1e-6)
    assert out["window_posts"].dtype == "int16" and out["window_log_interactions"].dtype == "float32"


def test_rows_keep_their_order_and_each_cutoff_sees_only_its_window():
    data = _data()
    later = AS_OF + pd.Timedelta(days=31)  # 2024-11-01: m4's two November posts and its 2024-12-30 invitation
    rows = pd.DataFrame({"member_id": ["m4", "m1", "m4"], "as_of": [later, AS_OF, AS_OF]}).astype(
        {"as_of": "datetime64[us]"}
    )
    out = outcomes_for(data, rows, LabelConfig(min_posts=2))
    assert out["member_id"].tolist() == ["m4", "m1", "m4"]
    assert out["productive"].tolist() == [1, 1, 1]
    assert out["invited"].tolist() == [1, 1, 0]


def test_components_per_target_and_method():
    assert components_for("observed", "two_stage") == ["observed"]
    assert components_for("if_invited", "two_stage") == ["accept", "productive_enrolled"]
    assert components_for("if_invited", "ipw") == ["propensity", "invited_outcome"]
    assert components_for("uplift", "two_stage")[-1] == "not_invited_outcome"
    both_paths = ["accept", "productive_enrolled", "not_invited_outcome"]
    assert components_for("if_invited", "two_path") == both_paths
    assert components_for("uplift", "two_path") == both_paths  # the declined path is the control arm too
    shared = ["accept", "productive_enrolled_shared", "not_invited_outcome"]
    assert components_for("if_invited", "two_path_shared") == shared
    assert components_for("uplift", "two_path_shared") == shared
    with pytest.raises(ValueError, match="unknown target method"):
        components_for("if_invited", "magic")


def test_logged_selection_probabilities_weigh_invited_rows_and_report_overlap():
    rows = pd.DataFrame(
        {"member_id": ["a", "b", "c"], "as_of": pd.to_datetime(["2025-01-01"] * 3), "weight": [1.0, 1.0, 1.0]}
    )
    issued = pd.DataFrame(
        {"member_id": ["a", "b", "c"], "as_of": ["2025-01-01"] * 3, "selection_probability": [0.5, 0.1, 0.0001]}
    )
    assert np.allclose(logged_propensity(rows, issued), [0.5, 0.1, 0.0001])
    weights, report = inverse_propensity_weights(rows, [], None, clip=0.01, issued=issued)
    raw = np.array([2.0, 10.0, 100.0])  # 1 / clip(e)
    np.testing.assert_allclose(weights, raw * 3 / raw.sum())
    assert report.source == "logged" and report.clipped_share == pytest.approx(1 / 3)
    assert report.effective_sample_size == pytest.approx(raw.sum() ** 2 / (raw**2).sum())
    with pytest.raises(ValueError, match="selection_probability"):
        logged_propensity(rows, issued.drop(columns="selection_probability"))


def test_accepted_is_the_answer_to_the_first_invitation_within_accept_days():
    """A decline followed by a self-enrolment is a decline; an answer after the window, within accept_days, counts."""
    members = pd.DataFrame({"member_id": ["d", "late", "slow"], "joined_at": pd.to_datetime(["2024-01-01"] * 3)})
    orders = pd.DataFrame(
        {"order_id": ["o1"], "member_id": ["d"], "ordered_at": pd.to_datetime(["2024-02-01"]), "amount": [10.0]}
    )
    program = pd.DataFrame(
        {
            "member_id": ["d", "d", "d", "late", "late", "slow", "slow"],
            "event_at": pd.to_datetime(
                [
                    "2024-10-02",  # d invited, declines, then enrols by itself within the window
                    "2024-10-04",
                    "2024-11-20",
                    "2024-12-25",  # late invited 85 days after as_of, accepts 10 days later (after the window)
                    "2025-01-04",
                    "2024-10-02",  # slow invited, enrols 31 days later: not within accept_days = 30
                    "2024-11-02",
                ]
            ),
            "status": ["invited", "declined", "enrolled", "invited", "enrolled", "invited", "enrolled"],
        }
    )
    data = from_frames({"members": members, "orders": orders, "program": program})
    rows = pd.DataFrame({"member_id": ["d", "late", "slow"], "as_of": AS_OF}).astype({"as_of": "datetime64[us]"})
    out = outcomes_for(data, rows, LabelConfig()).set_index("member_id")
    assert out["invited"].tolist() == [1, 1, 1]
    assert out["accepted"].tolist() == [0, 1, 0]
    assert out["enrolled"].tolist() == [1, 0, 1]  # late's enrolment falls after the window
    assert out["invited_at"].tolist() == list(pd.to_datetime(["2024-10-02", "2024-12-25", "2024-10-02"]))
    # a longer wait counts slow's answer
    assert outcomes_for(data, rows, LabelConfig(), accept_days=40).set_index("member_id")["accepted"].tolist() == [0, 1, 1]
