"""Shared fixtures for every test tier.

Tiers: `unit/` (tiny hand-built frames, exact values), `data/` (contract, simulator,
point-in-time properties), `model/` (model behaviour on simulated worlds), `system/`
(CLI, API, MLflow, notebook end to end). Tests that take more than a few seconds carry
`@pytest.mark.slow`; `make test` runs them too, `pytest -m "not slow"` skips them.
"""

from __future__ import annotations

import pytest
from support.worlds import build_world, train_simulated_store


@pytest.fixture(scope="session")
def hand_world():
    """The tiny hand-built world: one member per exclusion rule plus a crowd (`support.worlds`)."""
    return build_world()


@pytest.fixture(scope="session")
def small_sim_world():
    """A small simulated brand (1,500 members, 12 months, seed 1) validated into `BrandData`."""
    from features.contract import from_frames
    from kocrank.simulation import SimConfig, simulate

    return from_frames(simulate(SimConfig(members=1500, months=12, seed=1)).tables)


@pytest.fixture
def tracking_uri(tmp_path):
    """A temporary, empty MLflow store (SQLite) that disappears with the test."""
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory):
    """A small simulated brand on disk with `koc-potential@champion` trained into its own store.

    Returns `(data_dir, tracking_uri, BrandData, TrainResult)`; shared by the server tests.
    """
    return train_simulated_store(tmp_path_factory.mktemp("trained_store"))


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Registered models loaded by tests are copied to a temporary cache, not ~/.cache/kocrank."""
    import os

    saved = os.environ.get("KOC_MODEL_CACHE")
    os.environ["KOC_MODEL_CACHE"] = str(tmp_path_factory.mktemp("model_cache"))
    yield
    if saved is None:
        os.environ.pop("KOC_MODEL_CACHE", None)
    else:
        os.environ["KOC_MODEL_CACHE"] = saved
