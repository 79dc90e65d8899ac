"""serving.compiled: the forest compiled with lleaves scores exactly as LightGBM, is cached per
booster, is never pickled, and a failed compile leaves LightGBM scoring."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import pytest

from serving import compiled as compiled_module
from serving.compiled import attach_compiled
from training.model import CompositeModel, KocModel

PARAMS = {"num_leaves": 7, "min_data_in_leaf": 20, "learning_rate": 0.1, "num_boost_round": 60, "early_stopping_rounds": 60}


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    spend = rng.gamma(2.0, 50.0, n)
    posts = rng.poisson(1.0, n).astype("float64")
    posts[rng.random(n) < 0.1] = np.nan
    channel = pd.Categorical(rng.choice(["store", "ads", "referral"], n), categories=["store", "ads", "referral", "other"])
    logit = -3 + 0.01 * spend + 0.8 * np.nan_to_num(posts) + (np.asarray(channel) == "referral") * 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame({"spend_365d": spend, "posts_90d": posts, "channel": channel}), y


def _model(seed: int) -> KocModel:
    return KocModel(PARAMS, seed=seed).fit(*_frame(2000, seed), *_frame(800, seed + 100))


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    X, _ = _frame(3000, 99)
    X.loc[X.index[:50], "channel"] = np.nan  # missing categories go down LightGBM's missing branch
    return X


def test_compiled_scores_equal_lightgbm_and_the_file_is_reused(tmp_path, rows: pd.DataFrame) -> None:
    model = _model(1)
    raw, proba = model.raw_score(rows), model.predict_proba(rows)
    assert attach_compiled(model, tmp_path, threads=2)
    assert "compiled_" in model.__dict__
    np.testing.assert_allclose(model.raw_score(rows), raw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.predict_proba(rows), proba, rtol=0, atol=1e-12)
    files = sorted(tmp_path.glob("*.so"))
    assert len(files) == 1 and not list(tmp_path.glob("tmp*"))  # one file, no scratch left behind
    written = files[0].stat().st_mtime_ns

    again = pickle.loads(pickle.dumps(model))
    assert "compiled_" not in again.__dict__  # native code is never pickled
    np.testing.assert_allclose(again.raw_score(rows), raw, rtol=0, atol=0)
    assert attach_compiled(again, tmp_path)
    assert sorted(tmp_path.glob("*.so")) == files and files[0].stat().st_mtime_ns == written  # loaded, not rebuilt
    np.testing.assert_allclose(again.raw_score(rows), raw, rtol=0, atol=1e-9)


def test_an_attached_model_is_not_compiled_again(tmp_path, rows: pd.DataFrame, monkeypatch) -> None:
    model = _model(8)
    assert attach_compiled(model, tmp_path)
    attached = model.__dict__["compiled_"]
    monkeypatch.setattr(compiled_module, "compile_booster", lambda *args, **kwargs: pytest.fail("compiled again"))
    assert attach_compiled(model, tmp_path)  # a later ranking in the same process
    assert model.__dict__["compiled_"] is attached


def test_every_component_of_a_composite_is_compiled(tmp_path, rows: pd.DataFrame) -> None:
    components = {"accept": _model(2), "productive_enrolled": _model(3), "not_invited_outcome": _model(4)}
    composite = CompositeModel(
        components, {"accept": 1.0, "productive_enrolled": 1.0}, target="if_invited", method="two_path",
        declined="not_invited_outcome",
    )
    expected = composite.predict_proba(rows)
    assert attach_compiled(composite, tmp_path)
    assert all("compiled_" in part.__dict__ for part in components.values())
    assert len(list(tmp_path.glob("*.so"))) == 3  # one file per booster
    np.testing.assert_allclose(composite.predict_proba(rows), expected, rtol=0, atol=1e-12)


def test_a_failed_compile_keeps_lightgbm_scoring_and_says_why(tmp_path, rows: pd.DataFrame, monkeypatch, caplog) -> None:
    model = _model(5)
    expected = model.raw_score(rows)

    def broken(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(compiled_module, "compile_booster", broken)
    with caplog.at_level(logging.WARNING, logger="serving.compiled"):
        assert not attach_compiled(model, tmp_path)
    assert "compiled_" not in model.__dict__
    assert "no space left on device" in caplog.text and "LightGBM" in caplog.text
    np.testing.assert_array_equal(model.raw_score(rows), expected)


def test_the_cache_key_follows_the_booster() -> None:
    first, second = _model(6), _model(7)
    text = first.booster_.model_to_string(num_iteration=first.best_iteration_)
    assert compiled_module.cache_key(text) == compiled_module.cache_key(text)
    assert compiled_module.cache_key(text) != compiled_module.cache_key(
        second.booster_.model_to_string(num_iteration=second.best_iteration_)
    )
    assert compiled_module.cache_key(text) != compiled_module.cache_key(
        first.booster_.model_to_string(num_iteration=max(1, first.best_iteration_ - 1))
    )
