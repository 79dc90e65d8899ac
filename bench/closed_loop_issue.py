"""The monthly loop in H3's closed-loop simulator: the world answers kocrank's *issued* lists.

    python bench/closed_loop_issue.py [--members 10000] [--seed 7] [--months 3] [--out demo_closed_loop]

The simulator warms up 18 months under its historical rule; then for `--months` months
kocrank trains (once) on the data so far and ranks (`kocrank.simulation.loop.KocrankPolicy`),
and every list is recorded as an issued list (control group held out, probabilities logged)
in the store. The simulated members respond to exactly those invitations; the world runs
on until every label window has closed, is written out, and `koc outcomes` scores the lists.

Needs H3's closed-loop simulator (`kocrank/simulation/loop.py`, branch h3); it wraps the
loop's module-level `rank_members` so that each month's list is also issued.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import kocrank.simulation.loop as closed_loop  # noqa: E402
from features.io import write_tables  # noqa: E402
from kocrank.simulation.world import Simulation  # noqa: E402
from serving.issued import IssuedStore, issue_list  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "demo_closed_loop")
    args = parser.parse_args()
    out = args.out.resolve()
    store = IssuedStore(out / "koc_issued.sqlite")
    cfg = closed_loop.LoopConfig(members=args.members, seed=args.seed, loop_months=args.months, retrain_every=args.months,
                                 policies=("kocrank",))
    rank = closed_loop.rank_members

    def rank_and_issue(data, as_of, loaded, k, rank_cfg, label_cfg):
        """The loop's own ranking call, plus recording its list as issued (what `koc rank --issue` does)."""
        result = rank(data, as_of, loaded, k, rank_cfg, label_cfg)
        issue_list(result, loaded, k, rank_cfg, label_cfg, store, list_id=None, issued_at=str(as_of),
                   tracking_uri=None, log_to_mlflow=False)
        print(f"issued koc-{as_of.date()}: K = {k}, {len(result.candidates)} invited", flush=True)
        return result

    closed_loop.rank_members = rank_and_issue  # the loop calls it by this module-level name
    sim = Simulation(cfg.sim)
    sim.run(cfg.warmup_months)
    sim.run(cfg.warmup_months + cfg.loop_months, closed_loop.KocrankPolicy(cfg))
    sim.run(cfg.sim.months, closed_loop._no_invitations)
    world = sim.finish()
    write_tables(world.tables, out / "data")
    subprocess.run([sys.executable, "-m", "kocrank.cli", "outcomes", "--data", str(out / "data"), "--store",
                    str(store.path), "--out", str(out / "outcomes.csv")], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
