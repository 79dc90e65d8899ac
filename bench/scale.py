"""`make bench-scale`: how every stage grows with the number of members, and the DuckDB floor.

For each pre-simulated world (`<data-root>/m<members>`, e.g. /work/benchdata/m100000) it
runs, each stage as its own process (wall time and peak RSS from `os.wait4`):

- `validate`: `koc validate` — the contract's checks over the files (typed Parquet in DuckDB
  SQL, under the `[engine]` memory limit), keeping no table;
- `ingest`: `koc ingest` — the same checks, writing the DuckDB store;
- `features`: `koc features --db` for one cutoff, streamed to Parquet, with the
  `[engine]` memory limit of `--memory-limit`;
- `floor`: one DuckDB GROUP BY member over `orders` and one over `events`, straight from
  the Parquet files (a fresh process; the query time is measured inside it too);
- `train` and `rank` (`koc train` / `koc rank` on the ingested store, with the same `[engine]`)
  for the sizes in `--train` / `--rank` (rank uses the model trained at the first size). `rank`
  builds the features itself and, on a model's first large ranking, compiles it
  (`serving.compiled`); `rank (feature file)` then scores from the features stage's file
  (`koc rank --features`), as a nightly `koc features` + `koc rank` would.

Then it fits time and peak memory of each stage linearly in the number of members,
projects them to `--project` members and names the bottleneck stage. Runs at 1M members
or more hold /tmp/kocrank-big.lock (the shared machine's one-big-run-at-a-time rule).
Results go to `<out>/scale.json`.

    python bench/scale.py --members 100000,300000,1000000 [--train 100000] [--rank 100000,300000]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BIG = 1_000_000
LOCK = Path("/tmp/kocrank-big.lock")

console = Console()

FLOOR = """
import sys, time, duckdb
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute("SET enable_progress_bar = false")
started = time.perf_counter()
con.execute("SELECT count(*), sum(n), sum(spend) FROM (SELECT member_id, count(*) AS n, sum(amount) AS spend "
            "FROM read_parquet(?) GROUP BY member_id)", [sys.argv[1]]).fetchall()
con.execute("SELECT count(*), sum(n), max(last) FROM (SELECT member_id, count(*) AS n, max(event_at) AS last "
            "FROM read_parquet(?) GROUP BY member_id)", [sys.argv[2]]).fetchall()
