"""Tracking store resolution, the promotion rule and the alias audit trail (no model training)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from training import promotion, tracking
from training import store as store_module
from training.promotion import PENDING_TAG
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


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store with MLflow's tables created once (migrations take seconds per store)."""
    path = tmp_path_factory.mktemp("empty") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, empty_db: Path) -> tuple[MlflowClient, str]:
    """A SQLite registry holding three versions of MODEL from FINISHED runs (no real model files needed)."""
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    experiment = client.create_experiment("runs")
    for _ in range(3):
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id, status="FINISHED")
        client.create_model_version(MODEL, source=(tmp_path / "model").as_uri(), run_id=run.info.run_id)
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

    def interrupted_once(self: MlflowClient, name: str, key: str, *args: object, **kwargs: object) -> None:
        # the promotion-log tag is the last write of a decision: both aliases have moved by then
        calls["n"] += key == tracking.PROMOTION_LOG_TAG
        if key == tracking.PROMOTION_LOG_TAG and calls["n"] == 1:
            assert current_aliases(self, MODEL) == {CHAMPION: "2", CHALLENGER: "2"}
            raise Interrupted()
        original(self, name, key, *args, **kwargs)

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
    with pytest.raises(
        ValueError, match=r"v2 comes from a training run that failed or did not finish \(KeyboardInterrupt.*--force"
    ):
        promote(2, tracking_uri=uri, model_name=MODEL)
    assert current_aliases(client, MODEL)[CHAMPION] == "1"
    assert [h["version"] for h in promotion_history(uri, MODEL)] == ["1"]
    forced = promote(2, reason="checked by hand", tracking_uri=uri, model_name=MODEL, force=True)
    assert current_aliases(client, MODEL)[CHAMPION] == "2"
    assert forced.reason.startswith("checked by hand (forced: version from a run that did not finish")
    assert forced.forced
    assert promote(3, tracking_uri=uri, model_name=MODEL).version == "3"  # versions of finished runs need no force


def test_manual_promotion_refuses_a_version_whose_run_ended_failed(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    experiment = client.create_experiment("failed-runs")
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id, status="FAILED")
    version = client.create_model_version(MODEL, source="file:///nowhere", run_id=run.info.run_id).version
    with pytest.raises(ValueError, match=f"run {run.info.run_id} ended FAILED"):
        promote(version, tracking_uri=uri, model_name=MODEL)


# ---------------------------------------------------------------- promote_if_better


PRIMARY = "precision_at_100"
LABELS = {"horizon_days": 90, "min_posts": 3}


def _summary(mean: float, pr_auc: float) -> dict[str, object]:
    return {"primary": PRIMARY, "mean": mean, "std": 0.01, "pr_auc_mean": pr_auc, "n_cutoffs": 3}


def _log_backtest(client: MlflowClient, version: str, mean: float, pr_auc: float) -> str:
    run_id = client.get_model_version(MODEL, version).run_id
    for key, value in ((f"bt_mean_{PRIMARY}", mean), ("bt_mean_pr_auc", pr_auc), ("bt_n_cutoffs", 3)):
        client.log_metric(run_id, key, value)
    return run_id


def _better(client: MlflowClient, uri: str, version: str, mean: float, pr_auc: float, **labels: object):
    run_id = _log_backtest(client, version, mean, pr_auc)
    return promotion.promote_if_better(
        client, uri, MODEL, version, run_id, _summary(mean, pr_auc), margin=0.01, label_definition={**LABELS, **labels}
    )


