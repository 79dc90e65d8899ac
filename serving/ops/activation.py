"""The activation log: who approved, excluded or exported which members of which list, and when.

An append-only JSON Lines file (default `activation_log.jsonl` beside the data folder). Each
record is one line written with a single `write` on a file opened with `O_APPEND`, under an
exclusive `flock` (so two servers on one file never interleave), then `fsync`ed before the
page answers: a record is either wholly in the file or not at all. A crash mid-write can at
worst leave a last line without its newline; readers skip such a line with a warning and
the next append starts on a fresh line. The file is the record of who was actually invited.

Record fields: `at` (UTC, ISO 8601), `who`, `action` (approve | exclude | export), `list_id`,
`member_ids`, `reason` (exclusions; optional otherwise), `format` (exports).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

Action = Literal["approve", "exclude", "export"]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ActivationLog:
    """Append and read the activation log at `path`."""

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], str] = utc_now) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()

    def append(
        self,
        action: Action,
        who: str,
        list_id: str,
        member_ids: Iterable[str],
        *,
        reason: str | None = None,
        fmt: str | None = None,
    ) -> dict[str, Any]:
        """Write one record durably and return it."""
        if action not in ("approve", "exclude", "export"):
            raise ValueError(f"unknown activation action {action!r}")
        ids = list(dict.fromkeys(str(m) for m in member_ids))
        if action == "exclude" and not (reason or "").strip():
            raise ValueError("an exclusion needs a reason")
        record: dict[str, Any] = {"at": self._clock(), "who": who, "action": action, "list_id": list_id, "member_ids": ids}
        if reason:
            record["reason"] = reason.strip()
        if fmt:
            record["format"] = fmt
        line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size and not self._ends_with_newline():
                    line = b"\n" + line  # a crash left a partial line: start on a fresh one
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the flock
        logger.info("activation log: %s %s %d member(s) of list %s", who, action, len(ids), list_id)
        return record

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def records(self, list_id: str | None = None) -> list[dict[str, Any]]:
        """Every complete record (of one list when given), oldest first."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.endswith("\n"):
                    logger.warning("%s line %d is incomplete (a write was interrupted); skipped", self.path, number)
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s line %d is not JSON; skipped", self.path, number)
                    continue
                if list_id is None or record.get("list_id") == list_id:
                    out.append(record)
        return out

    def decisions(self, list_id: str) -> dict[str, dict[str, Any]]:
        """The latest approve/exclude record per member of a list: member_id -> {status, who, at, reason}."""
        state: dict[str, dict[str, Any]] = {}
        for record in self.records(list_id):
            if record["action"] not in ("approve", "exclude"):
                continue
            status = "approved" if record["action"] == "approve" else "excluded"
            for member_id in record["member_ids"]:
                state[member_id] = {
                    "status": status, "who": record["who"], "at": record["at"], "reason": record.get("reason")
                }
        return state
