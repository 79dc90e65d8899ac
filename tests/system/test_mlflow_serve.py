"""MLflow's own model server serves the registered champion: /invocations returns probabilities."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from support.worlds import SIM_AS_OF, free_port, stop, train_simulated_store, wait_until_up

from features.build import build_features
from features.registry import categorical_features
from training.pyfunc import to_pyfunc_input

pytestmark = pytest.mark.slow


def test_mlflow_models_serve_champion(tmp_path):
    _, tracking_uri, data, result = train_simulated_store(tmp_path)
    assert result.decision.promoted  # first model of the store becomes champion

    features = build_features(data, [pd.Timestamp(SIM_AS_OF)]).head(3)
    rows = to_pyfunc_input(features, result.model.feature_names_, categorical_features())
    payload = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}

    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    log = (tmp_path / "mlflow-serve.log").open("wb")
    process = subprocess.Popen(
        [str(Path(venv_bin) / "mlflow"), "models", "serve", "-m", "models:/koc-potential@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", process, timeout=120)
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=payload, timeout=30)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        served = np.array([row["probability"] for row in predictions], dtype="float64")
        assert served.shape == (3,) and ((served >= 0) & (served <= 1)).all()
        expected = result.model.predict_proba(features[result.model.feature_names_])
        np.testing.assert_allclose(served, expected, rtol=1e-6)
    finally:
        stop(process)
        log.close()
    assert process.poll() is not None
