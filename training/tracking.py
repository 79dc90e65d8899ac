"""Compatibility names: the MLflow store now lives in `training.store`, promotion in `training.promotion`.

Everything that used to be importable from here still is. Setting an attribute here (as
`monkeypatch.setattr(tracking, "append_promotion_log", ...)` does) sets it in the module that
defines it, so code in `training.promotion` sees the replacement too.
"""

from __future__ import annotations

import sys
import types

from training import promotion, store
from training.promotion import (  # noqa: F401
    PROMOTION_LOG_NAME,
    PROMOTION_LOG_TAG,
    PROMOTION_LOG_TAG_ENTRIES,
    TAG_REASON_CHARS,
    TAG_VALUE_LIMIT,
    PromotionDecision,
    append_promotion_log,
    apply_promotion,
    challenger_wins,
    decide_on_backtest,
    decide_promotion,
    label_config_difference,
    move_aliases,
    promote,
    promote_if_better,
    promotion_history,
    record_decision,
    record_rollback,
    recover,
    roll_back_promotion,
)
from training.store import (  # noqa: F401
    ARTIFACT_DIR_NAME,
    CHALLENGER,
    CHAMPION,
    DEFAULT_DB_NAME,
    RUN_FAILED_TAG,
    artifact_location_for,
    compare_runs,
    current_aliases,
    describe_run,
    ensure_experiment,
    list_versions,
    local_store_dir,
    resolve_tracking_uri,
    restore_aliases,
    tracking_context,
)


class _Forwarding(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        for home in (promotion, store):
            if name in vars(home):
                setattr(home, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Forwarding
