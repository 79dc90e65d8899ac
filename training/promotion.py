"""Champion promotion: the rule, the recorded transaction that moves the aliases, recovery and history.

Every new version of the registered model gets alias `challenger`; it becomes `champion`
by `promote_if_better` (after training) or `promote` (by hand, `koc promote`).

The rule (`decide_on_backtest`): the candidate's mean primary metric over the rolling-origin
backtest cutoffs must beat the champion's by more than `margin`; when the two are within the
margin, the PR AUC means decide, again only by more than the margin; an exact tie never
promotes; a champion trained for another label definition or target is never compared, so
such a candidate stays challenger until promoted by hand. A champion that predates the
backtest is compared on its recorded test-cutoff figures (the reason says so).

One promotion is one transaction under a lock (an `fcntl` lock file beside a local store;
a registry-tag lock for a remote one), with the champion read *inside* the lock:
1. the intent (decision, aliases before, id) is written to the registered model's tag
   `koc.promotion_pending`;
2. the aliases move;
3. the version is tagged and the decision appended to the promotion log (JSON lines beside
   a local store, and the recent history in the tag `koc.promotion_log`): the confirmation;
4. the intent tag is cleared.
An exception or interrupt restores the aliases (and compensates a recorded decision with a
`rolled_back` entry). A process killed outright leaves the intent behind: the next command
(`recover`, run by train, rank, promote and serve) ends FAILED the runs whose owner process
died, then completes the intent when its run FINISHED (or it was a forced manual promotion)
and rolls it back otherwise; and a champion or challenger whose run ended FAILED after its
decision was confirmed is put back to the aliases recorded before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training import faults
from training.store import (
    CHALLENGER,
    CHAMPION,
    RUN_FAILED_TAG,
    client_for,
    current_aliases,
    fail_dead_runs,
    local_store_dir,
    owner_is_dead,
    resolve_tracking_uri,
    restore_aliases,
    run_status,
)

logger = logging.getLogger(__name__)

PROMOTION_LOG_NAME = "koc_promotions.jsonl"
PROMOTION_LOG_TAG = "koc.promotion_log"
PROMOTION_LOG_TAG_ENTRIES = 20
PENDING_TAG = "koc.promotion_pending"
LABEL_DEFINITION_TAG = "koc.label_definition"
LOCK_FILE_NAME = "koc_promotion.lock"
LOCK_TAG = "koc.promotion_lock"
LOCK_TIMEOUT_SECONDS = 120.0
REMOTE_LOCK_TTL_SECONDS = 300.0
TAG_REASON_CHARS = 120
TAG_VALUE_LIMIT = 5000
DEFAULT_TARGET = "observed"


@dataclass(frozen=True)
class PromotionDecision:
    """One champion decision and its evidence; written to tags and the promotion log."""

    model_name: str
    version: str
    promoted: bool
    mode: str  # "auto" (after training) or "manual" (`koc promote`)
    metric: str
    challenger_value: float | None
    champion_value: float | None
    previous_champion: str | None
    test_cutoff: str | None
    reason: str
    run_id: str | None = None
    decided_at: str = ""
    rolled_back: bool = False  # a compensating entry: the aliases this decision moved were put back
    margin: float | None = None
    challenger_pr_auc: float | None = None
    champion_pr_auc: float | None = None
    forced: bool = False  # a manual promotion of a version from a failed run (`--force`)
    intent_id: str = ""
    aliases_before: Mapping[str, str] | None = None

    def to_record(self) -> dict[str, object]:
        record = asdict(self)
        for key in ("challenger_value", "champion_value", "challenger_pr_auc", "champion_pr_auc"):
            value = record[key]
            if isinstance(value, float) and math.isnan(value):
                record[key] = None
        if record["aliases_before"] is not None:
            record["aliases_before"] = dict(record["aliases_before"])
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PromotionDecision:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})


# ---------------------------------------------------------------------------- the rules


def challenger_wins(challenger_value: float, champion_value: float | None) -> bool:
    """The single-cutoff rule of `decide_promotion`: no (scorable) champion, or challenger >= champion."""
    if champion_value is None or math.isnan(champion_value):
        return True
    return challenger_value >= champion_value


def decide_promotion(
    *,
    model_name: str,
    version: str,
    metric: str,
    challenger_value: float,
    champion_version: str | None,
    champion_value: float | None,
    champion_error: str | None,
    test_cutoff: str,
    run_id: str | None,
    champion_label_config: Mapping[str, object] | None = None,
    challenger_label_config: Mapping[str, object] | None = None,
) -> PromotionDecision:
    """Single test-cutoff rule (the champion re-scored on the challenger's test cutoff); kept until
    training switches to `promote_if_better`.

    When both label configs are known and differ, the comparison is not like-for-like (the
    champion is scored against labels it was not trained for), so nothing is promoted.
    """
    label_note = label_config_difference(champion_label_config, challenger_label_config)
    if champion_version is None:
        promoted, reason = True, "no champion yet"
    elif label_note is not None:
        promoted = False
        reason = _label_reason(champion_version, label_note)
    elif champion_error is not None:
        promoted = False
        reason = f"champion v{champion_version} could not be re-scored on this test cutoff ({champion_error}); promote by hand"
    else:
        promoted = challenger_wins(challenger_value, champion_value)
        relation = ">=" if promoted else "<"
        reason = (
            f"test {metric} {challenger_value:.4f} {relation} champion v{champion_version} "
            f"{champion_value:.4f} on the same cutoff {test_cutoff}"
        )
    return PromotionDecision(
        model_name=model_name,
        version=str(version),
        promoted=promoted,
        mode="auto",
        metric=metric,
        challenger_value=float(challenger_value),
        champion_value=None if champion_value is None else float(champion_value),
        previous_champion=champion_version,
        test_cutoff=test_cutoff,
        reason=reason,
        run_id=run_id,
        decided_at=_now(),
    )


def _label_reason(champion_version: str, note: str) -> str:
    return (
        f"label definitions differ from champion v{champion_version} ({note}); the figures are "
        "not comparable, so not promoted automatically; promote by hand with `koc promote` if intended"
    )


@dataclass(frozen=True)
class ChampionFigures:
    """What the champion is compared on: its backtest means, or its test figures when it has no backtest."""

    mean: float | None
    pr_auc_mean: float | None
    source: str


def decide_on_backtest(
    *,
    model_name: str,
    version: str,
    run_id: str | None,
    summary: Mapping[str, Any],
    margin: float,
    champion_version: str | None,
    champion: ChampionFigures | None,
    label_note: str | None = None,
) -> PromotionDecision:
    """The promotion rule on backtest means (see the module docstring); pure, no store access.

    `summary = {"primary", "mean", "std", "pr_auc_mean", "n_cutoffs"}` of the candidate.
    """
    if margin < 0 or math.isnan(margin):
        raise ValueError(f"promotion margin must be >= 0, got {margin}")
    primary = str(summary["primary"])
    mean, pr_auc = _number(summary.get("mean")), _number(summary.get("pr_auc_mean"))
    n_cutoffs = int(summary.get("n_cutoffs") or 0)
    figures = f"mean {primary} over {n_cutoffs} backtest cutoffs"
    champion_mean = champion.mean if champion else None
    champion_pr = champion.pr_auc_mean if champion else None
    if champion_version is None:
        promoted, reason = True, "no champion yet"
    elif label_note is not None:
        promoted, reason = False, _label_reason(champion_version, label_note)
    elif mean is None:
        promoted, reason = False, f"the candidate has no {figures}; not promoted"
    elif champion is None or champion_mean is None:
        promoted = False
        reason = f"champion v{champion_version} recorded no {primary} to compare with; promote by hand if intended"
    else:
        versus = f"champion v{champion_version} {champion_mean:.4f} ({champion.source})"
        diff = mean - champion_mean
        if diff > margin:
            promoted, reason = True, f"{figures} {mean:.4f} > {versus} + margin {margin:g}"
        elif diff < -margin:
            promoted, reason = False, f"{figures} {mean:.4f} < {versus} - margin {margin:g}"
        elif pr_auc is not None and champion_pr is not None and pr_auc - champion_pr > margin:
            promoted = True
            reason = (
                f"{figures} {mean:.4f} within margin {margin:g} of {versus}; "
                f"tie broken on mean PR AUC {pr_auc:.4f} > {champion_pr:.4f} + margin"
            )
        else:
            promoted = False
            pr_text = "n/a" if pr_auc is None or champion_pr is None else f"{pr_auc:.4f} vs {champion_pr:.4f}"
            reason = (
                f"tie: {figures} {mean:.4f} within margin {margin:g} of {versus} and mean PR AUC "
                f"{pr_text} does not beat it by more than the margin; a tie never promotes"
            )
    return PromotionDecision(
        model_name=model_name,
        version=str(version),
        promoted=promoted,
        mode="auto",
        metric=f"bt_mean_{primary}",
        challenger_value=mean,
        champion_value=champion_mean,
        previous_champion=champion_version,
        test_cutoff=None if summary.get("test_cutoff") is None else str(summary["test_cutoff"]),
        reason=reason,
        run_id=run_id,
        decided_at=_now(),
        margin=float(margin),
        challenger_pr_auc=pr_auc,
        champion_pr_auc=champion_pr,
    )


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _canonical(config: Mapping[str, object]) -> dict[str, object]:
    """JSON round trip so dates, tuples and lists compare as they would be stored."""
    return dict(json.loads(json.dumps(dict(config), sort_keys=True, default=str)))


def label_config_difference(
    champion: Mapping[str, object] | None, challenger: Mapping[str, object] | None
) -> str | None:
    """`key: champion X, challenger Y; ...` for the label settings that differ, else None.

    None also when either side is unknown (models trained before label configs were recorded).
    """
    if not champion or not challenger:
        return None
    old, new = _canonical(champion), _canonical(challenger)
    if old == new:
        return None
    return "; ".join(
        f"{key}: champion {old.get(key, 'unset')}, challenger {new.get(key, 'unset')}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    )


def flat_label_definition(definition: Mapping[str, Any]) -> dict[str, str]:
    """Label definition as flat `key: text` pairs (nested keys dotted, lists comma-joined), target defaulted.

    The same form as the run's `labels.*` params, so a champion known only by its params compares.
    """
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (list, tuple)):
            flat[prefix] = ",".join(str(v) for v in value)
        else:
            flat[prefix] = str(value)

    walk("", _canonical(definition))
    flat.setdefault("target", DEFAULT_TARGET)
    return flat


def recorded_label_definition(client: MlflowClient, model_name: str, version: str) -> dict[str, str] | None:
    """A version's label definition: its `koc.label_definition` tag, else its run's `labels.*` params
    (target from `training.target`, default observed); None when neither was recorded."""
    try:
        mv = client.get_model_version(model_name, version)
    except MlflowException:
        return None
    tag = (mv.tags or {}).get(LABEL_DEFINITION_TAG)
    if tag:
        return flat_label_definition(json.loads(tag))
    if not mv.run_id:
        return None
    try:
        params = client.get_run(mv.run_id).data.params
    except MlflowException:
        return None
    labels = {key.removeprefix("labels."): value for key, value in params.items() if key.startswith("labels.")}
    if not labels:
        return None
    labels["target"] = params.get("training.target", DEFAULT_TARGET)
    return labels


def champion_figures(client: MlflowClient, model_name: str, version: str, primary: str) -> ChampionFigures | None:
    """The champion's backtest means from its run (`bt_mean_<primary>`, `bt_mean_pr_auc`), else its
    test-cutoff figures (`model.<primary>`, `model.pr_auc`); None when its run cannot be read."""
    try:
        run_id = client.get_model_version(model_name, version).run_id
        metrics = client.get_run(run_id).data.metrics if run_id else {}
    except MlflowException as err:
        logger.warning("could not read champion v%s's metrics: %s", version, err)
        return None
    if f"bt_mean_{primary}" in metrics:
        n = int(metrics.get("bt_n_cutoffs", 0))
        return ChampionFigures(
            metrics[f"bt_mean_{primary}"], metrics.get("bt_mean_pr_auc"), f"backtest mean, {n} cutoffs"
        )
    if f"model.{primary}" in metrics:
        return ChampionFigures(
            metrics[f"model.{primary}"], metrics.get("model.pr_auc"), "its test-cutoff figure, no backtest recorded"
        )
    return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def promotion_lock(
    client: MlflowClient, tracking_uri: str, model_name: str, timeout: float = LOCK_TIMEOUT_SECONDS
) -> Iterator[None]:
    """Serialise promotions and recoveries of one store: an `fcntl` lock file beside a local store
    (released by the OS if the holder dies), else a registry-tag lock with a time-to-live."""
    store = local_store_dir(tracking_uri)
    if store is not None:
        with _file_lock(store / LOCK_FILE_NAME, timeout):
            yield
    else:
        with _tag_lock(client, model_name, timeout):
            yield


@contextlib.contextmanager
def _file_lock(path: os.PathLike[str] | str, timeout: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another promotion has held {path} for over {timeout:.0f} s; retry when it is done"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _tag_lock(client: MlflowClient, model_name: str, timeout: float) -> Iterator[None]:
    """Compare-and-set on the registered model's `koc.promotion_lock` tag: write our token if the tag is
    free or expired, wait, read back; ours only if nobody overwrote it meanwhile."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    while True:
        holder = (client.get_registered_model(model_name).tags or {}).get(LOCK_TAG)
        if holder is None or float(holder.split()[-1]) < time.time():
            client.set_registered_model_tag(model_name, LOCK_TAG, f"{token} {time.time() + REMOTE_LOCK_TTL_SECONDS}")
            time.sleep(0.5)
            if (client.get_registered_model(model_name).tags or {}).get(LOCK_TAG, "").startswith(token):
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the promotion lock of {model_name} is held ({holder}); retry later")
        time.sleep(1.0)
    try:
        yield
    finally:
        if (client.get_registered_model(model_name).tags or {}).get(LOCK_TAG, "").startswith(token):
            client.delete_registered_model_tag(model_name, LOCK_TAG)


# ----------------------------------------------------------------------- the transaction


def _tag_value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


_DECISION_TAGS = (
    "promoted",
    "metric",
    "challenger_value",
    "champion_value",
    "previous_champion",
    "test_cutoff",
    "reason",
    "decided_at",
)


def _tag_prefix(decision: PromotionDecision) -> str:
    return "koc.promotion." if decision.mode == "auto" else "koc.manual_promotion."


def move_aliases(client: MlflowClient, decision: PromotionDecision) -> None:
    """`challenger` -> the new version (automatic decisions); `champion` -> it when promoted."""
    if decision.mode == "auto":
        client.set_registered_model_alias(decision.model_name, CHALLENGER, decision.version)
    if decision.promoted:
        client.set_registered_model_alias(decision.model_name, CHAMPION, decision.version)


def _tag_version(client: MlflowClient, decision: PromotionDecision) -> None:
    prefix = _tag_prefix(decision)
    for key in _DECISION_TAGS:
        client.set_model_version_tag(
            decision.model_name, decision.version, prefix + key, _tag_value(getattr(decision, key))
        )


def record_decision(client: MlflowClient, tracking_uri: str, decision: PromotionDecision) -> None:
    """Model-version tags and a promotion-log entry for `decision` (call once its aliases have moved)."""
    _tag_version(client, decision)
    append_promotion_log(client, tracking_uri, decision)


def _record_compensation(
    client: MlflowClient, tracking_uri: str, decision: PromotionDecision, why: str
) -> PromotionDecision:
    rolled = dataclasses.replace(
        decision,
        promoted=False,
        rolled_back=True,
        reason=f"rolled back, aliases restored after {why} (was: {decision.reason})"[:500],
        decided_at=_now(),
    )
    prefix = _tag_prefix(decision)
    for key in ("promoted", "reason", "decided_at", "rolled_back"):
        client.set_model_version_tag(
            decision.model_name, decision.version, prefix + key, _tag_value(getattr(rolled, key))
        )
    append_promotion_log(client, tracking_uri, rolled)
    return rolled


def record_rollback(
    client: MlflowClient, tracking_uri: str, decision: PromotionDecision, error: BaseException
) -> PromotionDecision:
    """Compensating audit entry for a recorded decision whose alias moves were undone; returns it."""
    return _record_compensation(client, tracking_uri, decision, f"{type(error).__name__}: {error}")


def roll_back_promotion(
    client: MlflowClient,
    tracking_uri: str,
    model_name: str,
    before: Mapping[str, str],
    error: BaseException,
    recorded: PromotionDecision | None = None,
) -> PromotionDecision | None:
    """Best effort while a run is failing after `recorded` was applied: put back the aliases that still
    point at its version (to the aliases it recorded before, else `before`) and compensate it in the log.

    With nothing recorded there is nothing of this run to undo (a transaction that failed midway
    restored its own moves), and aliases another process moved meanwhile are left alone. Returns the
    compensating decision (None when nothing had been recorded or writing it failed). Errors here are
    logged, not raised, so the caller re-raises the original failure.
    """
    if recorded is None:
        return None
    previous = dict(recorded.aliases_before if recorded.aliases_before is not None else before)
    try:
        _put_back(client, model_name, recorded.version, previous)
    except Exception:
        logger.exception("could not restore the aliases of %s to %s; check them by hand", model_name, previous)
    try:
        return record_rollback(client, tracking_uri, recorded, error)
    except Exception:
        logger.exception("could not record that v%s's promotion was rolled back", recorded.version)
        return None


def _put_back(client: MlflowClient, model_name: str, version: str, before: Mapping[str, str]) -> None:
    """`champion`/`challenger` that point at `version` go back to `before` (deleted if they had no value)."""
    now = current_aliases(client, model_name)
    for alias in (CHAMPION, CHALLENGER):
        if now.get(alias) != version or before.get(alias) == version:
            continue
        if alias in before:
            client.set_registered_model_alias(model_name, alias, before[alias])
        else:
            client.delete_registered_model_alias(model_name, alias)
        logger.warning("%s of %s put back from v%s to %s", alias, model_name, version, before.get(alias, "none"))


def _write_intent(client: MlflowClient, decision: PromotionDecision) -> None:
    text = json.dumps(decision.to_record(), sort_keys=True)
    if len(text) > TAG_VALUE_LIMIT:
        text = json.dumps(dataclasses.replace(decision, reason=decision.reason[:200]).to_record(), sort_keys=True)
    client.set_registered_model_tag(decision.model_name, PENDING_TAG, text)


def pending_intent(client: MlflowClient, model_name: str) -> PromotionDecision | None:
    """The promotion whose intent was written but neither confirmed nor rolled back, if any."""
    try:
        text = (client.get_registered_model(model_name).tags or {}).get(PENDING_TAG)
    except MlflowException:
        return None
    return PromotionDecision.from_record(json.loads(text)) if text else None


def _clear_intent(client: MlflowClient, model_name: str) -> None:
    client.delete_registered_model_tag(model_name, PENDING_TAG)


def _transact(client: MlflowClient, tracking_uri: str, decision: PromotionDecision) -> PromotionDecision:
    """Intent, alias moves, confirmation (tags + log), intent cleared; call under `promotion_lock`."""
    before = current_aliases(client, decision.model_name)
    decision = dataclasses.replace(decision, aliases_before=before, intent_id=uuid.uuid4().hex)
    _write_intent(client, decision)
    faults.checkpoint("after_intent")
    recorded: PromotionDecision | None = None
    try:
        move_aliases(client, decision)
        faults.checkpoint("after_alias_move")
        recorded = decision  # from here on a record may exist, however partial
        _tag_version(client, decision)
        faults.checkpoint("before_confirm")
        append_promotion_log(client, tracking_uri, decision)
        _clear_intent(client, decision.model_name)
    except BaseException as err:
        try:  # the lock is held: nobody else moved them, so `before` is exact
            restore_aliases(client, decision.model_name, before)
        except Exception:
            logger.exception(
                "could not restore the aliases of %s to %s; check them by hand", decision.model_name, before
            )
        if recorded is not None:
            try:
                record_rollback(client, tracking_uri, recorded, err)
            except Exception:
                logger.exception("could not record that v%s's promotion was rolled back", recorded.version)
        with contextlib.suppress(Exception):
            _clear_intent(client, decision.model_name)
        raise
    return decision


def apply_promotion(client: MlflowClient, tracking_uri: str, decision: PromotionDecision) -> PromotionDecision:
    """Carry out a decision made outside the lock; returns the decision as applied.

    Under the lock, an automatic decision taken against a champion that has since moved (another
    run promoted meanwhile) is not promoted: its comparison is stale. The applied decision always
    names the champion it actually displaced (or kept).
    """
    with promotion_lock(client, tracking_uri, decision.model_name):
        _recover_locked(client, tracking_uri, decision.model_name)
        now = current_aliases(client, decision.model_name).get(CHAMPION)
        if decision.mode == "auto" and now != decision.previous_champion:
            note = f"the champion moved from v{decision.previous_champion} to v{now} while this run compared"
            decision = dataclasses.replace(
                decision,
                promoted=False if now is not None else decision.promoted,
                previous_champion=now,
                reason=f"{note}; not promoted on a stale comparison, retrain or `koc promote` (was: {decision.reason})"[
                    :500
                ],
            )
        return _transact(client, tracking_uri, decision)


def promote_if_better(
    client: MlflowClient,
    tracking_uri: str,
    model_name: str,
    version: str | int,
    run_id: str | None,
    summary: Mapping[str, Any],
    *,
    margin: float,
    label_definition: Mapping[str, Any],
) -> PromotionDecision:
    """Compare `version` with the champion *at this moment* on backtest means and promote it if it wins.

    `summary = {"primary": str, "mean": float, "std": float, "pr_auc_mean": float, "n_cutoffs": int}`;
    the rule is `decide_on_backtest`. The candidate's label definition is tagged on its version, so
    later candidates compare against it. The decision is recorded as one transaction (see the module
    docstring) and returned.
    """
    version = str(version)
    definition = flat_label_definition(label_definition)
    client.set_model_version_tag(model_name, version, LABEL_DEFINITION_TAG, json.dumps(_canonical(label_definition)))
    with promotion_lock(client, tracking_uri, model_name):
        _recover_locked(client, tracking_uri, model_name)
        champion_version = current_aliases(client, model_name).get(CHAMPION)
        champion, label_note = None, None
        if champion_version is not None:
            champion_definition = recorded_label_definition(client, model_name, champion_version)
            label_note = label_config_difference(champion_definition, definition)
            champion = champion_figures(client, model_name, champion_version, str(summary["primary"]))
        decision = decide_on_backtest(
            model_name=model_name,
            version=version,
            run_id=run_id,
            summary=summary,
            margin=margin,
            champion_version=champion_version,
            champion=champion,
            label_note=label_note,
        )
        decision = _transact(client, tracking_uri, decision)
    logger.info("%s v%s: %s", model_name, version, decision.reason)
    return decision


# ----------------------------------------------------------------------------- recovery


def recover(tracking_uri: str | None, model_name: str) -> list[str]:
    """Clean up after a killed process (see the module docstring); returns what was done, one line each.

    Safe to call on every command: with nothing to clean it only reads. A store that cannot be
    written (read-only, full) is left as it is with a warning, so ranking still works.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    try:
        with promotion_lock(client, uri, model_name):
            return _recover_locked(client, uri, model_name)
    except (OSError, MlflowException) as err:
        logger.warning("could not check %s for interrupted promotions (%s); left as it is", uri, err)
        return []


def _recover_locked(client: MlflowClient, tracking_uri: str, model_name: str) -> list[str]:
    notes = [
        f"run {run_id} was left RUNNING by a process that died: marked FAILED" for run_id in fail_dead_runs(client)
    ]
    intent = pending_intent(client, model_name)
    if intent is not None:
        notes.append(_resolve_intent(client, tracking_uri, intent))
    notes.extend(_undo_failed_run_aliases(client, tracking_uri, model_name))
    for note in notes:
        logger.warning("%s: %s", model_name, note)
    return notes


def _resolve_intent(client: MlflowClient, tracking_uri: str, intent: PromotionDecision) -> str:
    """Complete an unconfirmed promotion whose run finished (or was forced); roll it back otherwise."""
    confirmed = [
        h for h in promotion_history(tracking_uri, intent.model_name) if h.get("intent_id") == intent.intent_id
    ]
    if confirmed:
        _clear_intent(client, intent.model_name)
        return f"v{intent.version}'s promotion had been confirmed; its leftover intent was cleared"
    status = run_status(client, intent.run_id)
    if intent.forced or status == "FINISHED":
        move_aliases(client, intent)
        record_decision(client, tracking_uri, intent)
        _clear_intent(client, intent.model_name)
        return f"v{intent.version}'s interrupted promotion completed (its run {status or 'n/a'})"
    if status == "RUNNING":
        tags = client.get_run(intent.run_id).data.tags if intent.run_id else {}
        if not owner_is_dead(tags):
            return f"v{intent.version}'s promotion is still in progress (run {intent.run_id} RUNNING); left alone"
    restore_aliases(client, intent.model_name, intent.aliases_before or {})
    _record_compensation(
        client, tracking_uri, intent, f"the promoting process died before confirming (run {status or 'unknown'})"
    )
    _clear_intent(client, intent.model_name)
    return f"v{intent.version}'s unconfirmed promotion rolled back; aliases restored to {dict(intent.aliases_before or {})}"


def _undo_failed_run_aliases(client: MlflowClient, tracking_uri: str, model_name: str) -> list[str]:
    """Put back `champion`/`challenger` that point at a version whose run ended FAILED after its
    decision was confirmed (not forced), to the aliases recorded before that decision."""
    notes = []
    history = promotion_history(tracking_uri, model_name)
    for alias, version in sorted(current_aliases(client, model_name).items()):
        if alias not in (CHAMPION, CHALLENGER) or current_aliases(client, model_name).get(alias) != version:
            continue
        try:
            mv = client.get_model_version(model_name, version)
        except MlflowException:
            continue
        if RUN_FAILED_TAG not in (mv.tags or {}) and run_status(client, mv.run_id) != "FAILED":
            continue
        entries = [h for h in history if str(h.get("version")) == version and h.get("aliases_before") is not None]
        if not entries or entries[-1].get("rolled_back") or entries[-1].get("forced"):
            continue
        decision = PromotionDecision.from_record(entries[-1])
        before = dict(decision.aliases_before or {})
        _put_back(client, model_name, version, before)
        _record_compensation(client, tracking_uri, decision, f"its run {mv.run_id} ended FAILED after the decision")
        notes.append(f"v{version} came from a run that failed after its promotion: aliases restored to {before}")
    return notes


# ------------------------------------------------------------------------------ history


def append_promotion_log(client: MlflowClient, tracking_uri: str, decision: PromotionDecision) -> None:
    """Append the decision to the JSON-lines log beside a local store and to the model's history tag."""
    record = decision.to_record()
    store = local_store_dir(tracking_uri)
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        with open(store / PROMOTION_LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    history = _tag_history(client, decision.model_name)
    keep = (
        "version",
        "promoted",
        "mode",
        "challenger_value",
        "champion_value",
        "previous_champion",
        "test_cutoff",
        "decided_at",
        "rolled_back",
        "forced",
        "intent_id",
        "aliases_before",
        "run_id",
    )
    compact = {k: record[k] for k in keep}
    compact["reason"] = str(record["reason"])[:TAG_REASON_CHARS]  # `koc models` shows it for remote stores
    history = (history + [compact])[-PROMOTION_LOG_TAG_ENTRIES:]
    text = json.dumps(history, sort_keys=True)
    while len(text) > TAG_VALUE_LIMIT and len(history) > 1:  # registry tag values are capped
        history = history[1:]
        text = json.dumps(history, sort_keys=True)
    client.set_registered_model_tag(decision.model_name, PROMOTION_LOG_TAG, text)


def _tag_history(client: MlflowClient, model_name: str) -> list[dict[str, object]]:
    try:
        tags = client.get_registered_model(model_name).tags or {}
    except MlflowException:
        return []
    try:
        return list(json.loads(tags.get(PROMOTION_LOG_TAG, "[]")))
    except json.JSONDecodeError:
        return []


def promotion_history(tracking_uri: str, model_name: str) -> list[dict[str, object]]:
    """Every recorded decision for `model_name`, oldest first (full log if local, else the tag's recent history)."""
    store = local_store_dir(tracking_uri)
    if store is not None and (store / PROMOTION_LOG_NAME).exists():
        with open(store / PROMOTION_LOG_NAME, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        return [r for r in records if r.get("model_name") == model_name]
    return _tag_history(client_for(tracking_uri), model_name)


# ------------------------------------------------------------------------ by hand


def promote(
    version: str | int,
    *,
    reason: str = "",
    tracking_uri: str | None = None,
    model_name: str = "koc-potential",
    force: bool = False,
) -> PromotionDecision:
    """Make `version` the champion by hand, with the same tags and promotion-log entry as automatic promotion.

    Only a version whose training run FINISHED is promoted without `force`: a run that failed,
    is still running or was never recorded may have incomplete evaluation and records.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    try:
        model_version = client.get_model_version(model_name, str(version))
    except MlflowException as err:
        raise ValueError(f"{model_name} has no version {version} in {uri}: {err.message}") from err
    with promotion_lock(client, uri, model_name):
        _recover_locked(client, uri, model_name)
        tags = client.get_model_version(model_name, str(version)).tags or {}
        failure = _unfinished_run_note(client, tags, model_version.run_id)
        if failure is not None and not force:
            raise ValueError(
                f"{model_name} v{version} comes from a training run that failed or did not finish ({failure}); its evaluation "
                "and promotion records may be incomplete. Retrain, or pass --force to promote it anyway"
            )
        previous = current_aliases(client, model_name).get(CHAMPION)
        reason = reason or "promoted by hand"
        if failure is not None:
            reason = f"{reason} (forced: version from a run that did not finish: {failure})"[:500]
        decision = PromotionDecision(
            model_name=model_name,
            version=str(version),
            promoted=True,
            mode="manual",
            metric=tags.get("koc.promotion.metric", "precision_at_k"),
            challenger_value=_number(tags.get("koc.promotion.challenger_value")),
            champion_value=None,
            previous_champion=previous,
            test_cutoff=tags.get("koc.promotion.test_cutoff"),
            reason=reason,
            run_id=model_version.run_id,
            decided_at=_now(),
            forced=failure is not None,
        )
        decision = _transact(client, uri, decision)
    logger.info("v%s of %s is champion (was %s): %s", version, model_name, previous, decision.reason)
    return decision


def _unfinished_run_note(client: MlflowClient, tags: Mapping[str, str], run_id: str | None) -> str | None:
    """Why a version does not count as coming from a finished run, else None."""
    if RUN_FAILED_TAG in tags:
        return tags[RUN_FAILED_TAG]
    if not run_id:
        return "no training run recorded"
    status = run_status(client, run_id)
    if status is None:
        return f"run {run_id} not found in this store"
    if status != "FINISHED":
        return f"run {run_id} ended {status}" if status != "RUNNING" else f"run {run_id} is still RUNNING"
    return None
