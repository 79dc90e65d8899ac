"""Snapshot cutoffs and the out-of-time split on a hand-made world."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.contract import from_frames
from features.labels import LabelConfig
from training.config import TrainConfig
from training.dataset import build_snapshots, candidate_cutoffs, downsample_negatives, label_lag, split_cutoffs

MEMBERS = ["m1", "m2", "m3", "m4"]


def _frames() -> dict[str, pd.DataFrame]:
    """Four members with monthly orders 2024-01-05 .. 2025-09-05; orders, posts and programme all reach 2025-09-20."""
    members = pd.DataFrame({"member_id": MEMBERS, "joined_at": pd.to_datetime(["2023-12-15"] * 3 + ["2024-10-10"])})
    months = pd.date_range("2024-01-01", "2025-09-01", freq="MS") + pd.Timedelta(days=4)
    orders = pd.DataFrame(
        [(f"o{i}-{m}", m, ts, 10.0 + i) for i, ts in enumerate(months) for m in MEMBERS[:3]],
        columns=["order_id", "member_id", "ordered_at", "amount"],
    )
    last = pd.DataFrame([("o-last", "m1", pd.Timestamp("2025-09-20"), 5.0)], columns=orders.columns)
    # m2 becomes a productive KOC in autumn 2024; m3 is blacklisted in September 2024. The last
    # post and programme event (2025-09-20, after every cutoff) say the label evidence is complete
    # up to then, like the orders.
    program = pd.DataFrame(
        {
            "member_id": ["m2", "m3", "m4"],
            "event_at": pd.to_datetime(["2024-10-03", "2024-09-10", "2025-09-20"]),
            "status": ["enrolled", "blacklisted", "invited"],
        }
    )
    posts = pd.DataFrame(
        {
            "post_id": ["p1", "p2", "p3", "p4"],
            "member_id": ["m2"] * 3 + ["m1"],
            "posted_at": pd.to_datetime(["2024-10-05", "2024-10-12", "2024-10-20", "2025-09-20"]),
            "platform": ["xhs"] * 4,
            "likes_7d": [50, 40, 30, 1],
            "comments_7d": [0, 0, 0, 0],
            "saves_7d": [0, 0, 0, 0],
        }
    )
    return {
        "members": members,
        "orders": pd.concat([orders, last], ignore_index=True),
        "program": program,
        "posts": posts,
    }


def _ts(values: list[str]) -> list[pd.Timestamp]:
    return [pd.Timestamp(v) for v in values]


WINDOW = pd.Timedelta(days=97)  # default horizon 90 days + 7 days for post interactions to be known


def test_default_cutoffs_leave_out_incomplete_windows() -> None:
    data = from_frames(_frames())
    complete, incomplete, source = candidate_cutoffs(data, LabelConfig(), TrainConfig())
    # earliest order 2024-01-05 + 6 months -> first month start 2024-08-01;
    # a window is complete when as_of + 90d + 7d <= the end of the label evidence, 2025-09-20
    assert complete == list(pd.date_range("2024-08-01", "2025-06-01", freq="MS"))
    assert incomplete == _ts(["2025-07-01", "2025-08-01", "2025-09-01"])
    assert source == "default_label"


def test_split_is_out_of_time_with_embargo() -> None:
    data = from_frames(_frames())
    complete, incomplete, _ = candidate_cutoffs(data, LabelConfig(), TrainConfig())
    split = split_cutoffs(complete, LabelConfig(), TrainConfig(), incomplete=incomplete)
    assert split.test == pd.Timestamp("2025-06-01")
    # validation: the latest cutoff whose label window closes before the test cutoff
    # (2025-02-01 + 97d = 2025-05-09 <= 2025-06-01; 2025-03-01 + 97d = 2025-06-06 is too late)
    assert split.validation == pd.Timestamp("2025-02-01")
    assert split.validation + WINDOW <= split.test
    # train: only cutoffs whose window closes before the validation cutoff
    # (2024-10-01 + 97d = 2025-01-06 <= 2025-02-01; 2024-11-01 + 97d = 2025-02-06 is too late)
    assert split.train == tuple(_ts(["2024-08-01", "2024-09-01", "2024-10-01"]))
    assert all(c + WINDOW <= split.validation for c in split.train)
    # the embargoed cutoffs are named: three before validation, three before test
    assert split.embargoed == tuple(
        _ts(["2024-11-01", "2024-12-01", "2025-01-01", "2025-03-01", "2025-04-01", "2025-05-01"])
    )
    assert set(split.used).isdisjoint(split.embargoed)
    assert sorted([*split.used, *split.embargoed]) == complete
    record = split.to_dict()
    assert record["excluded_embargo"] == [
        "2024-11-01",
        "2024-12-01",
        "2025-01-01",
        "2025-03-01",
        "2025-04-01",
        "2025-05-01",
    ]
    assert record["excluded_incomplete_window"] == ["2025-07-01", "2025-08-01", "2025-09-01"]


def test_embargo_follows_the_label_horizon() -> None:
    cutoffs = list(pd.date_range("2024-08-01", "2025-03-01", freq="MS"))
    split = split_cutoffs(cutoffs, LabelConfig(horizon_days=30), TrainConfig(target="observed"))
    # window 37 days (no answers awaited: see the test below): validation 2025-01-01 (+37d = 2025-02-07); train up to 2024-11-01 (+37d = 2024-12-08)
    assert split.test == pd.Timestamp("2025-03-01") and split.validation == pd.Timestamp("2025-01-01")
    assert split.train == tuple(_ts(["2024-08-01", "2024-09-01", "2024-10-01", "2024-11-01"]))
    assert split.embargoed == tuple(_ts(["2024-12-01", "2025-02-01"]))


@settings(deadline=None, max_examples=200)  # pure and fast; no deadline on shared, busy cores
@given(
    months=st.sets(st.integers(min_value=0, max_value=35), min_size=3, max_size=24),
    horizon_days=st.sampled_from([1, 30, 60, 90, 120]),
    accept_days=st.sampled_from([3, 7, 30, 45, 100]),
    target=st.sampled_from(["if_invited", "observed", "uplift"]),
)
def test_embargoed_split_never_judges_on_unknown_labels(months: set[int], horizon_days: int, accept_days: int, target: str) -> None:
    """For any cutoffs: train labels are known before validation, validation's before test, nothing else is dropped.

    A label is known 7 days after its window closes, or `accept_days` after if longer and the
    target reads the invitations' answers (every target but `observed`)."""
    cutoffs = [pd.Timestamp("2023-01-01") + pd.DateOffset(months=m) for m in months]
    label_cfg = LabelConfig(horizon_days=horizon_days)
    answers = target != "observed"
    window = pd.Timedelta(days=horizon_days + max(7, accept_days if answers else 0))
    known_by_test = [c for c in sorted(cutoffs)[:-1] if c + window <= max(cutoffs)]
    try:
        split = split_cutoffs(cutoffs, label_cfg, TrainConfig(target=target, accept_days=accept_days))
    except ValueError as err:
        assert "embargo" in str(err)
        assert len(known_by_test) < 2 or not any(c + window <= known_by_test[-1] for c in known_by_test)
        return
    assert split.test == max(cutoffs)
    assert split.validation + window <= split.test
    assert split.train and all(c + window <= split.validation for c in split.train)
    assert split.validation == known_by_test[-1]  # the latest allowed, not an earlier one
    assert list(split.embargoed) == sorted(split.embargoed)
    assert sorted([*split.used, *split.embargoed]) == sorted(cutoffs) and not set(split.used) & set(split.embargoed)
    # every embargoed cutoff really breaks a rule: its window is still open at validation or at test
    for c in split.embargoed:
        assert c + window > split.test or (c < split.validation and c + window > split.validation), c


