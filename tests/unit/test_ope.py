"""Off-policy evaluation recovers a known policy value from a synthetic log with logged propensities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.issued import LoopConfig
from serving.ope import evaluate_top_k, top_k_mask


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_log(seed: int, n: int = 4000, k: int = 200) -> tuple[pd.DataFrame, float, float]:
    """A logged list whose invitation probabilities and true response rates are known.

    Logging policy in the logged score's order: a block of 250 invited with p = 0.8, a band
    of 400 with p = 0.25 and everyone else with p = 0.05. Returns (log, true value of the
    target's top K, true value of the champion's top K).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    true_p = _sigmoid(-2.0 + 1.2 * x)
    score = _sigmoid(-2.0 + 1.2 * (x + rng.normal(0, 0.8, n)))
    target_score = _sigmoid(-2.0 + 1.2 * (x + rng.normal(0, 0.3, n)))
    order = np.argsort(-score)
    p = np.full(n, 0.05)
    p[order[:250]] = 0.8
    p[order[250:650]] = 0.25
    invited = rng.random(n) < p
    productive = (invited & (rng.random(n) < true_p)).astype("int64")
    log = pd.DataFrame({"member_id": [f"m{i:05d}" for i in range(n)], "score": score, "target_score": target_score,
                        "invited": invited, "p_invite": p, "productive": productive})
    log.attrs.update(list_id=f"list{seed}", k=k)
    target_truth = float(true_p[top_k_mask(log["target_score"], log["member_id"], k)].sum())
    champion_truth = float(true_p[top_k_mask(log["score"], log["member_id"], k)].sum())
    return log, target_truth, champion_truth


def test_snips_and_dr_recover_the_known_value_within_their_intervals():
    # six monthly lists pooled; the 99% interval must hold the true value (the coverage of
    # the intervals over independent logs is checked below)
    logs, target, champion = zip(*(synthetic_log(seed) for seed in range(6)), strict=True)
    result = evaluate_top_k(list(logs), LoopConfig(bootstrap_reps=2000, confidence=0.99))
    truth = {"challenger": np.mean(target), "champion": np.mean(champion)}
    for value in result.values:
        assert value.low <= truth[value.policy] <= value.high, value
        assert abs(value.value - truth[value.policy]) < 0.2 * truth[value.policy]
    for estimator, (_, low, high) in result.difference.items():
        assert low <= truth["challenger"] - truth["champion"] <= high, estimator
    assert result.coverage == 1.0 and len(result.per_list) == 6


def test_dr_interval_coverage_over_many_logs():
    # a 95% interval should hold the truth in most independent replications
    hits = {"snips": 0, "dr": 0}
    for seed in range(100, 120):
        log, target, _ = synthetic_log(seed, n=2000, k=100)
        result = evaluate_top_k([log], LoopConfig(bootstrap_reps=1000))
        for value in result.values:
            if value.policy == "challenger":
                hits[value.estimator] += value.low <= target <= value.high
    assert hits["dr"] >= 16 and hits["snips"] >= 16, hits


def test_no_matured_list_is_a_clear_error():
    with pytest.raises(ValueError, match="no matured issued list"):
        evaluate_top_k([])


def test_verdict_skips_lists_whose_invitations_were_not_sent():
    from support.loop_worlds import hand_issued_list, hand_outcome_world
    from support.worlds import LinearFakeModel

    from serving.ope import ope_verdict

    challenger = LinearFakeModel({"posts_180d": 1.0})
    sent = ope_verdict([hand_issued_list()], hand_outcome_world(), challenger, LoopConfig(bootstrap_reps=200))
    assert sent.result is not None and sent.result.lists == ["koc-2026-01-01"] and sent.allows_promotion
    mostly_unsent = hand_outcome_world(sent_late=("e1", "e2", "e3", "e4", "e5", "e6"))
    skipped = ope_verdict([hand_issued_list()], mostly_unsent, challenger, LoopConfig(require_ope_win=True))
    assert skipped.result is None and skipped.allows_promotion and "no off-policy evidence" in skipped.reason


def test_gate_blocks_a_worse_challenger_only_when_required():
    from serving.ope import verdict_from

    logs = []
    for seed in range(3):
        log, _, _ = synthetic_log(seed)
        log["target_score"] = np.random.default_rng(seed).random(len(log))  # a challenger that ranks at random
        logs.append(log)
    result = evaluate_top_k(logs, LoopConfig(bootstrap_reps=500))
    assert result.difference["dr"][2] < 0  # clearly worse than the champion
    assert not verdict_from(result, LoopConfig(require_ope_win=True)).allows_promotion
    assert verdict_from(result, LoopConfig()).allows_promotion
