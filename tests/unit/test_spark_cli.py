"""`koc features --engine` and `koc spark-score` at the command line (no Spark started)."""

from __future__ import annotations

from typer.testing import CliRunner

from kocrank.cli import app

runner = CliRunner()


def test_unknown_engine_is_a_usage_error(tmp_path):
    result = runner.invoke(
        app,
        ["features", "--data", str(tmp_path), "--as-of", "2025-01-01", "--out", str(tmp_path / "f.parquet"),
         "--engine", "flink"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2
    assert "--engine must be duckdb or spark, got 'flink'" in result.output
    assert not (tmp_path / "f.parquet").exists()


def test_help_lists_the_engine_and_the_spark_scorer():
    features = runner.invoke(app, ["features", "--help"], env={"COLUMNS": "200"}).output
    assert "--engine" in features and "--master" in features
    score = runner.invoke(app, ["spark-score", "--help"], env={"COLUMNS": "200"})
    assert score.exit_code == 0 and "spark_udf" in score.output and "--features" in score.output