def test_embargo_waits_for_the_answers_of_the_windows_last_invitations() -> None:
    """An invitation on a window's last day is answered up to accept_days later: with accept_days longer than
    the 7 days the interactions need, a treatment-aware target's embargo waits for it; `observed` does not."""
    cutoffs = list(pd.date_range("2024-08-01", "2025-03-01", freq="MS"))
    label_cfg = LabelConfig(horizon_days=30)
    observed = split_cutoffs(cutoffs, label_cfg, TrainConfig(target="observed", accept_days=45))
    assert observed == split_cutoffs(cutoffs, label_cfg, TrainConfig(accept_days=7))  # 37 days either way
    assert observed.validation == pd.Timestamp("2025-01-01")
    answered = split_cutoffs(cutoffs, label_cfg, TrainConfig(accept_days=45))
    # 75 days: 2025-01-01 + 75d = 2025-03-17 is after the test cutoff; 2024-12-01 + 75d = 2025-02-14 is not
    assert label_lag(label_cfg, TrainConfig(accept_days=45)) == pd.Timedelta(days=75)
    assert answered.validation == pd.Timestamp("2024-12-01")
    assert answered.train == tuple(_ts(["2024-08-01", "2024-09-01"]))  # 2024-09-01 + 75d = 2024-11-15
    assert answered.embargoed == tuple(_ts(["2024-10-01", "2024-11-01", "2025-01-01", "2025-02-01"]))
    # the defaults (horizon 90, accept_days 30, monthly cutoffs) split as they did with 97 days
    default_cutoffs = list(pd.date_range("2024-01-01", "2025-09-01", freq="MS"))
    assert split_cutoffs(default_cutoffs, LabelConfig(), TrainConfig()) == split_cutoffs(
        default_cutoffs, LabelConfig(), TrainConfig(target="observed")
    )


