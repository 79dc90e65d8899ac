"""Which cutoffs the served model's refit should learn from, measured on simulated worlds.

    python bench/refit_cutoffs.py [--members 30000] [--seeds 1,2] [--scenarios default,spend_led,...]

For each world and each of its latest test cutoffs T (the rolling-origin folds of `koc eval`),
the `two_path` model `koc train` would serve at T is rebuilt two ways, with the fold's iteration
counts and calibrated on the fold model's validation scores (as `koc eval --served`):
- `used`: the refit of the previous rounds, on the cutoffs the split made at T uses (its train,
  validation and test cutoffs; at T its test cutoff is the fold's validation cutoff);
- `all`: the refit of this round, on every complete cutoff known at T, the embargoed ones
  included (`SnapshotDataset.known_rows`).
It prints one JSON line per (world, T) with the top-1% yield / oracle of the fold model, `used`
and `all`, and a summary. T with too little history before it for a split are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from features.contract import from_frames  # noqa: E402
from kocrank.config import load_config  # noqa: E402
from kocrank.simulation import SimConfig, simulate  # noqa: E402
from training.dataset import build_snapshots, downsample_negatives, split_cutoffs  # noqa: E402
from training.eval_grid import refit_served, top_k_ratio  # noqa: E402
from training.evaluate import resolve_k, truth_for  # noqa: E402
from training.targets import components_for, fit_components  # noqa: E402
from training.train import model_factory  # noqa: E402

METHOD = "two_path"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=30_000)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--scenarios", default="default,spend_led,activity_led,random_organic,mixed_quiet")
    parser.add_argument("--test-cutoffs", type=int, default=3)
    opts = parser.parse_args()
    cfg = load_config(None)
    train_cfg, label_cfg = cfg.training, cfg.labels
    make = model_factory(train_cfg, label_cfg)
    rows = []
    for scenario in opts.scenarios.split(","):
        for seed in (int(s) for s in opts.seeds.split(",")):
            extra = {"scenario": scenario} if scenario != "default" else {}
            sim = SimConfig(
                members=opts.members,
                seed=seed,
                horizon_days=label_cfg.horizon_days,
                min_posts=label_cfg.min_posts,
                min_interactions=label_cfg.min_interactions,
                cooldown_days=label_cfg.cooldown_days,
                **extra,
            )
            data = from_frames(simulate(sim).tables, timezone=cfg.timezone)
            dataset = build_snapshots(data, label_cfg, train_cfg.model_copy(update={"backtest_cutoffs": opts.test_cutoffs}))
            names = dataset.feature_names
            for fold in dataset.folds:
                known = [c for c in dataset.refit_cutoffs if c <= fold.validation]
                try:
                    at_t = split_cutoffs(known, label_cfg, train_cfg)
                except ValueError:
                    continue  # koc train at T could not split its history: nothing to serve
                train, valid, test = dataset.fold_parts(fold)
                fitted = fit_components(
                    train, valid, names, components_for("if_invited", METHOD), make, propensity_clip=train_cfg.propensity_clip
                )
                used = dataset.frame.loc[dataset.frame["as_of"].isin(list(at_t.used))].reset_index(drop=True)
                used = downsample_negatives(used, dataset.negative_sample_rate, dataset.seed).reset_index(drop=True)
                p_invited = truth_for(data.truth, test["member_id"], fold.test)
                k = resolve_k("1%", len(test))
                row = {"scenario": scenario, "seed": seed, "test_cutoff": str(fold.test.date())}
                models = {
                    "fold": fitted.model("if_invited", METHOD),
                    "used": refit_served(fitted, used, valid, names, make, propensity_clip=train_cfg.propensity_clip).model(
                        "if_invited", METHOD
                    ),
                    "all": refit_served(
                        fitted, dataset.known_rows(fold), valid, names, make, propensity_clip=train_cfg.propensity_clip
                    ).model("if_invited", METHOD),
                }
                for name, model in models.items():
                    row[name] = top_k_ratio(model.predict_proba(test[names]), p_invited, test["member_id"], k)
                row["used_cutoffs"], row["all_cutoffs"] = len(at_t.used), len(known)
                print(json.dumps(row), flush=True)
                rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        print("no test cutoff had enough history before it")
        return
    for a, b in (("all", "used"), ("used", "fold"), ("all", "fold")):
        diff = table[a] - table[b]
        per_seed = diff.groupby(table["seed"]).mean().round(4).to_dict()
        print(f"{a} - {b}: mean {diff.mean():+.4f}, ahead in {(diff > 0).sum()} of {len(diff)}; per seed {per_seed}")


if __name__ == "__main__":
    main()
