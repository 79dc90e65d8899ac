"""Outcomes of issued lists on a hand-built world: exact figures, send status, maturing lists."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from support.loop_worlds import hand_issued_list, hand_outcome_world

from serving.issued import LoopConfig
from serving.outcomes import bootstrap_rate_difference, list_outcome, score_outcomes


@pytest.fixture(scope="module")
def world():
    return hand_outcome_world()


def test_matured_list_exact_figures(world):
    out = list_outcome(hand_issued_list(), world, LoopConfig(bootstrap_reps=4000))
    assert out["matured"] and out["status"] == "sent"
    assert (out["invited"], out["sent"], out["accepted"]) == (8, 8, 5)  # e1-e4 and x1 enrolled
    assert out["productive"] == 4  # e1, e2, e3, x1 (e4 enrolled with too few posts)
    assert out["precision"] == pytest.approx(4 / 8)
    assert out["base_rate"] == pytest.approx(6 / 17)  # + b1 and n1 who self-enrolled; c1 too few posts
    assert out["lift"] == pytest.approx(0.5 / (6 / 17))
    assert out["expected_productive"] == pytest.approx(sum(round(0.9 - 0.05 * i, 2) for i in (0, 1, 2, 3, 4, 5, 8, 9)))
    # exploit 3/6 against control 0/2; explore 1/2 against the band's 1/3
    assert out["uplift_exploit"] == pytest.approx(0.5)
    assert out["uplift_exploit_low"] <= 0.5 <= out["uplift_exploit_high"]
    assert out["uplift_explore"] == pytest.approx(1 / 2 - 1 / 3)
    assert out["control"] == 2 and out["control_invited_elsewhere"] == 1 and out["control_productive"] == 0
    again = list_outcome(hand_issued_list(), world, LoopConfig(bootstrap_reps=4000))
    assert again["uplift_exploit_low"] == out["uplift_exploit_low"]  # seeded


def test_accepted_is_the_answer_to_the_invitation_as_training_counts_it(world):
    """A decline followed by a self-enrolment is a decline, and the answer must come within the
    list's `accept_days` of the invitation: the rule `accepted` is learnt by (`features.targets`)."""
    declined_then_enrolled = list_outcome(hand_issued_list(), hand_outcome_world(declined_first=("e4",)))
    assert declined_then_enrolled["accepted"] == 4  # e4 said no on 01-08, then enrolled on 01-20
    assert declined_then_enrolled["productive"] == 4  # productivity does not depend on the answer
    late = hand_issued_list()
    late.meta["accept_days"] = 10  # every enrolment came 15 days after its invitation
    assert list_outcome(late, world)["accepted"] == 0
    late.meta["accept_days"] = 16
    assert list_outcome(late, world)["accepted"] == 5


def test_list_not_sent_is_reported_not_scored(world):
    out = list_outcome(hand_issued_list("koc-2026-02-01", pd.Timestamp("2026-02-01")), world)
    assert out["matured"] and out["status"] == "not sent" and out["sent"] == 0
    assert math.isnan(out["precision"]) and math.isnan(out["uplift_exploit"])


def test_partly_sent_list_says_so(world):
    # only invitations within the send window count: a 4-day window misses those sent on day 5
    out = list_outcome(hand_issued_list(), world, LoopConfig(send_window_days=4))
    assert out["status"] == "not sent"
    partly = list_outcome(hand_issued_list(), hand_outcome_world(sent_late=("e6",)), LoopConfig())
    assert partly["status"] == "partly sent (7 of 8)" and partly["precision"] == pytest.approx(0.5)


def test_maturing_list_reports_estimate_and_realised_so_far():
    early = hand_outcome_world(data_end="2026-03-15")
    table = score_outcomes([hand_issued_list()], early)
    row = table.iloc[0]
    assert not row["matured"] and row["window_closes"] == "2026-04-08"
    assert row["productive"] == 4 and row["expected_productive"] > 0 and math.isnan(row["precision"])


def test_bootstrap_interval_covers_a_known_difference():
    rng = np.random.default_rng(0)
    treated, control = (rng.random(2000) < 0.30).astype(int), (rng.random(2000) < 0.20).astype(int)
    diff, low, high = bootstrap_rate_difference(treated, control, 4000, 0.95, np.random.default_rng(1))
    assert low < 0.10 < high and low < diff < high and high - low < 0.06
    assert all(math.isnan(v) for v in bootstrap_rate_difference(treated, control[:0], 100, 0.95, rng))


def test_pooled_row_over_matured_sent_lists(world):
    lists = [hand_issued_list("a"), hand_issued_list("b"), hand_issued_list("c", pd.Timestamp("2026-02-01"))]
    table = score_outcomes(lists, world).set_index("list_id")
    assert list(table.index) == ["a", "b", "c", "pooled (2 lists)"]  # c was not sent: not pooled
    pooled = table.loc["pooled (2 lists)"]
    assert (pooled["invited"], pooled["productive"], pooled["control"], pooled["k"]) == (16, 8, 4, 16)
    assert pooled["precision"] == pytest.approx(0.5) and pooled["uplift_exploit"] == pytest.approx(0.5)
    assert pooled["base_rate"] == pytest.approx(6 / 17)
