"""Closed loop: kocrank decides a simulated brand's monthly invitations, and we count what they achieve.

The world first runs `warmup_months` under its scenario's historical rule (the history a
brand would bring). From there the same state is branched, once per policy:

* `kocrank`: at each of the `loop_months` cutoffs the brand's data so far (a snapshot, no
  truth) is validated, a model is trained on it with kocrank's own training code
  (`training.dataset.build_snapshots` + `training.train.fit_model`) or the last one is
  reused (the loop's champion; retrained every `retrain_every` months), and
  `serving.rank.rank_members` picks the K members to invite;
* `historical`: the scenario's own rule;
* `random`: K eligible members uniformly at random.

K is the historical rule's budget at that cutoff (1% of eligible members) for all three.
The simulated members respond to those invitations; after the loop months the world runs
on without invitations until every loop cutoff's label window has closed. Per policy and
month we count invitations, acceptances and productive KOCs among the invited (the
default label at that cutoff), and the truth's expectation of both the productive count
and the uplift (sum of P(productive | invited) - P(productive | not invited)).
The loop trains in-process without MLflow: nothing is registered or promoted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.contract import from_frames
from features.labels import LabelConfig
from kocrank.simulation.config import SimConfig
from kocrank.simulation.policy import Budget
from kocrank.simulation.world import Invitations, SimulatedWorld, Simulation
from serving.config import RankConfig
from serving.model_store import LoadedModel, ModelInfo
from serving.rank import rank_members
from serving.selection import draw_policy, order_by_score
from training.config import TrainConfig
from training.dataset import build_snapshots
from training.train import fit_model

logger = logging.getLogger(__name__)

POLICIES = ("kocrank", "historical", "random")


@dataclass(frozen=True)
class LoopConfig:
    """One closed-loop experiment: the world, how long each phase lasts, and kocrank's settings."""

    members: int = 30_000
    seed: int = 0
    scenario: str = "default"
    warmup_months: int = 18
    loop_months: int = 6
    retrain_every: int = 3
    policies: tuple[str, ...] = POLICIES
    target: str = "observed"  # what kocrank's model scores (training.config.TrainConfig.target)
    train: TrainConfig | None = None  # default: TrainConfig(min_history_months=3, target=target)
    rank: RankConfig = field(default_factory=RankConfig)

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown loop policies {unknown}; use some of {POLICIES}")
        if self.warmup_months < 1 or self.loop_months < 1 or self.retrain_every < 1:
            raise ValueError("warmup_months, loop_months and retrain_every must be positive")
        self.training  # noqa: B018 - fails early on an unknown target

    @property
    def training(self) -> TrainConfig:
        """kocrank's training settings; three months of history before the first cutoff leave enough after the embargo."""
        return self.train or TrainConfig(min_history_months=3, target=self.target)

    @property
    def label(self) -> LabelConfig:
        return LabelConfig()

    @property
    def sim(self) -> SimConfig:
        """The world: warm-up, loop months, then enough months for the last loop cutoff's label window to close."""
        label = self.label
        tail = int(np.ceil((label.horizon_days + 7) / 28.0))
        return SimConfig(
            members=self.members,
            seed=self.seed,
            scenario=self.scenario,
            months=self.warmup_months + self.loop_months + tail,
            horizon_days=label.horizon_days,
            min_posts=label.min_posts,
            min_interactions=label.min_interactions,
            cooldown_days=label.cooldown_days,
        )


@dataclass
class LoopResult:
    """Per policy and loop month: `invited, accepted, productive, expected_productive, expected_uplift`.

    `world_productive`: per policy, distinct members who became productive KOCs in the
    window of some loop cutoff, invited or not (the brand's whole gain, noisier).
    """

    months: pd.DataFrame
    world_productive: dict[str, int]
    seconds: dict[str, float]
    trainings: int

    def totals(self) -> pd.DataFrame:
        """The monthly counts summed per policy, plus the world's productive KOCs."""
        columns = ["invited", "accepted", "productive", "expected_productive", "expected_uplift"]
        totals = self.months.groupby("policy", sort=False)[columns].sum()
        return totals.assign(world_productive=pd.Series(self.world_productive))


class KocrankPolicy:
    """kocrank as the brand's invitation policy: train (or reuse the champion) on the data so far, rank, invite K."""

    def __init__(self, cfg: LoopConfig) -> None:
        self.cfg = cfg
        self.model = None
        self.trained_at: int | None = None
        self.trainings = 0

    def __call__(self, sim: Simulation, month: int, eligible: np.ndarray) -> Invitations:
        cfg = self.cfg
        data = from_frames(sim.snapshot())
        as_of = sim.as_of(month)
        if self.model is None or month - self.trained_at >= cfg.retrain_every:
            began = time.perf_counter()
            dataset = build_snapshots(data, cfg.label, cfg.training)
            self.model = fit_model(dataset, cfg.training, cfg.label)
            self.trained_at = month
            self.trainings += 1
            logger.info(
                "loop month %d: trained on data before %s in %.0fs", month, as_of.date(), time.perf_counter() - began
            )
        loaded = LoadedModel(self.model, ModelInfo(uri=f"loop:trained-month-{self.trained_at}"))
        k = Budget.for_eligible(len(eligible), sim.world.spec).k
        result = rank_members(data, as_of, loaded, k, cfg.rank, cfg.label)
        chosen = result.candidates["member_id"].astype("int64").to_numpy()
        return Invitations(chosen, _list_probabilities(result.scored, eligible, k, cfg.rank, as_of))


