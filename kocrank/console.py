"""The rich console every `koc` command prints through."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 150


def make_console(stderr: bool = False) -> Console:
    """A console; when output goes to a pipe or file (make demo, CI logs) tables get 150 columns, not 80."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)
