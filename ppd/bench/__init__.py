"""Benchmarks: scripts that print tables (python -m ppd.bench.NAME), not tests."""
