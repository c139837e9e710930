"""Runnable examples: python -m edgekit.examples.NAME."""
