"""Seed 003's execution-plan messages as Redis streams: `foldflow bridge` (bridge.py)."""
