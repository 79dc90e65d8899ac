"""`koc spark-score`: score a feature Parquet on Spark with the registered model (mlflow spark_udf)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from kocrank.console import make_console


def register(app: typer.Typer) -> None:
    """Add the `spark-score` command to the `koc` app."""

    @app.command("spark-score")
    def spark_score_command(
        features: Annotated[
            Path, typer.Option("--features", help="Feature Parquet (file or folder) from `koc features --out`.")
        ],
        out: Annotated[str, typer.Option("--out", help="Scores Parquet folder (local path, hdfs:// or s3a://).")],
        model: Annotated[
            str | None, typer.Option("--model", help="Model URI (default: the config's, models:/koc-potential@champion).")
        ] = None,
        tracking_uri: Annotated[
            str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI).")
        ] = None,
        master: Annotated[str, typer.Option("--master", help="Spark master, e.g. local[2] or yarn.")] = "local[2]",
        config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
    ) -> None:
        """Score every feature row with mlflow.pyfunc.spark_udf and write member_id, as_of, probability."""
        from kocrank.config import load_config
        from serving.spark_score import score_parquet_spark

        cfg = load_config(config)
        started = time.perf_counter()
        rows = score_parquet_spark(
            features, out, model_uri=model or cfg.ranking.model_uri, tracking_uri=tracking_uri, master=master
        )
        make_console().print(f"wrote {rows} scores to {out} in {time.perf_counter() - started:.1f}s with Spark")