def test_split_without_embargo_uses_the_previous_cutoff_for_validation() -> None:
    cutoffs = list(pd.date_range("2024-08-01", "2025-03-01", freq="MS"))
    split = split_cutoffs(cutoffs, LabelConfig(), TrainConfig(embargo=False))
    assert split.validation == pd.Timestamp("2025-02-01") and split.test == pd.Timestamp("2025-03-01")
    assert split.train == tuple(cutoffs[:-2]) and split.embargoed == ()


def test_too_few_cutoffs_fail_with_advice() -> None:
    with pytest.raises(ValueError, match="at least 3 cutoffs"):
        split_cutoffs(_ts(["2024-08-01", "2024-09-01"]), LabelConfig(), TrainConfig())
    with pytest.raises(ValueError, match="before the test cutoff 2024-10-01.*embargo = false"):
        split_cutoffs(_ts(["2024-08-01", "2024-09-01", "2024-10-01"]), LabelConfig(), TrainConfig())
    # validation 2024-11-01 is known by the test cutoff, but 2024-08-01 + 97d = 2024-11-06 is not known by validation
    with pytest.raises(ValueError, match="before the validation cutoff 2024-11-01.*embargo = false"):
        split_cutoffs(_ts(["2024-08-01", "2024-11-01", "2025-03-01"]), LabelConfig(), TrainConfig())
    # the same cutoffs split fine with an earlier one added, or without the embargo
    assert split_cutoffs(
        _ts(["2024-07-01", "2024-08-01", "2024-11-01", "2025-03-01"]), LabelConfig(), TrainConfig()
    ).train == (pd.Timestamp("2024-07-01"),)
    assert split_cutoffs(
        _ts(["2024-08-01", "2024-11-01", "2025-03-01"]), LabelConfig(), TrainConfig(embargo=False)
    ).train == (pd.Timestamp("2024-08-01"),)


def test_labels_table_defines_the_cutoffs() -> None:
    frames = _frames()
    as_ofs = pd.to_datetime(["2024-03-01", "2024-06-01", "2024-09-01", "2024-12-01", "2025-03-01"])
    frames["labels"] = pd.DataFrame({"member_id": ["m1"] * 5, "as_of": as_ofs, "label": [0, 1, 0, 1, 0]})
    data = from_frames(frames)
    cutoffs, incomplete, source = candidate_cutoffs(data, LabelConfig(), TrainConfig())
    assert cutoffs == list(as_ofs) and incomplete == [] and source == "labels_table"
    split = split_cutoffs(cutoffs, LabelConfig(), TrainConfig(), source=source)
    assert split.test == pd.Timestamp("2025-03-01")
    assert split.validation == pd.Timestamp("2024-09-01") and split.train == (pd.Timestamp("2024-03-01"),)
    # 2024-12-01 is embargoed before test, 2024-06-01 (+97d = 2024-09-06) before validation
    assert split.embargoed == (pd.Timestamp("2024-06-01"), pd.Timestamp("2024-12-01"))


def test_build_snapshots_tags_rows_with_their_split() -> None:
    data = from_frames(_frames())
    dataset = build_snapshots(data, LabelConfig(), TrainConfig(backtest_cutoffs=1))
    frame = dataset.frame
    assert set(frame.loc[frame["split"] == "test", "as_of"]) == {pd.Timestamp("2025-06-01")}
    assert set(frame.loc[frame["split"] == "validation", "as_of"]) == {pd.Timestamp("2025-02-01")}
    assert set(frame.loc[frame["split"] == "train", "as_of"]) == set(_ts(["2024-08-01", "2024-09-01", "2024-10-01"]))
    assert not frame["as_of"].isin(dataset.split.incomplete).any()
    # the embargoed cutoffs are built for the served model's refit only, which learns from every complete cutoff
    assert set(frame.loc[frame["split"] == "refit", "as_of"]) == set(dataset.split.embargoed)
    assert dataset.refit_cutoffs == tuple(sorted([*dataset.split.used, *dataset.split.embargoed]))
    assert set(dataset.all_rows()["as_of"]) == set(dataset.refit_cutoffs)
    # without a refit (refit = false) nothing is built for it
    without = build_snapshots(data, LabelConfig(), TrainConfig(backtest_cutoffs=1, refit=False))
    assert without.refit_cutoffs == () and not (without.frame["split"] == "refit").any()
    assert set(without.all_rows()["as_of"]) == set(without.split.used)
    # m3 is blacklisted on 2024-09-10 (never eligible after), m4 joins only in October 2024
    assert set(frame.loc[frame["as_of"] == pd.Timestamp("2024-09-01"), "member_id"]) == {"m1", "m2", "m3"}
    assert set(frame.loc[frame["as_of"] == pd.Timestamp("2024-10-01"), "member_id"]) == {"m1", "m2"}
    assert set(frame.loc[frame["as_of"] == pd.Timestamp("2025-02-01"), "member_id"]) == {"m1", "m4"}
    # m2 enrols on 2024-10-03 and posts 3 times with 120 interactions: label 1 at the October cutoff
    october = frame.loc[frame["as_of"] == pd.Timestamp("2024-10-01")].set_index("member_id")
    assert october.loc["m2", "label"] == 1 and october.loc["m1", "label"] == 0
    assert list(frame.columns[:6]) == ["member_id", "as_of", "split", "label", "relevance", "weight"]
    assert (frame["weight"] == 1.0).all()


