"""Training end to end on a small simulated world, each test module with its own MLflow store.

Covers: the model beats the baselines on held-out time, same data + seed => same metrics,
champion re-scoring on the challenger's test cutoff, failed runs (FAILED, aliases
untouched), an interrupt after the champion moved (aliases restored, audit trail
compensated), the pyfunc loaded by alias, a members + orders + labels directory, and the CLI
(including `koc promote` refusing a version from a failed run without --force).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from features.build import EngineConfig
from features.contract import BrandData, from_frames
from features.io import write_tables
from features.labels import LabelConfig, labels_for
from kocrank.simulation import SimConfig, simulate
from training import tracking
from training import train as train_module
from training.backtest import BacktestResult
from training.config import TrainConfig
from training.pyfunc import to_pyfunc_input
from training.train import TrainResult, run_training

pytestmark = pytest.mark.slow

MODEL = "koc-potential"
# the observed label: these tests are about the run's mechanics (split, promotion, failures) and its
# precision figures are on that label; which target ranks best is measured by `koc eval`
CONFIG = TrainConfig(
    target="observed",
    k_list=(50, 100, "1%", "5%"),
    lgbm={"num_boost_round": 400, "early_stopping_rounds": 30},
)
EARLIER = CONFIG.model_copy(update={"last_cutoff": pd.Timestamp("2025-07-01").date()})
# the failure, interrupt and label-definition tests are about the run's mechanics, not its figures:
# one backtest fold, no refit and few trees keep them cheap
MECHANICS = TrainConfig.model_validate(
    CONFIG.model_dump()
    | {"backtest_cutoffs": 1, "refit": False, "lgbm": {"num_boost_round": 60, "early_stopping_rounds": 10}}
)
BASELINES = ("rfm", "value", "logistic", "random")


@pytest.fixture(scope="module")
def world() -> BrandData:
    return from_frames(simulate(SimConfig(members=4000, seed=3)).tables)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(scope="module")
def runs(world: BrandData, store: str) -> dict[str, TrainResult]:
    """Run A tests on an earlier cutoff; B and C are identical runs on the latest one.

    C gives the feature build other DuckDB settings (one thread, a memory limit, a spill folder):
    they must change nothing but speed.
    """
    engine = EngineConfig(threads=1, memory_limit="1GB", temp_directory=str(Path(store.removeprefix("sqlite:///")).parent / "spill"))
    return {
        "a": run_training(world, EARLIER, tracking_uri=store),
        "b": run_training(world, CONFIG, tracking_uri=store),
        "c": run_training(world, CONFIG, tracking_uri=store, engine=engine),
    }


def test_model_beats_baselines_on_held_out_time(runs: dict[str, TrainResult]) -> None:
    metrics = runs["b"].metrics
    for baseline in BASELINES:
        assert metrics.loc["model", "pr_auc"] > metrics.loc[baseline, "pr_auc"], baseline
    for baseline in ("rfm", "value", "random"):
        for k in ("50", "100", "1pct", "5pct"):
            assert metrics.loc["model", f"precision_at_{k}"] > metrics.loc[baseline, f"precision_at_{k}"], (baseline, k)
    assert metrics.loc["model", "yield_ratio_at_1pct"] > metrics.loc["random", "yield_ratio_at_1pct"]
    split = runs["b"].split
    assert split["test"] not in split["train"] and split["validation"] not in split["train"]


def test_same_data_and_seed_give_identical_metrics(runs: dict[str, TrainResult]) -> None:
    pd.testing.assert_frame_equal(runs["b"].metrics, runs["c"].metrics)
    client = MlflowClient(tracking_uri=runs["b"].tracking_uri)
    logged_b = client.get_run(runs["b"].run_id).data.metrics
    logged_c = client.get_run(runs["c"].run_id).data.metrics
    assert logged_b == logged_c and "model.pr_auc" in logged_b and "rfm.precision_at_100" in logged_b
    # the refund rule the features used travels with the model, for scoring (serving.rank.model_engine)
    assert runs["c"].model.refunds_without_time_ == EngineConfig().refunds_without_time
    assert client.get_run(runs["c"].run_id).data.params["engine.refunds_without_time"] == EngineConfig().refunds_without_time


def test_promotion_compares_backtest_means_and_a_tie_never_promotes(
    runs: dict[str, TrainResult], store: str
) -> None:
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert a.split["test"] == "2025-07-01" and b.split["test"] != a.split["test"]
    assert a.decision.promoted and a.decision.reason == "no champion yet"
    client = MlflowClient(tracking_uri=store)
    for result in (a, b):
        logged = client.get_run(result.run_id).data.metrics
        summary = result.backtest.summary()
        assert summary["n_cutoffs"] == 3 == logged["bt_n_cutoffs"]
        assert logged["bt_mean_precision_at_100"] == pytest.approx(summary["mean"])
        assert logged["bt_std_precision_at_100"] == pytest.approx(summary["std"])
        assert logged["bt_mean_pr_auc"] == pytest.approx(summary["pr_auc_mean"])
    # B is compared with A's backtest mean, not with A rescored on B's test cutoff
    assert b.decision.previous_champion == a.model_version and b.decision.metric == "bt_mean_precision_at_100"
    assert b.decision.champion_value == pytest.approx(a.backtest.summary()["mean"])
    assert b.decision.challenger_value == pytest.approx(b.backtest.summary()["mean"])
    # C is B retrained on the same data and seed: an exact tie, which never promotes
    assert c.backtest.summary() == b.backtest.summary()
    champion_before_c = c.decision.previous_champion
    assert not c.decision.promoted and "tie" in c.decision.reason
    assert tracking.current_aliases(client, MODEL)["champion"] == champion_before_c
    history = tracking.promotion_history(store, MODEL)
    assert [h["version"] for h in history] == [a.model_version, b.model_version, c.model_version]
    backtest = {f.path for f in client.list_artifacts(b.run_id, "backtest")}
    assert {"backtest/backtest.csv", "backtest/slices.csv"} <= backtest


def _winning_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every new run's backtest look better than any champion, so promotion really moves aliases."""
    original = BacktestResult.summary

    def better(self: BacktestResult) -> dict[str, object]:
        return original(self) | {"mean": 1.0, "pr_auc_mean": 1.0}

    monkeypatch.setattr(BacktestResult, "summary", better)


