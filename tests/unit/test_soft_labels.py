"""The denoised productivity label (`training.soft_labels`) and the `two_path_soft` components."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.labels import LabelConfig
from training.model import KocModel
from training.soft_labels import (
    POSTING_COLUMNS,
    fit_prior,
    posterior_productive,
    soft_productive,
    with_soft_label,
)
from training.targets import COMPONENTS, TargetUnavailable, components_for, soft_training_rows

MIN_POSTS, MIN_INTERACTIONS = 3, 100


def _windows(members: int, seed: int) -> dict[str, np.ndarray]:
    """Members with a known posting rate λ (Gamma) and interaction level θ (Normal), one window each."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(2.0, 2.0, members)  # mean 4 posts per window, overdispersed
    theta = rng.normal(3.0, 0.6, members)  # log(1 + interactions) per post, sd 1 within a member
    posts = rng.poisson(rate)
    log_v = [theta[i] + rng.standard_normal(posts[i]) for i in range(members)]
    interactions = [np.floor(np.expm1(v)).clip(0) for v in log_v]
    logs = [np.log1p(v) for v in interactions]
    observed = np.array([(len(v) >= MIN_POSTS) & (v.sum() >= MIN_INTERACTIONS) for v in interactions])
    # the truth: P(a fresh window meets the bar | λ, θ), by Monte Carlo with the true parameters
    draws = 400
    count = rng.poisson(rate[:, None], size=(members, draws))
    width = int(count.max())
    fresh = np.floor(np.expm1(theta[:, None, None] + rng.standard_normal((members, draws, width)))).clip(0)
    fresh *= np.arange(width)[None, None, :] < count[:, :, None]
    truth = ((count >= MIN_POSTS) & (fresh.sum(axis=2) >= MIN_INTERACTIONS)).mean(axis=1)
    return {
        "posts": posts.astype(float),
        "log_sum": np.array([v.sum() for v in logs]),
        "log_sq": np.array([(v**2).sum() for v in logs]),
        "observed": observed.astype(float),
        "truth": truth,
        "rate": rate,
        "theta": theta,
    }


def test_the_prior_recovers_the_population_it_was_fitted_on():
    w = _windows(6000, seed=1)
    prior = fit_prior(w["posts"], w["log_sum"], w["log_sq"])
    assert prior.shape / prior.rate == pytest.approx(4.0, rel=0.05)  # mean posting rate
    assert prior.shape == pytest.approx(2.0, rel=0.2)
    # log1p of floored counts: within-member spread a little under 1, centre a little under 3
    assert 0.7 < prior.sigma2 < 1.1
    assert 2.6 < prior.theta0 < 3.0
    assert 0.2 < prior.tau2 < 0.5


def test_the_soft_label_tracks_the_truth_closer_than_the_observed_outcome_and_is_calibrated():
    """What the soft label is for: on members whose true P(productive) is known, it is nearer to it
    than the one 0/1 window is, and it is not biased on average."""
    w = _windows(3000, seed=2)
    prior = fit_prior(w["posts"], w["log_sum"], w["log_sq"])
    soft = posterior_productive(w["posts"], w["log_sum"], prior, MIN_POSTS, MIN_INTERACTIONS, seed=0)
    error_soft = np.mean((soft - w["truth"]) ** 2)
    error_observed = np.mean((w["observed"] - w["truth"]) ** 2)
    assert error_soft < 0.5 * error_observed
    assert np.corrcoef(soft, w["truth"])[0, 1] > np.corrcoef(w["observed"], w["truth"])[0, 1] + 0.1
    assert abs(soft.mean() - w["truth"].mean()) < 0.03
    # more posts and more interactions never lower it (same prior, same draws)
    base = posterior_productive(np.array([2.0, 2.0, 5.0]), np.array([6.0, 9.0, 15.0]), prior, MIN_POSTS, MIN_INTERACTIONS)
    assert base[0] < base[1] and base[0] < base[2]


