"""The monthly loop on a simulated brand: three issued lists, their outcomes, monitoring and OPE.

    python bench/loop_demo.py [--members 15000] [--seed 7] [--out demo_loop]

1. simulate 24 months (2024-01 .. 2026-01);
2. train the champion on the data *as known on 2025-08-01* (every table cut before it), so
   the lists below are scored by a model that never saw their outcomes;
3. `koc rank --issue` at 2025-08-01, 2025-09-01 and 2025-10-01 (K = 300, 10% exploration,
   5% control) on the full data (features only use rows before each cutoff);
4. `koc outcomes`: the August and September lists have matured, October's is maturing;
5. `koc monitor --as-of 2025-10-01` (HTML report) and, with a challenger trained on the data
   known on 2025-09-01, `koc compare --challenger 2`.

The simulator invites members by its own historical rule, not from these lists: outcomes
therefore read the `program` table and report how many of each list's invitations were
actually sent (usually a minority), scoring such lists intention-to-treat with that status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

TIME_COLUMNS = {"members": "joined_at", "orders": "ordered_at", "events": "event_at", "posts": "posted_at",
                "referrals": "referred_at", "program": "event_at", "social": "observed_at"}
LISTS = ("2025-08-01", "2025-09-01", "2025-10-01")


def koc(*args: str, check: bool = True) -> int:
    print("$ koc", " ".join(args), flush=True)
    start = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "kocrank.cli", *args], cwd=ROOT, check=False).returncode
    print(f"  ({time.perf_counter() - start:.1f} s, exit {code})", flush=True)
    if check and code != 0:
        raise SystemExit(f"koc {args[0]} failed with exit code {code}")
    return code


def cut(data: Path, out: Path, before: str) -> None:
    """A copy of the data directory as it was known before `before` (each table cut on its own time)."""
    from features.io import write_tables

    cutoff = pd.Timestamp(before)
    tables = {}
    for name, column in TIME_COLUMNS.items():
        path = data / f"{name}.parquet"
        if path.exists():
            frame = pd.read_parquet(path)
            tables[name] = frame.loc[pd.to_datetime(frame[column]) < cutoff].copy()
    referrals = tables.get("referrals")
    if referrals is not None:  # a friend who joined (or first ordered) later was not known yet
        later = ~(pd.to_datetime(referrals["referee_joined_at"]) < cutoff)
        referrals.loc[later, ["referee_id", "referee_joined_at", "referee_first_order_at"]] = None
        referrals.loc[~(pd.to_datetime(referrals["referee_first_order_at"]) < cutoff), "referee_first_order_at"] = None
    write_tables(tables, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=15_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "demo_loop")
    args = parser.parse_args()
    out = args.out.resolve()
    data = out / "data"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    koc("simulate", "--members", str(args.members), "--seed", str(args.seed), "--out", str(data))
    for known in ("2025-08-01", "2025-09-01"):
        cut(data, out / f"data_{known}", known)
    koc("train", "--data", str(out / "data_2025-08-01"), "--tracking-uri", uri)
    for as_of in LISTS:
        koc("rank", "--data", str(data), "--as-of", as_of, "--top", "300", "--model", "models:/koc-potential/1",
            "--tracking-uri", uri, "--issue", "--show", "0", "--out", str(out / f"list_{as_of}.csv"))
    koc("rank", "--data", str(data), "--as-of", LISTS[0], "--top", "300", "--model", "models:/koc-potential/1",
        "--tracking-uri", uri, "--issue", "--show", "0", "--out", str(out / "again.csv"), check=False)  # refused
    koc("outcomes", "--data", str(data), "--tracking-uri", uri, "--out", str(out / "outcomes.csv"))
    koc("monitor", "--data", str(data), "--as-of", LISTS[-1], "--model", "models:/koc-potential/1",
        "--tracking-uri", uri, "--out", str(out / "monitor.html"), check=False)
    koc("train", "--data", str(out / "data_2025-09-01"), "--tracking-uri", uri)
    koc("compare", "--challenger", "2", "--data", str(data), "--tracking-uri", uri, check=False)


if __name__ == "__main__":
    main()
