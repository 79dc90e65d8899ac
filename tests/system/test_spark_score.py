"""Batch scoring on Spark (`koc spark-score`, mlflow spark_udf) gives the pandas path's scores.

The champion of the shared trained store scores the same feature rows twice: on the
driver with `predict_proba` (what `koc rank` does) and on Spark through
`mlflow.pyfunc.spark_udf(env_manager="local")`. Probabilities must agree to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.worlds import SIM_AS_OF
from typer.testing import CliRunner

from features.build import build_features
from features.io import write_frame
from kocrank.cli import app
from serving.model_store import load_model

pytestmark = pytest.mark.slow

MODEL = "models:/koc-potential@champion"


@pytest.fixture(scope="module")
def spark():
    from features.spark_engine import spark_session

    session = spark_session("local[2]", "Asia/Shanghai", shuffle_partitions=4, app_name="kocrank-score-test")
    yield session
    session.stop()


def test_spark_udf_scores_equal_the_pandas_path(trained_store, spark, tmp_path):
    _, tracking_uri, data, _ = trained_store
    features = build_features(data, pd.Timestamp(SIM_AS_OF))
    write_frame(features, tmp_path / "features.parquet")
    loaded = load_model(MODEL, tracking_uri)
    expected = pd.Series(
        loaded.model.predict_proba(features[list(loaded.model.feature_names_)]), index=features["member_id"]
    )

    out = tmp_path / "scores"
    args = ["spark-score", "--features", str(tmp_path / "features.parquet"), "--out", str(out),
            "--model", MODEL, "--tracking-uri", tracking_uri]
    for _ in range(2):  # the second run replaces the first folder whole
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert f"wrote {len(features)} scores" in result.output

    scores = pd.read_parquet(out).set_index("member_id")
    assert list(scores.columns) == ["as_of", "probability"]
    assert len(scores) == len(features) and scores.index.is_unique
    got = scores["probability"].reindex(expected.index)
    assert np.allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-12)
    assert (scores["as_of"] == pd.Timestamp(SIM_AS_OF)).all()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "a staging folder was left behind"


def test_feature_rows_without_the_model_columns_are_refused(trained_store, spark, tmp_path):
    from serving.spark_score import score_frame_spark

    _, tracking_uri, _, _ = trained_store
    rows = spark.createDataFrame(pd.DataFrame({"member_id": ["a"], "as_of": [pd.Timestamp(SIM_AS_OF)]}))
    with pytest.raises(ValueError, match=r"feature rows lack columns \['recency_days'"):
        score_frame_spark(spark, rows, MODEL, tracking_uri)
