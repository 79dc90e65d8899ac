"""Loading the scoring model: feature-set skew guard, label-horizon warning, alias pinned to one version."""

from __future__ import annotations

import json
import logging

import joblib
import pytest
from support.worlds import AS_OF, DEFAULT_WEIGHTS, LinearFakeModel, build_world
from typer.testing import CliRunner

from features.labels import LabelConfig
from features.registry import FEATURE_SET_VERSION
from serving import model_store
from serving.model_store import IncompatibleModelError, load_model
from serving.output import write_ranked_list
from serving.rank import rank_members


@pytest.fixture(scope="module")
def world():
    return build_world()


def _model(feature_set_version: str = FEATURE_SET_VERSION, horizon_days: int | None = 90) -> LinearFakeModel:
    model = LinearFakeModel(DEFAULT_WEIGHTS)
    model.feature_set_version_ = feature_set_version
    model.label_config_ = None if horizon_days is None else {**LabelConfig().model_dump(), "horizon_days": horizon_days}
    return model


def _dump(model: LinearFakeModel, path):
    joblib.dump(model, path)
    return str(path)


def test_model_of_another_feature_set_is_refused(tmp_path):
    uri = _dump(_model(feature_set_version="0.9.0"), tmp_path / "old.joblib")
    with pytest.raises(IncompatibleModelError, match=r"feature set version 0\.9\.0.*retrain with `koc train`"):
        load_model(uri)
    unversioned = _model()
    del unversioned.feature_set_version_
    with pytest.raises(IncompatibleModelError, match="no feature set version"):
        load_model(_dump(unversioned, tmp_path / "bare.joblib"))
    loaded = load_model(_dump(_model(), tmp_path / "current.joblib"))
    assert loaded.info.feature_set_version == FEATURE_SET_VERSION


def test_koc_rank_refuses_an_incompatible_model(world, tmp_path):
    from features.io import write_tables
    from kocrank.cli import app

    write_tables(world.tables, tmp_path / "data")
    uri = _dump(_model(feature_set_version="0.9.0"), tmp_path / "old.joblib")
    result = CliRunner().invoke(app, ["rank", "--data", str(tmp_path / "data"), "--as-of", str(AS_OF.date()),
                                      "--top", "5", "--out", str(tmp_path / "list"), "--model", uri])
    assert result.exit_code == 3 and "error (model)" in result.output and "retrain" in result.output
    assert not (tmp_path / "list").exists()


def test_label_horizon_mismatch_is_logged_and_recorded(world, tmp_path, caplog):
    uri = _dump(_model(horizon_days=60), tmp_path / "h60.joblib")
    with caplog.at_level(logging.WARNING, logger="serving.model_store"):
        loaded = load_model(uri, label_cfg=LabelConfig(horizon_days=90))
    assert any("60-day label horizon" in r.getMessage() and "90" in r.getMessage() for r in caplog.records)
    result = rank_members(world, AS_OF, loaded, 5, label_cfg=LabelConfig(horizon_days=90))
    assert len(result.meta["warnings"]) == 1 and "60-day" in result.meta["warnings"][0]
    assert result.meta["model"]["label_config"]["horizon_days"] == 60
    sidecar = write_ranked_list(result.candidates, result.meta, tmp_path / "list").sidecar
    assert "60-day" in json.loads(sidecar.read_text(encoding="utf-8"))["warnings"][0]
    # the same horizon, or a model that recorded none: no warning
    assert rank_members(world, AS_OF, loaded, 5, label_cfg=LabelConfig(horizon_days=60)).meta["warnings"] == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="serving.model_store"):
        load_model(_dump(_model(horizon_days=None), tmp_path / "none.joblib"), label_cfg=LabelConfig())
        load_model(_dump(_model(horizon_days=90), tmp_path / "h90.joblib"), label_cfg=LabelConfig())
    assert not caplog.records


def test_alias_is_loaded_as_the_version_it_resolved_to(monkeypatch):
    # the alias moves from version 7 to 8 between resolving it and loading the model
    models = {"models:/koc-potential/7": _model(), "models:/koc-potential@champion": _model(), "models:/koc-potential/8": _model()}
    models["models:/koc-potential@champion"].trained_at_ = "version 8"
    models["models:/koc-potential/7"].trained_at_ = "version 7"
    requested: list[str] = []

    class Pyfunc:
        def __init__(self, model):
            self.model = model

        def unwrap_python_model(self):
            return self

    def fake_load_pyfunc(uri: str, uri_to_load: str, *args: object):
        requested.append(uri_to_load)
        return Pyfunc(models[uri_to_load])

    monkeypatch.setattr(model_store, "resolve_registered_version", lambda uri, tracking_uri=None: ("7", "run7"))
    monkeypatch.setattr(model_store, "_test_metrics", lambda run_id, tracking_uri: {})
    monkeypatch.setattr(model_store, "artifact_location", lambda client, name, version: f"file:///store/{version}")
    monkeypatch.setattr(model_store, "_load_pyfunc", fake_load_pyfunc)
    loaded = load_model("models:/koc-potential@champion")
    assert requested == ["models:/koc-potential/7"]
    assert loaded.info.version == "7" and loaded.info.alias == "champion" and loaded.info.run_id == "run7"
    assert loaded.info.uri == "models:/koc-potential@champion" and loaded.info.trained_at == "version 7"
