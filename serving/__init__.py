"""Ranking eligible members for KOC invitation: exclusions, tiers, reasons, quotas, exploration, outputs and the API."""
