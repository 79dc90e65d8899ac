"""Issued lists: an invitation list, once sent to the brand, recorded immutably with its policy.

An issued list keeps, for **every eligible member** at its cutoff, the score, the position
in score order, the member's role under the list's policy (`exploit`, `explore`, `control`,
`band`, `none`, see `serving.selection.draw_policy`) and the exact probability of being
invited. That log is what makes the monthly loop answerable later: realised outcomes and
uplift over the control group (`serving.outcomes`), off-policy evaluation of a challenger
(`serving.ope`) and drift against the previous list (`serving.monitor`).

Store: one SQLite file beside the MLflow store (`koc_issued.sqlite`). SQLite rather than
DuckDB because the store is a small transactional log written once per month by possibly
concurrent processes: SQLite has file locking for concurrent writers, a PRIMARY KEY that
refuses a second list with the same id inside the insert transaction, and triggers that
make issued rows immutable at the database level (`RAISE(ABORT)` on UPDATE/DELETE);
DuckDB has no triggers and allows one writing process per file. The analytical reads
(outcomes, monitoring) load one list into pandas/DuckDB, where the heavy lifting happens.
The list is also logged as an MLflow artifact on a dedicated run (experiment
`koc-issued-lists`, tagged with the model's run id), so it travels with the model registry.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from features.labels import LabelConfig
from features.registry import categorical_features
from features.targets import ACCEPT_DAYS
from serving.config import RankConfig
from serving.profile import profile_frame
from serving.selection import draw_policy, order_by_score

logger = logging.getLogger(__name__)

STORE_FILENAME = "koc_issued.sqlite"
EXPERIMENT = "koc-issued-lists"
MEMBER_COLUMNS = ("member_id", "position", "score", "role", "invited", "p_invite", "list_rank", "reasons")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS issued_lists (
    list_id TEXT PRIMARY KEY,
    issued_at TEXT NOT NULL,
    as_of TEXT NOT NULL,
    k INTEGER NOT NULL,
    model_name TEXT, model_version TEXT, model_run_id TEXT, model_uri TEXT,
    target TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    meta TEXT NOT NULL,
    profile TEXT NOT NULL,
    mlflow_run_id TEXT
);
CREATE TABLE IF NOT EXISTS issued_members (
    list_id TEXT NOT NULL REFERENCES issued_lists(list_id),
    member_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    score REAL NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('exploit', 'explore', 'control', 'band', 'none')),
    invited INTEGER NOT NULL,
    p_invite REAL NOT NULL CHECK (p_invite >= 0 AND p_invite <= 1),
    list_rank INTEGER,
    reasons TEXT,
    PRIMARY KEY (list_id, member_id)
);
"""
_IMMUTABLE = [
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'issued lists are immutable: {verb} on {table} refused'); END;"
    for table in ("issued_lists", "issued_members")
    for verb in ("UPDATE", "DELETE")
]


class LoopConfig(BaseModel):
    """Settings of the monthly loop (`[loop]` in the config): outcomes, OPE and monitoring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str | None = Field(None, description="issued-list SQLite file (default: koc_issued.sqlite beside the MLflow store)")
    send_window_days: int = Field(31, ge=1, description="an `invited` programme event within this many days of as_of counts as sent")
    min_sent_share: float = Field(0.9, gt=0.0, le=1.0, description="off-policy evaluation uses a list only when this share of its invitations was sent")
    bootstrap_reps: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = Field(0, ge=0)
    require_ope_win: bool = Field(False, description="promotion also needs the challenger to win the off-policy evaluation")
    psi_alert: float = Field(0.25, gt=0.0, description="a feature PSI above this recommends retraining")
    score_psi_alert: float = Field(0.25, gt=0.0)
    calibration_alert: float = Field(0.3, gt=0.0, description="|realised / expected - 1| on the latest matured list")
    min_top_k_overlap: float = Field(0.3, ge=0.0, le=1.0, description="share of the previous list's top K still in the top K")


class IssuedListExists(ValueError):
    """A list with this id was issued before; issued lists are never replaced."""


class UnknownIssuedList(KeyError):
    """No issued list has this id."""


@dataclass(frozen=True)
class IssuedList:
    """One issued list: its metadata (`meta`) and one row per eligible member (`members`)."""

    list_id: str
    meta: dict[str, Any]
    members: pd.DataFrame
    profile: dict[str, Any]

    @property
    def as_of(self) -> pd.Timestamp:
        return pd.Timestamp(self.meta["as_of"])

    @property
    def label_config(self) -> LabelConfig:
        return LabelConfig.model_validate(self.meta["label_config"])


def default_store_path(tracking_uri: str | None) -> Path:
    """`koc_issued.sqlite` beside the MLflow store: next to a sqlite:/// file, beside a file
    store's folder, else in the current folder (remote tracking servers have no "beside")."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        return Path(uri.removeprefix("sqlite:///")).parent / STORE_FILENAME
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme == "file" else uri).parent / STORE_FILENAME
    return Path.cwd() / STORE_FILENAME


