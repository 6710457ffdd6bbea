"""CLI start-up benchmark: what a person waits for before hoopctl does anything.

    cd /work/main && .venv/bin/python -m bench.cli [--runs 30] [--max-seconds 60]

Wall time of the real console script as a subprocess, Python start-up included, beside the
bare interpreter: `hoopctl --version`, `hoopctl --help`, and one TAB as bash asks for it
(`_HOOPCTL_COMPLETE=complete_bash`) on `hoopctl connect <TAB>` with a cache of 50 targets. No
broker is needed: completion reads only the local cache (hoopctl.completion_cache). Prints
figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import HOOPCTL, User

BROKER = "127.0.0.1:2222"


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hoop-bench-cli-") as tmp:
        user = User(Path(tmp) / "user")
        env = {**user.env, "HOOP_BROKER": BROKER}
        cache = Path(tmp) / "user" / ".cache" / "hoopctl" / "completion.json"
        cache.parent.mkdir(parents=True)
        names = [f"target-{n:02d}" for n in range(50)]
        cache.write_text(json.dumps({"brokers": {BROKER: {"targets": names}}}))
        complete_env = {
            **env,
            "_HOOPCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": "hoopctl connect target-1",
            "COMP_CWORD": "2",
        }
        out = subprocess.run(
            [HOOPCTL], env=complete_env, capture_output=True, text=True, check=False
        ).stdout
        offered = [line for line in out.splitlines() if line.startswith("target-1")]
        assert len(offered) == 10, out  # the benchmark measures a TAB that works
        metrics = {
            "python3 -c pass (interpreter start)": ([sys.executable, "-c", "pass"], env),
            "hoopctl --version": ([HOOPCTL, "--version"], env),
            "hoopctl --help": ([HOOPCTL, "--help"], env),
            "TAB: hoopctl connect target-1<TAB>": ([HOOPCTL], complete_env),
        }
        samples: dict[str, list[float]] = {name: [] for name in metrics}
        deadline = time.monotonic() + args.max_seconds
        rounds = 0
        while rounds < args.runs and time.monotonic() < deadline:
            for name, (argv, run_env) in metrics.items():
                samples[name].append(_time(argv, run_env))
            rounds += 1
    print(
        f"CLI start-up, {rounds} rounds, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores"
    )
    print(f"{'metric':<40} {'median ms':>10} {'p90 ms':>8}")
    for name, values in samples.items():
        values.sort()
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        print(f"{name:<40} {statistics.median(values) * 1000:>10.1f} {p90 * 1000:>8.1f}")


if __name__ == "__main__":
    main()