def test_downsampling_keeps_positives_and_reweights_negatives() -> None:
    frame = pd.DataFrame({"member_id": [f"m{i}" for i in range(1000)], "label": [1] * 50 + [0] * 950})
    kept = downsample_negatives(frame, 0.2, seed=3)
    again = downsample_negatives(frame, 0.2, seed=3)
    assert kept.equals(again)  # seeded
    assert (kept["label"] == 1).sum() == 50
    assert 120 < (kept["label"] == 0).sum() < 260
    assert np.allclose(kept.loc[kept["label"] == 0, "weight"], 5.0)
    assert np.allclose(kept.loc[kept["label"] == 1, "weight"], 1.0)


def test_backtest_folds_roll_the_origin_and_bring_their_own_cutoffs() -> None:
    data = from_frames(_frames())
    dataset = build_snapshots(data, LabelConfig(), TrainConfig(backtest_cutoffs=3))
    tests = [fold.test for fold in dataset.folds]
    assert tests == _ts(["2025-04-01", "2025-05-01", "2025-06-01"])  # oldest first, the latest is the split
    assert dataset.folds[-1] == dataset.split
    for fold in dataset.folds:
        train, valid, test = dataset.fold_parts(fold)
        assert set(test["as_of"]) == {fold.test} and set(valid["as_of"]) == {fold.validation}
        # embargo per fold: every label used to fit is known at the fold's validation cutoff
        assert train["as_of"].max() + WINDOW <= fold.validation and fold.validation + WINDOW <= fold.test
        # a refit as of the fold's test cutoff learns from every complete cutoff up to its validation
        # cutoff, the embargoed ones included, and from no label unknown at the test cutoff
        known = dataset.known_rows(fold)
        assert set(known["as_of"]) == {c for c in dataset.refit_cutoffs if c <= fold.validation}
        assert set(known["as_of"]) >= {*fold.train, fold.validation}
        assert known["as_of"].max() + WINDOW <= fold.test
    assert set(dataset.known_rows(dataset.split)["as_of"]) > set(dataset.part("train")["as_of"]) | {
        dataset.split.validation
    }  # the latest fold's embargo left cutoffs out that a refit as of its test cutoff learns from
    frame = dataset.frame
    assert set(frame.loc[frame["split"] == "backtest", "as_of"]) == {
        c for fold in dataset.folds[:-1] for c in fold.used
    } - set(dataset.split.used)


def test_cutoffs_are_bounded_by_config() -> None:
    frames = _frames()
    stray = pd.DataFrame([("o-stray", "m1", pd.Timestamp("2001-01-05"), 1.0)], columns=frames["orders"].columns)
    frames["orders"] = pd.concat([frames["orders"], stray], ignore_index=True)
    frames["members"].loc[0, "joined_at"] = pd.Timestamp("2001-01-01")
    data = from_frames(frames)
    complete, _, _ = candidate_cutoffs(data, LabelConfig(), TrainConfig(max_cutoffs=5))
    assert complete == list(pd.date_range("2025-02-01", "2025-06-01", freq="MS"))