def test_soft_labels_are_fitted_per_cutoff_and_deterministic():
    w = _windows(400, seed=3)
    frame = pd.DataFrame(
        {
            "as_of": pd.to_datetime(["2025-01-01", "2025-02-01"] * 200).astype("datetime64[us]"),
            "enrolled": np.r_[np.ones(300), np.zeros(100)].astype("int8"),
            "window_posts": w["posts"].astype("int16"),
            "window_log_interactions": w["log_sum"].astype("float32"),
            "window_log_interactions_sq": w["log_sq"].astype("float32"),
        }
    )
    first = soft_productive(frame, MIN_POSTS, MIN_INTERACTIONS)
    np.testing.assert_array_equal(first, soft_productive(frame, MIN_POSTS, MIN_INTERACTIONS))
    assert np.isnan(first[300:]).all() and not np.isnan(first[:300]).any()  # enrolled rows only
    # a cutoff's labels depend on its own rows only: changing the other cutoff's windows leaves them
    february = frame["as_of"] == pd.Timestamp("2025-02-01")
    other = frame.copy()
    other.loc[february, list(POSTING_COLUMNS)] = 0
    january = (frame["as_of"] == pd.Timestamp("2025-01-01")).to_numpy()
    np.testing.assert_array_equal(soft_productive(other, MIN_POSTS, MIN_INTERACTIONS)[january], first[january])


def test_the_soft_label_learnt_by_cross_entropy_equals_each_row_entered_twice():
    """LightGBM's cross_entropy on the soft label has the binary log-loss's gradient and hessian on
    the row entered twice (a positive weighted by soft, a negative by 1 - soft): the same trees
    with half the rows. Checked on a forest whose bins and leaves do not depend on row counts."""
    rng = np.random.default_rng(3)
    n = 400
    X = pd.DataFrame({"a": rng.integers(0, 12, n).astype("float32"), "b": rng.integers(0, 7, n).astype("float32")})
    soft = 1.0 / (1.0 + np.exp(-(0.4 * X["a"].to_numpy() - 0.6 * X["b"].to_numpy() + rng.normal(0, 0.5, n))))
    weight = rng.uniform(0.5, 2.0, n)
    X_val = X.iloc[:100].reset_index(drop=True)
    y_val = (rng.random(100) < soft[:100]).astype(int)
    params = {"learning_rate": 0.1, "num_leaves": 7, "min_data_in_leaf": 1, "min_sum_hessian_in_leaf": 0.0,
              "feature_fraction": 1.0, "bagging_fraction": 1.0, "bagging_freq": 0, "lambda_l2": 1.0,
              "num_boost_round": 60, "early_stopping_rounds": 60, "monotone_increasing": ()}
    rows = pd.DataFrame({"productive": np.int8(0), "weight": weight}).join(X)
    once = with_soft_label(rows, "productive", soft)
    assert once["productive"].dtype == "float64" and len(once) == n
    np.testing.assert_array_equal(once["weight"].to_numpy(), weight)  # weights unchanged
    by_soft = KocModel(params).fit(X, once["productive"], X_val, y_val, sample_weight=weight)
    twice_X = pd.concat([X, X], ignore_index=True)
    twice_y = np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]
    by_copies = KocModel(params).fit(twice_X, twice_y, X_val, y_val, sample_weight=np.r_[weight * soft, weight * (1 - soft)])
    assert by_soft.best_iteration_ == by_copies.best_iteration_
    np.testing.assert_allclose(by_soft.raw_score(X), by_copies.raw_score(X), atol=1e-6)
    refit = KocModel(params).fit_fixed(X, once["productive"], 30, sample_weight=weight)
    assert refit.best_iteration_ == 30
    with pytest.raises(ValueError, match="probability in"):
        KocModel(params).fit(X, soft * 2.0, X_val, y_val)