def test_registered_champion_serves_probabilities(runs: dict[str, TrainResult], store: str, world: BrandData) -> None:
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == runs["c"].model_version
    with tracking.tracking_context(store):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    rows = runs["c"].dataset.part("test").head(200)
    out = pyfunc.predict(to_pyfunc_input(rows))
    assert list(out.columns) == ["probability"] and out["probability"].between(0, 1).all()
    koc_model = pyfunc.unwrap_python_model().model
    np.testing.assert_allclose(out["probability"].to_numpy(), koc_model.predict_proba(rows))
    assert str(champion.version) in {r.model_version for r in runs.values()}
    artifacts = {f.path for f in client.list_artifacts(runs["c"].run_id, "reports")}
    for name in (
        "metrics.csv",
        "gains_lift.png",
        "calibration.png",
        "feature_importance_gain.csv",
        "mean_abs_shap.png",
    ):
        assert f"reports/{name}" in artifacts
    with tracking.tracking_context(store):
        found = mlflow.search_runs(
            experiment_names=[CONFIG.experiment_name], filter_string="attributes.status = 'FINISHED'"
        )
    assert runs["c"].run_id in set(found["run_id"])
    assert {"metrics.model.pr_auc", "metrics.rfm.precision_at_100", "metrics.logistic.brier"} <= set(found.columns)


