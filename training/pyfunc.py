"""The MLflow pyfunc wrapper of `KocModel`: feature rows in, calibrated probabilities out.

The signature declares every numeric feature as `double` (so a missing value can never
break schema enforcement) and every categorical feature as `string`; `predict` turns the
strings back into the registry's categorical dtype before scoring. Extra columns such as
`member_id` / `as_of` are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from features.registry import CATEGORY_LEVELS, coerce_features

MODEL_ARTIFACT_KEY = "koc_model"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_PATHS = [str(PROJECT_ROOT / "training"), str(PROJECT_ROOT / "features")]


def to_pyfunc_input(
    frame: pd.DataFrame, feature_names: Sequence[str] | None = None, categorical: Sequence[str] | None = None
) -> pd.DataFrame:
    """Feature rows in the pyfunc's input schema: float64 numerics, object strings (None = missing).

    MLflow's schema enforcement rejects pandas `category` columns for a `string` input, so
    `build_features` output goes through this before `pyfunc.predict`. Defaults: the registry's
    feature names and categoricals.
    """
    levels = CATEGORY_LEVELS if categorical is None else {name: CATEGORY_LEVELS.get(name, []) for name in categorical}
    return coerce_features(frame, feature_names, levels, as_text=True)


def signature_for(feature_names: Sequence[str], categorical: Sequence[str]) -> ModelSignature:
    """Input: one column per feature (double / string); output: `probability` (double)."""
    inputs = Schema(
        [ColSpec("string" if name in categorical else "double", name, required=True) for name in feature_names]
    )
    outputs = Schema([ColSpec("double", "probability")])
    return ModelSignature(inputs=inputs, outputs=outputs)


class KocPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the joblib-dumped KocModel artifact and returns `DataFrame({"probability": ...})`."""

    def load_context(self, context: Any) -> None:
        import joblib

        self.model = joblib.load(context.artifacts[MODEL_ARTIFACT_KEY])

    # pd.DataFrame is a type hint MLflow infers no schema from: the explicit signature
    # (see `signature_for`) keeps describing the input, and MLflow stops warning.
    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001, ARG002
        """Calibrated probabilities for feature rows (a DataFrame or records)."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        probabilities = self.model.predict_proba(self._as_model_frame(frame))
        return pd.DataFrame({"probability": np.asarray(probabilities, dtype="float64")}, index=frame.index)

    def _as_model_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Cast string categoricals back to the fitted categorical dtype; numerics to float64."""
        model = self.model
        missing = [c for c in model.feature_names_ if c not in frame.columns]
        if missing:
            raise ValueError(
                f"input lacks feature columns {missing}; send rows of feature set "
                f"{model.feature_set_version_} built by features.build.build_features"
            )
        return coerce_features(frame, model.feature_names_, model.categories_)
