"""Benchmarks against thumbor and the bare codec: `make bench` runs bench/run.py."""
