"""Target modes: what the served probability means, and how it is learnt from logged outcomes.

- `observed` (the old default): P(enrolled and productive within H | x) under the brand's
  past policy, one LightGBM model on every eligible row.
- `if_invited`: P(productive KOC within H | invited now, x). Methods:
  - `two_stage`: P(accept | invited, x), learnt on invited rows, x P(productive | enrolled, x),
    learnt on every enrolment, invited or self-driven;
  - `ipw`: the observed label learnt on invited rows only, each weighted by 1 / P(invited | x):
    the logged `selection_probability` of kocrank's own issued lists where given, else a
    fitted model of the historical invitation policy, clipped at `propensity_clip`; the
    overlap (propensity range, clipped share, effective sample size) is reported;
  - `auxiliary`: P(accept | invited, x) x P(productive posting | x), where the second factor
    drops the enrolment requirement and so learns content ability from every member;
  - `two_path`: the two ways an invitation can end, added: P(accept | invited, x) x
    P(productive | enrolled, x) + (1 - P(accept | invited, x)) x P(productive | not invited, x).
    A member who declines may still enrol on her own later in the window (the source material's
    programmes enrol easily), and for the members worth inviting that path is large: on the
    simulator's worlds the top 1% by truth have P(productive | not invited) of 0.34-0.78 except
    where self-enrolment is rare (spend_led, 0.08). `two_stage` drops it; the second path is learnt
    from the observed label on rows nobody invited (uplift's control arm);
  - `two_path_shared`: `two_path` whose P(productive | enrolled, x) is learnt from every
    eligible row, with enrolment (within the window) as an extra input set to 1 when scoring
    (an S-learner). Enrolled members are ~1-4% of the rows; content ability shows in everyone's
    posts, so the shared trees learn it from all of them, and the enrolment input carries what
    the programme adds. It is calibrated on the enrolled validation rows only;
  - `two_path_soft`: `two_path` whose productivity factors, P(productive | enrolled, x) and the
    declined path's P(enrolled and productive | not invited, x), learn a denoised label instead
    of the window's 0/1 outcome: how likely the member's posting is to meet the bar, from her
    window's post count and interactions under an empirical-Bayes model fitted per cutoff
    (`training.soft_labels`). Validation, early stopping and calibration keep the 0/1 outcome.
    Needs the default label (the rule behind a brand's own labels is unknown);
  - `two_path_soft_declined`: `two_path` with only the declined path learnt from the soft label;
  - `blend`: the geometric mean of `two_stage` and `auxiliary`, P(accept | invited, x) x
    sqrt(P(productive | enrolled, x) x P(productive posting | x)): the two methods win in different
    worlds on `koc eval` (two_stage where the past policy was spend-led, auxiliary elsewhere), and
    IPW, the weakest, is left out.
- `uplift`: P(productive | invited, x) - P(productive | not invited, x), a T-learner whose
  treated arm is the chosen if_invited method and whose control arm is the observed label
  on rows nobody invited.

Every piece is a binary `KocModel` on a subset of the snapshot rows (see `COMPONENTS`),
early-stopped and calibrated on the same subset of the validation cutoff; `CompositeModel`
multiplies them. Outcome columns come from `features.targets` (point in time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from training.model import CompositeModel, KocModel

logger = logging.getLogger(__name__)

TARGETS = ("if_invited", "observed", "uplift")
IF_INVITED_METHODS = (
    "two_stage", "ipw", "auxiliary", "blend", "two_path", "two_path_shared", "two_path_soft", "two_path_soft_declined"
)
MIN_COMPONENT_POSITIVES = 5  # fewer positives in a component's train or validation rows: not learnable


@dataclass(frozen=True)
class Component:
    """One binary model: rows where `rows` is 1 (None: every row; "not_invited": invited == 0), label `label`.

    With `given`, the model learns from every row instead, with the outcome column `given` as an
    extra input (`given_input(given)`), and is scored with that input set to 1: P(label | given, x).
    `rows` then names the rows it is calibrated and judged on (those where `given` is 1).
    With `soft`, it learns the denoised label (`training.soft_labels`: the enrolled rows' soft
    productivity, times `enrolled` for the label `label`) instead of the 0/1 outcome; its
    validation rows keep the 0/1 outcome.
    """

    rows: str | None
    label: str
    description: str
    given: str | None = None
    soft: bool = False


def given_input(column: str) -> str:
    """The name of the extra input an S-learner component reads an outcome column `column` from."""
    return f"given__{column}"


COMPONENTS: dict[str, Component] = {
    "observed": Component(None, "label", "enrolled and productive | eligible"),
    "accept": Component("invited", "accepted", "accepted | invited"),
    "productive_enrolled": Component("enrolled", "productive", "productive | enrolled (invited or self-driven)"),
    "productive_any": Component(None, "productive", "productive posting | eligible (no enrolment requirement)"),
    "invited_outcome": Component("invited", "label", "enrolled and productive | invited, inverse-propensity weighted"),
    "not_invited_outcome": Component("not_invited", "label", "enrolled and productive | not invited"),
    "productive_enrolled_shared": Component(
        "enrolled", "productive", "productive | enrolled, learnt on every row with enrolment as an input", given="enrolled"
    ),
    "propensity": Component(None, "invited", "invited | eligible (the historical invitation policy)"),
    "productive_enrolled_soft": Component(
        "enrolled", "productive", "productive | enrolled, learnt from the denoised productivity label", soft=True
    ),
    "not_invited_outcome_soft": Component(
        "not_invited", "label", "enrolled and productive | not invited, learnt from the denoised productivity label", soft=True
    ),
}
METHOD_EXPONENTS: dict[str, dict[str, float]] = {
    "two_stage": {"accept": 1.0, "productive_enrolled": 1.0},
    "ipw": {"invited_outcome": 1.0},
    "auxiliary": {"accept": 1.0, "productive_any": 1.0},
    "blend": {"accept": 1.0, "productive_enrolled": 0.5, "productive_any": 0.5},
    "two_path": {"accept": 1.0, "productive_enrolled": 1.0},
    "two_path_shared": {"accept": 1.0, "productive_enrolled_shared": 1.0},
    "two_path_soft": {"accept": 1.0, "productive_enrolled_soft": 1.0},
    "two_path_soft_declined": {"accept": 1.0, "productive_enrolled": 1.0},
}
# A method that needs the default label's window posts (the soft label) falls back to this one
# when they are unknown (a brand's own labels table: `SoftLabelUnavailable`), before `observed`.
METHOD_FALLBACK: dict[str, str] = {"two_path_soft": "two_path", "two_path_soft_declined": "two_path"}
# Methods that add the declined path: (1 - P(accept | invited, x)) x this component.
METHOD_DECLINED_PATH: dict[str, str] = {
    "two_path": "not_invited_outcome",
    "two_path_shared": "not_invited_outcome",
    "two_path_soft": "not_invited_outcome_soft",
    "two_path_soft_declined": "not_invited_outcome_soft",
}


def leaf_size(params: Mapping[str, Any], rows: int) -> int:
    """`min_data_in_leaf` for a component on `rows` rows: the configured value, scaled down on small subsets.

    The configured leaf size suits every eligible row; invited or enrolled rows are ~1% of them,
    where it would leave a single leaf. One leaf per ~1% of the rows, at least 10.
    """
    return int(min(int(params.get("min_data_in_leaf", 20)), max(10, rows // 100)))


class TargetUnavailable(ValueError):
    """The data cannot support a target (e.g. no invitations or enrolments were logged)."""


class SoftLabelUnavailable(TargetUnavailable):
    """The soft label cannot be built (no window posts: a brand's own labels table); the plain method still can."""


def components_for(target: str, method: str) -> list[str]:
    """The components a (target, method) needs, in fitting order (the propensity model before IPW)."""
    if target == "observed":
        return ["observed"]
    if method not in METHOD_EXPONENTS:
        raise ValueError(f"unknown target method {method!r}; use one of {list(METHOD_EXPONENTS)}")
    names = list(METHOD_EXPONENTS[method])
    if method in METHOD_DECLINED_PATH:
        names.append(METHOD_DECLINED_PATH[method])
    if "invited_outcome" in names:
        names.insert(0, "propensity")
    if target == "uplift" and "not_invited_outcome" not in names:
        names.append("not_invited_outcome")
    return names


def rows_mask(frame: pd.DataFrame, component: str) -> np.ndarray | None:
    """Which rows of `frame` component `component` learns from (None: every row)."""
    rows = COMPONENTS[component].rows
    if rows is None:
        return None
    if rows == "not_invited":
        return frame["invited"].to_numpy() == 0
    return frame[rows].to_numpy() == 1


def rows_of(frame: pd.DataFrame, component: str) -> pd.DataFrame:
    """The rows component `component` is calibrated and judged on (and, unless it has `given`, learns from)."""
    mask = rows_mask(frame, component)
    return frame if mask is None else frame.loc[mask]


def fixed_inputs(component: str) -> dict[str, float]:
    """The inputs `component` is scored with at a constant: an S-learner's `given` input at 1, else none."""
    given = COMPONENTS[component].given
    return {} if given is None else {given_input(given): 1.0}


def fit_rows(frame: pd.DataFrame, component: str) -> pd.DataFrame:
    """The rows component `component` learns from: every row for an S-learner (`given`), else `rows_of`."""
    return frame if COMPONENTS[component].given else rows_of(frame, component)


def frame_soft_labels(frame: pd.DataFrame, component: str, label_config: Mapping[str, Any] | None) -> np.ndarray:
    """The soft productivity label of `frame`'s enrolled rows (`training.soft_labels.soft_productive`).

    A cutoff's labels are computed from all its enrolled rows in `frame` (a fold's training rows or
    the refit's rows hold every enrolled row of their cutoffs: informative rows are never sampled),
    so they are the same whichever frame a cutoff's rows come in.
    """
    from training.soft_labels import POSTING_COLUMNS, soft_productive

    missing = [c for c in POSTING_COLUMNS if c not in frame.columns]
    if missing or not label_config:
        raise SoftLabelUnavailable(
            f"component {component!r} ({COMPONENTS[component].description}) needs the default label's window posts "
            f"({', '.join(POSTING_COLUMNS)}); a brand's own labels table has other rules"
        )
    return soft_productive(frame, int(label_config["min_posts"]), int(label_config["min_interactions"]))


def soft_training_rows(
    frame: pd.DataFrame, component: str, label_config: Mapping[str, Any] | None, soft: np.ndarray | None = None
) -> pd.DataFrame:
    """The rows a `soft` component learns from: its rows of `frame`, the label replaced by the soft
    label (a float in [0, 1]; `training.soft_labels.with_soft_label`).

    `soft`: `frame_soft_labels(frame, ...)` when the caller has it already (one per frame).
    """
    from training.soft_labels import with_soft_label

    soft = frame_soft_labels(frame, component, label_config) if soft is None else soft
    mask = rows_mask(frame, component)
    rows, soft = (frame, soft) if mask is None else (frame.loc[mask], soft[mask])
    enrolled = rows["enrolled"].to_numpy() == 1
    soft = np.where(enrolled, np.nan_to_num(soft), 0.0)  # not enrolled: neither label can be 1
    if COMPONENTS[component].label == "productive" and not enrolled.all():
        raise ValueError(f"soft component {component!r} must learn from enrolled rows only")
    return with_soft_label(rows, COMPONENTS[component].label, soft)


def fit_inputs(rows: pd.DataFrame, names: list[str], component: str) -> pd.DataFrame:
    """The features `component` is fitted on: `names`, plus the `given` outcome as an input for an S-learner."""
    given = COMPONENTS[component].given
    if given is None:
        return rows[names]
    extra = pd.DataFrame({given_input(given): rows[given].to_numpy(dtype="float32")}, index=rows.index)
    return pd.concat([rows[names], extra], axis=1)  # not .assign: inserting into a wide frame warns of fragmentation


@dataclass
class PropensityReport:
    """Overlap of the invitation propensity among invited training rows."""

    source: str
    clip: float
    min: float
    median: float
    max: float
    clipped_share: float
    effective_sample_size: float
    invited_rows: int

    def as_metrics(self) -> dict[str, float]:
        return {
            f"ipw.{name}": float(value)
            for name, value in self.__dict__.items()
            if name not in ("source",) and value is not None
        }


@dataclass
class FittedTarget:
    """Fitted components and what was learnt from how many rows."""

    components: dict[str, KocModel]
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    propensity: PropensityReport | None = None
    own_rows: set[str] = field(default_factory=set)  # components that learnt from their `rows_for` rows

    def model(self, target: str, method: str) -> KocModel:
        """The served model of (target, method) from these components."""
        if target == "observed":
            model = self.components["observed"]
            model.target_, model.target_method_ = "observed", "single"
            return model
        exponents = METHOD_EXPONENTS[method]
        needed = {name: self.components[name] for name in components_for(target, method) if name != "propensity"}
        control = "not_invited_outcome" if target == "uplift" else None
        return CompositeModel(
            needed, exponents, target=target, method=method, control=control, declined=METHOD_DECLINED_PATH.get(method)
        )


def logged_propensity(rows: pd.DataFrame, issued: pd.DataFrame | None) -> np.ndarray:
    """`selection_probability` of each row's (member, cutoff) in kocrank's issued lists, NaN where not logged."""
    if issued is None or len(issued) == 0:
        return np.full(len(rows), np.nan)
    missing = [c for c in ("member_id", "as_of", "selection_probability") if c not in issued.columns]
    if missing:
        raise ValueError(
            f"issued-list propensities lack columns {missing}; need member_id, as_of, selection_probability "
            f"(got {list(issued.columns)})"
        )
    logged = issued[["member_id", "as_of", "selection_probability"]].copy()
    logged["member_id"] = logged["member_id"].astype(str)
    logged["as_of"] = pd.to_datetime(logged["as_of"]).astype(rows["as_of"].dtype)
    logged = logged.drop_duplicates(["member_id", "as_of"], keep="last")
    keys = rows[["member_id", "as_of"]].assign(member_id=rows["member_id"].astype(str))
    return keys.merge(logged, on=["member_id", "as_of"], how="left")["selection_probability"].to_numpy(dtype=float)


def inverse_propensity_weights(
    invited: pd.DataFrame,
    names: list[str],
    propensity_model: KocModel | None,
    *,
    clip: float,
    issued: pd.DataFrame | None = None,
) -> tuple[np.ndarray, PropensityReport]:
    """Weights 1 / clip(e(x)) for invited rows, normalised to mean 1 (times the row's sampling weight)."""
    logged = logged_propensity(invited, issued)
    have_logged = ~np.isnan(logged)
    if propensity_model is None and not have_logged.all():
        raise TargetUnavailable("IPW needs a fitted propensity model where no selection_probability was logged")
    fitted = propensity_model.predict_proba(invited[names]) if propensity_model is not None else logged
    propensity = np.where(have_logged, logged, fitted)
    clipped = np.clip(propensity, clip, 1.0)
    weights = invited["weight"].to_numpy(dtype=float) / clipped
    weights = weights * len(weights) / weights.sum()
    source = "logged" if have_logged.all() else ("fitted" if not have_logged.any() else "logged+fitted")
    report = PropensityReport(
        source=source,
        clip=clip,
        min=float(propensity.min()),
        median=float(np.median(propensity)),
        max=float(propensity.max()),
        clipped_share=float((propensity < clip).mean()),
        effective_sample_size=float(weights.sum() ** 2 / (weights**2).sum()),
        invited_rows=len(weights),
    )
    return weights, report


def _check_learnable(component: str, train: pd.DataFrame, valid: pd.DataFrame) -> None:
    label = COMPONENTS[component].label
    for part, rows in (("training", train), ("validation", valid)):
        positives = int(rows[label].sum())
        negatives = len(rows) - positives
        if min(positives, negatives) < MIN_COMPONENT_POSITIVES:
            raise TargetUnavailable(
                f"component {component!r} ({COMPONENTS[component].description}) has {positives} positive and "
                f"{negatives} negative {part} rows; it needs at least {MIN_COMPONENT_POSITIVES} of each "
                "(are invitations and enrolments logged in the programme table?)"
            )


def fit_components(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    names: list[str],
    components: Iterable[str],
    make_model: Any,
    *,
    propensity_clip: float,
    issued: pd.DataFrame | None = None,
    rows_for: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]] | None = None,
) -> FittedTarget:
    """Fit each named component on its rows (early stopping and calibration on its validation rows).

    `make_model()` returns a fresh, unfitted KocModel with the run's parameters. `rows_for` gives
    some components their own (training, validation) frames instead of `train` and `valid`
    (`accept`: every answer known at training time, `training.dataset.SnapshotDataset.acceptance_parts`).
    """
    rows_for = rows_for or {}
    fitted = FittedTarget(components={})
    components = list(components)
    soft_ones = [c for c in components if COMPONENTS[c].soft]
    # the training rows' soft labels, once for every soft component, and before any fit: without the
    # window posts the method is unavailable (`SoftLabelUnavailable`) and nothing is fitted in vain
    soft = frame_soft_labels(train, soft_ones[0], make_model().label_config) if soft_ones else None
    for component in components:
        label, given = COMPONENTS[component].label, COMPONENTS[component].given
        own_train, own_valid = rows_for.get(component, (train, valid))
        if component in rows_for:
            try:
                _check_learnable(component, fit_rows(own_train, component), fit_rows(own_valid, component))
            except TargetUnavailable as err:  # too few of its own rows (a small brand): the fold's rows, as before
                logger.warning("%s learns from the fold's own rows instead: %s", component, err)
                own_train, own_valid = train, valid
            else:
                fitted.own_rows.add(component)
        train_rows, valid_rows = fit_rows(own_train, component), fit_rows(own_valid, component)
        counts = {"train_rows": len(train_rows), "train_positives": int(train_rows[label].sum())}  # 0/1 outcomes
        if component == "propensity" and issued is not None:
            invited_rows = train_rows.loc[train_rows["invited"].to_numpy() == 1]
            if not np.isnan(logged_propensity(invited_rows, issued)).any():
                continue  # every invited training row has a logged propensity: no policy model needed
        _check_learnable(component, train_rows, valid_rows)  # on the observed 0/1 outcomes
        if COMPONENTS[component].soft:  # the same rows, learning the soft label (cross-entropy)
            train_rows = soft_training_rows(train, component, make_model().label_config, soft)
        if given is not None:  # its own rows (enrolled) must hold both classes too
            _check_learnable(component, rows_of(train, component), rows_of(valid, component))
        weight = train_rows["weight"].to_numpy(dtype=float)
        if component == "invited_outcome":
            weight, fitted.propensity = inverse_propensity_weights(
                train_rows, names, fitted.components.get("propensity"), clip=propensity_clip, issued=issued
            )
        base = make_model().params
        model = make_model(
            min_data_in_leaf=leaf_size(base, len(train_rows)), linear=component in base.get("linear_components", ())
        )
        if given is not None:
            model.fixed_inputs_ = fixed_inputs(component)  # scored as if `given` held
        model.fit(
            fit_inputs(train_rows, names, component),
            train_rows[label].to_numpy(),
            fit_inputs(valid_rows, names, component),
            valid_rows[label].to_numpy(),
            sample_weight=weight,
            sample_weight_val=valid_rows["weight"].to_numpy(dtype=float),
        )
        if given is not None:  # the probability it serves is the `given` one: calibrate on those rows
            calibration = rows_of(valid, component)
            model.calibrate(
                model.raw_score(calibration[names]), calibration[label].to_numpy(), calibration["weight"].to_numpy(dtype=float)
            )
        model.target_method_ = component
        fitted.components[component] = model
        fitted.rows[component] = {
            **counts,
            "validation_rows": len(valid_rows),
            "validation_positives": int(valid_rows[label].sum()),
            **({"linear_C": model.linear_.C} if model.linear_ is not None else {}),  # chosen on the validation rows
        }
    return fitted


def target_params(target: str, method: str, fitted: FittedTarget) -> dict[str, str]:
    """Run params that say which target and method produced the model, and from how many rows."""
    params = {"target": target, "target_method": method if target != "observed" else "single"}
    for component, counts in fitted.rows.items():
        for key, value in counts.items():
            params[f"target.{component}.{key}"] = str(value)
    return params


def describe_components(names: Iterable[str]) -> Mapping[str, str]:
    """Component name -> what it learns (for logs and docs)."""
    return {name: COMPONENTS[name].description for name in names}