def test_failed_runs_end_failed_and_never_move_aliases(
    world: BrandData, store: str, runs: dict[str, TrainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    before = tracking.current_aliases(client, MODEL)
    versions_before = len(client.search_model_versions(f"name = '{MODEL}'"))

    def failing_evaluation(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected failure during evaluation")

    monkeypatch.setattr(train_module, "evaluate_all", failing_evaluation)
    with pytest.raises(RuntimeError, match="during evaluation"):
        run_training(world, MECHANICS, tracking_uri=store)
    monkeypatch.undo()

    def failing_log(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected failure after registration")

    monkeypatch.setattr(tracking, "append_promotion_log", failing_log)
    with pytest.raises(RuntimeError, match="after registration"):
        run_training(world, MECHANICS, tracking_uri=store)
    monkeypatch.undo()

    assert tracking.current_aliases(client, MODEL) == before
    failed = client.search_runs([runs["a"].experiment_id], order_by=["attributes.start_time DESC"], max_results=2)
    assert [r.info.status for r in failed] == ["FAILED", "FAILED"]
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == versions_before + 1  # only the second failure got as far as registering
    newest = max(versions, key=lambda v: int(v.version))
    assert "after registration" in newest.tags["koc.run_failed"]


class Interrupted(KeyboardInterrupt):
    """Stands in for Ctrl-C; a KeyboardInterrupt subclass so `except Exception` does not catch it."""


def test_interrupt_after_promotion_restores_aliases_and_the_audit_trail_says_so(
    world: BrandData, store: str, runs: dict[str, TrainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    before = tracking.current_aliases(client, MODEL)
    history_before = tracking.promotion_history(store, MODEL)
    # the challenger must win so the champion alias really moves; the interrupt then comes from
    # the MLflow client while the run records its own verdict, after the registry was updated
    _winning_summary(monkeypatch)
    original_set_tag = MlflowClient.set_tag
    moved: dict[str, str] = {}

    def interrupted_set_tag(self: MlflowClient, run_id: str, key: str, value: object, **kwargs: object) -> None:
        if key == "koc.promoted" and not moved:
            moved.update(tracking.current_aliases(client, MODEL))
            raise Interrupted()
        original_set_tag(self, run_id, key, value, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_tag", interrupted_set_tag)
    with pytest.raises(Interrupted):
        run_training(world, MECHANICS, tracking_uri=store)
    monkeypatch.undo()

    newest = max(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    version = str(newest.version)
    assert moved == {"champion": version, "challenger": version}  # the interrupt came after the move
    assert tracking.current_aliases(client, MODEL) == before
    run = client.get_run(newest.run_id)
    assert run.info.status == "FAILED"
    assert newest.tags["koc.run_failed"].startswith("Interrupted")
    # audit trail: the promotion that was recorded is followed by a compensating entry everywhere
    added = tracking.promotion_history(store, MODEL)[len(history_before) :]
    assert [(h["version"], h["promoted"], h["rolled_back"]) for h in added] == [
        (version, True, False),
        (version, False, True),
    ]
    assert newest.tags["koc.promotion.promoted"] == "False" and newest.tags["koc.promotion.rolled_back"] == "True"
    assert run.data.tags["koc.promoted"] == "false" and run.data.tags["koc.promotion_rolled_back"] == "true"
    with tracking.tracking_context(store):
        promotion = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/promotion.json")
    assert promotion["rolled_back"] is True and promotion["promoted"] is False
    assert promotion["reason"].startswith("rolled back, aliases restored after Interrupted")


def test_champion_with_other_label_definition_is_not_compared(
    world: BrandData, store: str, runs: dict[str, TrainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    before = tracking.current_aliases(client, MODEL)
    # the champion would lose on any comparison; a different horizon must still not promote
    _winning_summary(monkeypatch)
    result = run_training(world, MECHANICS, LabelConfig(horizon_days=60), tracking_uri=store)
    decision = result.decision
    assert not decision.promoted
    assert f"label definitions differ from champion v{before['champion']}" in decision.reason
    assert "horizon_days: champion 90, challenger 60" in decision.reason and "koc promote" in decision.reason
    assert tracking.current_aliases(client, MODEL) == {
        "champion": before["champion"],
        "challenger": result.model_version,
    }
    last = tracking.promotion_history(store, MODEL)[-1]
    assert last["version"] == result.model_version and last["reason"] == decision.reason
    assert client.get_model_version(MODEL, result.model_version).tags["koc.promotion.promoted"] == "False"


def test_members_orders_labels_directory_trains(world: BrandData, tmp_path: Path) -> None:
    cutoffs = pd.date_range("2024-08-01", "2025-08-01", freq="MS")
    labels = labels_for(world, cutoffs, LabelConfig())
    write_tables(
        {"members": world.members, "orders": world.orders, "labels": labels[["member_id", "as_of", "label"]]},
        tmp_path / "data",
        fmt="csv",
    )
    result = run_training(tmp_path / "data", MECHANICS, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert result.split["label_source"] == "labels_table"
    assert result.split["test"] == "2025-08-01"
    assert set(result.dataset.frame["as_of"]) <= set(cutoffs)
    assert result.metrics.loc["model", "n_positive"] > 0 and "yield_at_100" not in result.metrics.columns


def test_a_labels_table_turns_two_path_soft_into_two_path_in_every_fold_and_the_refit(
    world: BrandData, tmp_path: Path
) -> None:
    """A brand's own labels table beside its programme log: the soft label's rule is unknown, so
    `two_path_soft` falls back to `two_path` (not to `observed`) in every backtest fold and the
    served refit, and the run says so."""
    cutoffs = pd.date_range("2024-08-01", "2025-08-01", freq="MS")
    labels = labels_for(world, cutoffs, LabelConfig())[["member_id", "as_of", "label"]]
    tables = {name: frame for name, frame in world.tables.items() if name not in world.absent}
    data = from_frames({**tables, "labels": labels})
    cfg = TrainConfig.model_validate(
        CONFIG.model_dump()
        | {"target": "if_invited", "target_method": "two_path_soft", "backtest_cutoffs": 2,
           "lgbm": {"num_boost_round": 60, "early_stopping_rounds": 10}}
    )
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_training(data, cfg, tracking_uri=store)
    assert result.split["label_source"] == "labels_table"
    assert (result.model.target_, result.model.target_method_) == ("if_invited", "two_path")
    assert set(result.model.components_) == {"accept", "productive_enrolled", "not_invited_outcome"}
    assert [f.model.target_method_ for f in result.backtest.folds] == ["two_path", "two_path"]
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags["koc.target_method"] == "two_path"
    assert "method 'two_path_soft' unavailable, trying method 'two_path' instead" in tags["koc.target_fallback"]


def test_cli_train_models_and_promote(world: BrandData, tmp_path: Path) -> None:
    from kocrank import cli_training

    app = typer.Typer()
    cli_training.register(app)
    data_dir = tmp_path / "data"
    write_tables({name: frame for name, frame in world.tables.items() if name not in world.absent}, data_dir)
    config = tmp_path / "koc.toml"
    config.write_text(
        '[training]\nk_list = [50, 100, "1%"]\n\n[training.lgbm]\nnum_boost_round = 200\nearly_stopping_rounds = 20\n'
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "--data", str(data_dir), "--config", str(config), "--tracking-uri", uri], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    for expected in (
        "model",
        "rfm",
        "value",
        "logistic",
        "random",
        "p@50",
        "p@1pct",
        "yr@100",
        "validation: 2025-05-01",
    ):
        assert expected in result.output
    assert "registered koc-potential v1" in result.output
    empty = runner.invoke(app, ["models", "--tracking-uri", f"sqlite:///{tmp_path}/elsewhere.db"])
    assert empty.exit_code == 0 and "elsewhere.db" in empty.output.replace("\n", "")
    listed = runner.invoke(app, ["models", "--tracking-uri", uri])
    assert listed.exit_code == 0 and "champion" in listed.output
    promoted = runner.invoke(app, ["promote", "--version", "1", "--reason", "re-affirm", "--tracking-uri", uri])
    assert promoted.exit_code == 0 and "previous: 1" in promoted.output
    relisted = runner.invoke(app, ["models", "--tracking-uri", uri], env={"COLUMNS": "200"})
    assert relisted.exit_code == 0 and "promotion history" in relisted.output
    history_part = relisted.output.split("promotion history", 1)[1]
    assert history_part.index("re-affirm") < history_part.index("no champion yet")  # newest first
    assert "manual" in history_part and "auto" in history_part
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_model_version_tag(MODEL, "1", "koc.run_failed", "KeyboardInterrupt: ")
    refused = runner.invoke(app, ["promote", "--version", "1", "--tracking-uri", uri], env={"COLUMNS": "200"})
    assert refused.exit_code == 1 and "comes from a training run that failed" in refused.output
    assert "--force" in refused.output
    forced = runner.invoke(app, ["promote", "--version", "1", "--force", "--tracking-uri", uri])
    assert forced.exit_code == 0 and "forced" in forced.output
    missing = runner.invoke(app, ["promote", "--version", "7", "--tracking-uri", uri])
    assert missing.exit_code == 1 and "no version 7" in missing.output


def _train_method(world: BrandData, tmp_path: Path, method: str) -> tuple[str, TrainResult]:
    """`if_invited` with `target_method = method`, two backtest folds and few trees: (tracking store, result)."""
    cfg = TrainConfig.model_validate(
        CONFIG.model_dump()
        | {"target": "if_invited", "target_method": method, "backtest_cutoffs": 2,
           "lgbm": {"num_boost_round": 80, "early_stopping_rounds": 10}}
    )
    store = f"sqlite:///{tmp_path}/mlflow.db"
    return store, run_training(world, cfg, tracking_uri=store)


def test_two_path_shared_is_refit_and_served_with_its_given_input_fixed(world: BrandData, tmp_path: Path) -> None:
    """`target_method = "two_path_shared"` end to end: the served model is the refit on every
    complete cutoff, the embargoed ones included; its S-learner learnt from every row with the
    enrolment input and scores feature rows (which never carry it) as if enrolled; the logged
    pyfunc gives the same probabilities."""
    from training.targets import given_input

    store, result = _train_method(world, tmp_path, "two_path_shared")
    model = result.model
    assert (model.target_, model.target_method_) == ("if_invited", "two_path_shared")
    split, refit_cutoffs = result.dataset.split, result.dataset.refit_cutoffs
    assert split.embargoed and set(refit_cutoffs) == {*split.used, *split.embargoed}
    assert set(result.dataset.all_rows()["as_of"]) == set(refit_cutoffs)
    params = MlflowClient(store).get_run(result.run_id).data.params
    assert params["model.refit"] == "true" and params["model.refit_cutoffs"] == str(len(refit_cutoffs))
    shared = model.components_["productive_enrolled_shared"]
    names = result.dataset.feature_names
    assert shared.feature_names_ == [*names, given_input("enrolled")]
    assert dict(shared.fixed_inputs_) == {given_input("enrolled"): 1.0}
    assert model.feature_names_ == names and given_input("enrolled") not in model.contributions(
        result.dataset.part("test").head(5)[names]
    ).columns

    rows = result.dataset.part("test").head(300)
    as_enrolled = shared.raw_score(rows[names].assign(**{given_input("enrolled"): np.float32(1)}))
    np.testing.assert_array_equal(shared.raw_score(rows[names]), as_enrolled)
    with tracking.tracking_context(store):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.model_version}")
    out = pyfunc.predict(to_pyfunc_input(rows))
    np.testing.assert_allclose(out["probability"].to_numpy(), model.predict_proba(rows[names]))


def test_two_path_soft_learns_the_denoised_label_and_is_served(world: BrandData, tmp_path: Path) -> None:
    """`target_method = "two_path_soft"` end to end: both productivity factors (fold models and the
    refit) learn from the soft label by cross-entropy, each row once; the run logs the 0/1 row counts;
    the served model and the logged pyfunc agree."""
    store, result = _train_method(world, tmp_path, "two_path_soft")
    model = result.model
    assert (model.target_, model.target_method_) == ("if_invited", "two_path_soft")
    assert set(model.components_) == {"accept", "productive_enrolled_soft", "not_invited_outcome_soft"}
    assert model.declined_ == "not_invited_outcome_soft"
    objectives = {name: component.booster_.params["objective"] for name, component in model.components_.items()}
    assert objectives == {"accept": "binary", "productive_enrolled_soft": "cross_entropy",
                          "not_invited_outcome_soft": "cross_entropy"}
    # the served acceptance blends in its linear part, refit with the C the latest fold chose
    linear = {name: component.linear_ for name, component in model.components_.items()}
    assert linear["accept"] is not None and linear["productive_enrolled_soft"] is linear["not_invited_outcome_soft"] is None
    fold_accept = result.backtest.latest.model.components_["accept"]
    assert linear["accept"].C == fold_accept.linear_.C and model.components_["accept"] is not fold_accept
    assert MlflowClient(store).get_run(result.run_id).data.params["target.accept.linear_C"] == str(linear["accept"].C)
    params = MlflowClient(store).get_run(result.run_id).data.params
    rows = result.dataset.part("train")  # the latest fold's, whose fit the run's params describe
    enrolled = int((rows["enrolled"] == 1).sum())
    assert params["target.productive_enrolled_soft.train_rows"] == str(enrolled)  # rows, not their two copies
    assert 0 < int(params["target.productive_enrolled_soft.train_positives"]) < enrolled

    test = result.dataset.part("test").head(300)
    names = result.dataset.feature_names
    with tracking.tracking_context(store):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.model_version}")
    out = pyfunc.predict(to_pyfunc_input(test))
    np.testing.assert_allclose(out["probability"].to_numpy(), model.predict_proba(test[names]))
