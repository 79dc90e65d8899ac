"""KocModel on small synthetic frames: determinism, calibration, column checks, contributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.model import KocModel, NotFittedError

PARAMS = {
    "num_leaves": 7,
    "min_data_in_leaf": 20,
    "learning_rate": 0.1,
    "num_boost_round": 80,
    "early_stopping_rounds": 10,
}


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    spend = rng.gamma(2.0, 50.0, n)
    posts = rng.poisson(1.0, n).astype("float64")
    posts[rng.random(n) < 0.1] = np.nan
    channel = pd.Categorical(
        rng.choice(["store", "ads", "referral"], n), categories=["store", "ads", "referral", "other"]
    )
    logit = -4 + 0.01 * spend + 0.8 * np.nan_to_num(posts) + (np.asarray(channel) == "referral") * 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame({"spend_365d": spend, "posts_90d": posts, "channel": channel}), y


@pytest.fixture(scope="module")
def fitted() -> tuple[KocModel, pd.DataFrame]:
    X, y = _frame(3000, 1)
    X_val, y_val = _frame(1000, 2)
    return KocModel(PARAMS, seed=5, label_config={"horizon_days": 90}).fit(X, y, X_val, y_val), X_val


def test_fitted_state_is_recorded(fitted: tuple[KocModel, pd.DataFrame]) -> None:
    model, _ = fitted
    from features.registry import FEATURE_SET_VERSION

    assert model.feature_names_ == ["spend_365d", "posts_90d", "channel"]
    assert model.categorical_features_ == ["channel"]
    assert model.categories_["channel"] == ["store", "ads", "referral", "other"]
    assert model.feature_set_version_ == FEATURE_SET_VERSION
    assert model.label_config_ == {"horizon_days": 90}
    assert model.trained_at_ and 1 <= model.best_iteration_ <= 80


def test_probabilities_are_calibrated_and_keep_the_booster_ranking(fitted: tuple[KocModel, pd.DataFrame]) -> None:
    model, X_val = fitted
    proba = model.predict_proba(X_val)
    raw = model.raw_score(X_val)
    assert ((proba > 0) & (proba < 1)).all()
    # Platt scaling is strictly increasing in the raw score
    order = np.argsort(raw, kind="stable")
    assert (np.diff(proba[order]) >= 0).all()
    X_test, y_test = _frame(4000, 3)
    assert abs(model.predict_proba(X_test).mean() - y_test.mean()) < 0.03


def test_same_seed_gives_identical_model() -> None:
    X, y = _frame(2000, 1)
    X_val, y_val = _frame(800, 2)
    first = KocModel(PARAMS, seed=11).fit(X, y, X_val, y_val).predict_proba(X_val)
    second = KocModel(PARAMS, seed=11).fit(X, y, X_val, y_val).predict_proba(X_val)
    np.testing.assert_array_equal(first, second)


def test_column_checks_say_what_to_do(fitted: tuple[KocModel, pd.DataFrame]) -> None:
    model, X_val = fitted
    with pytest.raises(ValueError, match="missing feature columns \\['posts_90d'\\].*build_features"):
        model.predict_proba(X_val.drop(columns="posts_90d"))
    with pytest.raises(NotFittedError, match="call fit"):
        KocModel().predict_proba(X_val)
    # extra columns are ignored, column order does not matter, string categoricals are converted
    shuffled = X_val[["channel", "spend_365d", "posts_90d"]].assign(member_id="x")
    shuffled["channel"] = shuffled["channel"].astype("object")
    np.testing.assert_allclose(model.predict_proba(shuffled), model.predict_proba(X_val))


def test_fit_rejects_unusable_inputs() -> None:
    X, y = _frame(500, 1)
    with pytest.raises(ValueError, match="single class"):
        KocModel(PARAMS).fit(X, y, X, np.zeros(len(X), dtype="int64"))
    with pytest.raises(TypeError, match="numeric or pandas category"):
        KocModel(PARAMS).fit(X.assign(channel=X["channel"].astype("object")), y, X, y)


def test_contributions_explain_the_raw_score(fitted: tuple[KocModel, pd.DataFrame]) -> None:
    model, X_val = fitted
    contributions = model.contributions(X_val.iloc[:50])
    assert list(contributions.columns) == model.feature_names_
    assert contributions.index.equals(X_val.index[:50])
    # contributions + a constant bias term = raw score
    residual = model.raw_score(X_val.iloc[:50]) - contributions.sum(axis=1).to_numpy()
    assert np.ptp(residual) < 1e-9
    importance = model.feature_importance("gain")
    assert set(importance.index) == set(model.feature_names_) and importance.iloc[0] > 0


def test_lambdarank_objective_learns_graded_relevance() -> None:
    X, y = _frame(2000, 1)
    X_val, y_val = _frame(1000, 2)
    relevance, relevance_val = y * 2, y_val * 2  # graded 0/2 here; the dataset adds 1 for enrolled-only
    model = KocModel(PARAMS, seed=3, objective="lambdarank").fit(
        X, y, X_val, y_val, relevance=relevance, relevance_val=relevance_val, group=[500] * 4, group_val=[500] * 2
    )
    proba = model.predict_proba(X_val)
    top = np.argsort(-proba, kind="stable")[:100]
    assert y_val[top].mean() > 2 * y_val.mean()  # ranks positives first
    with pytest.raises(ValueError, match="needs relevance"):
        KocModel(PARAMS, objective="lambdarank").fit(X, y, X_val, y_val)


def test_validation_weights_act_like_repeated_rows() -> None:
    """A sampled validation cutoff's weights (1/keep-probability) count in early stopping and calibration.

    Weight 2 on a row must give the same model as that row twice: the same early-stopping
    iteration and the same calibrated probabilities.
    """
    X, y = _frame(3000, 1)
    X_val, y_val = _frame(1000, 2)
    weight = np.where(y_val == 0, 2.0, 1.0)  # negatives kept at rate 1/2
    repeat = np.where(y_val == 0, 2, 1)
    weighted = KocModel(PARAMS, seed=5).fit(X, y, X_val, y_val, sample_weight_val=weight)
    repeated = KocModel(PARAMS, seed=5).fit(
        X, y, X_val.loc[X_val.index.repeat(repeat)].reset_index(drop=True), np.repeat(y_val, repeat)
    )
    unweighted = KocModel(PARAMS, seed=5).fit(X, y, X_val, y_val)
    assert weighted.best_iteration_ == repeated.best_iteration_
    np.testing.assert_allclose(weighted.predict_proba(X_val), repeated.predict_proba(X_val), rtol=1e-6, atol=1e-9)
    # doubling the negatives' weight lowers the calibrated probabilities: the weights do matter
    assert weighted.predict_proba(X_val).mean() < unweighted.predict_proba(X_val).mean()


def test_composite_scores_from_one_shared_input_matrix(fitted: tuple[KocModel, pd.DataFrame], monkeypatch) -> None:
    """A CompositeModel combines its components' probabilities exactly, converting the rows once."""
    from training.model import CompositeModel

    first, X_val = fitted
    X, y = _frame(3000, 4)
    second = KocModel(PARAMS, seed=6).fit(X, y, *_frame(1000, 5))
    p1, p2 = first.predict_proba(X_val), second.predict_proba(X_val)
    product = CompositeModel({"a": first, "b": second}, {"a": 1.0, "b": 0.5}, target="t", method="m")
    uplift = CompositeModel({"a": first, "b": second}, {"a": 1.0}, control="b", target="t", method="m")

    conversions = []
    real = KocModel._model_input
    monkeypatch.setattr(KocModel, "_model_input", lambda self, rows: conversions.append(len(rows)) or real(self, rows))
    np.testing.assert_allclose(product.predict_proba(X_val), p1 * np.sqrt(p2), rtol=1e-12)
    np.testing.assert_allclose(uplift.predict_proba(X_val), p1 - p2, rtol=1e-12, atol=1e-15)
    assert conversions == [len(X_val), len(X_val)]  # once per call, not once per component
    product.contributions(X_val)
    assert conversions == [len(X_val)] * 3  # the reasons too convert the rows once for every component