def _list_probabilities(
    scored: pd.DataFrame, eligible: np.ndarray, k: int, cfg: RankConfig, as_of: pd.Timestamp
) -> np.ndarray:
    """P(invited) of every eligible member under kocrank's list, from the same policy draw the list used.

    `serving.selection.draw_policy` gives exploit-block members (block - control) / block, the
    exploration band its share, everyone else 0 (exact unless a quota fills during the draw).
    """
    ordered = order_by_score(scored.loc[scored["eligible"]])
    policy = draw_policy(ordered, k, cfg, as_of=as_of)
    by_member = pd.Series(policy["p_invite"].to_numpy(), index=policy["member_id"].astype("int64").to_numpy())
    return by_member.reindex(eligible).fillna(0.0).to_numpy()


def _random_policy(seed: int) -> Callable[[Simulation, int, np.ndarray], Invitations]:
    def pick(sim: Simulation, month: int, eligible: np.ndarray) -> Invitations:
        k = Budget.for_eligible(len(eligible), sim.world.spec).k
        rng = np.random.default_rng([seed, 77, month])  # its own stream: the world's is left as the rule leaves it
        chosen = rng.choice(eligible, size=min(k, len(eligible)), replace=False)
        return Invitations(chosen, np.full(len(eligible), min(k, len(eligible)) / max(len(eligible), 1)))

    return pick


def _no_invitations(sim: Simulation, month: int, eligible: np.ndarray) -> Invitations:
    return Invitations(np.zeros(0, dtype=np.int64), np.zeros(len(eligible)))


def month_counts(world: SimulatedWorld, cutoffs: list[pd.Timestamp], policy: str) -> pd.DataFrame:
    """Invited, accepted and productive members per loop cutoff, and the truth's expectations for them."""
    program = world.tables["program"]
    invited = program.loc[program["status"] == "invited", ["member_id", "event_at"]]
    invited = invited.assign(as_of=invited["event_at"].dt.to_period("M").dt.to_timestamp().astype("datetime64[us]"))
    answers = program.loc[program["status"].isin(["enrolled", "declined"]), ["member_id", "event_at", "status"]]
    rows = []
    for as_of in cutoffs:
        chosen = invited.loc[invited["as_of"] == as_of, ["member_id", "event_at"]]
        answered = chosen.merge(answers, on="member_id", suffixes=("", "_answer"))
        soon = answered["event_at_answer"].between(answered["event_at"], answered["event_at"] + pd.Timedelta(days=8))
        accepted = answered.loc[soon & (answered["status"] == "enrolled"), "member_id"].nunique()
        keys = chosen[["member_id"]].assign(as_of=as_of)
        outcome = keys.merge(world.outcomes, on=["member_id", "as_of"], how="left")
        truth = keys.merge(world.tables["truth"], on=["member_id", "as_of"], how="left")
        rows.append(
            {
                "policy": policy,
                "as_of": as_of,
                "invited": len(chosen),
                "accepted": int(accepted),
                "productive": int(outcome["productive"].fillna(False).sum()),
                "expected_productive": float(truth["p_productive_if_invited"].sum()),
                "expected_uplift": float(
                    (truth["p_productive_if_invited"] - truth["p_productive_if_not_invited"]).sum()
                ),
            }
        )
    return pd.DataFrame(rows)


def run_loop(cfg: LoopConfig, progress: Callable[[str], None] | None = None) -> LoopResult:
    """Run the closed loop for every policy in `cfg.policies` from one shared warm-up history."""
    sim_cfg = cfg.sim
    say = progress or (lambda message: logger.info("%s", message))
    began = time.perf_counter()
    base = Simulation(sim_cfg)
    base.run(cfg.warmup_months)
    seconds = {"warmup": time.perf_counter() - began}
    say(f"warm-up: {cfg.warmup_months} months under the {sim_cfg.spec.policy} rule in {seconds['warmup']:.0f}s")
    loop_end = cfg.warmup_months + cfg.loop_months
    cutoffs = [base.as_of(m) for m in range(cfg.warmup_months, loop_end)]
    frames, trainings, world_productive = [], 0, {}
    for name in cfg.policies:
        began = time.perf_counter()
        branch = base.branch()
        kocrank = KocrankPolicy(cfg) if name == "kocrank" else None
        policy = {"kocrank": kocrank, "historical": None, "random": _random_policy(cfg.seed)}[name]
        branch.run(loop_end, policy)
        branch.run(sim_cfg.months, _no_invitations)
        world = branch.finish()
        frames.append(month_counts(world, cutoffs, name))
        during = world.outcomes.loc[world.outcomes["as_of"].isin(cutoffs) & world.outcomes["eligible"]]
        world_productive[name] = int(during.loc[during["productive"], "member_id"].nunique())
        trainings += kocrank.trainings if kocrank is not None else 0
        seconds[name] = time.perf_counter() - began
        total = frames[-1][["invited", "productive"]].sum()
        say(f"{name}: {total['invited']} invited, {total['productive']} productive KOCs in {seconds[name]:.0f}s")
    return LoopResult(pd.concat(frames, ignore_index=True), world_productive, seconds, trainings)
