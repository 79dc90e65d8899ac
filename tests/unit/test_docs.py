"""The README's feature table is generated from the registry and must be current."""

from pathlib import Path

from features.registry import feature_names
from kocrank.docs import README, render


def test_readme_feature_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert render(text) == text, "README feature table is stale: run `make docs`"
    for name in feature_names():
        assert f"`{name}`" in text


def test_readme_quick_start_is_the_two_commands():
    text = Path(README).read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
