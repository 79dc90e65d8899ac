"""Batch scoring on Spark: a feature Parquet in, `member_id, as_of, probability` Parquet out.

The registered model (default `models:/koc-potential@champion`) is resolved and checked on
the driver exactly as `koc rank` does (`serving.model_store.load_model`: feature set
version, damaged files), then applied to the feature rows on the executors with
`mlflow.pyfunc.spark_udf(..., env_manager="local")`: each Python worker loads the same
pyfunc (`training.pyfunc.KocPyfunc`) and scores its partitions with pandas batches. The
alias is pinned to the version it resolved to, so a promotion during the run cannot mix
two models. The features come from `koc features --engine spark|duckdb --out x.parquet`.

`env_manager="local"`: the executors' Python must have kocrank's dependencies (the cluster
image or `--archives` of this venv, see docs/spark.md); no conda/virtualenv is built per job.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from serving.config import DEFAULT_MODEL_URI

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

SCORE_COLUMN = "probability"


def _model_to_load(model_uri: str, tracking_uri: str | None) -> str:
    """The URI the executors load: `models:/name/<version>` for an alias (pinned), else `model_uri`."""
    from serving.model_store import load_model, parse_model_uri

    loaded = load_model(model_uri, tracking_uri)  # raises on another feature set or damaged files
    parts = parse_model_uri(model_uri)
    if "name" in parts and loaded.info.version:
        return f"models:/{parts['name']}/{loaded.info.version}"
    path = Path(model_uri)
    return str(path.resolve()) if path.exists() else model_uri


def score_frame_spark(
    spark: SparkSession, features: DataFrame, model_uri: str = DEFAULT_MODEL_URI, tracking_uri: str | None = None
) -> DataFrame:
    """`member_id, as_of, probability` for every row of a Spark frame of feature rows."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from features.registry import CATEGORY_LEVELS, feature_names

    missing = [name for name in feature_names() if name not in features.columns]
    if missing:
        raise ValueError(
            f"feature rows lack columns {missing[:5]}{'…' if len(missing) > 5 else ''}; "
            "build them with `koc features --out x.parquet` (either engine)"
        )
    uri = _model_to_load(model_uri, tracking_uri)
    if tracking_uri:
        from training.store import tracking_context

        with tracking_context(tracking_uri):
            predict = mlflow.pyfunc.spark_udf(spark, uri, result_type="double", env_manager="local")
    else:
        predict = mlflow.pyfunc.spark_udf(spark, uri, result_type="double", env_manager="local")
    # the pyfunc's schema: categoricals as strings, every other feature as double
    inputs = [
        F.col(name).cast("string").alias(name) if name in CATEGORY_LEVELS else F.col(name).cast("double").alias(name)
        for name in feature_names()
    ]
    return features.select("member_id", "as_of", predict(F.struct(*inputs)).alias(SCORE_COLUMN))


def _replace_directory(staging: Path, target: Path) -> None:
    """Put `staging` at `target` with renames only: a reader sees the old or the new scores, never half."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def score_parquet_spark(
    features_path: str | Path,
    out: str | Path,
    *,
    model_uri: str = DEFAULT_MODEL_URI,
    tracking_uri: str | None = None,
    spark: SparkSession | None = None,
    master: str = "local[2]",
) -> int:
    """Score a feature Parquet (file or folder) with Spark and write the scores as a Parquet folder.

    A local `out` is written beside itself and renamed into place (atomic for readers); a
    cluster URI (`hdfs://`, `s3a://`) is written by Spark's own committer. Returns the row count.
    """
    if spark is None:
        from features.contract import DEFAULT_TIMEZONE
        from features.spark_engine import spark_session

        spark = spark_session(master, DEFAULT_TIMEZONE, app_name="kocrank-score")
    scores = score_frame_spark(spark, spark.read.parquet(str(features_path)), model_uri, tracking_uri)
    target = str(out)
    if "://" in target:
        scores.write.mode("overwrite").parquet(target)
        return spark.read.parquet(target).count()
    target_path = Path(target).resolve()
    target_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_path.name}.", suffix=".tmp", dir=target_path.parent))
    try:
        scores.write.mode("overwrite").parquet(str(staging))
        rows = spark.read.parquet(str(staging)).count()
        _replace_directory(staging, target_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d scores to %s", rows, target_path)
    return rows
