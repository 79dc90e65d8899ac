"""Data contract, simulator and point-in-time feature pipeline for kocrank."""