def test_fold_scores_equal_predicting_twice(fitted: tuple[KocModel, pd.DataFrame]) -> None:
    """`training.backtest.fold_scores` runs each booster once over a fold's test rows; its scores and
    out-of-time (raw, label) rows equal `predict_proba` and each component's `raw_score` on its rows."""
    from training.backtest import fold_scores
    from training.model import CompositeModel
    from training.targets import FittedTarget, rows_of

    first, X_val = fitted
    second = KocModel(PARAMS, seed=6).fit(*_frame(3000, 4), *_frame(1000, 5))
    rng = np.random.default_rng(0)
    test = X_val.assign(
        invited=rng.integers(0, 2, len(X_val)), accepted=rng.integers(0, 2, len(X_val)),
        productive=rng.integers(0, 2, len(X_val)), label=rng.integers(0, 2, len(X_val)),
    )
    names = list(X_val.columns)
    components = {"accept": first, "productive_any": second}
    composite = CompositeModel(components, {"accept": 1.0, "productive_any": 1.0}, target="if_invited", method="m")
    for model in (composite, first):
        fitted_target = FittedTarget(components=components if model is composite else {"accept": first}, rows={})
        scores, out_of_time = fold_scores(model, fitted_target, test, names)
        np.testing.assert_array_equal(scores, model.predict_proba(test[names]))
        for component, (raw, labels) in out_of_time.items():
            rows = rows_of(test, component)
            np.testing.assert_array_equal(raw, fitted_target.components[component].raw_score(rows[names]))
            np.testing.assert_array_equal(labels, rows["accepted" if component == "accept" else "productive"])
    assert len(out_of_time["accept"][0]) == int(test["invited"].sum()) < len(test)


