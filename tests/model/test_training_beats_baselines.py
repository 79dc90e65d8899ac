"""Model behaviour at the issue's scale: on a simulated world of 50,000 members (seed 7, the
observed-label target) the model beats every baseline on the test cutoff in PR AUC and in precision@K for
every configured K. One training run (one fold, no refit) with its own temporary MLflow store.
"""

from __future__ import annotations

import pandas as pd
import pytest

from features.contract import from_frames
from kocrank.simulation import SimConfig, simulate
from training.config import TrainConfig
from training.evaluate import k_label
from training.train import MODEL_ROW, TrainResult, run_training

pytestmark = pytest.mark.slow

MEMBERS = 50_000
SEED = 7
BASELINES = ("rfm", "value", "logistic", "random", "source_rule", "bgnbd")
# precision and PR AUC below are on the observed label. The figures compared are the latest fold's model on
# the test cutoff whatever the backtest length, so one fold and no refit keep this run short
CONFIG = TrainConfig(target="observed", backtest_cutoffs=1, refit=False)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    world = from_frames(simulate(SimConfig(members=MEMBERS, seed=SEED)).tables)
    store = tmp_path_factory.mktemp("mlflow-50k")
    return run_training(world, CONFIG, tracking_uri=f"sqlite:///{store}/mlflow.db")


def test_default_k_list_is_the_issues(result: TrainResult) -> None:
    assert CONFIG.k_list == (100, 500, "1%", "5%") and CONFIG.seed == SEED
    assert set(result.metrics.index) == {MODEL_ROW, *BASELINES}
    # held out in time: the test cutoff is later than every cutoff the model learnt or was calibrated on
    split = result.split
    assert all(cutoff < split["validation"] < split["test"] for cutoff in split["train"])
    test = result.dataset.part("test")
    assert test["as_of"].nunique() == 1 and len(test) > 10_000 and test["label"].sum() > 100


@pytest.mark.parametrize("baseline", BASELINES)
def test_model_beats_baseline_on_pr_auc_and_every_precision_at_k(result: TrainResult, baseline: str) -> None:
    metrics = result.metrics
    columns = ["pr_auc", *(f"precision_at_{k_label(k)}" for k in CONFIG.k_list)]
    comparison = pd.DataFrame({"model": metrics.loc[MODEL_ROW, columns], baseline: metrics.loc[baseline, columns]})
    losing = comparison.loc[~(comparison["model"] > comparison[baseline])]
    assert losing.empty, f"model does not beat {baseline} on the test cutoff {result.split['test']}:\n{comparison}"
