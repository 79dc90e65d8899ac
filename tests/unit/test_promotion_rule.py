"""The promotion rule on backtest means (`training.promotion.decide_on_backtest`): exact cases, no store."""

from __future__ import annotations

import pytest

from training.promotion import ChampionFigures, decide_on_backtest, flat_label_definition, label_config_difference

CHAMPION = ChampionFigures(mean=0.30, pr_auc_mean=0.20, source="backtest mean, 4 cutoffs")


def _decide(mean: float, pr_auc: float, margin: float = 0.01, **overrides: object):
    args = {
        "model_name": "m",
        "version": "5",
        "run_id": "r",
        "summary": {"primary": "precision_at_100", "mean": mean, "std": 0.02, "pr_auc_mean": pr_auc, "n_cutoffs": 4},
        "margin": margin,
        "champion_version": "4",
        "champion": CHAMPION,
        **overrides,
    }
    return decide_on_backtest(**args)


def test_better_than_champion_by_more_than_the_margin_promotes() -> None:
    decision = _decide(0.32, 0.10)
    assert decision.promoted and decision.metric == "bt_mean_precision_at_100"
    assert decision.previous_champion == "4" and decision.champion_value == 0.30 and decision.margin == 0.01
    assert "0.3200 > champion v4 0.3000 (backtest mean, 4 cutoffs) + margin 0.01" in decision.reason


def test_worse_by_more_than_the_margin_does_not_promote_even_with_better_pr_auc() -> None:
    decision = _decide(0.28, 0.90)
    assert not decision.promoted and "< champion v4" in decision.reason


def test_within_the_margin_pr_auc_breaks_the_tie() -> None:
    wins = _decide(0.305, 0.22)
    assert wins.promoted and "tie broken on mean PR AUC 0.2200 > 0.2000" in wins.reason
    # a PR AUC gain inside the margin is still a tie
    loses = _decide(0.305, 0.205)
    assert not loses.promoted and "a tie never promotes" in loses.reason


def test_an_exact_tie_never_promotes_even_with_zero_margin() -> None:
    decision = _decide(0.30, 0.20, margin=0.0)
    assert not decision.promoted and decision.reason.startswith("tie:")
    assert _decide(0.3000001, 0.20, margin=0.0).promoted  # any strict gain with no margin


def test_first_model_is_promoted_and_missing_figures_are_not() -> None:
    assert _decide(0.1, 0.1, champion_version=None, champion=None).promoted
    no_figures = _decide(0.9, 0.9, champion=None)
    assert not no_figures.promoted and "recorded no precision_at_100" in no_figures.reason
    no_pr = _decide(0.305, 0.9, champion=ChampionFigures(0.30, None, "its test-cutoff figure, no backtest recorded"))
    assert not no_pr.promoted and "n/a" in no_pr.reason
    nan = _decide(float("nan"), 0.5)
    assert not nan.promoted and "has no mean" in nan.reason
    with pytest.raises(ValueError, match="margin must be >= 0"):
        _decide(0.3, 0.2, margin=-0.1)


def test_different_label_definitions_or_targets_never_auto_promote() -> None:
    base = {"horizon_days": 90, "min_posts": 3}
    assert (
        label_config_difference(flat_label_definition(base), flat_label_definition({**base, "target": "observed"}))
        is None
    )
    target = label_config_difference(flat_label_definition(base), flat_label_definition({**base, "target": "uplift"}))
    assert target == "target: champion observed, challenger uplift"
    decision = _decide(0.99, 0.99, label_note=target)
    assert not decision.promoted and "label definitions differ from champion v4 (target" in decision.reason
    # params logged as text compare with the typed definition
    assert flat_label_definition({"horizon_days": 90, "sources": ["a", "b"]}) == {
        "horizon_days": "90",
        "sources": "a,b",
        "target": "observed",
    }