def test_two_path_adds_the_declined_path_and_splits_contributions_by_path(fitted: tuple[KocModel, pd.DataFrame]) -> None:
    """`two_path`: p = p_accept * p_enrolled + (1 - p_accept) * p_declined; the uplift of it is
    p_accept * (p_enrolled - p_declined); contributions weight each path by its share of p."""
    from training.model import CompositeModel

    accept, X_val = fitted
    enrolled = KocModel(PARAMS, seed=6).fit(*_frame(3000, 4), *_frame(1000, 5))
    declined = KocModel(PARAMS, seed=8).fit(*_frame(3000, 6), *_frame(1000, 7))
    components = {"accept": accept, "productive_enrolled": enrolled, "not_invited_outcome": declined}
    exponents = {"accept": 1.0, "productive_enrolled": 1.0}
    a, e, d = (m.predict_proba(X_val) for m in components.values())
    two_path = CompositeModel(components, exponents, target="if_invited", method="two_path", declined="not_invited_outcome")
    uplift = CompositeModel(
        components, exponents, target="uplift", method="two_path", declined="not_invited_outcome",
        control="not_invited_outcome",
    )
    np.testing.assert_allclose(two_path.predict_proba(X_val), a * e + (1 - a) * d, rtol=1e-12)
    np.testing.assert_allclose(uplift.predict_proba(X_val), a * (e - d), rtol=1e-9, atol=1e-12)
    assert (two_path.predict_proba(X_val) >= a * e).all()

    rows = X_val.iloc[:40]
    share = (a * e / (a * e + (1 - a) * d))[:40]
    expected = (
        (accept.contributions(rows) + enrolled.contributions(rows)).mul(share, axis=0)
        + declined.contributions(rows).mul(1 - share, axis=0)
    )
    pd.testing.assert_frame_equal(two_path.contributions(rows), expected)
    assert set(two_path.feature_importance().index) == set(accept.feature_names_)
    with pytest.raises(ValueError, match="accept"):
        CompositeModel({"b": enrolled, "d": declined}, {"b": 1.0}, target="t", method="m", declined="d")


