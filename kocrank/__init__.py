"""kocrank: rank a brand's members for invitation into its KOC programme."""

__version__ = "0.1.0"
