"""Tracking store resolution, the promotion rule and the alias audit trail (no model training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from training import tracking
from training.tracking import (
    CHALLENGER,
    CHAMPION,
    apply_promotion,
    challenger_wins,
    current_aliases,
    decide_promotion,
    promote,
    promotion_history,
)

pytestmark = pytest.mark.slow

MODEL = "koc-test"


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri(cwd=tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.artifact_location_for(uri) == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking.resolve_tracking_uri(cwd=tmp_path) == "sqlite:////elsewhere/x.db"
    assert tracking.resolve_tracking_uri("http://server:5000", cwd=tmp_path) == "http://server:5000"
    assert tracking.local_store_dir("http://server:5000") is None


def test_promotion_rule() -> None:
    assert challenger_wins(0.30, 0.25)
    assert challenger_wins(0.25, 0.25)  # equal is enough
    assert not challenger_wins(0.20, 0.25)
    assert challenger_wins(0.0, None)  # no champion yet
    common = {
        "model_name": MODEL,
        "version": "3",
        "metric": "precision_at_100",
        "test_cutoff": "2025-09-01",
        "run_id": "r",
    }
    worse = decide_promotion(
        challenger_value=0.2, champion_version="2", champion_value=0.25, champion_error=None, **common
    )
    assert not worse.promoted and worse.previous_champion == "2" and "0.2000 < champion v2 0.2500" in worse.reason
    equal = decide_promotion(
        challenger_value=0.25, champion_version="2", champion_value=0.25, champion_error=None, **common
    )
    assert equal.promoted and "same cutoff 2025-09-01" in equal.reason
    first = decide_promotion(
        challenger_value=0.1, champion_version=None, champion_value=None, champion_error=None, **common
    )
    assert first.promoted and first.reason == "no champion yet"
    broken = decide_promotion(
        challenger_value=0.9, champion_version="2", champion_value=None, champion_error="missing columns", **common
    )
    assert not broken.promoted and "promote by hand" in broken.reason


def test_different_label_definitions_are_never_auto_promoted() -> None:
    common = {
        "model_name": MODEL,
        "version": "3",
        "metric": "precision_at_100",
        "test_cutoff": "2025-09-01",
        "run_id": "r",
        "champion_version": "2",
        "champion_value": None,
        "champion_error": None,
    }
    champion = {"horizon_days": 60, "min_posts": 3, "min_interactions": 100, "cooldown_days": 60}
    challenger = {**champion, "horizon_days": 90}
    differ = decide_promotion(
        challenger_value=0.9, champion_label_config=champion, challenger_label_config=challenger, **common
    )
    assert not differ.promoted and differ.previous_champion == "2"
    assert "label definitions differ from champion v2" in differ.reason
    assert "horizon_days: champion 60, challenger 90" in differ.reason and "koc promote" in differ.reason
    assert "min_posts" not in differ.reason  # only the settings that differ
    same = decide_promotion(
        challenger_value=0.9,
        **{**common, "champion_value": 0.5},
        champion_label_config=dict(champion),
        challenger_label_config=champion,
    )
    assert same.promoted and "same cutoff" in same.reason
    # an older champion that recorded no label config is compared as before
    unknown = decide_promotion(
        challenger_value=0.9, **{**common, "champion_value": 0.5}, challenger_label_config=challenger
    )
    assert unknown.promoted
    assert tracking.label_config_difference(None, challenger) is None


@pytest.fixture
def store(tmp_path: Path) -> tuple[MlflowClient, str]:
    """A SQLite registry holding three versions of MODEL (no real model files needed)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for _ in range(3):
        client.create_model_version(MODEL, source=(tmp_path / "model").as_uri())
    return client, uri


def _decision(
    version: str, challenger: float, champion_version: str | None, champion: float | None
) -> tracking.PromotionDecision:
    return decide_promotion(
        model_name=MODEL,
        version=version,
        metric="precision_at_100",
        challenger_value=challenger,
        champion_version=champion_version,
        champion_value=champion,
        champion_error=None,
        test_cutoff="2025-09-01",
        run_id=None,
    )