def test_promote_if_better_compares_backtest_means_with_the_champion_now(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    first = _better(client, uri, "1", 0.30, 0.20)
    assert first.promoted and current_aliases(client, MODEL) == {CHAMPION: "1", CHALLENGER: "1"}
    tie = _better(client, uri, "2", 0.305, 0.205)  # inside the margin on both: a tie never promotes
    assert not tie.promoted and tie.previous_champion == "1" and "a tie never promotes" in tie.reason
    assert current_aliases(client, MODEL) == {CHAMPION: "1", CHALLENGER: "2"}
    wins = _better(client, uri, "3", 0.32, 0.10)
    assert wins.promoted and wins.previous_champion == "1" and wins.champion_value == pytest.approx(0.30)
    history = promotion_history(uri, MODEL)
    assert [(h["version"], h["promoted"], h["previous_champion"]) for h in history] == [
        ("1", True, None),
        ("2", False, "1"),
        ("3", True, "1"),
    ]
    assert history[-1]["aliases_before"] == {CHAMPION: "1", CHALLENGER: "2"} and history[-1]["intent_id"]
    assert PENDING_TAG not in client.get_registered_model(MODEL).tags  # every intent confirmed and cleared


def test_promote_if_better_never_crosses_label_definitions_or_targets(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    _better(client, uri, "1", 0.30, 0.20)
    other_target = _better(client, uri, "2", 0.90, 0.90, target="uplift")
    assert not other_target.promoted and "target: champion observed, challenger uplift" in other_target.reason
    other_horizon = _better(client, uri, "3", 0.90, 0.90, horizon_days=60)
    assert not other_horizon.promoted and "horizon_days: champion 90, challenger 60" in other_horizon.reason
    assert current_aliases(client, MODEL)[CHAMPION] == "1"


def test_a_champion_without_backtest_is_compared_on_its_test_figures(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    old_run = client.get_model_version(MODEL, "1").run_id
    client.log_metric(old_run, f"model.{PRIMARY}", 0.50)
    client.log_metric(old_run, "model.pr_auc", 0.40)
    client.log_param(old_run, "labels.horizon_days", "90")
    client.log_param(old_run, "labels.min_posts", "3")
    client.set_registered_model_alias(MODEL, CHAMPION, "1")
    decision = _better(client, uri, "2", 0.45, 0.90)
    assert (
        not decision.promoted and "champion v1 0.5000 (its test-cutoff figure, no backtest recorded)" in decision.reason
    )


def test_the_promotion_lock_serialises(tmp_path: Path) -> None:
    with promotion._file_lock(tmp_path / "x.lock", timeout=1):
        with pytest.raises(TimeoutError, match="another promotion has held"):
            with promotion._file_lock(tmp_path / "x.lock", timeout=0.3):
                pass
    with promotion._file_lock(tmp_path / "x.lock", timeout=0.3):  # free again once released
        pass


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leave_intent(client: MlflowClient, uri: str, version: str, run_status: str) -> tuple[str, dict[str, str]]:
    """What a process killed right after moving the aliases leaves: intent written, aliases moved, nothing confirmed."""
    experiment = client.get_experiment_by_name("runs").experiment_id
    run = client.create_run(
        experiment, tags={**store_module.owner_tags(), store_module.OWNER_PID_TAG: str(_dead_pid())}
    )
    if run_status != "RUNNING":
        client.set_terminated(run.info.run_id, status=run_status)
    new = client.create_model_version(MODEL, source="file:///nowhere", run_id=run.info.run_id).version
    before = current_aliases(client, MODEL)
    decision = dataclasses.replace(
        _decision(str(new), 0.9, before.get(CHAMPION), 0.2),
        run_id=run.info.run_id,
        aliases_before=before,
        intent_id="x1",
    )
    promotion._write_intent(client, decision)
    promotion.move_aliases(client, decision)
    return str(new), before


def test_an_unconfirmed_promotion_of_a_dead_run_is_rolled_back_and_the_run_failed(
    store: tuple[MlflowClient, str],
) -> None:
    client, uri = store
    apply_promotion(client, uri, _decision("1", 0.20, None, None))
    version, before = _leave_intent(client, uri, "4", "RUNNING")
    assert current_aliases(client, MODEL)[CHAMPION] == version
    notes = promotion.recover(uri, MODEL)
    assert any("marked FAILED" in n for n in notes) and any("rolled back" in n for n in notes)
    assert current_aliases(client, MODEL) == before
    mv = client.get_model_version(MODEL, version)
    assert client.get_run(mv.run_id).info.status == "FAILED" and "died" in mv.tags[tracking.RUN_FAILED_TAG]
    last = promotion_history(uri, MODEL)[-1]
    assert last["version"] == version and last["rolled_back"] and "died before confirming" in str(last["reason"])
    assert PENDING_TAG not in client.get_registered_model(MODEL).tags
    assert promotion.recover(uri, MODEL) == []  # nothing left to do
    with pytest.raises(ValueError, match="did not finish"):
        promote(version, tracking_uri=uri, model_name=MODEL)


def test_an_unconfirmed_promotion_of_a_finished_run_is_completed(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    apply_promotion(client, uri, _decision("1", 0.20, None, None))
    version, _ = _leave_intent(client, uri, "4", "FINISHED")
    notes = promotion.recover(uri, MODEL)
    assert any("completed" in n for n in notes)
    assert current_aliases(client, MODEL) == {CHAMPION: version, CHALLENGER: version}
    last = promotion_history(uri, MODEL)[-1]
    assert (
        last["version"] == version and last["promoted"] and not last["rolled_back"] and last["previous_champion"] == "1"
    )


def test_a_champion_whose_run_failed_after_confirmation_is_put_back(store: tuple[MlflowClient, str]) -> None:
    client, uri = store
    apply_promotion(client, uri, _decision("1", 0.20, None, None))
    apply_promotion(client, uri, _decision("2", 0.30, "1", 0.20))
    client.set_terminated(client.get_model_version(MODEL, "2").run_id, status="FAILED")
    notes = promotion.recover(uri, MODEL)
    assert notes and "aliases restored" in notes[0]
    assert current_aliases(client, MODEL) == {CHAMPION: "1", CHALLENGER: "1"}
    assert promotion_history(uri, MODEL)[-1]["rolled_back"]


def test_koc_runs_compare_prints_two_runs_side_by_side(store: tuple[MlflowClient, str]) -> None:
    from typer.testing import CliRunner

    from kocrank.cli import app

    client, uri = store
    first, second = (client.get_model_version(MODEL, v).run_id for v in ("1", "2"))
    client.log_metric(first, "model.pr_auc", 0.25)
    client.log_metric(second, "model.pr_auc", 0.3125)
    client.log_metric(second, "rfm.pr_auc", 0.1)
    client.log_param(first, "training.seed", "7")
    client.log_param(second, "training.seed", "8")
    result = CliRunner().invoke(
        app, ["runs", "compare", "v1", second, "--model-name", MODEL, "--tracking-uri", uri], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "model.pr_auc" in line)
    assert "0.2500" in row and "0.3125" in row and "+0.0625" in row
    assert (
        "rfm.pr_auc" in result.output and "training.seed" in result.output and "parameters that differ" in result.output
    )
    missing = CliRunner().invoke(app, ["runs", "compare", "v9", second, "--model-name", MODEL, "--tracking-uri", uri])
    assert missing.exit_code == 1 and "give a run id or v<N>" in missing.output