def test_shared_component_learns_from_every_row_and_scores_as_if_enrolled(fitted: tuple[KocModel, pd.DataFrame]) -> None:
    """`productive_enrolled_shared` (an S-learner): fitted on every row with enrolment as an extra
    input, scored with that input at 1 from feature rows that never carry it, calibrated on the
    enrolled validation rows; inside `two_path_shared` the composite still speaks the feature rows'
    columns (contributions, importances) and converts the rows once per input layout."""
    from training.model import CompositeModel
    from training.targets import fit_components, given_input, rows_of

    accept, _ = fitted
    rng = np.random.default_rng(3)

    def outcomes(X: pd.DataFrame, y: np.ndarray) -> pd.DataFrame:
        enrolled = (rng.random(len(X)) < 0.25).astype("int8")
        productive = np.where(enrolled == 1, y | (rng.random(len(X)) < 0.4), y).astype("int8")
        return X.assign(enrolled=enrolled, productive=productive, weight=1.0)

    train, valid = outcomes(*_frame(6000, 11)), outcomes(*_frame(3000, 12))
    names = list(accept.feature_names_)
    target = fit_components(
        train, valid, names, ["productive_enrolled_shared"], lambda **o: KocModel(PARAMS | o, seed=5), propensity_clip=0.01
    )
    shared = target.components["productive_enrolled_shared"]
    given = given_input("enrolled")
    assert shared.feature_names_ == [*names, given]
    assert target.rows["productive_enrolled_shared"]["train_rows"] == len(train)  # every row, not the enrolled only

    as_enrolled = shared.raw_score(valid[names].assign(**{given: np.float32(1)}))
    np.testing.assert_array_equal(shared.raw_score(valid[names]), as_enrolled)
    as_not_enrolled = shared.raw_score(valid[names].assign(**{given: np.float32(0)}))
    assert (as_enrolled > as_not_enrolled).mean() > 0.9  # the input carries what enrolment adds
    enrolled = rows_of(valid, "productive_enrolled_shared")
    assert len(enrolled) < len(valid)
    # Platt scaling fitted on the enrolled validation rows reproduces their positive rate
    assert shared.predict_proba(enrolled[names]).mean() == pytest.approx(enrolled["productive"].mean(), abs=0.005)

    declined = KocModel(PARAMS, seed=8).fit(*_frame(3000, 6), *_frame(1000, 7))
    components = {"accept": accept, "productive_enrolled_shared": shared, "not_invited_outcome": declined}
    model = CompositeModel(
        components, {"accept": 1.0, "productive_enrolled_shared": 1.0}, target="if_invited", method="two_path_shared",
        declined="not_invited_outcome",
    )
    X = valid[names]
    a, e, d = (m.predict_proba(X) for m in components.values())
    np.testing.assert_allclose(model.predict_proba(X), a * e + (1 - a) * d, rtol=1e-12)
    assert list(model.contributions(X.iloc[:20]).columns) == names
    assert list(model.feature_importance().sort_index().index) == sorted(names)


def test_platt_calibration_never_reverses_the_booster_ranking():
    """Calibration rows whose labels fall with the raw score (noise on a handful of rows) would give a
    negative Platt slope; the calibrator keeps the booster's own probabilities instead."""
    model = KocModel()
    raw = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    calibrator = model._fit_calibrator(raw, np.array([1, 1, 0, 1, 0, 0]))
    np.testing.assert_allclose(calibrator.predict_proba(raw.reshape(-1, 1))[:, 1], 1 / (1 + np.exp(-raw)))
    rising = model._fit_calibrator(raw, np.array([0, 0, 1, 0, 1, 1]))
    assert rising.coef_[0, 0] > 0 and rising.coef_[0, 0] != 1.0


def test_a_component_with_too_few_own_rows_learns_from_the_fold_and_says_so() -> None:
    """`fit_components(rows_for=...)`: the accept component learns from its own rows when they can
    support it (listed in `own_rows`), else from the fold's rows, so `koc eval --served` refits it on those."""
    from training.targets import fit_components

    def frame(n: int, seed: int) -> pd.DataFrame:
        X, y = _frame(n, seed)
        return X.assign(invited=1, accepted=y, weight=1.0, member_id=[f"m{i}" for i in range(n)])

    train, valid = frame(2000, 1), frame(800, 2)
    names = list(_frame(10, 0)[0].columns)
    make = lambda **over: KocModel(PARAMS | over, seed=3)  # noqa: E731
    enough = fit_components(train, valid, names, ["accept"], make, propensity_clip=0.01, rows_for={"accept": (frame(1500, 3), frame(600, 4))})
    assert enough.own_rows == {"accept"} and enough.rows["accept"]["train_rows"] == 1500
    few = frame(40, 5).assign(accepted=0)  # one class only
    fallen = fit_components(train, valid, names, ["accept"], make, propensity_clip=0.01, rows_for={"accept": (few, few)})
    assert fallen.own_rows == set() and fallen.rows["accept"]["train_rows"] == 2000


