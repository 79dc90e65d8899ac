"""`koc features` on DuckDB and on Spark over the same data folder: wall time, peak memory, equality.

Each engine runs as its own `koc features` process; peak memory is the largest sum of RSS
over the process and its children (Spark's JVM is a child of the Python driver), sampled
from /proc every 0.2 s. Afterwards the two feature files are compared feature by feature
(floats within 1e-9, counts and categoricals exact). Linux only.

    python bench/spark_engine.py --data /work/benchdata/m100000 --as-of 2025-06-01 [--master local[2]]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and all its descendants (0 once it is gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
        todo += children.get(current, [])
    return total


def run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak tree RSS (bytes) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.2)
    if process.returncode:
        raise SystemExit(f"{' '.join(args)} failed with exit code {process.returncode}")
    return time.perf_counter() - started, peak


def compare(duck_path: Path, spark_path: Path) -> list[str]:
    import numpy as np
    import pandas as pd

    duck, spark = pd.read_parquet(duck_path), pd.read_parquet(spark_path)
    if list(duck.columns) != list(spark.columns) or not duck["member_id"].equals(spark["member_id"]):
        return ["columns or rows differ"]
    wrong = []
    for name in duck.columns[2:]:
        a, b = duck[name], spark[name]
        if a.dtype.kind == "f":
            same = np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)
        else:
            same = a.astype("object").where(a.notna(), None).equals(b.astype("object").where(b.notna(), None))
        if not same:
            wrong.append(name)
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--as-of", default="2025-06-01")
    parser.add_argument("--master", default="local[2]")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="koc-spark-bench-") as tmp:
        outputs = {}
        for engine in ("duckdb", "spark"):
            out = Path(tmp) / f"{engine}.parquet"
            command = [sys.executable, "-m", "kocrank.cli", "features", "--data", options.data, "--as-of",
                       options.as_of, "--out", str(out), "--engine", engine]
            if engine == "spark":
                command += ["--master", options.master]
            load = os.getloadavg()[0]
            seconds, peak = run(command)
            outputs[engine] = out
            print(f"{engine:7s} {seconds:8.1f} s wall, peak {peak / 2**30:.2f} GB (process tree), "
                  f"load average at start {load:.1f}")
        wrong = compare(outputs["duckdb"], outputs["spark"])
        print("features equal (floats within 1e-9)" if not wrong else f"features differ: {wrong}")


if __name__ == "__main__":
    main()