print(time.perf_counter() - started)
"""


def run_stage(name: str, members: int, command: list[str], env: dict[str, str]) -> dict[str, object]:
    """Run one process; its wall time, peak resident memory and stdout."""
    console.print(f"[bold]{name}[/] at {members:,}: {' '.join(command)}")
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        console.print(stderr[-3000:])
        raise SystemExit(f"{name} at {members} failed")
    row = {"stage": name, "members": members, "seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    console.print(f"  {row['seconds']} s, {row['peak_rss_mb']:.0f} MB")
    return row | {"stdout": stdout}


@contextlib.contextmanager
def big_run_lock(members: int) -> Iterator[None]:
    """Hold the machine's big-run lock (flock, as `flock /tmp/kocrank-big.lock` takes it) from 1M members."""
    if members < BIG:
        yield
        return
    with LOCK.open("a") as handle:
        console.print(f"waiting for {LOCK} …")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def project(rows: list[dict], target: int) -> dict[str, dict[str, float]]:
    """Least-squares line through (members, seconds) and (members, MB) per stage, evaluated at `target`."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        points = [r for r in rows if r["stage"] == stage]
        if len(points) < 2:
            continue
        x = np.array([p["members"] for p in points], dtype=float)
        fit = {
            key: np.polyfit(x, np.array([p[key] for p in points], dtype=float), 1) for key in ("seconds", "peak_rss_mb")
        }
        out[stage] = {
            "seconds_per_million": round(fit["seconds"][0] * 1e6, 1),
            "mb_per_million": round(fit["peak_rss_mb"][0] * 1e6, 1),
            "seconds": round(float(np.polyval(fit["seconds"], target)), 0),
            "peak_rss_mb": round(float(np.polyval(fit["peak_rss_mb"], target)), 0),
            "from_sizes": [int(v) for v in x],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="100000,300000,1000000", help="comma-separated world sizes")
    parser.add_argument("--data-root", type=Path, default=Path("/work/benchdata"), help="holds m<members>/ worlds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scale")
    parser.add_argument("--as-of", default="2025-06-01", help="cutoff for features and rank")
    # 1 GB is too little for `koc train` at 1M (its labels-and-outcomes query ran out of memory there); at 2 GB
    # `koc features` peaked at 2.10-2.15 GB RSS on a slow machine (Python adds 0.2-0.4 GB to DuckDB's share), at
    # 1.6 GB at 1.82-1.84 GB in the same time, and `koc train` and `koc rank` at 1M still ran (README, "Scaling curve")
    parser.add_argument("--memory-limit", default="1.6GB", help="[engine] memory_limit for every koc command")
    parser.add_argument("--train", default="", help="sizes at which to run koc train (comma-separated)")
    parser.add_argument("--rank", default="", help="sizes at which to run koc rank (needs a train run first)")
    parser.add_argument("--project", type=int, default=18_000_000, help="members to project to")
    parser.add_argument("--previous", type=Path, help="a scale.json of earlier sizes to fit the projection with too")
    opts = parser.parse_args()
    sizes = [int(v) for v in opts.members.split(",") if v]
    train_at = {int(v) for v in opts.train.split(",") if v}
    rank_at = {int(v) for v in opts.rank.split(",") if v}

    out: Path = opts.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = out / "engine.toml"
    config.write_text(f'[engine]\nmemory_limit = "{opts.memory_limit}"\ntemp_directory = "{out / "spill"}"\n')
    koc = [sys.executable, "-m", "kocrank.cli"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{out / 'mlflow.db'}", PYTHONPATH=str(ROOT))

    rows: list[dict] = []
    ratios = []
    if opts.previous:
        earlier = json.loads(opts.previous.read_text())
        rows, ratios = earlier["stages"], earlier["floor"]
    for members in sizes:
        data = opts.data_root / f"m{members}"
        if not (data / "members.parquet").exists():
            raise SystemExit(f"no world at {data}")
        store = out / f"m{members}.duckdb"
        features = out / f"features_{members}.parquet"
        load = load_average()
        with big_run_lock(members):
            size_rows = [
                run_stage("validate", members, [*koc, "validate", "--data", str(data), "--config", str(config)], env),
                run_stage(
                    "ingest", members, [*koc, "ingest", "--data", str(data), "--out", str(store), "--config", str(config)], env
                ),
                run_stage(
                    "features (1 cutoff)", members,
                    [*koc, "features", "--db", str(store), "--as-of", opts.as_of, "--out", str(features),
                     "--config", str(config)],
                    env,
                ),
                run_stage(
                    "floor", members,
                    [sys.executable, "-c", FLOOR, str(data / "orders.parquet"), str(data / "events.parquet")], env,
                ),
            ]
            if members in train_at:
                size_rows.append(
                    run_stage(
                        "train (all cutoffs)", members,
                        [*koc, "train", "--data", str(store), "--config", str(config)], env,
                    )
                )
            if members in rank_at:
                size_rows.append(
                    run_stage(
                        "rank", members,
                        [*koc, "rank", "--data", str(store), "--as-of", opts.as_of, "--top", "500",
                         "--out", str(out / f"invitations_{members}"), "--config", str(config)],
                        env,
                    )
                )
                # the nightly shape: score from the feature file the features stage wrote (model already compiled)
                size_rows.append(
                    run_stage(
                        "rank (feature file)", members,
                        [*koc, "rank", "--data", str(store), "--as-of", opts.as_of, "--top", "500",
                         "--out", str(out / f"invitations_{members}_file"), "--config", str(config),
                         "--features", str(features)],
                        env,
                    )
                )
        floor, features_row = (next(r for r in size_rows if r["stage"] == name) for name in ("floor", "features (1 cutoff)"))
        floor_query = float(floor.pop("stdout").strip().splitlines()[-1])
        floor["query_seconds"] = round(floor_query, 2)
        for row in size_rows:
            row.pop("stdout", None)
            row["load_before"] = load
        rows += size_rows
        feature_seconds = features_row["seconds"]
        ratios.append(
            {
                "members": members,
                "features_s": feature_seconds,
                "floor_process_s": floor["seconds"],
                "floor_query_s": round(floor_query, 2),
                "ratio_to_floor_process": round(feature_seconds / floor["seconds"], 1),
                "ratio_to_floor_query": round(feature_seconds / floor_query, 1),
            }
        )
        store.unlink(missing_ok=True)  # several GB at 1M: the machine's disk is shared
        features.unlink(missing_ok=True)
        (out / "scale.json").write_text(json.dumps({"stages": rows, "floor": ratios}, indent=2))  # kept if a later size fails

    projection = project([r for r in rows if r["stage"] != "floor"], opts.project)
    bottleneck_time = max(projection, key=lambda s: projection[s]["seconds"]) if projection else None
    bottleneck_memory = max(projection, key=lambda s: projection[s]["peak_rss_mb"]) if projection else None

    table = Table(title="kocrank scaling (each stage its own process; wall s / peak RSS MB)")
    for col in ("members", "stage", "seconds", "peak RSS (MB)", "load before"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in rows:
        table.add_row(f"{row['members']:,}", str(row["stage"]), f"{row['seconds']:.1f}", f"{row['peak_rss_mb']:.0f}",
                      " ".join(map(str, row["load_before"])))
    console.print(table)
    for ratio in ratios:
        console.print(
            f"{ratio['members']:,}: features {ratio['features_s']:.1f} s = {ratio['ratio_to_floor_process']}× the floor "
            f"process ({ratio['floor_process_s']:.1f} s), {ratio['ratio_to_floor_query']}× its query ({ratio['floor_query_s']} s)"
        )
    for stage, p in projection.items():
        console.print(f"projected to {opts.project:,}: {stage} {p['seconds']:.0f} s, {p['peak_rss_mb']:.0f} MB (fit on {p['from_sizes']})")
    console.print(f"bottleneck at {opts.project:,}: time {bottleneck_time}, memory {bottleneck_memory}")
    results = {
        "stages": rows, "floor": ratios, "projection": {"members": opts.project, "stages": projection,
        "bottleneck_time": bottleneck_time, "bottleneck_memory": bottleneck_memory},
        "cpu_count": os.cpu_count(), "load_after": load_average(),
    }
    (out / "scale.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