def _snapshot_rows() -> pd.DataFrame:
    w = _windows(300, seed=4)
    rng = np.random.default_rng(5)
    enrolled = (rng.random(300) < 0.5).astype("int8")
    invited = (rng.random(300) < 0.3).astype("int8")
    productive = (w["observed"] * enrolled).astype("int8")
    return pd.DataFrame(
        {
            "member_id": [f"m{i:03d}" for i in range(300)],
            "as_of": pd.Timestamp("2025-01-01"),
            "weight": 1.0,
            "invited": invited,
            "enrolled": enrolled,
            "productive": productive,
            "label": (enrolled & productive).astype("int64"),
            "window_posts": (w["posts"] * enrolled).astype("int16"),
            "window_log_interactions": (w["log_sum"] * enrolled).astype("float32"),
            "window_log_interactions_sq": (w["log_sq"] * enrolled).astype("float32"),
        }
    )


def test_the_soft_components_learn_from_their_rows_with_the_soft_label():
    assert components_for("if_invited", "two_path_soft") == ["accept", "productive_enrolled_soft", "not_invited_outcome_soft"]
    frame = _snapshot_rows()
    config = LabelConfig().model_dump()
    soft = pd.Series(soft_productive(frame, config["min_posts"], config["min_interactions"]), index=frame["member_id"])
    enrolled = soft_training_rows(frame, "productive_enrolled_soft", config)
    assert (enrolled["enrolled"] == 1).all() and (enrolled["weight"] == 1.0).all()
    assert enrolled["member_id"].is_unique and len(enrolled) == int(frame["enrolled"].sum())  # each row once
    np.testing.assert_allclose(enrolled["productive"].to_numpy(), soft[enrolled["member_id"]].to_numpy())
    assert 0.0 < enrolled["productive"].min() and enrolled["productive"].max() < 1.0  # a probability, not the 0/1 outcome
    declined = soft_training_rows(frame, "not_invited_outcome_soft", config)
    assert (declined["invited"] == 0).all() and declined["member_id"].is_unique
    # a member who did not enrol is a plain negative: label 0, full weight
    never = declined.loc[declined["enrolled"] == 0]
    assert (never["label"] == 0).all() and (never["weight"] == 1.0).all()
    joined = declined.loc[declined["enrolled"] == 1]
    np.testing.assert_allclose(joined["label"].to_numpy(), soft[joined["member_id"]].to_numpy())
    assert COMPONENTS["not_invited_outcome_soft"].soft and not COMPONENTS["not_invited_outcome"].soft


def test_without_the_window_posts_the_soft_components_are_unavailable():
    """A brand's own labels table: the rule behind the label is unknown, so there is no soft label."""
    frame = _snapshot_rows().drop(columns=list(POSTING_COLUMNS))
    with pytest.raises(TargetUnavailable, match="default label's window posts"):
        soft_training_rows(frame, "productive_enrolled_soft", LabelConfig().model_dump())


def test_a_soft_method_without_the_window_posts_falls_back_to_its_plain_method_not_to_observed():
    """With a brand's own labels table the run still learns `two_path` (invitations and enrolments are
    logged) and says why, rather than dropping to the observed label."""
    from training.config import TrainConfig
    from training.train import fit_target

    def frame(seed: int) -> pd.DataFrame:
        rows = _snapshot_rows().drop(columns=list(POSTING_COLUMNS))
        rng = np.random.default_rng(seed)
        rows = rows.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # other rows per seed
        return rows.assign(
            accepted=(rows["invited"] & rows["enrolled"]).astype("int8"),
            x1=rng.normal(size=len(rows)).astype("float32") + rows["productive"].to_numpy(),
            x2=rng.normal(size=len(rows)).astype("float32"),
        )

    cfg = TrainConfig(target="if_invited", target_method="two_path_soft", lgbm={"num_boost_round": 20})
    model, fitted, why = fit_target(frame(1), frame(2), ["x1", "x2"], cfg, LabelConfig())
    assert (model.target_, model.target_method_) == ("if_invited", "two_path")
    assert set(fitted.components) == {"accept", "productive_enrolled", "not_invited_outcome"}
    assert why is not None and "method 'two_path_soft' unavailable, trying method 'two_path' instead" in why
    assert "window posts" in why
