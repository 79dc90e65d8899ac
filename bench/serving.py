"""Serving benchmarks: rank a simulated brand end to end, and `/score` latency on a real loopback server.

Run: `PYTHONPATH=. .venv/bin/python -m bench.serving --members 100000` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_store(root: Path, members: int, months: int = 12, seed: int = 0) -> tuple[Path, str, Any]:
    """Simulate `members` into `root/data` and train + register a small model in `root/mlruns.db`."""
    from features.contract import from_frames
    from features.io import write_tables
    from kocrank.simulation import SimConfig, simulate
    from training.config import LgbmParams, TrainConfig
    from training.train import run_training

    world = simulate(SimConfig(members=members, months=months, seed=seed))
    data_dir = root / "data"
    write_tables(world.tables, data_dir)
    tracking_uri = f"sqlite:///{root / 'mlruns.db'}"
    cfg = TrainConfig(min_history_months=3, embargo=False, k_list=(100,), primary_k=100, num_threads=2,
                      lgbm=LgbmParams(num_boost_round=100, early_stopping_rounds=20))
    run_training(from_frames(world.tables), cfg, tracking_uri=tracking_uri)
    return data_dir, tracking_uri, world


def bench_rank(data_dir: Path, tracking_uri: str, as_of: str, k: int = 1000) -> dict[str, float]:
    """Seconds to load data, load the champion, and rank + write the list (csv)."""
    from features.contract import load_data
    from serving.config import RankConfig, parse_cutoff
    from serving.model_store import load_model
    from serving.output import write_ranked_list
    from serving.rank import rank_members

    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = load_data(data_dir)
    timings["load_data_s"] = time.perf_counter() - start
    start = time.perf_counter()
    loaded = load_model("models:/koc-potential@champion", tracking_uri)
    timings["load_model_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result = rank_members(data, parse_cutoff(as_of, data.timezone), loaded, k, RankConfig(quotas={"city_tier": 0.4, "channel": 0.5}))
    timings["rank_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_ranked_list(result.candidates, result.meta, Path(tmp) / "list", ["csv", "xlsx"])
        timings["write_s"] = time.perf_counter() - start
    timings["members_scored"] = float(len(result.scored))
    timings["eligible"] = float(result.meta["counts"]["eligible"])
    return {key: round(value, 3) for key, value in timings.items()}


def bench_score_latency(
    data_dir: Path, tracking_uri: str, as_of: str, member_ids: list[str], requests: int = 200, startup_timeout: float = 180.0
) -> dict[str, float]:
    """p50/p99 milliseconds of `POST /score` with 1 and 100 ids against a real loopback uvicorn server."""
    import httpx

    token = "bench-token"
    port = _free_port()
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "KOC_API_TOKEN": token, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "kocrank.cli_serving", "serve", "--port", str(port), "--tracking-uri", tracking_uri,
         "--data", str(data_dir), "--as-of", as_of],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    out: dict[str, float] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_timeout
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if httpx.get(f"{base}/health", timeout=2).json().get("ranking_available"):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start in time")
            time.sleep(0.5)
        out["startup_s"] = round(time.monotonic() - started, 2)
        rng = np.random.default_rng(0)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            for batch in (1, 100):
                latencies = []
                for _ in range(requests):
                    ids = [str(x) for x in rng.choice(member_ids, batch, replace=False)]
                    start = time.perf_counter()
                    response = client.post("/score", json={"member_ids": ids})
                    latencies.append((time.perf_counter() - start) * 1000)
                    response.raise_for_status()
                out[f"score_{batch}_p50_ms"] = round(float(np.percentile(latencies, 50)), 2)
                out[f"score_{batch}_p99_ms"] = round(float(np.percentile(latencies, 99)), 2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--as-of", default="2025-01-01")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data_dir, tracking_uri, world = prepare_store(Path(tmp), args.members, args.months)
        report: dict[str, Any] = {"members": args.members, "prepare_s": round(time.perf_counter() - start, 1)}
        report["rank"] = bench_rank(data_dir, tracking_uri, args.as_of)
        ids = world.tables["members"]["member_id"].tolist()
        report["score"] = bench_score_latency(data_dir, tracking_uri, args.as_of, ids, args.requests)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