LINEAR = {**PARAMS, "linear": True, "linear_weight": 0.5}


@pytest.fixture(scope="module")
def blended() -> tuple[KocModel, pd.DataFrame]:
    X, y = _frame(3000, 1)
    X_val, y_val = _frame(1000, 2)
    return KocModel(LINEAR, seed=5).fit(X, y, X_val, y_val), X_val


def test_linear_part_blends_in_log_odds_and_explains_its_share(blended: tuple[KocModel, pd.DataFrame]) -> None:
    """raw = (1 - w) * booster + w * linear; contributions still sum to the raw score minus one bias."""
    from training.linear import C_GRID

    model, X_val = blended
    part = model.linear_
    assert part is not None and part.C in C_GRID and model.linear_weight() == 0.5
    matrix = model._model_input(X_val)
    booster = model.booster_.predict(matrix, raw_score=True, num_iteration=model.best_iteration_)
    np.testing.assert_allclose(model.raw_score(X_val), 0.5 * booster + 0.5 * part.raw(matrix), rtol=0, atol=1e-12)
    # the linear model learnt the synthetic truth's signs: more spend and more posts, higher odds
    rows = X_val.iloc[:2].copy()
    rows["spend_365d"], rows["posts_90d"] = [10.0, 400.0], [0.0, 3.0]
    assert part.raw(model._model_input(rows))[1] > part.raw(model._model_input(rows))[0]
    contributions = model.contributions(X_val.iloc[:50])
    residual = model.raw_score(X_val.iloc[:50]) - contributions.sum(axis=1).to_numpy()
    assert np.ptp(residual) < 1e-9
    linear = part.contributions(matrix[:50])
    assert np.ptp(part.raw(matrix[:50]) - linear.sum(axis=1)) < 1e-9
    assert (linear[:, 2] == 0).all()  # categoricals (demographics, channel) stay the booster's
    # beyond the training range the booster is flat, the linear part keeps rising
    far = X_val.iloc[[0, 0]].copy()
    far["spend_365d"] = [X_val["spend_365d"].max() * 2, X_val["spend_365d"].max() * 4]
    raw_far = model.raw_score(far)
    booster_far = model.booster_.predict(model._model_input(far), raw_score=True, num_iteration=model.best_iteration_)
    assert booster_far[1] == booster_far[0] and raw_far[1] > raw_far[0]


def test_a_linear_part_is_off_without_its_flag_and_refits_with_its_fold_c(blended: tuple[KocModel, pd.DataFrame]) -> None:
    import pickle

    model, X_val = blended
    X, y = _frame(3000, 1)
    X_val2, y_val = _frame(1000, 2)
    plain = KocModel({**PARAMS, "linear_weight": 0.5}, seed=5).fit(X, y, X_val2, y_val)
    assert plain.linear_ is None and plain.linear_weight() == 0.0
    with pytest.raises(ValueError, match="linear_C"):
        KocModel(LINEAR, seed=5).fit_fixed(X, y, 20)
    refit = KocModel({**LINEAR, "linear_C": model.linear_.C}, seed=5).fit_fixed(X, y, 20)
    assert refit.linear_ is not None and refit.linear_.C == model.linear_.C
    np.testing.assert_allclose(refit.linear_.coef, model.linear_.coef, rtol=1e-6, atol=1e-8)  # the same rows and C
    with pytest.raises(ValueError, match="soft"):
        KocModel(LINEAR, seed=5).fit(X, np.clip(y * 0.9 + 0.05, 0, 1), X_val2, y_val)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X_val), model.predict_proba(X_val))
