"""The `koc` command line: version, readable help, ISO-only cutoffs, one error format and exit code per class."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from kocrank import __version__
from kocrank.cli import app
from serving.config import CutoffError, default_cutoff, parse_cutoff

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"kocrank {__version__}"


@pytest.mark.parametrize("command", [[], ["rank"], ["serve"], ["features"], ["validate"]])
def test_help_names_values_not_python_types(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    assert not re.search(r"<(bool|str|int|path|int range)>", result.output), result.output


def test_rank_help_shows_format_choices_and_the_cutoff_form():
    text = runner.invoke(app, ["rank", "--help"], env={"COLUMNS": "160"}).output
    assert "csv|xlsx|parquet" in text and "YYYY-MM-DD[THH:MM]" in text


@pytest.mark.parametrize("text, expected", [
    ("2026-01-02", pd.Timestamp("2026-01-02")),
    ("2026-01-02T09:30", pd.Timestamp("2026-01-02 09:30")),
    ("2026-01-02 09:30:15", pd.Timestamp("2026-01-02 09:30:15")),
    ("2026-01-01T16:00:00Z", pd.Timestamp("2026-01-02")),  # converted to Asia/Shanghai business time
    ("2026-01-02T00:00+08:00", pd.Timestamp("2026-01-02")),
])
def test_iso_cutoffs_parse_to_naive_business_time(text, expected):
    parsed = parse_cutoff(text, "Asia/Shanghai")
    assert parsed == expected and parsed.tzinfo is None


@pytest.mark.parametrize("text", ["02/01/2026", "13/01/2026", "2026-1-2", "20260102", "Jan 2 2026", "2026-02-30", ""])
def test_anything_but_iso_is_refused_with_the_expected_form(text):
    with pytest.raises(CutoffError, match="YYYY-MM-DD"):
        parse_cutoff(text, "Asia/Shanghai")


def test_default_cutoff_is_midnight_after_the_data_ends():
    assert default_cutoff(pd.Timestamp("2026-03-31 17:45")) == pd.Timestamp("2026-04-01")


@pytest.mark.parametrize("command", [
    ["rank", "--data", "nowhere", "--as-of", "02/01/2026", "--top", "5", "--out", "x"],
    ["features", "--data", "nowhere", "--as-of", "13/01/2026", "--out", "f.parquet"],
])
def test_non_iso_as_of_is_a_usage_error(command, tmp_path):
    result = runner.invoke(app, command, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert result.output.startswith("error (usage): CutoffError:") and "YYYY-MM-DD" in result.output


def test_failure_classes_have_one_format_and_code(tmp_path):
    bad_out = runner.invoke(app, ["rank", "--data", str(tmp_path), "--as-of", "2026-01-01", "--top", "5",
                                  "--out", str(tmp_path / "list.csv")])
    assert bad_out.exit_code == 2 and bad_out.output.startswith("error (usage): OutputPathError:")
    config = tmp_path / "bad.toml"
    config.write_text("[ranking]\nno_such_setting = 1\n")
    bad_config = runner.invoke(app, ["rank", "--data", str(tmp_path), "--as-of", "2026-01-01", "--top", "5",
                                     "--out", str(tmp_path / "list"), "--config", str(config)])
    assert bad_config.exit_code == 2 and bad_config.output.startswith("error (usage): ConfigError:")
    missing = runner.invoke(app, ["rank", "--data", str(tmp_path / "absent"), "--as-of", "2026-01-01", "--top", "5",
                                  "--out", str(tmp_path / "list")])
    errors = [line for line in missing.output.splitlines() if line.startswith("error")]
    assert missing.exit_code == 1 and errors[0].startswith("error (data): data contract violated")
    assert "Traceback" not in missing.output and not (tmp_path / "list").exists()
