"""Regenerate the README's feature table from the feature registry (`make docs`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from features.registry import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- features:start -->", "<!-- features:end -->"


def feature_section() -> str:
    """The generated block that stands between the README's feature markers."""
    intro = (
        "Generated from `features/registry.py` by `make docs` (`koc features --list` prints the same). "
        "Every feature of a row at `as_of` uses only rows strictly before `as_of`; a model records the "
        "feature set and its version."
    )
    return f"{START}\n{intro}\n\n{markdown_table().strip()}\n{END}"


def render(text: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no {START} … {END} block")
    return pattern.sub(lambda _: feature_section(), text)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            raise SystemExit("README feature table is stale: run `make docs`")
        return
    README.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
