"""Smoke run of the whole `koc` chain on a small simulated world, through the real CLI app.

simulate (CSV) -> validate (and a broken copy) -> features -> train -> rank, checking what
ops would check: K eligible members, none excluded, three reasons each, a sidecar.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.contract import load_data
from features.labels import eligibility
from kocrank.cli import app

pytestmark = pytest.mark.slow

AS_OF = "2026-01-01"
CONFIG = """
[training]
k_list = [50, 100, "1%"]
primary_k = 50

[training.lgbm]
num_boost_round = 200
early_stopping_rounds = 20

[ranking]
exploration_share = 0.1
"""


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"koc {' '.join(args)} failed:\n{result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chain")
    (root / "koc.toml").write_text(CONFIG)
    invoke("simulate", "--members", "3000", "--seed", "11", "--out", str(root / "data"), "--format", "csv")
    return root


def test_validate_accepts_the_simulated_world(workdir: Path) -> None:
    out = invoke("validate", "--data", str(workdir / "data"))
    assert "valid" in out and "members" in out and "orders" in out


def test_validate_rejects_a_broken_copy_naming_table_column_and_rule(workdir: Path) -> None:
    broken = workdir / "broken"
    shutil.copytree(workdir / "data", broken)
    orders = pd.read_csv(broken / "orders.csv", dtype=str)
    orders.loc[3, "amount"] = "-5"
    orders.loc[7, "member_id"] = "NOBODY"
    orders.to_csv(broken / "orders.csv", index=False)
    result = CliRunner().invoke(app, ["validate", "--data", str(broken)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "orders.amount: must be >= 0 — 1 row(s)" in result.output
    assert "orders.member_id: must exist in members.member_id — 1 row(s)" in result.output
    assert "NOBODY" in result.output


def test_features_for_two_cutoffs(workdir: Path) -> None:
    out_file = workdir / "features.parquet"
    invoke("features", "--data", str(workdir / "data"), "--as-of", "2025-06-01", "--as-of", "2025-07-01", "--out", str(out_file))
    feats = pd.read_parquet(out_file)
    members = load_data(workdir / "data").members
    for cutoff in ("2025-06-01", "2025-07-01"):
        rows = feats.loc[feats["as_of"] == pd.Timestamp(cutoff)]
        assert len(rows) == int((members["joined_at"] < pd.Timestamp(cutoff)).sum())
    assert "recency_days" in invoke("features", "--list")


def test_feature_sql_renders_for_spark() -> None:
    spark_sql = invoke("features", "--as-of", "2025-06-01", "--sql", "spark")
    assert "FROM members" in spark_sql and "TIMESTAMP_NTZ" in spark_sql  # Spark's naive timestamp type
    assert "'2025-06-01 00:00:00" in spark_sql


def test_train_then_rank_lists_only_eligible_members_with_reasons(workdir: Path) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    config = str(workdir / "koc.toml")
    out = invoke("train", "--data", str(workdir / "data"), "--config", config, "--tracking-uri", uri)
    assert "registered koc-potential v1" in out and "champion" in out

    unit = workdir / "list"
    invoke("rank", "--data", str(workdir / "data"), "--as-of", AS_OF, "--top", "50", "--out", str(unit),
           "--config", config, "--tracking-uri", uri)
    ranked = pd.read_csv(unit / "list.csv", dtype={"member_id": str}, encoding="utf-8-sig")
    assert len(ranked) == 50 and ranked["rank"].tolist() == list(range(1, 51))
    elig = eligibility(load_data(workdir / "data"), pd.Timestamp(AS_OF)).set_index("member_id")
    assert elig.loc[ranked["member_id"], "eligible"].all()
    assert ranked[["reason_1_zh", "reason_2_zh", "reason_3_zh", "reason_1_en"]].notna().all().all()
    assert ranked["reason_1_en"].str.contains("[a-z]").all() and not ranked["reason_1_zh"].str.contains(" / ").any()
    assert ranked["exploration"].sum() == 5
    meta = json.loads((unit / "list.meta.json").read_text())
    assert meta["model"]["version"] == "1" and meta["k"] == 50
    assert set(meta["exclusions"]) == {"no_consent", "blacklisted", "active_koc", "cooldown"}
    assert meta["counts"]["eligible"] == int(elig["eligible"].sum())
