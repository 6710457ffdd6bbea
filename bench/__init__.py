"""Benchmarks: run from the repo root as `.venv/bin/python -m bench.<name>` (see README.md)."""

# asyncssh as every hoopctl process loads it: without its DSA deprecation warnings on stderr
# (the typists of bench.scale and bench.terminal are asyncssh clients in this process).
import hoopctl  # noqa: F401
