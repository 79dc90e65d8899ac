"""The simulated brand world: contract-shaped, deterministic, and consistent with its own bookkeeping."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import typer
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from features.contract import (
    CANONICAL_DTYPES,
    EVENT_TYPES,
    PLATFORMS,
    PROGRAM_STATUSES,
    TABLES,
    ContractError,
    from_frames,
    load_data,
)
from features.io import write_tables
from features.labels import LabelConfig, default_labels, eligibility, label_window_complete
from kocrank import cli_simulate
from kocrank.simulation import SIM_CHANNELS, SIM_TABLES, SimConfig, dirty_copy, simulate

pytestmark = pytest.mark.slow


def _digest(tables: dict[str, pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for name in sorted(tables):
        h.update(name.encode())
        h.update(pd.util.hash_pandas_object(tables[name], index=False).to_numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world():
    return simulate(SimConfig(members=5000, seed=3))


@pytest.fixture(scope="module")
def brand(world):
    return from_frames(world.tables)


def test_same_seed_same_world_and_other_seed_differs():
    cfg = SimConfig(members=600, seed=11, months=10)
    first, again = simulate(cfg), simulate(cfg)
    assert _digest(first.tables) == _digest(again.tables)
    pd.testing.assert_frame_equal(first.outcomes, again.outcomes)
    other = simulate(SimConfig(members=600, seed=12, months=10))
    assert _digest(other.tables) != _digest(first.tables)


def test_every_table_has_canonical_columns_and_dtypes(world):
    assert set(world.tables) == set(SIM_TABLES)
    for name, df in world.tables.items():
        spec = TABLES[name]
        # every contract column in order; optional ones the simulator does not emit yet
        # (orders.refunded_at, contract v1.1) may be left out
        assert list(df.columns) == [c for c in spec.column_names if c in df.columns], name
        assert all(c.optional for c in spec.columns if c.name not in df.columns), name
        for col in (c for c in spec.columns if c.name in df.columns):
            assert str(df[col.name].dtype) == CANONICAL_DTYPES[col.kind], f"{name}.{col.name}: {df[col.name].dtype}"
        assert len(df) > 0, name


def test_clean_world_validates_unchanged(world, brand):
    assert brand.absent == frozenset({"labels"})
    assert not [w for w in brand.warnings if "labels" not in w]
    for name in SIM_TABLES:
        validated = brand.tables[name]
        added = [c for c in validated.columns if c not in world.tables[name].columns]  # left-out optional columns
        assert all(validated[c].isna().all() for c in added), name
        pd.testing.assert_frame_equal(validated.drop(columns=added), world.tables[name], check_dtype=True)


def test_member_ids_are_zero_padded_text_and_survive_csv(tmp_path):
    small = simulate(SimConfig(members=300, seed=5, months=4))
    ids = small.tables["members"]["member_id"]
    assert ids.str.fullmatch(r"\d{7}").all() and ids.str.startswith("0").any()
    write_tables(small.tables, tmp_path, "csv")
    loaded = load_data(tmp_path)
    for name in SIM_TABLES:
        columns = list(small.tables[name].columns)  # without optional columns the simulator leaves out
        pd.testing.assert_frame_equal(loaded.tables[name][columns], small.tables[name], check_exact=False, rtol=1e-12)


def test_dirty_world_is_rejected_with_the_expected_rules(world):
    dirty = dirty_copy(world.tables, seed=1)
    assert len(dirty["events"]) > len(world.tables["events"])  # duplicates added, input untouched
    assert world.tables["orders"]["amount"].min() >= 0
    with pytest.raises(ContractError) as err:
        from_frames(dirty)
    broken = {(v.table, v.column) for v in err.value.violations}
    assert {("orders", "member_id"), ("orders", "amount"), ("members", "birth_year"), ("posts", "platform")} <= broken
    # mixed-offset timestamps are not violations: they parse and convert
    assert not any(v.column in ("ordered_at", "event_at") for v in err.value.violations)
    assert dirty["orders"]["ordered_at"].str.endswith("+00:00").any()


def test_dirty_flag_applies_the_dirt():
    clean = simulate(SimConfig(members=300, seed=4, months=4))
    dirty = simulate(SimConfig(members=300, seed=4, months=4, dirty=True))
    pd.testing.assert_frame_equal(clean.outcomes, dirty.outcomes)
    with pytest.raises(ContractError):
        from_frames(dirty.tables)


def test_labels_and_eligibility_agree_with_simulator_bookkeeping(world, brand):
    cfg = LabelConfig()
    checked = 0
    for as_of, outcome in world.outcomes.groupby("as_of"):
        outcome = outcome.sort_values("member_id", ignore_index=True)
        elig = eligibility(brand, as_of, cfg)
        assert elig["member_id"].tolist() == outcome["member_id"].tolist()
        np.testing.assert_array_equal(elig["eligible"].to_numpy(), outcome["eligible"].to_numpy())
        complete = label_window_complete(brand, as_of, cfg)
        assert complete == bool(outcome["window_complete"].iloc[0])
        if not complete:
            continue
        labels = default_labels(brand, as_of, cfg)
        eligible = outcome["eligible"].to_numpy()
        np.testing.assert_array_equal(labels["label"].to_numpy()[eligible], outcome["productive"].to_numpy()[eligible])
        checked += 1
    assert checked >= 15


def test_base_rate_among_eligible_is_low_but_not_tiny(world):
    assert 0.01 <= world.base_rate <= 0.05


def test_truth_covers_exactly_the_eligible_members(world):
    truth = world.tables["truth"]
    assert truth["p_productive_if_invited"].between(0, 1).all()
    assert not truth.duplicated(["member_id", "as_of"]).any()
    eligible = world.outcomes.loc[world.outcomes["eligible"], ["member_id", "as_of"]]
    merged = eligible.merge(truth, on=["member_id", "as_of"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()


def test_truth_predicts_what_happens_to_invited_members(world):
    program = world.tables["program"]
    invited = program.loc[program["status"] == "invited", ["member_id", "event_at"]]
    invited = invited.assign(as_of=invited["event_at"].dt.to_period("M").dt.to_timestamp().astype("datetime64[us]"))
    done = world.outcomes.loc[world.outcomes["window_complete"]]
    rows = invited.merge(done, on=["member_id", "as_of"]).merge(world.tables["truth"], on=["member_id", "as_of"])
    assert len(rows) > 300 and rows["eligible"].all()  # the policy only invites eligible members
    assert roc_auc_score(rows["productive"], rows["p_productive_if_invited"]) > 0.75
    # and it is calibrated: realised rate close to the mean predicted probability
    assert abs(rows["productive"].mean() - rows["p_productive_if_invited"].mean()) < 0.06


def test_every_category_of_activity_appears(world):
    t = world.tables
    assert set(t["events"]["event_type"]) == set(EVENT_TYPES)
    assert set(t["posts"]["platform"]) == set(PLATFORMS)
    assert set(t["social"]["platform"]) == set(PLATFORMS)
    assert set(t["program"]["status"]) == set(PROGRAM_STATUSES)
    assert set(t["members"]["channel"]) == set(SIM_CHANNELS)
    assert t["orders"]["category"].nunique() >= 10
    assert 0.02 <= t["orders"]["refunded"].mean() <= 0.06
    assert 0.04 <= (~t["members"]["marketing_consent"]).mean() <= 0.09
    campaign_events = t["events"]["event_type"].isin(["campaign_join", "trial_apply", "trial_feedback"])
    assert t["events"].loc[campaign_events, "campaign_id"].notna().all()
    assert t["events"].loc[~campaign_events, "campaign_id"].isna().all()
    assert t["posts"]["campaign_id"].notna().any() and t["posts"]["campaign_id"].isna().any()


def test_activity_lies_within_membership_and_history(world):
    t = world.tables
    end = pd.Timestamp("2026-01-01")
    joined = t["members"].set_index("member_id")["joined_at"]
    for name, col in (
        ("orders", "ordered_at"),
        ("events", "event_at"),
        ("posts", "posted_at"),
        ("program", "event_at"),
        ("social", "observed_at"),
    ):
        df = t[name]
        assert (df[col] >= pd.Timestamp("2024-01-01")).all() and (df[col] < end).all(), name
        assert (df[col].to_numpy() > joined.loc[df["member_id"]].to_numpy()).all(), name
    hours = t["events"]["event_at"].dt.hour
    assert hours.nunique() == 24 and (t["events"]["event_at"].dt.minute != 0).any()
    posts = t["posts"]
    unknown = posts["likes_7d"].isna()
    assert unknown.equals(posts["posted_at"] + pd.Timedelta(days=7) > end)
    assert posts[["comments_7d", "saves_7d"]].isna().all(axis=1).equals(unknown)


def test_referrals_are_consistent_with_referee_members_and_orders(world):
    t = world.tables
    refs = t["referrals"]
    joined_refs = refs.loc[refs["referee_id"].notna()]
    assert 0 < len(joined_refs) < len(refs)
    assert joined_refs["referee_id"].is_unique
    members = t["members"].set_index("member_id")
    referees = members.loc[joined_refs["referee_id"]]
    assert (referees["channel"] == "referral").all()
    np.testing.assert_array_equal(referees["joined_at"].to_numpy(), joined_refs["referee_joined_at"].to_numpy())
    assert (joined_refs["referee_joined_at"] > joined_refs["referred_at"]).all()
    first_order = t["orders"].groupby("member_id")["ordered_at"].min()
    expected = first_order.reindex(joined_refs["referee_id"]).to_numpy()
    np.testing.assert_array_equal(joined_refs["referee_first_order_at"].to_numpy(), expected)
    assert joined_refs["referee_first_order_at"].notna().mean() > 0.5
    assert refs.loc[refs["referee_id"].isna(), ["referee_joined_at", "referee_first_order_at"]].isna().all().all()
    invites = t["events"].loc[t["events"]["event_type"] == "referral_invite"]
    assert len(invites) == len(refs)


def test_programme_invites_follow_the_cutoffs(world):
    program = world.tables["program"]
    invited = program.loc[program["status"] == "invited", "event_at"]
    assert (invited.dt.day == 1).all() and invited.dt.hour.between(2, 12).all()
    enrolled = program.loc[program["status"] == "enrolled"]
    assert len(enrolled) > len(invited) * 0.3  # invitations accepted plus self-enrolments
    per_cutoff = invited.dt.to_period("M").value_counts()
    eligible = world.outcomes.groupby(world.outcomes["as_of"].dt.to_period("M"))["eligible"].sum()
    share = per_cutoff / eligible.reindex(per_cutoff.index)
    assert share.between(0.005, 0.015).all()


def test_start_must_be_a_month_start():
    with pytest.raises(ValueError, match="first day of a month"):
        SimConfig(start="2024-01-15")


def _app(register) -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """Test app."""

    return app


def test_cli_writes_a_data_directory(tmp_path):
    app = _app(cli_simulate.register)
    out = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["simulate", "--members", "200", "--seed", "2", "--months", "6", "--out", str(out), "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.csv" for name in SIM_TABLES)
    assert "base rate" in result.output
    loaded = load_data(out)
    assert len(loaded.members) >= 200
    bad = CliRunner().invoke(app, ["simulate", "--out", str(out), "--format", "xlsx"])
    assert bad.exit_code != 0


def test_closed_loop_on_a_tiny_world(tmp_path):
    """`koc loop`: kocrank, the historical rule and random invitations from one warm-up, same budget."""
    from kocrank.simulation.loop import LoopConfig

    app = _app(cli_simulate.register_loop)
    out = tmp_path / "loop.csv"
    args = ["loop", "--members", "2000", "--seed", "1", "--warmup-months", "16", "--months", "2", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "kocrank gained" in result.output and "over historical" in result.output
    months = pd.read_csv(out, parse_dates=["as_of"])
    assert sorted(months["policy"].unique()) == ["historical", "kocrank", "random"]
    assert len(months) == 6 and (months["invited"] > 0).all()
    assert (months["productive"] <= months["invited"]).all() and (months["accepted"] <= months["invited"]).all()
    # same budget at every cutoff (1% of eligible; eligibility differs by a member or two between branches)
    budget = months.pivot(index="as_of", columns="policy", values="invited")
    assert (budget.max(axis=1) - budget.min(axis=1) <= 2).all()
    # the historical branch is the plain simulation of the same world up to the end of the loop
    cfg = LoopConfig(members=2000, seed=1, warmup_months=16, loop_months=2)
    plain = simulate(cfg.sim).tables["program"]
    invited = plain.loc[plain["status"] == "invited", "event_at"].dt.to_period("M").value_counts()
    historical = months.loc[months["policy"] == "historical"]
    historical = historical.set_index(historical["as_of"].dt.to_period("M"))
    assert historical["invited"].to_dict() == {m: invited[m] for m in historical.index}
    bad = CliRunner().invoke(app, ["loop", "--policies", "kocrank,oracle"])
    assert bad.exit_code != 0 and "oracle" in bad.output
