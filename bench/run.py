"""`make bench`: wall time and peak memory of every stage at 100k members, and /score latency.

Each stage runs as its own `koc` process so its peak RSS is its own (read with
`os.wait4`). Figures go to the terminal and to `bench/out/results.json`.

    python bench/run.py [--members 100000] [--seed 1] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from bench.serving import bench_score_latency  # noqa: E402

console = Console()


def run_stage(name: str, args: list[str], env: dict[str, str]) -> dict[str, object]:
    """Run one `koc` command; return its wall time and peak resident memory."""
    koc = str(Path(sys.executable).with_name("koc"))
    console.print(f"[bold]{name}[/]: koc {' '.join(args)}")
    start = time.perf_counter()
    proc = subprocess.Popen([koc, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        console.print(stderr[-3000:])
        raise SystemExit(f"{name} failed")
    return {"stage": name, "seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--as-of", default="2025-06-01", help="cutoff for the features and rank stages")
    parser.add_argument("--requests", type=int, default=200, help="requests per /score batch size (bounded loop)")
    opts = parser.parse_args()

    out: Path = opts.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = out / "data"
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, KOC_CACHE_DIR=str(out / "cache"))  # fingerprint cache
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    rows = [
        run_stage("simulate", ["simulate", "--members", str(opts.members), "--seed", str(opts.seed), "--out", str(data)], env),
        run_stage("validate", ["validate", "--data", str(data)], env),
        run_stage("features (1 cutoff)", ["features", "--data", str(data), "--as-of", opts.as_of, "--out", str(out / "features.parquet")], env),
        run_stage("train (all cutoffs)", ["train", "--data", str(data)], env),
        run_stage(
            "rank",
            ["rank", "--data", str(data), "--as-of", opts.as_of, "--top", "500", "--out", str(out / "invitations")],
            env,
        ),
    ]
    member_ids = pd.read_parquet(data / "members.parquet", columns=["member_id"])["member_id"].tolist()
    score = bench_score_latency(data, tracking_uri, opts.as_of, member_ids, requests=opts.requests)
    latency = [
        {"batch": batch, "requests": opts.requests, "p50_ms": score[f"score_{batch}_p50_ms"], "p99_ms": score[f"score_{batch}_p99_ms"]}
        for batch in (1, 100)
    ]

    table = Table(title=f"kocrank benchmark — {opts.members:,} members, seed {opts.seed}")
    for col in ("stage", "seconds", "peak RSS (MB)"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for row in rows:
        table.add_row(str(row["stage"]), f"{row['seconds']:.2f}", f"{row['peak_rss_mb']:.0f}")
    console.print(table)
    lat = Table(title="POST /score latency on loopback (ms)")
    for col in ("members per request", "requests", "p50", "p99"):
        lat.add_column(col, justify="right")
    for row in latency:
        lat.add_row(str(row["batch"]), str(row["requests"]), f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}")
    console.print(lat)
    console.print(f"server start-up to a ready ranking: {score['startup_s']:.1f} s")
    results = {"members": opts.members, "stages": rows, "score_latency": latency, "server_startup_s": score["startup_s"]}
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