def test_aliases_tags_and_log_follow_decisions(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    apply_promotion(client, uri, _decision("1", 0.20, None, None))
    assert current_aliases(client, MODEL) == {CHAMPION: "1", CHALLENGER: "1"}
    apply_promotion(client, uri, _decision("2", 0.18, "1", 0.20))  # worse: challenger only
    assert current_aliases(client, MODEL) == {CHAMPION: "1", CHALLENGER: "2"}
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["koc.promotion.promoted"] == "False" and tags["koc.promotion.champion_value"] == "0.200000"
    assert tags["koc.promotion.previous_champion"] == "1"
    apply_promotion(client, uri, _decision("3", 0.20, "1", 0.20))  # equal: promoted
    assert current_aliases(client, MODEL) == {CHAMPION: "3", CHALLENGER: "3"}
    history = promotion_history(uri, MODEL)
    assert [(h["version"], h["promoted"], h["previous_champion"]) for h in history] == [
        ("1", True, None),
        ("2", False, "1"),
        ("3", True, "1"),
    ]
    manual = promote(2, reason="business review", tracking_uri=uri, model_name=MODEL)
    assert manual.previous_champion == "3" and manual.mode == "manual"
    assert current_aliases(client, MODEL) == {CHAMPION: "2", CHALLENGER: "3"}
    assert client.get_model_version(MODEL, "2").tags["koc.manual_promotion.reason"] == "business review"
    assert promotion_history(uri, MODEL)[-1]["reason"] == "business review"
    assert '"version": "2"' in client.get_registered_model(MODEL).tags[tracking.PROMOTION_LOG_TAG]
    with pytest.raises(ValueError, match="no version 9"):
        promote(9, tracking_uri=uri, model_name=MODEL)


def test_failure_while_promoting_restores_aliases(
    store: tuple[MlflowClient, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, uri = store
    apply_promotion(client, uri, _decision("1", 0.20, None, None))

    def broken_log(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(tracking, "append_promotion_log", broken_log)
    with pytest.raises(OSError, match="disk full"):
        apply_promotion(client, uri, _decision("2", 0.50, "1", 0.20))
    assert current_aliases(client, MODEL) == {CHAMPION: "1", CHALLENGER: "1"}


class Interrupted(KeyboardInterrupt):
    """Stands in for Ctrl-C; a KeyboardInterrupt subclass so `except Exception` does not catch it."""


def test_interrupt_after_the_champion_moved_restores_aliases_and_compensates_the_log(
    store: tuple[MlflowClient, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, uri = store
    apply_promotion(client, uri, _decision("1", 0.20, None, None))
    original = MlflowClient.set_registered_model_tag
    calls = {"n": 0}

    def interrupted_once(self: MlflowClient, *args: object, **kwargs: object) -> None:
        # the promotion-log tag is the last write of a decision: both aliases have moved by then
        calls["n"] += 1
        if calls["n"] == 1:
            assert current_aliases(self, MODEL) == {CHAMPION: "2", CHALLENGER: "2"}
            raise Interrupted()
        original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_registered_model_tag", interrupted_once)
    with pytest.raises(Interrupted):
        apply_promotion(client, uri, _decision("2", 0.50, "1", 0.20))
    monkeypatch.undo()

    assert current_aliases(client, MODEL) == {CHAMPION: "1", CHALLENGER: "1"}
    # the promoted entry had reached the JSON-lines log; a compensating entry follows it
    history = promotion_history(uri, MODEL)
    assert [(h["version"], h["promoted"], h["rolled_back"]) for h in history] == [
        ("1", True, False),
        ("2", True, False),
        ("2", False, True),
    ]
    assert "rolled back" in str(history[-1]["reason"]) and "Interrupted" in str(history[-1]["reason"])
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["koc.promotion.promoted"] == "False" and tags["koc.promotion.rolled_back"] == "True"
    assert tags["koc.promotion.reason"].startswith("rolled back")


def test_interrupt_before_anything_was_recorded_leaves_no_trail(
    store: tuple[MlflowClient, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, uri = store
    apply_promotion(client, uri, _decision("1", 0.20, None, None))
    original = MlflowClient.set_registered_model_alias

    def interrupted_at_champion(self: MlflowClient, name: str, alias: str, version: str) -> None:
        if alias == CHAMPION and version == "2":
            raise Interrupted()
        original(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", interrupted_at_champion)
    with pytest.raises(Interrupted):
        apply_promotion(client, uri, _decision("2", 0.50, "1", 0.20))  # challenger moved, champion not
    monkeypatch.undo()
    assert current_aliases(client, MODEL) == {CHAMPION: "1", CHALLENGER: "1"}
    assert [h["version"] for h in promotion_history(uri, MODEL)] == ["1"]
    assert not any(key.startswith("koc.promotion.") for key in client.get_model_version(MODEL, "2").tags)


def test_manual_promotion_refuses_a_version_from_a_failed_run(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    apply_promotion(client, uri, _decision("1", 0.20, None, None))
    client.set_model_version_tag(MODEL, "2", tracking.RUN_FAILED_TAG, "KeyboardInterrupt: ")
    with pytest.raises(ValueError, match=r"v2 comes from a training run that failed \(KeyboardInterrupt.*--force"):
        promote(2, tracking_uri=uri, model_name=MODEL)
    assert current_aliases(client, MODEL)[CHAMPION] == "1"
    assert [h["version"] for h in promotion_history(uri, MODEL)] == ["1"]
    forced = promote(2, reason="checked by hand", tracking_uri=uri, model_name=MODEL, force=True)
    assert current_aliases(client, MODEL)[CHAMPION] == "2"
    assert forced.reason.startswith("checked by hand (forced: version from a failed run")
    assert promote(3, tracking_uri=uri, model_name=MODEL).version == "3"  # untagged versions need no force


def test_manual_promotion_refuses_a_version_whose_run_ended_failed(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    experiment = client.create_experiment("failed-runs")
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id, status="FAILED")
    version = client.create_model_version(MODEL, source="file:///nowhere", run_id=run.info.run_id).version
    with pytest.raises(ValueError, match=f"run {run.info.run_id} ended FAILED"):
        promote(version, tracking_uri=uri, model_name=MODEL)
