"""Ranking: exclusions, reasons, tiers, quotas, exploration, trial category, outputs, determinism."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from support.worlds import AS_OF, build_world, fake_loaded

from serving.config import RankConfig
from serving.output import write_ranked_list
from serving.rank import (
    candidate_columns,
    explain_members,
    filter_candidates,
    lookup_members,
    rank_members,
    trial_categories,
)
from serving.reasons import reason_concept
from serving.selection import assign_tiers, order_by_score, quota_caps, score_percentiles, select_candidates


@pytest.fixture(scope="module")
def world():
    return build_world()


@pytest.fixture(scope="module")
def ranked(world):
    return rank_members(world, AS_OF, fake_loaded(), 10, RankConfig(exploration_share=0.0), generated_at="t0")


# ----------------------------------------------------------------- eligibility


def test_each_exclusion_rule_removes_its_member(ranked):
    scored = ranked.scored.set_index("member_id")
    assert scored.loc["m_noconsent", "excl_no_consent"]
    assert scored.loc["m_black", "excl_blacklisted"]
    assert scored.loc["m_active", "excl_active_koc"]
    assert scored.loc["m_invited", "excl_cooldown"]
    assert scored.loc["m_declined", "excl_cooldown"]
    for member in ("m_noconsent", "m_black", "m_active", "m_invited", "m_declined"):
        assert not scored.loc[member, "eligible"], member
        assert pd.isna(scored.loc[member, "tier"]) and pd.isna(scored.loc[member, "percentile"])
    # eliminated long ago: eligible again; invited 90 days ago: cool-down over
    assert scored.loc["m_rejoin", "eligible"] and scored.loc["m_oldinvite", "eligible"]
    # program rows at/after the cutoff change nothing; joining after the cutoff means not ranked
    assert scored.loc["c001", "eligible"] and scored.loc["c002", "eligible"]
    assert "m_future" not in scored.index


def test_exclusion_counts_in_metadata(ranked, world):
    meta = ranked.meta
    # m_black enrolled and was never eliminated, so it is also counted as an active KOC
    assert meta["exclusions"] == {"no_consent": 1, "blacklisted": 1, "active_koc": 2, "cooldown": 2}
    assert meta["counts"]["members"] == len(world.members)
    assert meta["counts"]["joined_before_as_of"] == len(world.members) - 1
    assert meta["counts"]["eligible"] == len(world.members) - 1 - 5


def test_whole_list_with_everyone_eligible_is_ordered(world):
    result = rank_members(world, AS_OF, fake_loaded(), 500, RankConfig(exploration_share=0.0))
    listed = result.candidates
    assert len(listed) == result.meta["counts"]["eligible"]
    assert not set(listed["member_id"]) & {"m_noconsent", "m_black", "m_active", "m_invited", "m_declined", "m_future"}
    assert listed["rank"].tolist() == list(range(1, len(listed) + 1))
    expected = listed.sort_values(["score", "member_id"], ascending=[False, True])["member_id"].tolist()
    assert listed["member_id"].tolist() == expected
    assert listed["percentile"].iloc[0] == 100.0
    assert result.meta["expected_productive"] == pytest.approx(listed["score"].sum())
    assert list(listed.columns) == candidate_columns(3)


# --------------------------------------------------------------------- reasons


def test_ranked_reasons_match_model_contributions(world, ranked):
    loaded = fake_loaded()
    from features.build import build_features

    feats = build_features(world, [AS_OF]).set_index("member_id")
    contrib = loaded.model.contributions(feats[loaded.model.feature_names_])
    explained = explain_members(loaded.model, ranked.features, ranked.scored["member_id"])
    # the list shows the same phrases as explaining its members one by one
    listed = ranked.candidates.set_index("member_id")
    assert listed[["reason_1", "reason_2", "reason_3"]].equals(explained.loc[listed.index, ["reason_1", "reason_2", "reason_3"]])
    for row in explained.reset_index(names="member_id").itertuples():
        member_contrib = contrib.loc[row.member_id]
        positive = member_contrib[member_contrib > 0].sort_values(ascending=False, kind="stable")
        strongest_per_concept = positive.groupby(positive.index.map(reason_concept), sort=False).head(1)
        expected = list(strongest_per_concept.index[:3]) + [""] * (3 - min(3, len(strongest_per_concept)))
        assert [row.reason_feature_1, row.reason_feature_2, row.reason_feature_3] == expected, row.member_id


# ------------------------------------------------------------ tiers / selection


def _pool(n: int, city_tiers=None, channels=None) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "member_id": [f"x{i:03d}" for i in range(n)],
            "score": np.linspace(0.9, 0.1, n),
            "city_tier": city_tiers if city_tiers is not None else [1] * n,
            "channel": channels if channels is not None else ["store"] * n,
        }
    )
    return order_by_score(frame)


def test_tiers_and_percentiles():
    cfg = RankConfig(tier_a_min_score=0.6, tier_b_min_score=0.3)
    scores = pd.Series([0.6, 0.59, 0.3, 0.29, 0.0])
    assert assign_tiers(scores, cfg).tolist() == ["A", "B", "B", "C", "C"]
    assert score_percentiles(pd.Series([0.1, 0.5, 0.5, 0.9])).tolist() == [25.0, 75.0, 75.0, 100.0]


def test_ties_are_broken_by_member_id():
    frame = pd.DataFrame({"member_id": ["b", "a", "c"], "score": [0.5, 0.5, 0.7]})
    assert order_by_score(frame)["member_id"].tolist() == ["c", "a", "b"]


def test_quotas_greedy_fill_in_score_order():
    # members alternate A, A, A, B, ...: at most 50% of K=4 from one city tier
    tiers = [1, 1, 1, 2, 1, 2, 2, 3]
    cfg = RankConfig(quotas={"city_tier": 0.5}, exploration_share=0.0)
    chosen = select_candidates(_pool(8, city_tiers=tiers), 4, cfg, as_of=AS_OF)
    assert chosen["member_id"].tolist() == ["x000", "x001", "x003", "x005"]
    assert chosen["city_tier"].value_counts().max() <= quota_caps(4, {"city_tier": 0.5})["city_tier"]
    assert chosen["rank"].tolist() == [1, 2, 3, 4]


def test_quotas_on_two_columns_are_all_honoured():
    rng = np.random.default_rng(0)
    pool = _pool(300, city_tiers=rng.integers(1, 4, 300).tolist(), channels=rng.choice(["a", "b", "c"], 300).tolist())
    cfg = RankConfig(quotas={"city_tier": 0.4, "channel": 0.5}, exploration_share=0.2, seed=5)
    chosen = select_candidates(pool, 50, cfg, as_of=AS_OF)
    assert len(chosen) == 50
    assert chosen["city_tier"].value_counts().max() <= 20
    assert chosen["channel"].value_counts().max() <= 25


def test_exploration_share_band_and_probability():
    pool = _pool(100)
    cfg = RankConfig(exploration_share=0.2, exploration_band_size=30, seed=11, control_share=0.0)
    chosen = select_candidates(pool, 20, cfg, as_of=AS_OF)
    explore = chosen.loc[chosen["exploration"]]
    exploit = chosen.loc[~chosen["exploration"]]
    assert len(chosen) == 20 and len(explore) == 4
    assert exploit["member_id"].tolist() == pool["member_id"].head(16).tolist()
    band = set(pool["member_id"].iloc[16:46])
    assert set(explore["member_id"]) <= band
    assert np.allclose(explore["selection_probability"], 4 / 30)
    assert (exploit["selection_probability"] == 1.0).all()
    # seeded: same seed same draw, other seed (almost surely) another draw
    again = select_candidates(pool, 20, cfg, as_of=AS_OF)
    assert again["member_id"].tolist() == chosen["member_id"].tolist()
    other = select_candidates(pool, 20, cfg.model_copy(update={"seed": 12}), as_of=AS_OF)
    assert set(other.loc[other["exploration"], "member_id"]) != set(explore["member_id"])


def test_exploration_draw_is_uniform_over_the_band():
    pool = _pool(40)
    counts: dict[str, int] = {}
    for seed in range(400):
        chosen = select_candidates(pool, 10, RankConfig(exploration_share=0.2, seed=seed), as_of=AS_OF)
        for member in chosen.loc[chosen["exploration"], "member_id"]:
            counts[member] = counts.get(member, 0) + 1
    # band = ranks 9..18 (10 members), 2 draws each time -> expected 80 picks per member
    assert set(counts) == set(pool["member_id"].iloc[8:18])
    assert min(counts.values()) > 50 and max(counts.values()) < 110


def _explored_positions(pool: pd.DataFrame, chosen: pd.DataFrame) -> tuple[int, ...]:
    position = {member: i for i, member in enumerate(pool["member_id"])}
    return tuple(sorted(position[m] for m in chosen.loc[chosen["exploration"], "member_id"]))


def test_exploration_draw_depends_on_the_cutoff_not_only_the_seed():
    # one seed, many cutoffs: every band position gets explored at its recorded rate
    # (a draw seeded by the seed alone picks the same two rank slots in every list)
    pool = _pool(40)
    cfg = RankConfig(exploration_share=0.2, seed=42)
    cutoffs = pd.date_range("2025-01-01", periods=400, freq="D")
    draws = [_explored_positions(pool, select_candidates(pool, 10, cfg, as_of=cutoff)) for cutoff in cutoffs]
    counts = pd.Series([position for draw in draws for position in draw]).value_counts()
    # band = positions 8..17 (10 members), 2 draws per list -> expected 80 picks per position
    assert set(counts.index) == set(range(8, 18))
    assert counts.min() > 50 and counts.max() < 110
    assert len(set(draws)) > 30
    # a time of day is part of the cutoff
    assert _explored_positions(pool, select_candidates(pool, 10, cfg, as_of=cutoffs[0] + pd.Timedelta(hours=9))) != draws[0]
    # the same inputs give the same picks
    first = select_candidates(pool, 10, cfg, as_of=cutoffs[7])
    assert first.equals(select_candidates(pool, 10, cfg, as_of=pd.Timestamp(cutoffs[7])))
    assert _explored_positions(pool, first) == draws[7]


def test_rank_members_draws_exploration_slots_per_cutoff(world):
    # same world and seed, cutoffs a day apart: the explored rank slots (positions among the
    # eligible in score order) differ between lists, and repeat for a repeated cutoff
    cfg = RankConfig(exploration_share=0.3, seed=7)

    def explored_slots(cutoff: str) -> tuple[int, ...]:
        result = rank_members(world, pd.Timestamp(cutoff), fake_loaded(), 10, cfg)
        eligible = order_by_score(result.scored.loc[result.scored["eligible"]])
        return _explored_positions(eligible, result.candidates)

    slots = [explored_slots(cutoff) for cutoff in ("2026-06-01", "2026-06-02", "2026-06-03", "2026-06-04")]
    assert all(set(s) <= set(range(7, 17)) for s in slots)
    assert len(set(slots)) > 1
    assert explored_slots("2026-06-02") == slots[1]


def test_gender_quota_ranks_and_is_honoured(world):
    cfg = RankConfig(quotas={"gender": 0.5}, exploration_share=0.2, seed=3)
    unconstrained = rank_members(world, AS_OF, fake_loaded(), 6, cfg.model_copy(update={"quotas": {}})).candidates
    gender = world.members.set_index("member_id")["gender"]
    assert gender.loc[unconstrained["member_id"]].value_counts().max() > 3  # the quota has work to do
    result = rank_members(world, AS_OF, fake_loaded(), 6, cfg)
    listed = result.candidates
    assert gender.loc[listed["member_id"]].value_counts().to_dict() == {"F": 3, "M": 3}
    assert result.meta["segments"]["gender"] == {"F": 3, "M": 3}
    assert list(listed.columns) == candidate_columns(3)  # gender is used for the quota, not written to the list


def test_short_pool_and_bad_inputs():
    chosen = select_candidates(_pool(3), 10, RankConfig(exploration_share=0.1), as_of=AS_OF)
    assert len(chosen) == 3 and not chosen["exploration"].any()
    with pytest.raises(ValueError, match="at least 1"):
        select_candidates(_pool(3), 0, RankConfig(), as_of=AS_OF)
    with pytest.raises(ValueError, match="quota columns"):
        select_candidates(_pool(3).drop(columns="channel"), 2, RankConfig(quotas={"channel": 0.5}), as_of=AS_OF)


def test_rank_config_validation():
    with pytest.raises(ValidationError, match="tier_b_min_score"):
        RankConfig(tier_a_min_score=0.2, tier_b_min_score=0.5)
    with pytest.raises(ValidationError, match="unknown segment column"):
        RankConfig(quotas={"shoe_size": 0.5})
    with pytest.raises(ValidationError, match="quota share"):
        RankConfig(quotas={"channel": 1.5})
    with pytest.raises(ValidationError):
        RankConfig(exploration_share=1.0)
    cfg = RankConfig()
    assert cfg.config_hash(k=10) == RankConfig().config_hash(k=10) != cfg.config_hash(k=11)


def test_world_ranking_with_quotas_and_exploration(world):
    cfg = RankConfig(quotas={"channel": 0.3}, exploration_share=0.2, seed=1)
    result = rank_members(world, AS_OF, fake_loaded(), 10, cfg)
    listed = result.candidates
    assert len(listed) == 10 and listed["exploration"].sum() == 2
    assert listed["channel"].value_counts().max() <= 3
    assert result.meta["counts"]["exploration"] == 2


# ------------------------------------------------------------ trial category


def test_trial_category_is_point_in_time():
    orders = pd.DataFrame(
        {
            "member_id": ["a", "a", "a", "a", "b", "b", "c"],
            "ordered_at": pd.to_datetime(["2026-05-01", "2026-05-02", "2026-06-01", "2025-05-01",
                                          "2026-01-01", "2026-01-02", "2026-02-01"]),
            "amount": [50.0, 60.0, 1000.0, 900.0, 100.0, 100.0, 500.0],
            "category": ["lip", "eye", "fragrance", "hair", "zeta", "alpha", None],
            "refunded": [False, False, False, False, False, False, False],
            "refunded_at": pd.to_datetime([None] * 7),
        }
    )
    # refunded before the cutoff: no longer counts
    orders.loc[len(orders)] = ["a", pd.Timestamp("2026-04-01"), 700.0, "refund", True, pd.Timestamp("2026-04-20")]
    # refunded only after the cutoff: still counted at the cutoff (the refund was not known yet)
    orders.loc[len(orders)] = ["b", pd.Timestamp("2026-03-01"), 300.0, "later", True, pd.Timestamp("2026-06-15")]
    out = trial_categories(orders, pd.Timestamp("2026-06-01"), 365).set_index("member_id")["trial_category"]
    # an order at the cutoff, one refunded before it and one older than 365 days are ignored; ties -> alphabetical
    assert out.to_dict() == {"a": "eye", "b": "later"}


def test_trial_category_refund_without_time_follows_the_feature_rule():
    orders = pd.DataFrame(
        {
            "member_id": ["a", "a"],
            "ordered_at": pd.to_datetime(["2026-05-01", "2026-05-02"]),
            "amount": [50.0, 900.0],
            "category": ["lip", "eye"],
            "refunded": [False, True],
        }
    )
    as_of = pd.Timestamp("2026-06-01")
    # no refunded_at column: "count" (the feature pipeline's default) keeps the order, "drop" removes it
    assert trial_categories(orders, as_of).set_index("member_id")["trial_category"].to_dict() == {"a": "eye"}
    dropped = trial_categories(orders, as_of, refunds_without_time="drop")
    assert dropped.set_index("member_id")["trial_category"].to_dict() == {"a": "lip"}


def test_world_trial_category_ignores_order_at_cutoff(ranked):
    scored = ranked.scored.set_index("member_id")
    assert scored.loc["c000", "trial_category"] != "fragrance"


# ---------------------------------------------------------- filters / lookup


def test_filter_and_lookup(ranked):
    listed = ranked.candidates
    a_only = filter_candidates(listed, tier="A")
    assert (a_only["tier"] == "A").all()
    tier_two = filter_candidates(listed, city_tier=2, top=2)
    assert len(tier_two) <= 2 and (tier_two["city_tier"] == 2).all()
    rows, unknown = lookup_members(ranked.scored, ["c003", "nobody", "c003", "m_black"])
    assert rows["member_id"].tolist() == ["c003", "m_black"] and unknown == ["nobody"]


# ------------------------------------------------------- output / determinism


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_inputs_same_bytes(world, tmp_path, fmt):
    cfg = RankConfig(quotas={"channel": 0.5}, exploration_share=0.2)
    first = rank_members(world, AS_OF, fake_loaded(), 8, cfg, generated_at="2026-06-01T01:00:00+00:00")
    second = rank_members(world, AS_OF, fake_loaded(), 8, cfg, generated_at="2026-06-01T02:00:00+00:00")
    one = write_ranked_list(first.candidates, first.meta, tmp_path / "one", [fmt])
    two = write_ranked_list(second.candidates, second.meta, tmp_path / "two", [fmt])
    assert one[fmt].read_bytes() == two[fmt].read_bytes()
    side_1, side_2 = json.loads(one.sidecar.read_text()), json.loads(two.sidecar.read_text())
    assert side_1.pop("generated_at") != side_2.pop("generated_at")
    assert side_1 == side_2 and side_1["list_id"] == first.meta["list_id"]
    assert one.sidecar == tmp_path / "one" / "one.meta.json" and one[fmt] == tmp_path / "one" / f"one.{fmt}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no temporary folders left


def test_csv_keeps_ids_and_sidecar_fields(ranked, tmp_path):
    written = write_ranked_list(ranked.candidates, ranked.meta, tmp_path / "list", ["csv"])
    assert written["csv"].read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 BOM for spreadsheet programs
    back = pd.read_csv(written["csv"], dtype={"member_id": str}, encoding="utf-8-sig")
    assert back["member_id"].tolist() == ranked.candidates["member_id"].tolist()
    assert {"reason_1_zh", "reason_1_en"} <= set(back.columns) and "reason_1" not in back.columns
    meta = json.loads(written.sidecar.read_text(encoding="utf-8"))
    for key in ("model", "as_of", "generated_at", "k", "exclusions", "counts", "expected_productive", "config_hash",
                "list_id", "target"):
        assert key in meta
    assert meta["model"]["version"] == "1" and meta["model"]["run_id"] == "run1" and meta["target"] == "observed"


def test_unsupported_output_names(ranked, tmp_path):
    with pytest.raises(ValueError, match="a ranked list is a folder"):
        write_ranked_list(ranked.candidates, ranked.meta, tmp_path / "list.csv")
    with pytest.raises(ValueError, match="unknown output format"):
        write_ranked_list(ranked.candidates, ranked.meta, tmp_path / "list", ["json"])
    assert list(tmp_path.iterdir()) == []


def test_as_of_must_be_parsed_at_the_edge(world):
    with pytest.raises(TypeError, match="parse it at the edge"):
        rank_members(world, "2026-06-01", fake_loaded(), 3)


def test_stale_data_and_impossible_cutoffs_are_flagged(world):
    late = rank_members(world, AS_OF + pd.Timedelta(days=400), fake_loaded(), 3, RankConfig(exploration_share=0.0))
    assert any("stale" in w for w in late.meta["warnings"])
    fresh = rank_members(world, AS_OF, fake_loaded(), 3, RankConfig(exploration_share=0.0))
    assert not any("stale" in w for w in fresh.meta["warnings"])
    with pytest.raises(ValueError, match="no member joined before"):
        rank_members(world, pd.Timestamp("1990-01-01"), fake_loaded(), 3)


# ----------------------------------------------------------------- engine and refund rule


def test_rank_uses_the_config_engine_and_the_models_refund_rule(world, monkeypatch, caplog):
    """`[engine]` reaches the feature build; the refund rule is the one the model was trained with."""
    import serving.rank as rank_module
    from features.build import EngineConfig

    seen: list[EngineConfig] = []
    real = rank_module.build_features

    def spy(data, as_of, engine=None, **kwargs):
        seen.append(engine)
        return real(data, as_of, engine, **kwargs)

    monkeypatch.setattr(rank_module, "build_features", spy)
    engine = EngineConfig(threads=1, memory_limit="512MB", refunds_without_time="count")
    loaded = fake_loaded()
    rank_members(world, AS_OF, loaded, 5, RankConfig(exploration_share=0.0), engine=engine, generated_at="t0")
    assert seen[-1] == engine  # a model that recorded no rule: the config's

    loaded.model.refunds_without_time_ = "drop"
    with caplog.at_level("WARNING", logger="serving.rank"):
        rank_members(world, AS_OF, loaded, 5, RankConfig(exploration_share=0.0), engine=engine, generated_at="t0")
    assert seen[-1] == EngineConfig(threads=1, memory_limit="512MB", refunds_without_time="drop")
    assert "trained with 'drop'" in caplog.text


def test_the_compiled_forest_ranks_the_same_list(world, tmp_path, monkeypatch):
    """A population at or above `compiled_min_rows` is scored by the compiled forest: the same
    scores, the same list and the same list id as LightGBM's own predict."""
    import pickle

    from support.worlds import fit_tiny_koc_model

    from serving.model_store import CACHE_ENV, LoadedModel

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    model = fit_tiny_koc_model()
    info = fake_loaded().info
    cfg = RankConfig(exploration_share=0.0)
    plain = rank_members(world, AS_OF, LoadedModel(model, info), 10, cfg.model_copy(update={"compiled_min_rows": None}))
    assert "compiled_" not in model.__dict__ and not list(tmp_path.glob("compiled/*.so"))
    twin = pickle.loads(pickle.dumps(model))
    fast = rank_members(world, AS_OF, LoadedModel(twin, info), 10, cfg.model_copy(update={"compiled_min_rows": 1}))
    assert "compiled_" in twin.__dict__ and len(list(tmp_path.glob("compiled/*.so"))) == 1
    np.testing.assert_allclose(fast.scored["score"], plain.scored["score"], rtol=0, atol=1e-12)
    pd.testing.assert_frame_equal(
        fast.candidates.drop(columns="score"), plain.candidates.drop(columns="score")
    )
    assert fast.meta["list_id"] == plain.meta["list_id"]


