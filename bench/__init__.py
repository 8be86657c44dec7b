"""Benchmarks of the daemon: `python3 -m bench [NAME ...]` (see bench/RESULTS.md)."""
