"""Sampled snapshots: labels first, then features only for kept rows; complete test cutoffs, weighted validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import training.dataset as dataset_module
from features.labels import LabelConfig, labels_for
from training.config import TrainConfig
from training.dataset import build_snapshots, downsample_negatives, informative_rows, negative_rate

CFG = dict(min_history_months=3, embargo=False, k_list=(50,), primary_k=50, num_threads=1, backtest_cutoffs=2)
KEYS = ["member_id", "as_of"]


@pytest.fixture(scope="module")
def built(small_sim_world):
    """(full build, build sampled at 0.25, rows each asked features for)."""
    requested: list[int] = []
    real = dataset_module.features_for_rows

    def counting(data, rows, engine=None):
        requested.append(len(rows))
        return real(data, rows, engine)

    full = build_snapshots(small_sim_world, LabelConfig(), TrainConfig(**CFG, negative_sample_rate=1.0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset_module, "features_for_rows", counting)
        sampled = build_snapshots(small_sim_world, LabelConfig(), TrainConfig(**CFG, negative_sample_rate=0.25))
    return full, sampled, requested


@pytest.mark.slow
def test_test_cutoffs_stay_complete_and_training_and_validation_cutoffs_are_sampled(built, small_sim_world):
    full, sampled, requested = built
    assert requested == [len(sampled.frame)]  # features built for the kept rows only
    assert sampled.frame[sampled.feature_names[0]].dtype == np.float32
    evaluated = {fold.test for fold in sampled.folds}
    assert {fold.validation for fold in sampled.folds} - evaluated  # some validation cutoff is sampled
    labels = labels_for(small_sim_world, sorted(evaluated), LabelConfig())
    for cutoff in evaluated:
        assert (sampled.frame["as_of"] == cutoff).sum() == (labels["as_of"] == cutoff).sum()
    frame = sampled.frame
    train_only = ~frame["as_of"].isin(list(evaluated))
    informative = informative_rows(frame)
    assert np.allclose(frame.loc[train_only & ~informative, "weight"], 4.0)
    assert (frame.loc[~train_only | informative, "weight"] == 1.0).all()
    full_train_only = full.frame.loc[~full.frame["as_of"].isin(list(evaluated))]
    assert informative_rows(full_train_only).sum() == (train_only & informative).sum()  # every informative row kept
    kept_share = (train_only & ~informative).sum() / (~informative_rows(full_train_only)).sum()
    assert 0.18 < kept_share < 0.32
    # the kept rows' features are exactly the full build's
    names = sampled.feature_names
    merged = frame[[*KEYS, *names]].merge(full.frame[[*KEYS, *names]], on=KEYS, suffixes=("", "_full"))
    assert len(merged) == len(frame)
    for name in names[:40]:
        left, right = merged[name], merged[f"{name}_full"]
        if isinstance(left.dtype, pd.CategoricalDtype):
            assert left.astype("object").equals(right.astype("object"))
        else:
            np.testing.assert_array_equal(left.to_numpy(dtype="float64"), right.to_numpy(dtype="float64"))
    assert sampled.downsampling["negative_sample_rate"] == 0.25
    assert sampled.downsampling["built_rows"] == len(frame) < full.downsampling["built_rows"]


@pytest.mark.slow
def test_training_parts_sample_the_same_rows(built):
    _, sampled, _ = built
    for fold in sampled.folds:
        train, valid, test = sampled.fold_parts(fold)
        pre_sampled = sampled.frame.loc[sampled.frame["as_of"].isin(list(fold.train))]
        # rows sampled before the build survive the second sampling (idempotent), others get sampled now
        kept = set(map(tuple, train[KEYS].astype(str).to_numpy()))
        evaluated = {f.test for f in sampled.folds}
        early = pre_sampled.loc[~pre_sampled["as_of"].isin(list(evaluated))]
        assert set(map(tuple, early[KEYS].astype(str).to_numpy())) <= kept
        # validation rows carry their Horvitz-Thompson weights (the early-stopping metric and the calibrator use them)
        assert set(valid["as_of"]) == {fold.validation}
        expected = 1.0 if fold.validation in evaluated else np.where(informative_rows(valid), 1.0, 4.0)
        np.testing.assert_array_equal(valid["weight"].to_numpy(), np.broadcast_to(expected, len(valid)))
        assert (test["weight"] == 1.0).all()


def test_downsampling_is_idempotent_and_keeps_every_outcome():
    rows = pd.DataFrame(
        {
            "member_id": [f"m{i}" for i in range(2000)],
            "as_of": pd.Timestamp("2025-01-01"),
            "label": [0] * 2000,
            "invited": [1] * 10 + [0] * 1990,
        }
    )
    once = downsample_negatives(rows, 0.3, seed=1)
    twice = downsample_negatives(once, 0.3, seed=1)
    pd.testing.assert_frame_equal(once, twice)
    assert once["invited"].sum() == 10 and (once.loc[once["invited"] == 1, "weight"] == 1.0).all()
    other_seed = downsample_negatives(rows, 0.3, seed=2)
    assert set(other_seed["member_id"]) != set(once["member_id"])


def test_auto_rate_samples_only_above_the_row_budget():
    cfg = TrainConfig(auto_sample_train_rows=1_000)
    assert negative_rate(cfg, 800, 40) == 1.0
    assert negative_rate(cfg, 10_040, 40) == pytest.approx(960 / 10_000)
    assert negative_rate(TrainConfig(negative_sample_rate=0.5), 10, 1) == 0.5
    with pytest.raises(ValueError, match="negative_sample_rate"):
        TrainConfig(negative_sample_rate=1.5)


@pytest.mark.slow
def test_feature_columns_join_the_labels_by_position_as_a_merge_would(small_sim_world, built):
    """`build_snapshots` places the feature columns beside the sorted labels without a merge (one
    copy, not three); the merge it falls back to for unaligned rows gives the same frame."""
    _, sampled, _ = built
    assert dataset_module._same_keys(sampled.frame, sampled.frame)
    assert not dataset_module._same_keys(sampled.frame, sampled.frame.iloc[::-1])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset_module, "_same_keys", lambda rows, features: False)
        merged = build_snapshots(small_sim_world, LabelConfig(), TrainConfig(**CFG, negative_sample_rate=0.25))
    pd.testing.assert_frame_equal(merged.frame, sampled.frame)
