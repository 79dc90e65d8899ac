"""The rich console every `koc` command prints through, its progress bars and the ranked-list table."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 150


def make_console(stderr: bool = False) -> Console:
    """A console; when output goes to a pipe or file (make demo, CI logs) tables get 150 columns, not 80."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)


@contextlib.contextmanager
def progress_steps(console: Console, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar over the named steps of a command a person waits on.

    `step("loading data")` marks the previous step done and shows the next one with the
    elapsed time. On a pipe (make demo, CI) rich prints nothing but the final state.
    """
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("starting", total=total)
        started = [False]

        def step(description: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=description)

        yield step
        progress.update(task, completed=total, description="done")


def print_top(result: Any, n: int = 10, console: Console | None = None) -> None:
    """The first `n` rows of a ranked list (`serving.rank.RankResult`) and its headline numbers as a table."""
    import pandas as pd

    console = console or make_console()
    meta = result.meta
    candidates = result.candidates
    table = Table(
        title=f"KOC invitation list {meta.get('list_id', '')} as of {meta['as_of'][:10]} — "
        f"top {min(n, len(candidates))} of {len(candidates)}"
    )
    for column in ("rank", "member_id", "score", "tier", "trial category", "explore"):
        table.add_column(column, no_wrap=True)
    table.add_column("strongest reasons", overflow="fold")
    reason_columns = [c for c in candidates.columns if c.startswith("reason_") and c.removeprefix("reason_").isdigit()]
    for row in candidates.head(n).to_dict("records"):
        # the English half keeps the table narrow; the files have both languages
        english = [row.get(f"{c}_en") or str(row[c]).split(" / ")[-1] for c in reason_columns if isinstance(row[c], str)]
        cells = (
            str(row["rank"]), str(row["member_id"]), f"{row['score']:.1%}", str(row["tier"]),
            "" if pd.isna(row["trial_category"]) else str(row["trial_category"]),
            f"p={row['selection_probability']:.2f}" if row["exploration"] else "",
            "; ".join(english),
        )
        table.add_row(*(Text(cell) for cell in cells))  # Text: brand data is never read as rich markup
    console.print(table)
    excl = ", ".join(f"{rule}: {count}" for rule, count in meta["exclusions"].items())
    console.print(
        f"eligible {meta['counts']['eligible']} of {meta['counts']['joined_before_as_of']} members (excluded — {excl}); "
        f"expected productive KOCs in the list: {meta['expected_productive']:.1f}; score = {meta.get('target', 'observed')}",
        markup=False, highlight=False,
    )