def default_list_id(as_of: pd.Timestamp) -> str:
    """`koc-YYYY-MM-DD` (plus the time of day when the cutoff is not midnight)."""
    stamp = as_of.strftime("%Y-%m-%d") if as_of == as_of.normalize() else as_of.strftime("%Y-%m-%dT%H%M")
    return f"koc-{stamp}"


class IssuedStore:
    """The SQLite log of issued lists (append-only; rows are immutable)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30.0)
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            connection.executescript(_SCHEMA + "\n".join(_IMMUTABLE))
            yield connection
        finally:
            connection.close()

    def exists(self, list_id: str) -> bool:
        if not self.path.exists():
            return False
        with self._connect() as connection:
            return connection.execute("SELECT 1 FROM issued_lists WHERE list_id = ?", (list_id,)).fetchone() is not None

    def add(self, issued: IssuedList, mlflow_run_id: str | None = None) -> None:
        """Insert the list and its member rows in one transaction; refuse an id issued before."""
        meta = issued.meta
        model = meta["model"]
        rows = issued.members[list(MEMBER_COLUMNS)]
        records = [
            (issued.list_id, m, int(pos), float(s), r, int(bool(inv)), float(p), None if pd.isna(lr) else int(lr),
             None if pd.isna(rs) else str(rs))
            for m, pos, s, r, inv, p, lr, rs in rows.itertuples(index=False, name=None)
        ]
        with self._connect() as connection:
            try:
                with connection:  # one transaction: all of the list or nothing
                    connection.execute(
                        "INSERT INTO issued_lists VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            issued.list_id, meta["issued_at"], meta["as_of"], int(meta["k"]), model.get("name"),
                            model.get("version"), model.get("run_id"), model.get("uri"), meta["target"],
                            meta["config_hash"], json.dumps(meta, sort_keys=True, default=str),
                            json.dumps(issued.profile), mlflow_run_id,
                        ),
                    )
                    connection.executemany("INSERT INTO issued_members VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            except sqlite3.IntegrityError as error:
                if "issued_lists.list_id" in str(error):
                    raise IssuedListExists(
                        f"list {issued.list_id!r} was already issued (store {self.path}); issued lists are immutable: "
                        "pass another id (--issue-id) for a new list"
                    ) from None
                raise

    def lists(self) -> pd.DataFrame:
        """One row per issued list (without member rows), oldest cutoff first."""
        columns = ["list_id", "issued_at", "as_of", "k", "model_name", "model_version", "model_run_id", "target",
                   "config_hash", "mlflow_run_id"]
        if not self.path.exists():
            return pd.DataFrame(columns=columns)
        with self._connect() as connection:
            frame = pd.read_sql_query(f"SELECT {', '.join(columns)} FROM issued_lists ORDER BY as_of, issued_at", connection)
        return frame

    def get(self, list_id: str) -> IssuedList:
        """The list with its member rows (sorted by position)."""
        with self._connect() as connection:
            head = connection.execute("SELECT meta, profile FROM issued_lists WHERE list_id = ?", (list_id,)).fetchone()
            if head is None:
                known = [row[0] for row in connection.execute("SELECT list_id FROM issued_lists ORDER BY as_of")]
                raise UnknownIssuedList(f"no issued list {list_id!r} in {self.path}; issued: {known[-5:] or 'none'}")
            members = pd.read_sql_query(
                f"SELECT {', '.join(MEMBER_COLUMNS)} FROM issued_members WHERE list_id = ? ORDER BY position",
                connection, params=(list_id,),
            )
        members["invited"] = members["invited"].astype(bool)
        members["list_rank"] = members["list_rank"].astype("Int64")
        return IssuedList(list_id, json.loads(head[0]), members, json.loads(head[1]))

    def all(self) -> list[IssuedList]:
        """Every issued list, oldest cutoff first."""
        return [self.get(list_id) for list_id in self.lists()["list_id"]]


def build_issued_list(
    result: Any,
    loaded: Any,
    k: int,
    cfg: RankConfig,
    label_cfg: LabelConfig,
    *,
    list_id: str,
    issued_at: str,
    accept_days: int = ACCEPT_DAYS,
) -> IssuedList:
    """The issued-list record of a `serving.rank.RankResult`: every eligible member with its policy.

    Re-draws the list's policy (`draw_policy`, deterministic given the config seed and the
    cutoff) over the same eligible members and checks that its invited set is exactly the
    ranked list, so the logged probabilities are those of the list that was sent. `accept_days`
    (`[training] accept_days`) is recorded: the list's outcomes count an invitation as accepted
    by training's rule (`serving.outcomes.member_outcomes`).
    """
    scored = result.scored
    as_of = pd.Timestamp(result.meta["as_of"])
    eligible = order_by_score(scored.loc[scored["eligible"]])
    policy = draw_policy(eligible, k, cfg, as_of=as_of)
    listed = result.candidates
    if set(policy.loc[policy["invited"], "member_id"]) != set(listed["member_id"]):
        raise RuntimeError("the re-drawn policy does not reproduce the ranked list; was it ranked with another config?")
    reason_columns = [c for c in listed.columns if c.startswith("reason_") and c[len("reason_"):].isdigit()]
    reasons = listed.set_index("member_id")[reason_columns].apply(
        lambda row: " | ".join(str(v) for v in row if isinstance(v, str)), axis=1
    ) if reason_columns else pd.Series(dtype="str")
    members = policy[["member_id", "position", "score", "role", "invited", "p_invite"]].copy()
    members["list_rank"] = members["member_id"].map(listed.set_index("member_id")["rank"]).astype("Int64")
    members["reasons"] = members["member_id"].map(reasons)
    features = result.features.loc[eligible["member_id"]] if result.features is not None else pd.DataFrame()
    profile = {
        "features": profile_frame(features),
        "score": profile_frame(policy[["score"]])["score"],
        "categorical": list(categorical_features()),
    }
    n_control = int((policy["role"] == "control").sum())
    meta = {
        **{key: result.meta[key] for key in ("as_of", "k", "generated_at", "config_hash", "rank_config", "data_fingerprint", "segments") if key in result.meta},
        "list_id": list_id,
        "issued_at": issued_at,
        "model": {key: result.meta["model"].get(key) for key in ("name", "version", "alias", "run_id", "uri", "feature_set_version")},
        "target": str(getattr(loaded.model, "target_", "observed")),
        "label_config": label_cfg.model_dump(mode="json"),
        "accept_days": int(accept_days),
        "counts": {
            "eligible": int(len(policy)),
            "invited": int(policy["invited"].sum()),
            "exploit": int((policy["role"] == "exploit").sum()),
            "explore": int((policy["role"] == "explore").sum()),
            "control": n_control,
            "band": int((policy["role"] == "band").sum()),
        },
        "p_exact": not bool(policy.attrs.get("quota_limited", False)),
        "expected_productive": float(policy.loc[policy["invited"], "score"].sum()),
    }
    return IssuedList(list_id, meta, members, profile)


def log_issued_list(issued: IssuedList, tracking_uri: str | None) -> str:
    """Log the list (members as Parquet, metadata as JSON) on a run of experiment `koc-issued-lists`."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    model = issued.meta["model"]
    tags = {"koc.list_id": issued.list_id, "koc.as_of": issued.meta["as_of"], "koc.model_run_id": str(model.get("run_id")),
            "koc.model": f"{model.get('name')}/{model.get('version')}", "koc.target": issued.meta["target"]}
    with mlflow.start_run(run_name=f"issued {issued.list_id}", tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        issued.members.to_parquet(folder / "issued_members.parquet", index=False)
        (folder / "issued_list.json").write_text(json.dumps(issued.meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
        mlflow.log_artifacts(str(folder), artifact_path="issued_list")
        mlflow.log_metrics({f"n_{key}": float(value) for key, value in issued.meta["counts"].items()})
        mlflow.log_metric("expected_productive", issued.meta["expected_productive"])
        return run.info.run_id


def issue_list(
    result: Any,
    loaded: Any,
    k: int,
    cfg: RankConfig,
    label_cfg: LabelConfig,
    store: IssuedStore,
    *,
    list_id: str | None,
    issued_at: str,
    tracking_uri: str | None,
    log_to_mlflow: bool = True,
    accept_days: int = ACCEPT_DAYS,
) -> IssuedList:
    """Record a ranked list as issued: refuse a known id, log the MLflow artifact, insert the rows."""
    as_of = pd.Timestamp(result.meta["as_of"])
    list_id = list_id or default_list_id(as_of)
    if store.exists(list_id):
        raise IssuedListExists(f"list {list_id!r} was already issued (store {store.path}); issued lists are immutable")
    issued = build_issued_list(result, loaded, k, cfg, label_cfg, list_id=list_id, issued_at=issued_at, accept_days=accept_days)
    run_id = log_issued_list(issued, tracking_uri) if log_to_mlflow else None
    try:
        store.add(issued, mlflow_run_id=run_id)
    except IssuedListExists:
        if run_id is not None:  # lost a race with another process: mark the orphan artifact run
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=tracking_uri).set_terminated(run_id, status="FAILED")
        raise
    logger.info(
        "issued list %s (as of %s): %d invited (%d exploit, %d explore), %d control, %d eligible logged in %s",
        list_id, as_of.date(), issued.meta["counts"]["invited"], issued.meta["counts"]["exploit"],
        issued.meta["counts"]["explore"], issued.meta["counts"]["control"], issued.meta["counts"]["eligible"], store.path,
    )
    return issued