def test_acceptance_learns_only_answers_known_at_training_time(small_sim_world) -> None:
    """P(accept | invited) of a model trained at T learns from invitations answered by T: flipping every
    answer given at or after T changes none of its labels, and its validation month follows its training rows."""
    from features.targets import labels_and_outcomes
    from training.dataset import answer_validation_start

    cfg = TrainConfig(backtest_cutoffs=2, min_history_months=2, embargo=False)  # 12 months of history
    dataset = build_snapshots(small_sim_world, LabelConfig(), cfg)
    assert dataset.answers_known
    assert dataset.answers_end == small_sim_world.latest("program", "event_at")
    for known_at in [*(fold.test for fold in dataset.folds), dataset.answers_end]:
        train, valid = dataset.acceptance_parts(known_at)
        start = answer_validation_start(known_at, dataset.accept_days, dataset.step_months)
        assert start + pd.DateOffset(months=1) + pd.Timedelta(days=30) <= known_at  # answers all known ...
        assert start + pd.DateOffset(months=2) + pd.Timedelta(days=30) > known_at  # ... and the latest such month
        for rows in (train, valid):
            assert (rows["invited"] == 1).all() and (rows["as_of"] < known_at).all()
            assert (rows["invited_at"] + pd.Timedelta(days=30) <= known_at).all()
        assert (train["invited_at"] < start).all() and (valid["invited_at"] >= start).all()
        assert len(valid) and train["accepted"].nunique() == 2
    # the answers' point in time: flip every enrolment and decline at or after T
    T = dataset.folds[-1].test
    program = small_sim_world.program.copy()
    late = program["event_at"] >= T
    flip = {"enrolled": "declined", "declined": "enrolled"}
    program.loc[late, "status"] = program.loc[late, "status"].map(lambda s: flip.get(s, s))
    present = {name: frame for name, frame in small_sim_world.tables.items() if name not in small_sim_world.absent}
    flipped = from_frames({**present, "program": program}, timezone=small_sim_world.timezone)
    cutoffs = sorted(pd.Timestamp(c) for c in pd.unique(dataset.frame["as_of"]) if c < T)
    before, after = (labels_and_outcomes(d, cutoffs, LabelConfig()) for d in (small_sim_world, flipped))
    pd.testing.assert_frame_equal(before[["member_id", "as_of", "invited", "invited_at"]], after[["member_id", "as_of", "invited", "invited_at"]])
    known = ((before["invited"] == 1) & (before["invited_at"] + pd.Timedelta(days=30) <= T)).to_numpy()
    assert known.sum() > 0
    np.testing.assert_array_equal(before.loc[known, "accepted"], after.loc[known, "accepted"])
    assert (before.loc[~known & (before["invited"] == 1).to_numpy(), "accepted"] != after.loc[~known & (after["invited"] == 1).to_numpy(), "accepted"]).any()  # the control: answers after T do change


def test_the_acceptance_calibrates_only_on_invitations_answered_when_the_log_ends(small_sim_world) -> None:
    """The refit calibrates P(accept | invited) on the folds' test rows. An invitation made less than
    `accept_days` before the programme log ends has no answer yet: it is left out of those rows
    instead of reading as a decline."""
    from dataclasses import replace

    from training.backtest import fold_scores
    from training.model import KocModel
    from training.targets import FittedTarget

    dataset = build_snapshots(small_sim_world, LabelConfig(), TrainConfig(backtest_cutoffs=2, min_history_months=2, embargo=False))
    train, valid, test = dataset.fold_parts(dataset.folds[-1])
    invited_at = test.loc[test["invited"] == 1, "invited_at"]
    assert invited_at.notna().all() and len(invited_at) > 20
    # a log that ends 10 days after the latest test invitation: the latest 20 days' invitations are unanswered
    early = replace(dataset, answers_end=invited_at.max() + pd.Timedelta(days=10))
    mask = early.answered_mask(test)
    expected = ((test["invited"] == 1) & (test["invited_at"] <= invited_at.max() - pd.Timedelta(days=20))).to_numpy()
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < len(invited_at)
    assert dataset.answered_mask(test)[test["invited"].to_numpy() == 1].all()  # the real log: every test answer known

    names = dataset.feature_names
    params = {"num_leaves": 4, "min_data_in_leaf": 5, "learning_rate": 0.1, "num_boost_round": 20, "early_stopping_rounds": 5}
    rows, checks = (part.loc[part["invited"] == 1] for part in (train, valid))
    accept = KocModel(params).fit(rows[names], rows["accepted"], checks[names], checks["accepted"])
    fitted = FittedTarget(components={"accept": accept})
    _, all_rows = fold_scores(accept, fitted, test, names)
    _, answered = fold_scores(accept, fitted, test, names, mask)
    assert len(all_rows["accept"][1]) == len(invited_at)
    assert len(answered["accept"][1]) == int(mask.sum())
    np.testing.assert_array_equal(answered["accept"][1], test.loc[mask, "accepted"].to_numpy())
