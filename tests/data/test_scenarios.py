"""Simulator scenarios: each yields valid contract data, its knobs move what they claim, and truth matches outcomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import from_frames
from kocrank.simulation import SCENARIOS, SimConfig, Simulation, get_scenario, simulate
from kocrank.simulation.diagnostics import self_driven_enrolments, truth_check, world_stats
from kocrank.simulation.policy import Budget, invitation_probability, invite

SMALL = {"members": 1500, "months": 12, "seed": 4}


@pytest.fixture(scope="module")
def worlds():
    return {name: simulate(SimConfig(scenario=name, **SMALL)) for name in SCENARIOS}


def test_unknown_scenario_names_the_known_ones():
    with pytest.raises(ValueError, match="spend_led"):
        SimConfig(scenario="nope")
    with pytest.raises(ValueError, match="explore_share"):
        type(get_scenario("default"))("bad", "", explore_share=1.5)


@pytest.mark.slow
def test_every_scenario_is_valid_contract_data_with_full_truth(worlds):
    for name, world in worlds.items():
        brand = from_frames(world.tables)  # raises on any violation
        truth = brand.tables["truth"]
        assert truth[["p_productive_if_invited", "p_productive_if_not_invited"]].notna().all().all(), name
        last = truth["as_of"] == truth["as_of"].max()
        # the historical policy's propensity is logged at every cutoff that invited (not the final one)
        assert truth.loc[~last, "p_invited"].notna().all() and truth.loc[last, "p_invited"].isna().all(), name
        # invitations add up to the budget: expected count = sum of propensities
        invited = world.tables["program"].query("status == 'invited'")
        assert truth["p_invited"].sum() == pytest.approx(len(invited), rel=0.02), name
        # the invitation's two paths: accept and produce, or decline and perhaps self-enrol later
        paths = truth[["p_accept_if_invited", "p_productive_if_accepted", "p_productive_after_decline"]]
        assert paths.notna().all().all() and ((paths >= 0) & (paths <= 1)).all().all(), name
        accept = truth["p_accept_if_invited"]
        recomposed = accept * truth["p_productive_if_accepted"] + (1 - accept) * truth["p_productive_after_decline"]
        np.testing.assert_allclose(recomposed, truth["p_productive_if_invited"], atol=1e-12, err_msg=name)
        # a decline closes this month's door: in these worlds the later path is no likelier than no invitation
        assert (truth["p_productive_after_decline"] <= truth["p_productive_if_not_invited"] + 1e-12).all(), name


@pytest.mark.slow
def test_default_scenario_is_todays_world():
    plain = simulate(SimConfig(members=400, months=6, seed=9))
    named = simulate(SimConfig(members=400, months=6, seed=9, scenario="default"))
    for table in plain.tables:
        pd.testing.assert_frame_equal(plain.tables[table], named.tables[table])
    assert named.traps.empty


@pytest.mark.slow
def test_knobs_move_what_they_claim(worlds):
    stats = {name: world_stats(w.tables, w.outcomes) for name, w in worlds.items()}
    # self-driven share: about 20% where self-enrolment is rare, 70%+ where it dominates
    assert stats["spend_led"]["self_driven_share"] < 0.3
    assert stats["activity_led"]["self_driven_share"] > 0.7

    # organic posting before any invitation: posts by never-enrolled members
    def organic_posts_per_member(world):
        enrolled = set(world.tables["program"].query("status == 'enrolled'")["member_id"])
        posts = world.tables["posts"]
        return (~posts["member_id"].isin(enrolled)).sum() / len(world.tables["members"])

    assert organic_posts_per_member(worlds["random_organic"]) > 2 * organic_posts_per_member(worlds["default"])
    assert organic_posts_per_member(worlds["mixed_quiet"]) < 0.6 * organic_posts_per_member(worlds["default"])

    # the random rule invites regardless of spend; the spend rule picks big spenders
    def invited_spend_rank(world):
        program, orders = world.tables["program"], world.tables["orders"]
        spend = orders.groupby("member_id")["amount"].sum().rank(pct=True)
        invited = program.query("status == 'invited'")["member_id"]
        return spend.reindex(invited).fillna(0).mean()

    assert invited_spend_rank(worlds["spend_led"]) > 0.8
    assert invited_spend_rank(worlds["random_organic"]) < 0.65


@pytest.mark.slow
def test_traps_top_the_rules_but_never_deliver(worlds):
    world = worlds["spend_led"]
    t = world.tables
    traps = world.traps.set_index("member_id")["trap"]
    spenders, regulars = traps.index[traps == "spender"], traps.index[traps == "regular"]
    assert len(spenders) > 20 and len(regulars) > 20
    # heavy spenders and resellers: far above everyone's spend, not a single post
    spend = t["orders"].groupby("member_id")["amount"].sum()
    assert spend.reindex(spenders).median() > 4 * spend.drop(traps.index, errors="ignore").median()
    assert not t["posts"]["member_id"].isin(spenders).any()
    # campaign regulars: many campaign joins, posts without interactions
    joins = t["events"].query("event_type == 'campaign_join'").groupby("member_id").size()
    assert joins.reindex(regulars).fillna(0).mean() > 2 * joins.reindex(t["members"]["member_id"]).fillna(0).mean()
    posts = t["posts"].loc[t["posts"]["member_id"].isin(regulars)].dropna(subset=["likes_7d"])
    reach = posts[["likes_7d", "comments_7d", "saves_7d"]].sum(axis=1)
    assert len(posts) > 0 and reach.mean() < 2
    # and the truth knows: neither kind becomes productive if invited
    truth = t["truth"].set_index("member_id")
    assert truth.loc[truth.index.isin(traps.index), "p_productive_if_invited"].max() < 0.01
    # the spend rule invites spender traps far beyond their share
    invited = t["program"].query("status == 'invited'")["member_id"]
    assert invited.isin(spenders).mean() > 5 * len(spenders) / len(t["members"])


def test_same_seed_same_scenario_world_and_scenarios_differ():
    cfg = SimConfig(members=300, months=5, seed=2, scenario="mixed_quiet")
    first, again = simulate(cfg), simulate(cfg)
    for table in first.tables:
        pd.testing.assert_frame_equal(first.tables[table], again.tables[table])
    pd.testing.assert_frame_equal(first.traps, again.traps)
    other = simulate(SimConfig(members=300, months=5, seed=2, scenario="activity_led"))
    assert not first.tables["program"].equals(other.tables["program"])


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["default", "activity_led"])
def test_truth_matches_realised_outcomes_of_invited_and_not_invited(scenario):
    """Among invited and among not-invited members, the realised rate matches the mean truth.

    The truth is an approximation (mood and audience growth within the window enter at
    their expected values), so the band is three standard errors or 15% of the rate.
    """
    world = simulate(SimConfig(members=6000, seed=5, scenario=scenario))
    for check in truth_check(world.tables, world.outcomes):
        assert check.rows > 500, check
        tolerance = max(3 * check.standard_error, 0.15 * check.expected)
        assert abs(check.realised - check.expected) <= tolerance, check


def test_logged_propensity_matches_the_rule_by_monte_carlo():
    rng = np.random.default_rng(0)
    n = 400
    score = rng.normal(size=n) * 0.6
    budget = Budget(k=20, explore=4)
    eligible = np.arange(n)
    counts = np.zeros(n)
    draws = 3000
    for _ in range(draws):
        counts[invite(rng, eligible, score, budget)] += 1
    p = invitation_probability(score, budget)
    assert p.sum() == pytest.approx(budget.k, abs=1e-6)
    assert np.abs(counts / draws - p).max() < 0.04
    assert np.corrcoef(counts / draws, p)[0, 1] > 0.99
    uniform = invitation_probability(np.zeros(n), Budget(k=20, explore=20))
    np.testing.assert_allclose(uniform, 20 / n)


def test_self_driven_enrolments_separate_answers_from_own_initiative():
    program = pd.DataFrame(
        {
            "member_id": ["a", "a", "b", "c", "c"],
            "event_at": pd.to_datetime(
                ["2024-01-01 05:00", "2024-01-04 00:00", "2024-02-03 00:00", "2024-01-01 00:00", "2024-03-01 00:00"]
            ),
            "status": ["invited", "enrolled", "enrolled", "invited", "enrolled"],
        }
    )
    np.testing.assert_array_equal(self_driven_enrolments(program).to_numpy(), [False, True, True])


def test_outside_policy_decides_the_invitations_and_its_propensity_is_logged():
    sim = Simulation(SimConfig(members=500, months=6, seed=3))
    sim.run(3)
    chosen = {}

    def pick_first_five(simulation, month, eligible):
        from kocrank.simulation import Invitations

        chosen[month] = eligible[:5]
        return Invitations(eligible[:5], np.where(np.isin(eligible, eligible[:5]), 1.0, 0.0))

    sim.run(5, pick_first_five)
    world = sim.finish()
    invited = world.tables["program"].query("status == 'invited'")
    for month in (3, 4):
        as_of = sim.as_of(month)
        got = invited.loc[invited["event_at"].dt.to_period("M") == as_of.to_period("M"), "member_id"]
        assert sorted(got) == sorted(f"{i:07d}" for i in chosen[month])
        logged = world.tables["truth"].query("as_of == @as_of")
        assert logged["p_invited"].sum() == 5
    with pytest.raises(ValueError, match="not eligible"):
        stray = Simulation(SimConfig(members=200, months=3, seed=1))
        stray.run(1)
        from kocrank.simulation import Invitations

        stray.run(2, lambda s, m, eligible: Invitations(np.array([10**6])))


def test_snapshot_is_what_a_brand_would_export_before_the_cutoff():
    sim = Simulation(SimConfig(members=600, months=8, seed=6))
    sim.run(5)
    snap = sim.snapshot()
    as_of = sim.as_of(5)
    assert "truth" not in snap
    brand = from_frames(snap)
    assert brand.data_end < as_of
    assert (snap["members"]["joined_at"] < as_of).all()
    late = snap["posts"]["posted_at"] + pd.Timedelta(days=7) > as_of
    assert snap["posts"].loc[late, "likes_7d"].isna().all() and snap["posts"].loc[~late, "likes_7d"].notna().all()
    final = sim.finish()  # the snapshot left the world intact: the history's rows are all there
    before = final.tables["orders"].loc[final.tables["orders"]["ordered_at"] < as_of]
    pd.testing.assert_frame_equal(
        before[["member_id", "ordered_at", "amount"]].reset_index(drop=True),
        snap["orders"][["member_id", "ordered_at", "amount"]].reset_index(drop=True),
    )
