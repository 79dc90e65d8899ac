"""Snapshot cutoffs and the out-of-time split on a hand-made world."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import from_frames
from features.labels import LabelConfig
from training.config import TrainConfig
from training.dataset import build_snapshots, candidate_cutoffs, downsample_negatives, split_cutoffs

MEMBERS = ["m1", "m2", "m3", "m4"]


def _frames() -> dict[str, pd.DataFrame]:
    """Four members with monthly orders 2024-01-05 .. 2025-06-05 and one data point on 2025-06-20."""
    members = pd.DataFrame({"member_id": MEMBERS, "joined_at": pd.to_datetime(["2023-12-15"] * 3 + ["2024-10-10"])})
    months = pd.date_range("2024-01-01", "2025-06-01", freq="MS") + pd.Timedelta(days=4)
    orders = pd.DataFrame(
        [(f"o{i}-{m}", m, ts, 10.0 + i) for i, ts in enumerate(months) for m in MEMBERS[:3]],
        columns=["order_id", "member_id", "ordered_at", "amount"],
    )
    last = pd.DataFrame([("o-last", "m1", pd.Timestamp("2025-06-20"), 5.0)], columns=orders.columns)
    # m2 becomes a productive KOC in autumn 2024; m3 is blacklisted in September 2024
    program = pd.DataFrame(
        {
            "member_id": ["m2", "m3"],
            "event_at": pd.to_datetime(["2024-10-03", "2024-09-10"]),
            "status": ["enrolled", "blacklisted"],
        }
    )
    posts = pd.DataFrame(
        {
            "post_id": ["p1", "p2", "p3"],
            "member_id": ["m2"] * 3,
            "posted_at": pd.to_datetime(["2024-10-05", "2024-10-12", "2024-10-20"]),
            "platform": ["xhs"] * 3,
            "likes_7d": [50, 40, 30],
            "comments_7d": [0, 0, 0],
            "saves_7d": [0, 0, 0],
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


def test_default_cutoffs_leave_out_incomplete_windows() -> None:
    data = from_frames(_frames())
    complete, incomplete, source = candidate_cutoffs(data, LabelConfig(), TrainConfig())
    # earliest order 2024-01-05 + 6 months -> first month start 2024-08-01;
    # a window is complete when as_of + 90d + 7d <= data end 2025-06-20
    assert complete == list(pd.date_range("2024-08-01", "2025-03-01", freq="MS"))
    assert incomplete == _ts(["2025-04-01", "2025-05-01", "2025-06-01"])
    assert source == "default_label"


def test_split_is_out_of_time_with_embargo() -> None:
    data = from_frames(_frames())
    complete, incomplete, _ = candidate_cutoffs(data, LabelConfig(), TrainConfig())
    split = split_cutoffs(complete, LabelConfig(), TrainConfig(), incomplete=incomplete)
    assert split.test == pd.Timestamp("2025-03-01")
    assert split.test not in split.train and split.validation not in split.train
    assert max(split.train) < split.validation < split.test
    # embargo: every train/validation label window (97 days) closes before the test cutoff
    assert all(c + pd.Timedelta(days=97) <= split.test for c in (*split.train, split.validation))
    assert split.validation == pd.Timestamp("2024-11-01")
    assert split.train == tuple(_ts(["2024-08-01", "2024-09-01", "2024-10-01"]))
    assert split.embargoed == tuple(_ts(["2024-12-01", "2025-01-01", "2025-02-01"]))
    assert split.to_dict()["excluded_incomplete_window"] == ["2025-04-01", "2025-05-01", "2025-06-01"]


def test_split_without_embargo_uses_the_previous_cutoff_for_validation() -> None:
    cutoffs = list(pd.date_range("2024-08-01", "2025-03-01", freq="MS"))
    split = split_cutoffs(cutoffs, LabelConfig(), TrainConfig(embargo=False))
    assert split.validation == pd.Timestamp("2025-02-01") and split.test == pd.Timestamp("2025-03-01")
    assert split.train == tuple(cutoffs[:-2])


def test_too_few_cutoffs_fail_with_advice() -> None:
    with pytest.raises(ValueError, match="at least 3 cutoffs"):
        split_cutoffs(_ts(["2024-08-01", "2024-09-01"]), LabelConfig(), TrainConfig())
    with pytest.raises(ValueError, match="embargo"):
        split_cutoffs(_ts(["2024-08-01", "2024-09-01", "2024-10-01"]), LabelConfig(), TrainConfig())


def test_labels_table_defines_the_cutoffs() -> None:
    frames = _frames()
    as_ofs = pd.to_datetime(["2024-06-01", "2024-09-01", "2024-12-01", "2025-03-01"])
    frames["labels"] = pd.DataFrame({"member_id": ["m1"] * 4, "as_of": as_ofs, "label": [0, 1, 0, 1]})
    data = from_frames(frames)
    cutoffs, incomplete, source = candidate_cutoffs(data, LabelConfig(), TrainConfig())
    assert cutoffs == list(as_ofs) and incomplete == [] and source == "labels_table"
    split = split_cutoffs(cutoffs, LabelConfig(), TrainConfig(), source=source)
    assert split.test == pd.Timestamp("2025-03-01")
    assert split.validation == pd.Timestamp("2024-09-01") and split.train == (pd.Timestamp("2024-06-01"),)
    assert split.embargoed == (pd.Timestamp("2024-12-01"),)


def test_build_snapshots_tags_rows_with_their_split() -> None:
    data = from_frames(_frames())
    dataset = build_snapshots(data, LabelConfig(), TrainConfig())
    frame = dataset.frame
    assert set(frame.loc[frame["split"] == "test", "as_of"]) == {pd.Timestamp("2025-03-01")}
    assert set(frame.loc[frame["split"] == "validation", "as_of"]) == {pd.Timestamp("2024-11-01")}
    assert pd.Timestamp("2025-03-01") not in set(frame.loc[frame["split"] == "train", "as_of"])
    assert not frame["as_of"].isin(dataset.split.incomplete + dataset.split.embargoed).any()
    # m3 is blacklisted on 2024-09-10 (never eligible after), m4 joins only in October 2024
    assert set(frame.loc[frame["as_of"] == pd.Timestamp("2024-09-01"), "member_id"]) == {"m1", "m2", "m3"}
    assert set(frame.loc[frame["as_of"] == pd.Timestamp("2024-10-01"), "member_id"]) == {"m1", "m2"}
    assert set(frame.loc[frame["as_of"] == pd.Timestamp("2024-11-01"), "member_id"]) == {"m1", "m4"}
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
