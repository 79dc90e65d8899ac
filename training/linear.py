"""A logistic regression on a booster's own input matrix, to blend with the booster in log-odds.

`KocModel` can add one to a component (`LgbmParams.linear_components`, default the acceptance
factor P(accept | invited)): its raw score becomes `(1 - w) * booster + w * linear`, both log-odds,
before the calibrator. Why: that factor learns from a few thousand invitations chosen by the old
policy, and the members worth inviting sit in the tails of the features, where few were invited. A
tree's score is flat beyond its last split there; a linear model on log-scaled features keeps
rising. On the 30k `koc eval` worlds (README, "`koc eval`") the blend ranked the acceptance closer to
its truth than either model alone.

The design matrix: every numeric column the caller keeps (KocModel leaves out categoricals, which
have no tails to extrapolate into, and the features the score must rise with, whose monotone
constraint is the booster's) as `sign(x) * log(1 + |x|)`, a missing value replaced by the training
median plus a 0/1 indicator for columns that had missing values in training; all columns
standardised with the training rows' mean and spread. The inverse
regularisation strength C is chosen on the validation rows' log loss (`C_GRID`), and a refit takes
the C its fold model chose. Contributions are exact for a linear model of standardised inputs:
`coef * (z - mean z)`, summed back onto the feature each design column came from.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
# rows per chunk when scoring: the design is float64 and wider than the input (missing-value indicators), so a
# 1M-member ranking in one piece would hold ~2 GB of it
CHUNK_ROWS = 50_000


@dataclass
class LinearPart:
    """A fitted logistic regression over a KocModel's input matrix (see the module docstring)."""

    numeric: np.ndarray  # positions of the numeric columns in the matrix
    medians: np.ndarray  # training medians of their transformed values (0 where a column was all missing)
    indicators: np.ndarray  # positions (in `numeric`) of columns with missing values in training
    centre: np.ndarray  # design column means
    scale: np.ndarray  # design column standard deviations (1 where constant)
    coef: np.ndarray
    intercept: float
    C: float

    @classmethod
    def fit(
        cls,
        matrix: np.ndarray,
        y: np.ndarray,
        weight: Sequence[float] | np.ndarray | None,
        *,
        C: float | None = None,
        validation: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
        exclude: Sequence[int] = (),
    ) -> LinearPart:
        """Fit on `matrix` (rows x the model's columns) and 0/1 `y`; C given, or chosen on `validation`.
        Columns at `exclude` positions are left out (the caller's categoricals and constrained features)."""
        if C is None and validation is None:
            raise ValueError("a linear part needs C or validation rows to choose it on")
        weight = None if weight is None else np.asarray(weight, dtype="float64")
        skip = set(exclude)
        numeric = np.array([p for p in range(matrix.shape[1]) if p not in skip], dtype=int)
        logged = _signed_log(matrix[:, numeric])
        missing = np.isnan(logged)
        with warnings.catch_warnings():  # an all-missing column's median is NaN, then 0
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nan_to_num(np.nanmedian(logged, axis=0))
        indicators = np.flatnonzero(missing.any(axis=0))
        part = cls(
            numeric=numeric, medians=medians, indicators=indicators,
            centre=np.zeros(0), scale=np.zeros(0), coef=np.zeros(0), intercept=0.0,
            C=float(C) if C is not None else float("nan"),
        )
        np.copyto(logged, medians, where=missing)  # the training matrix is transformed once
        design = part._stack(logged, missing)
        del logged
        part.centre = np.average(design, axis=0, weights=weight)
        design -= part.centre  # in place: the design is the largest array here
        spread = np.sqrt(np.average(np.square(design), axis=0, weights=weight))
        part.scale = np.where(spread > 1e-12, spread, 1.0)
        design /= part.scale
        labels = np.asarray(y, dtype="int64")
        if C is not None:
            part._fit_regression(design, labels, weight, float(C))
            return part
        val_matrix, val_y, val_weight = validation
        val_weight = None if val_weight is None else np.asarray(val_weight, dtype="float64")
        val_design = part.design(val_matrix)
        best: tuple[float, float, np.ndarray, float] | None = None
        for candidate in C_GRID:
            part._fit_regression(design, labels, weight, candidate)
            probability = _sigmoid(val_design @ part.coef + part.intercept)
            loss = log_loss(np.asarray(val_y, dtype="int64"), probability, sample_weight=val_weight, labels=[0, 1])
            if best is None or loss < best[0]:
                best = (loss, candidate, part.coef.copy(), part.intercept)
        _, part.C, part.coef, part.intercept = best
        return part

    def _fit_regression(self, design: np.ndarray, y: np.ndarray, weight: np.ndarray | None, C: float) -> None:
        regression = LogisticRegression(C=C, max_iter=5000, tol=1e-6).fit(design, y, sample_weight=weight)
        self.coef, self.intercept, self.C = regression.coef_[0].astype("float64"), float(regression.intercept_[0]), C

    @property
    def sources(self) -> np.ndarray:
        """The matrix position each design column comes from: the numerics, then their indicators."""
        return np.concatenate([self.numeric, self.numeric[self.indicators]]).astype(int)

    def _filled(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the rows' numerics signed-logged with a missing value replaced by its training median, the missing mask)."""
        logged = _signed_log(rows[:, self.numeric])
        missing = np.isnan(logged)
        np.copyto(logged, self.medians, where=missing)
        return logged, missing

    def _stack(self, filled: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """The unstandardised design: the filled numerics, then the indicators of the columns that had missing values."""
        return np.hstack([filled, missing[:, self.indicators].astype("float64")])

    def design(self, matrix: np.ndarray) -> np.ndarray:
        """The standardised design matrix of `matrix`'s rows."""
        return (self._stack(*self._filled(matrix)) - self.centre) / self.scale

    def raw(self, matrix: np.ndarray) -> np.ndarray:
        """Log-odds of each row, without building the design: the standardisation folded into the
        coefficients (in chunks)."""
        slope = self.coef / self.scale
        constant = self.intercept - float(slope @ self.centre)
        n_numeric, n_indicators = len(self.numeric), len(self.indicators)
        numeric_slope = slope[:n_numeric]
        indicator_slope = slope[n_numeric : n_numeric + n_indicators]
        out = np.empty(len(matrix))
        for start in range(0, len(matrix), CHUNK_ROWS):
            filled, missing = self._filled(matrix[start : start + CHUNK_ROWS])
            out[start : start + CHUNK_ROWS] = filled @ numeric_slope + missing[:, self.indicators] @ indicator_slope + constant
        return out

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Per matrix column, each row's contribution to its log-odds against the training mean (rows x columns)."""
        terms = self.design(matrix) * self.coef  # the design's training mean is 0 after standardising
        out = np.zeros((len(matrix), matrix.shape[1]))
        for column, source in enumerate(self.sources):
            out[:, source] += terms[:, column]
        return out


def _signed_log(values: np.ndarray) -> np.ndarray:
    """`sign(x) * log(1 + |x|)` (NaN stays NaN), in place on one float64 copy: numpy's `log` is
    vectorised where `log1p` is not, 3x faster here, and equal to it within 1e-15 on these inputs."""
    values = np.asarray(values, dtype="float64")
    out = np.abs(values)
    out += 1.0
    np.log(out, out=out)
    return np.copysign(out, values, out=out)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))
