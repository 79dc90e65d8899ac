"""Issued lists: control group, exact invitation probabilities, immutability, refusal of a re-issue."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from support.worlds import AS_OF, build_world, fake_loaded

from features.labels import LabelConfig
from features.targets import ACCEPT_DAYS
from serving.config import RankConfig
from serving.issued import IssuedListExists, IssuedStore, default_store_path, issue_list
from serving.rank import rank_members
from serving.selection import draw_policy, select_candidates


def _pool(n: int) -> pd.DataFrame:
    return pd.DataFrame({"member_id": [f"x{i:03d}" for i in range(n)], "score": np.linspace(0.99, 0.01, n),
                         "city_tier": [1 + i % 3 for i in range(n)], "channel": ["store"] * n})


def test_control_group_is_never_invited_and_probabilities_are_exact():
    pool = _pool(200)
    cfg = RankConfig(exploration_share=0.2, control_share=0.1, exploration_band_size=40)
    # K = 50: 40 exploit + 5 control drawn from the top 45; 10 explored from the next 40
    invited_count = np.zeros(len(pool))
    cutoffs = pd.date_range("2025-01-01", periods=300, freq="D")
    for cutoff in cutoffs:
        policy = draw_policy(pool, 50, cfg, as_of=cutoff)
        chosen = select_candidates(pool, 50, cfg, as_of=cutoff)
        control = set(policy.loc[policy["role"] == "control", "member_id"])
        assert len(control) == 5 and not control & set(chosen["member_id"])
        assert set(chosen["member_id"]) == set(policy.loc[policy["invited"], "member_id"])
        assert chosen.set_index("member_id")["selection_probability"].equals(
            policy.set_index("member_id").loc[chosen["member_id"], "p_invite"].rename("selection_probability"))
        invited_count += policy["invited"].to_numpy()
    p = draw_policy(pool, 50, cfg, as_of=cutoffs[0])["p_invite"].to_numpy()
    assert np.allclose(p[:45], 40 / 45) and np.allclose(p[45:85], 10 / 40) and (p[85:] == 0).all()
    # empirical invitation rates over 300 independent lists match the logged probabilities
    empirical = invited_count / len(cutoffs)
    assert np.abs(empirical[:45] - 40 / 45).max() < 0.08 and np.abs(empirical[45:85] - 0.25).max() < 0.12
    assert (empirical[85:] == 0).all()


def test_no_control_share_keeps_the_plain_top_block():
    policy = draw_policy(_pool(30), 10, RankConfig(exploration_share=0.0, control_share=0.0), as_of=AS_OF)
    assert policy["invited"].tolist() == [True] * 10 + [False] * 20 and (policy["role"] != "control").all()


@pytest.fixture
def ranked():
    world = build_world()
    cfg = RankConfig(exploration_share=0.2, control_share=0.2)
    loaded = fake_loaded()
    return rank_members(world, AS_OF, loaded, 10, cfg), loaded, cfg


def test_issued_list_logs_every_eligible_member_and_is_immutable(tmp_path, ranked):
    result, loaded, cfg = ranked
    store = IssuedStore(tmp_path / "koc_issued.sqlite")
    issued = issue_list(result, loaded, 10, cfg, LabelConfig(), store, list_id=None, issued_at="t0",
                        tracking_uri=None, log_to_mlflow=False)
    back = store.get("koc-2026-06-01")
    assert len(back.members) == int(result.scored["eligible"].sum()) == issued.meta["counts"]["eligible"]
    assert back.members["role"].value_counts().to_dict() == {"none": 22, "exploit": 8, "band": 8, "explore": 2, "control": 2}
    assert set(back.members.loc[back.members["invited"], "member_id"]) == set(result.candidates["member_id"])
    assert back.meta["target"] == "observed" and back.meta["model"]["version"] == "1"
    assert back.meta["accept_days"] == ACCEPT_DAYS  # its outcomes count acceptances by training's rule
    assert back.members["score"].is_monotonic_decreasing
    with pytest.raises(IssuedListExists, match="already issued"):
        issue_list(result, loaded, 10, cfg, LabelConfig(), store, list_id=None, issued_at="t1",
                   tracking_uri=None, log_to_mlflow=False)
    with pytest.raises(IssuedListExists, match="already issued"):  # the store itself refuses, not only the check
        store.add(issued)
    connection = sqlite3.connect(store.path)
    for statement in ("UPDATE issued_members SET score = 1", "DELETE FROM issued_members",
                      "UPDATE issued_lists SET k = 1", "DELETE FROM issued_lists"):
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            connection.execute(statement)
    connection.close()
    assert store.get("koc-2026-06-01").members.equals(back.members)


def test_store_path_sits_beside_the_mlflow_store(tmp_path):
    assert default_store_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "koc_issued.sqlite"
    assert default_store_path(str(tmp_path / "mlruns")) == tmp_path / "koc_issued.sqlite"


@pytest.mark.slow
def test_issued_list_is_logged_to_mlflow(tmp_path, ranked, tracking_uri):
    from mlflow import MlflowClient

    result, loaded, cfg = ranked
    store = IssuedStore(tmp_path / "koc_issued.sqlite")
    issue_list(result, loaded, 10, cfg, LabelConfig(), store, list_id="march", issued_at="t0", tracking_uri=tracking_uri)
    run_id = store.lists().set_index("list_id").loc["march", "mlflow_run_id"]
    client = MlflowClient(tracking_uri)
    assert client.get_run(run_id).data.tags["koc.list_id"] == "march"
    assert {a.path for a in client.list_artifacts(run_id, "issued_list")} == {
        "issued_list/issued_list.json", "issued_list/issued_members.parquet"}
