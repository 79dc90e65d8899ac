"""Fault injection for the crash tests: `checkpoint(stage)` SIGKILLs this process at a named stage.

Set `KOC_FAULT_STAGE=<stage>` in the environment of a `koc` command and the process dies
(no cleanup, no `finally`, no `except BaseException`) when it reaches that stage, as it would
on `kill -9`, an OOM kill or a power cut. Without the variable `checkpoint` does nothing.

Stages (where the call sits):
- `before_register`, `after_register`, `after_promotion` — `training/train.py`
- `after_intent`, `after_alias_move`, `before_confirm` — `training/promotion.py`
- `rank_before_write`, `rank_mid_write` — the ranked-list writer
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "KOC_FAULT_STAGE"


def checkpoint(stage: str) -> None:
    """Kill this process with SIGKILL when `KOC_FAULT_STAGE` equals `stage`."""
    if os.environ.get(ENV_VAR) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