def test_ranking_from_a_feature_file_equals_building_the_features(world, tmp_path):
    """`koc features --out f.parquet` then `koc rank --features f.parquet`: the same list as
    building the features in the ranking; a file from other data or without the cutoff is refused."""
    from features.build import FeatureFileMismatch, write_features

    fingerprint = world.fingerprint()
    path = tmp_path / "features.parquet"
    write_features(world, [AS_OF - pd.Timedelta(days=30), AS_OF], path, data_fingerprint=fingerprint)
    cfg = RankConfig(exploration_share=0.0)
    built = rank_members(world, AS_OF, fake_loaded(), 10, cfg, generated_at="t0")
    read = rank_members(world, AS_OF, fake_loaded(), 10, cfg, generated_at="t0", features_file=path)
    pd.testing.assert_frame_equal(read.candidates, built.candidates)
    pd.testing.assert_frame_equal(read.scored, built.scored)
    assert read.meta == built.meta

    with pytest.raises(FeatureFileMismatch, match="holds cutoffs"):
        rank_members(world, AS_OF + pd.Timedelta(days=1), fake_loaded(), 10, cfg, features_file=path)
    stale = {**fingerprint, "orders": {"rows": -1}}
    with pytest.raises(FeatureFileMismatch, match="data changed since the file was built"):
        rank_members(world, AS_OF, fake_loaded(), 10, cfg, data_fingerprint=stale, features_file=path)
    plain = tmp_path / "plain.parquet"
    read.features.reset_index().to_parquet(plain)
    with pytest.raises(FeatureFileMismatch, match="records no provenance"):
        rank_members(world, AS_OF, fake_loaded(), 10, cfg, features_file=plain)
    from features.build import EngineConfig

    unsigned = tmp_path / "unsigned.parquet"  # written without the data's fingerprint
    write_features(world, [AS_OF], unsigned)
    with pytest.raises(FeatureFileMismatch, match="no data fingerprint"):
        rank_members(world, AS_OF, fake_loaded(), 10, cfg, features_file=unsigned)
    dropped = tmp_path / "dropped.parquet"  # refunds without a time dropped: not the model's feature semantics
    write_features(world, [AS_OF], dropped, EngineConfig(refunds_without_time="drop"), data_fingerprint=fingerprint)
    with pytest.raises(FeatureFileMismatch, match="refunds without time"):
        rank_members(world, AS_OF, fake_loaded(), 10, cfg, features_file=dropped)
