"""TrainConfig validation: one spelling per K, and primary_k must be one of the evaluated K values."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from training.config import TrainConfig, validate_k_spec
from training.evaluate import k_label
from training.train import run_training


def test_k_specs_are_normalised() -> None:
    assert validate_k_spec("1.0%") == "1%" and validate_k_spec(" 1 %") == "1%" and validate_k_spec("01%") == "1%"
    assert validate_k_spec("0.50%") == "0.5%" and validate_k_spec("100%") == "100%" and validate_k_spec(500) == 500
    assert k_label("1.0%") == k_label("1%") == "1pct"
    config = TrainConfig(k_list=(100, "1.0%", "5.00%"), primary_k="1.0%")
    assert config.k_list == (100, "1%", "5%") and config.primary_k == "1%"
    for bad in (0, -5, True, "0%", "101%", "1.5", "abc", 1.5):
        with pytest.raises(ValueError):
            validate_k_spec(bad)  # type: ignore[arg-type]


def test_primary_k_must_be_in_k_list() -> None:
    assert TrainConfig().primary_k in TrainConfig().k_list
    assert TrainConfig(k_list=(50, "1%"), primary_k="1.0%").primary_k == "1%"  # same K, other spelling
    with pytest.raises(ValidationError, match=r"primary_k 250 is not in k_list \[100, 500, '1%', '5%'\]"):
        TrainConfig(primary_k=250)
    with pytest.raises(ValidationError, match="primary_k '2%' is not in k_list"):
        TrainConfig(primary_k="2%")
    with pytest.raises(ValidationError, match="primary_k 100 is not in k_list"):
        TrainConfig(k_list=(50, "1%"))


def test_k_list_rejects_the_same_k_twice() -> None:
    with pytest.raises(ValidationError, match="same K more than once: 1%"):
        TrainConfig(k_list=(100, "1%", "1.0%"))
    with pytest.raises(ValidationError, match="at least one K"):
        TrainConfig(k_list=())


def test_run_training_revalidates_before_any_run(tmp_path: Path) -> None:
    """`model_copy(update=...)` skips validation; the run must still refuse before it registers anything."""
    smuggled = TrainConfig().model_copy(update={"primary_k": 250})
    with pytest.raises(ValidationError, match="primary_k 250 is not in k_list"):
        run_training(tmp_path / "no-data-needed", smuggled, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_reports_an_invalid_config(tmp_path: Path) -> None:
    from kocrank import cli_training

    app = typer.Typer()
    cli_training.register(app)
    config = tmp_path / "koc.toml"
    config.write_text('[training]\nk_list = [50, "1%"]\nprimary_k = 100\n')
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(tmp_path), "--config", str(config), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1, result.output
    assert "invalid config" in result.output and "primary_k 100 is not in k_list" in result.output
    assert not (tmp_path / "m.db").exists()
