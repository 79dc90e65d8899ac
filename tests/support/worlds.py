"""A small hand-built brand world and model doubles shared by the ranking and API tests.

The world has one member per exclusion rule (no consent, blacklisted, active KOC,
invited / declined within the cool-down), a KOC who was eliminated long ago (eligible
again), a member invited long ago (cool-down over), a member who joins after the cutoff,
and a crowd of ordinary members with varied activity.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.contract import BrandData, from_frames
from features.registry import categorical_features, feature_names
from serving.model_store import LoadedModel, ModelInfo

AS_OF = pd.Timestamp("2026-06-01")
CHANNELS = ("store", "mini_program", "ads", "referral")

SPECIAL = {
    "m_noconsent": "no consent",
    "m_black": "blacklisted",
    "m_active": "active KOC",
    "m_invited": "invited 20 days ago",
    "m_declined": "declined 10 days ago",
    "m_rejoin": "eliminated long ago",
    "m_oldinvite": "invited 90 days ago",
}


def build_world(n_crowd: int = 40, seed: int = 3) -> BrandData:
    """Validated BrandData with the special members plus `n_crowd` ordinary ones."""
    rng = np.random.default_rng(seed)
    ids = list(SPECIAL) + [f"c{i:03d}" for i in range(n_crowd)] + ["m_future"]
    n = len(ids)
    members = pd.DataFrame(
        {
            "member_id": ids,
            "joined_at": [pd.Timestamp("2025-01-01")] * (n - 1) + [pd.Timestamp("2026-06-15")],
            "birth_year": rng.integers(1970, 2005, n),
            "gender": rng.choice(["F", "M"], n),
            "city_tier": [1 + i % 3 for i in range(n)],
            "channel": [CHANNELS[i % len(CHANNELS)] for i in range(n)],
            "marketing_consent": [member != "m_noconsent" for member in ids],
        }
    )
    orders = []
    categories = ("skincare", "makeup", "bodycare")
    for i, member in enumerate(ids[:-1]):
        for j in range(1 + i % 4):
            orders.append(
                {
                    "order_id": f"o{i:03d}_{j}",
                    "member_id": member,
                    "ordered_at": AS_OF - pd.Timedelta(days=int(5 + 37 * j + 3 * (i % 7))),
                    "amount": float(50 + 40 * ((i * 7 + j) % 9)),
                    "category": categories[(i + j) % 3],
                    "refunded": False,
                }
            )
    # an order at exactly the cutoff must be ignored by features and the trial category
    orders.append({"order_id": "o_at_cutoff", "member_id": "c000", "ordered_at": AS_OF, "amount": 9999.0,
                   "category": "fragrance", "refunded": False})
    events, posts = [], []
    for i, member in enumerate(ids[:-1]):
        for j in range(i % 6):
            events.append({"member_id": member, "event_at": AS_OF - pd.Timedelta(days=int(3 + 11 * j)),
                           "event_type": ("group_message", "share", "campaign_join")[j % 3], "campaign_id": f"cmp{j}"})
        for j in range(i % 3):
            posts.append({"post_id": f"p{i:03d}_{j}", "member_id": member,
                          "posted_at": AS_OF - pd.Timedelta(days=int(20 + 30 * j)), "platform": "xhs",
                          "likes_7d": int(10 * (i % 5) + j), "comments_7d": 2, "saves_7d": 1, "campaign_id": None})
    program = pd.DataFrame(
        [
            ("m_black", "2025-05-01", "invited"),
            ("m_black", "2025-05-03", "enrolled"),
            ("m_black", "2025-08-01", "blacklisted"),
            ("m_active", "2026-02-20", "invited"),
            ("m_active", "2026-03-01", "enrolled"),
            ("m_invited", "2026-05-12", "invited"),
            ("m_declined", "2026-05-20", "invited"),
            ("m_declined", "2026-05-22", "declined"),
            ("m_rejoin", "2025-01-05", "invited"),
            ("m_rejoin", "2025-01-10", "enrolled"),
            ("m_rejoin", "2025-09-01", "eliminated"),
            ("m_oldinvite", "2026-03-03", "invited"),
            # after the cutoff: must not matter
            ("c001", "2026-06-01", "blacklisted"),
            ("c002", "2026-06-02", "invited"),
        ],
        columns=["member_id", "event_at", "status"],
    )
    program["event_at"] = pd.to_datetime(program["event_at"])
    return from_frames(
        {
            "members": members,
            "orders": pd.DataFrame(orders),
            "events": pd.DataFrame(events),
            "posts": pd.DataFrame(posts),
            "program": program,
        }
    )


class LinearFakeModel:
    """A transparent stand-in for KocModel: contribution = weight x value (nulls 0).

    Mirrors the KocModel interface used by ranking (`feature_names_`, `predict_proba`,
    `contributions`), so expected reasons and scores can be computed by hand.
    """

    def __init__(self, weights: dict[str, float], bias: float = -2.0) -> None:
        self.weights = dict(weights)
        self.bias = bias
        self.feature_names_ = feature_names()
        self.categorical_features_ = categorical_features()
        self.feature_set_version_ = "test"
        self.trained_at_ = "2026-05-31T00:00:00+00:00"

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(0.0, index=X.index, columns=self.feature_names_)
        for name, weight in self.weights.items():
            out[name] = weight * X[name].astype("float64").fillna(0.0)
        return out

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        raw = self.bias + self.contributions(X).sum(axis=1).to_numpy()
        return 1.0 / (1.0 + np.exp(-raw))


DEFAULT_WEIGHTS = {"orders_365d": 0.3, "posts_180d": 0.5, "events_90d": 0.1, "recency_days": -0.01}


def fake_loaded(weights: dict[str, float] | None = None, version: str = "1") -> LoadedModel:
    model = LinearFakeModel(weights or DEFAULT_WEIGHTS)
    info = ModelInfo(uri="models:/koc-potential@champion", name="koc-potential", version=version,
                     alias="champion", run_id=f"run{version}", trained_at=model.trained_at_,
                     feature_set_version="test", test_metrics={"test_precision_at_100": 0.5})
    return LoadedModel(model, info)


def fit_tiny_koc_model(seed: int = 0, n_rows: int = 600):
    """A real (tiny) training.model.KocModel fitted on synthetic feature rows."""
    from training.model import KocModel

    rng = np.random.default_rng(seed)
    names = feature_names()
    categorical = set(categorical_features())
    from features.registry import CATEGORY_LEVELS

    def frame(n: int) -> tuple[pd.DataFrame, np.ndarray]:
        data = {}
        for name in names:
            if name in categorical:
                data[name] = pd.Categorical(rng.choice(CATEGORY_LEVELS[name], n), categories=CATEGORY_LEVELS[name])
            else:
                data[name] = rng.poisson(2.0, n).astype("float64")
        X = pd.DataFrame(data)
        logit = -2.0 + 0.6 * X["posts_180d"] + 0.3 * X["orders_365d"] - 0.5 * X["times_declined"]
        y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
        return X, y

    X, y = frame(n_rows)
    X_val, y_val = frame(n_rows // 2)
    params = {"learning_rate": 0.2, "num_leaves": 7, "min_data_in_leaf": 10, "num_boost_round": 30,
              "early_stopping_rounds": 10}
    return KocModel(params, seed=seed, num_threads=1).fit(X, y, X_val, y_val)


SIM_AS_OF = "2025-01-01"


def train_simulated_store(root, members: int = 1500, months: int = 12, seed: int = 1):
    """Simulate a small brand into `root/data`, train + register `koc-potential` in `root/mlruns.db`.

    Returns (data_dir, tracking_uri, BrandData, TrainResult). Uses the real training module.
    """
    from features.io import write_tables
    from kocrank.simulation import SimConfig, simulate
    from training.config import LgbmParams, TrainConfig
    from training.train import run_training

    world = simulate(SimConfig(members=members, months=months, seed=seed))
    data_dir = root / "data"
    write_tables(world.tables, data_dir)
    data = from_frames(world.tables)
    tracking_uri = f"sqlite:///{root / 'mlruns.db'}"
    cfg = TrainConfig(
        min_history_months=3, embargo=False, k_list=(50,), primary_k=50, num_threads=1,
        lgbm=LgbmParams(num_boost_round=40, min_data_in_leaf=20, early_stopping_rounds=10),
    )
    result = run_training(data, cfg, tracking_uri=tracking_uri)
    return data_dir, tracking_uri, data, result


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process, timeout: float = 90.0, headers: dict | None = None) -> None:
    """Poll `url` until it answers 200, the process dies, or `timeout` seconds pass."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up within {timeout}s")


def stop(process) -> None:
    """Terminate the process group we started; kill it if it does not exit within 10 s."""
    import os
    import signal
    import subprocess

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
