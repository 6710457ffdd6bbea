"""Benchmarks: run from the repo root as `.venv/bin/python -m bench.<name>` (see README.md)."""
