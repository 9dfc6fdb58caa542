"""Benchmarks that write their own report files (``python -m bnnbench.bench.<name>``)."""
