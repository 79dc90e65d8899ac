"""Scoring at scale: partial-sort selection, indexed look-ups, chunked prediction, cached fingerprints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.worlds import AS_OF, build_world

from features.contract import load_data
from features.io import write_tables
from serving.config import RankConfig
from serving.rank import choose_candidates, lookup_members, predict_in_chunks, top_in_score_order
from serving.reasons import LazyPopulation, sorted_population
from serving.selection import order_by_score, select_candidates
from training import fingerprint as fingerprint_module


def _pool(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "member_id": [f"m{i:05d}" for i in rng.permutation(n)],
            "score": rng.integers(0, 200, n) / 200.0,  # many ties
            "city_tier": rng.integers(1, 4, n),
            "channel": rng.choice(["store", "app"], n),
        }
    )


def test_top_in_score_order_is_the_full_sort_head():
    pool = _pool(5_000, seed=3)
    full = order_by_score(pool)
    for n in (1, 37, 1_000, 5_000, 9_000):
        head = top_in_score_order(pool, n)
        assert head["member_id"].tolist() == full["member_id"].head(n).tolist()


@pytest.mark.parametrize(
    "cfg",
    [
        RankConfig(),
        RankConfig(quotas={"city_tier": 0.4, "channel": 0.6}, exploration_share=0.2, exploration_band_size=50),
    ],
)
def test_choose_candidates_equals_selection_over_the_full_order(cfg):
    pool = _pool(4_000, seed=5)
    expected = select_candidates(order_by_score(pool), 40, cfg, as_of=AS_OF)
    chosen = choose_candidates(pool, 40, cfg, as_of=AS_OF)
    pd.testing.assert_frame_equal(chosen.reset_index(drop=True), expected.reset_index(drop=True))


def test_choose_candidates_widens_the_head_when_quotas_walk_past_it():
    # the 3,000 best all share city tier 1, so a 50% quota must walk past the first head (1,060 rows)
    n = 6_000
    pool = pd.DataFrame(
        {
            "member_id": [f"m{i:05d}" for i in range(n)],
            "score": np.linspace(1.0, 0.0, n),
            "city_tier": [1] * 3_000 + [2] * 3_000,
            "channel": ["store"] * n,
        }
    )
    cfg = RankConfig(quotas={"city_tier": 0.5}, exploration_share=0.0, control_share=0.0)
    chosen = choose_candidates(pool.sample(frac=1.0, random_state=1), 10, cfg, as_of=AS_OF)
    expected = select_candidates(order_by_score(pool), 10, cfg, as_of=AS_OF)
    assert chosen["member_id"].tolist() == expected["member_id"].tolist()
    assert (chosen["city_tier"] == 2).sum() == 5


def test_lookup_by_positions_matches_binary_search():
    scored = order_by_score(_pool(300, seed=2)).sort_values("member_id", ignore_index=True)
    positions = dict(zip(scored["member_id"], range(len(scored)), strict=True))
    wanted = ["m00007", "nobody", "m00007", "m00299", "m00000"]
    rows, unknown = lookup_members(scored, wanted, positions)
    expected_rows, expected_unknown = lookup_members(scored, wanted)
    pd.testing.assert_frame_equal(rows, expected_rows)
    assert unknown == expected_unknown == ["nobody"]
    assert rows["member_id"].tolist() == ["m00007", "m00299", "m00000"]


class _CountingModel:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(X))
        return X["x"].to_numpy() * 2.0


def test_predict_in_chunks_matches_one_call():
    frame = pd.DataFrame({"x": np.arange(1_050, dtype="float64")})
    model = _CountingModel()
    scores = predict_in_chunks(model, frame, chunk_rows=500)
    assert model.calls == [500, 500, 50]
    np.testing.assert_array_equal(scores, frame["x"].to_numpy() * 2.0)


def test_lazy_population_sorts_only_what_is_read():
    frame = pd.DataFrame({"a": [3.0, np.nan, 1.0], "b": [2.0, 1.0, 0.0], "tier": ["x", "y", "z"]})
    lazy = LazyPopulation(frame, ["a", "b"])
    eager = sorted_population(frame, ["a", "b"])
    assert "tier" not in lazy and "a" in lazy and len(lazy) == 2
    assert lazy._sorted == {}
    np.testing.assert_array_equal(lazy["a"], eager["a"])
    assert list(lazy._sorted) == ["a"]


def test_fingerprint_is_cached_per_file_and_follows_changes(tmp_path, monkeypatch):
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    world = build_world()
    write_tables({name: world.tables[name] for name in world.tables if name not in world.absent}, data_dir)
    hashed: list[int] = []
    real = fingerprint_module.table_fingerprint
    monkeypatch.setattr(fingerprint_module, "table_fingerprint", lambda table: hashed.append(len(table)) or real(table))

    data = load_data(data_dir)
    first = fingerprint_module.cached_fingerprint(data, cache)
    assert first == data.fingerprint()
    assert len(hashed) == len(first)

    hashed.clear()
    assert fingerprint_module.cached_fingerprint(load_data(data_dir), cache) == first
    assert hashed == []  # unchanged files: nothing re-hashed

    orders = pd.read_parquet(data_dir / "orders.parquet")
    write_tables({"orders": orders.iloc[:-1]}, data_dir)
    changed = load_data(data_dir)
    second = fingerprint_module.cached_fingerprint(changed, cache)
    assert hashed == [len(orders) - 1]  # only the changed table
    assert second["orders"] != first["orders"] and second == changed.fingerprint()
    assert {k: v for k, v in second.items() if k != "orders"} == {k: v for k, v in first.items() if k != "orders"}


def test_fingerprint_without_cache_or_files_hashes_in_memory():
    world = build_world()
    assert fingerprint_module.cached_fingerprint(world, None) == world.fingerprint()
