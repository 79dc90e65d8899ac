"""Execute notebooks/runs_and_champion.ipynb against a store trained beforehand (it trains nothing itself)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = PROJECT_ROOT / "notebooks" / "runs_and_champion.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_notebook_reads_the_configured_store(trained_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, tracking_uri, _, result = trained_store
    store = Path(tracking_uri.removeprefix("sqlite:///")).parent
    artifacts_before = _files(store / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert f"koc-potential v{result.model_version} is champion (run {result.run_id})" in outputs
    assert "no champion yet" in outputs  # the promotion history
    assert "model.pr_auc" in outputs  # champion vs latest, metric by metric
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # no store of its own
    assert _files(store / "mlartifacts") == artifacts_before  # read, never written
