"""Eligibility and the default label on hand-built worlds, plus window-edge properties."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.contract import from_frames
from features.labels import (
    LabelConfig,
    default_labels,
    eligibility,
    exclusion_counts,
    label_window_complete,
    labels_for,
)

T = pd.Timestamp("2025-06-01")


def _world(program_rows=(), post_rows=(), members=None, labels=None, consent=None):
    ids = members or ["a", "b", "c", "d", "e", "f", "g"]
    frames = {
        "members": pd.DataFrame(
            {
                "member_id": ids,
                "joined_at": ["2024-01-01"] * len(ids),
                "marketing_consent": consent if consent is not None else [True] * len(ids),
            }
        ),
        "orders": pd.DataFrame(
            {"order_id": ["o1"], "member_id": [ids[0]], "ordered_at": ["2026-01-01"], "amount": [1.0], "category": ["x"]}
        ),
        "program": pd.DataFrame(list(program_rows), columns=["member_id", "event_at", "status"]),
        "posts": pd.DataFrame(
            list(post_rows), columns=["post_id", "member_id", "posted_at", "platform", "likes_7d", "comments_7d", "saves_7d"]
        ),
    }
    if labels is not None:
        frames["labels"] = labels
    return from_frames(frames, current_year=2026)


def _flags(elig, member):
    row = elig.set_index("member_id").loc[member]
    return {rule for rule in ("excl_no_consent", "excl_blacklisted", "excl_active_koc", "excl_cooldown") if row[rule]}


def test_each_exclusion_rule():
    program = [
        ("b", "2024-11-01", "blacklisted"),  # blacklisted long ago: never eligible again
        ("c", "2025-02-01", "enrolled"),  # active KOC
        ("d", "2025-01-01", "enrolled"),  # enrolled then eliminated: eligible again
        ("d", "2025-03-01", "eliminated"),
        ("e", "2025-04-02", "invited"),  # invited 60 days before T: still cooling down
        ("f", "2025-04-15", "declined"),  # declined within cool-down
        ("g", "2025-04-01", "invited"),  # invited 61 days before T: cool-down over
    ]
    data = _world(program, consent=[False, True, True, True, True, True, True])
    elig = eligibility(data, T)
    assert _flags(elig, "a") == {"excl_no_consent"}
    assert _flags(elig, "b") == {"excl_blacklisted"}
    assert _flags(elig, "c") == {"excl_active_koc"}
    assert _flags(elig, "d") == set()
    assert _flags(elig, "e") == {"excl_cooldown"}
    assert _flags(elig, "f") == {"excl_cooldown"}
    assert _flags(elig, "g") == set()
    assert elig.set_index("member_id")["eligible"].to_dict() == {
        "a": False, "b": False, "c": False, "d": True, "e": False, "f": False, "g": True
    }
    assert exclusion_counts(elig) == {
        "no_consent": 1, "blacklisted": 1, "active_koc": 1, "cooldown": 2, "members": 7, "eligible": 2
    }


def test_eligibility_uses_only_rows_strictly_before_as_of():
    program = [("c", T, "enrolled"), ("b", T, "blacklisted"), ("e", T, "invited")]
    elig = eligibility(_world(program), T)
    assert elig["eligible"].all()
    one_us = pd.Timedelta(microseconds=1)
    program = [("c", T - one_us, "enrolled"), ("b", T - one_us, "blacklisted"), ("e", T - one_us, "invited")]
    elig = eligibility(_world(program), T).set_index("member_id")
    assert not elig.loc[["b", "c", "e"], "eligible"].any()


def test_members_who_join_at_or_after_as_of_are_not_candidates():
    data = from_frames(
        {
            "members": pd.DataFrame({"member_id": ["x", "y"], "joined_at": [T - pd.Timedelta(seconds=1), T]}),
            "orders": pd.DataFrame({"order_id": ["o"], "member_id": ["x"], "ordered_at": [T], "amount": [1.0]}),
        }
    )
    assert eligibility(data, T)["member_id"].tolist() == ["x"]
    assert default_labels(data, T)["member_id"].tolist() == ["x"]


def _posts(member, times, likes=40, prefix="p"):
    return [(f"{prefix}{member}{i}", member, t, "xhs", likes, 0, 0) for i, t in enumerate(times)]


def test_default_label_needs_enrolment_and_enough_posts_and_interactions():
    in_window = ["2025-06-10", "2025-07-01", "2025-08-01"]
    program = [("a", "2025-06-05", "enrolled"), ("b", "2025-06-05", "enrolled"), ("c", "2025-06-05", "enrolled")]
    posts = (
        _posts("a", in_window, likes=34)  # 102 interactions, 3 posts -> 1
        + _posts("b", in_window, likes=33)  # 99 interactions -> 0
        + _posts("c", in_window[:2], likes=100)  # 2 posts -> 0
        + _posts("d", in_window, likes=100)  # not enrolled -> 0
    )
    labels = default_labels(_world(program, posts), T).set_index("member_id")["label"]
    assert labels.to_dict() == {"a": 1, "b": 0, "c": 0, "d": 0, "e": 0, "f": 0, "g": 0}
    strict = default_labels(_world(program, posts), T, LabelConfig(min_interactions=90)).set_index("member_id")["label"]
    assert strict["b"] == 1


def test_label_window_edges():
    end = T + pd.Timedelta(days=90)
    one_us = pd.Timedelta(microseconds=1)
    # enrolment exactly at T counts; at T+H does not; a post at T+H does not count
    program = [("a", T, "enrolled"), ("b", end, "enrolled"), ("c", T - one_us, "enrolled")]
    posts = (
        _posts("a", [T, T + pd.Timedelta(days=1), end - one_us], likes=50)
        + _posts("b", [T, T, T], likes=50)
        + _posts("c", [T, T, T], likes=50)
    )
    labels = default_labels(_world(program, posts), T).set_index("member_id")["label"]
    assert labels[["a", "b", "c"]].tolist() == [1, 0, 0]
    posts_late = _posts("a", [T, T + pd.Timedelta(days=1), end], likes=50)
    assert default_labels(_world(program, posts_late), T).set_index("member_id").loc["a", "label"] == 0


def test_label_window_complete_needs_horizon_plus_seven_days():
    data = _world()  # data_end = 2026-01-01 (the order)
    assert label_window_complete(data, pd.Timestamp("2026-01-01") - pd.Timedelta(days=97))
    assert not label_window_complete(data, pd.Timestamp("2026-01-01") - pd.Timedelta(days=96))


def test_user_labels_override_default_and_only_eligible_members_count():
    labels = pd.DataFrame({"member_id": ["a", "c", "d"], "as_of": ["2025-06-01"] * 3, "label": [1, 1, 0]})
    program = [("c", "2025-02-01", "enrolled")]  # c is an active KOC: not eligible, label dropped
    out = labels_for(_world(program, labels=labels), [T])
    assert out[["member_id", "label"]].to_dict("list") == {"member_id": ["a", "d"], "label": [1, 0]}


_offsets = st.integers(min_value=-400, max_value=400)
_statuses = st.sampled_from(["invited", "declined", "enrolled", "upgraded", "eliminated", "blacklisted"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    program=st.lists(st.tuples(st.sampled_from("abcd"), _offsets, _statuses), max_size=8),
    posts=st.lists(st.tuples(st.sampled_from("abcd"), _offsets, st.integers(0, 80)), max_size=10),
    extra=st.lists(
        st.tuples(st.sampled_from("abcd"), st.one_of(st.integers(-400, -1), st.integers(90, 400)), _statuses, st.integers(0, 80)),
        min_size=1,
        max_size=4,
    ),
)
def test_label_ignores_rows_outside_its_window(program, posts, extra):
    """Adding program or post rows before T or at/after T+H never changes a default label."""

    def build(prog, pst):
        prog_rows = [(m, T + pd.Timedelta(days=d), s) for m, d, s in prog]
        post_rows = [(f"p{i}", m, T + pd.Timedelta(days=d), "xhs", likes, 0, 0) for i, (m, d, likes) in enumerate(pst)]
        return _world(prog_rows, post_rows, members=list("abcd"))

    before = default_labels(build(program, posts), T)
    more_prog = program + [(m, d, s) for m, d, s, _ in extra]
    more_posts = posts + [(m, d, likes) for m, d, _, likes in extra]
    after = default_labels(build(more_prog, more_posts), T)
    pd.testing.assert_frame_equal(before, after)


def test_upgrade_proves_enrolment_and_elimination_starts_a_cooldown():
    program = [
        ("a", "2025-03-01", "upgraded"),  # log starts after enrolment: still an active KOC
        ("b", "2025-01-01", "enrolled"),
        ("b", "2025-05-01", "eliminated"),  # eliminated 31 days ago: cooling down
        ("c", "2024-10-01", "enrolled"),
        ("c", "2025-03-01", "eliminated"),  # eliminated 92 days ago: may be re-invited
        ("d", "2025-01-01", "eliminated"),
        ("d", "2025-02-01", "enrolled"),  # re-enrolled after an elimination: active again
    ]
    elig = eligibility(_world(program), T)
    assert _flags(elig, "a") == {"excl_active_koc"}
    assert _flags(elig, "b") == {"excl_cooldown"}
    assert _flags(elig, "c") == set()
    assert _flags(elig, "d") == {"excl_active_koc"}


def test_unlabelled_eligible_members_are_reported(caplog):
    labels = pd.DataFrame({"member_id": ["a"], "as_of": ["2025-06-01"], "label": [1]})
    with caplog.at_level("WARNING", logger="features.labels"):
        out = labels_for(_world(labels=labels), [T])
    assert out["member_id"].tolist() == ["a"]
    assert "6 eligible member(s) have no label row" in caplog.text


def test_label_window_needs_programme_and_posts_to_reach_its_end():
    program = [("a", "2025-12-20", "invited")]
    posts = _posts("a", ["2025-03-01"])  # posts stop in March, orders run to 2026-01-01
    data = _world(program, posts)
    assert not label_window_complete(data, pd.Timestamp("2025-06-01"))
    assert label_window_complete(data, pd.Timestamp("2025-03-01") - pd.Timedelta(days=97))
