"""`make bench`: wall time of `koc monitor`'s core at 1M eligible members (synthetic feature frames).

Builds two 1M-row frames with every registry feature (the reference month and this month,
with one feature shifted), profiles the reference, builds a previous issued list of 1M
members and a matured list with outcomes, then times `serving.monitor.monitor` and
`render_html`. Feature building itself is `koc features`' cost and is measured by
bench/run.py; this measures what the monitor adds on top.

    python bench/monitor.py [--members 1000000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from features.registry import CATEGORY_LEVELS, categorical_features, feature_names  # noqa: E402
from serving.issued import IssuedList, LoopConfig  # noqa: E402
from serving.monitor import monitor, reference_profile, render_html  # noqa: E402


def synthetic_features(n: int, seed: int, shift: str | None = None) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    ids = pd.Index(np.char.add("m", np.arange(n).astype("U8")), name="member_id")
    categorical = set(categorical_features())
    columns = {}
    for i, name in enumerate(feature_names()):
        if name in categorical:
            columns[name] = pd.Categorical(rng.choice(CATEGORY_LEVELS[name], n), categories=CATEGORY_LEVELS[name])
        else:
            values = rng.gamma(0.5 + i % 4, 2.0, n)
            values[rng.random(n) < 0.05] = np.nan
            columns[name] = values * (1.5 if name == shift else 1.0)
    features = pd.DataFrame(columns, index=ids)
    scores = pd.Series(1 / (1 + np.exp(4 - rng.gamma(1.0, 1.0, n))), index=ids, name="score")
    return features, scores


def issued(features: pd.DataFrame, scores: pd.Series, k: int) -> IssuedList:
    members = scores.sort_values(ascending=False).rename_axis("member_id").reset_index()
    members["position"] = np.arange(1, len(members) + 1)
    members["invited"] = members["position"] <= k
    members["role"] = np.where(members["invited"], "exploit", "none")
    members["p_invite"] = members["invited"].astype("float64")
    members["reasons"] = np.where(members["invited"], "many posts | frequent orders", None)
    members["productive"] = (np.random.default_rng(0).random(len(members)) < members["score"]).astype("int64")
    meta = {"list_id": "previous", "as_of": "2026-05-01", "k": k, "counts": {"exploit": k, "explore": 0, "control": 0}}
    return IssuedList("previous", meta, members, reference_profile(features, scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    n, k = args.members, 5000
    timings: dict[str, float] = {}
    start = time.perf_counter()
    import matplotlib.pyplot  # noqa: F401  one-time imports, paid once per process, timed apart
    import scipy.stats  # noqa: F401

    timings["imports (matplotlib, scipy; once per process)"] = time.perf_counter() - start
    start = time.perf_counter()
    reference_frame, reference_scores = synthetic_features(n, seed=1)
    current, current_scores = synthetic_features(n, seed=2, shift=feature_names()[3])
    timings["synthesise two frames"] = time.perf_counter() - start
    start = time.perf_counter()
    reference = reference_profile(reference_frame, reference_scores)
    timings["profile reference (done once per model / issued list)"] = time.perf_counter() - start
    previous = issued(reference_frame, reference_scores, k)
    start, cpu = time.perf_counter(), time.process_time()
    report = monitor(pd.Timestamp("2026-06-01"), current, current_scores, LoopConfig(), k=k, reference=reference,
                     previous=previous, matured=(previous, previous.members), latest=previous)
    timings["monitor checks"] = time.perf_counter() - start
    start = time.perf_counter()
    page = render_html(report, LoopConfig())
    timings["render HTML (plots)"] = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu  # CPU time of checks + report: what a loaded machine does not inflate
    total = timings["monitor checks"] + timings["render HTML (plots)"]  # the work per report
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"koc monitor core at {n:,} eligible members x {len(feature_names())} features (K = {k}):")
    for name, seconds in timings.items():
        print(f"  {name:55s} {seconds:6.2f} s")
    print(f"  {'monitor + report total':55s} {total:6.2f} s wall, {cpu_seconds:.2f} s CPU; peak RSS {peak_gb:.1f} GB; "
          f"HTML {len(page) / 1024:.0f} KB; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  tripped: {[check.name for check in report.tripped()]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "monitor.json").write_text(json.dumps({"members": n, "features": len(feature_names()), "k": k,
                                                       "seconds": {**timings, "total": total}, "cpu_seconds": cpu_seconds,
                                                       "load_average": os.getloadavg()[0], "peak_rss_gb": peak_gb}, indent=2))


if __name__ == "__main__":
    main()
