"""Replay benchmark: open, start and seek a large recording; build and reuse its index.

    cd /work/main && .venv/bin/python -m bench.replay          # --megabytes 100 --minutes 60

A synthetic recording (shell prompts with OSC 133 marks, typed commands with their marks, log
dumps with colours, `ls --color`, full-screen `top`-like episodes on the alternate screen,
idle gaps) of the given size and duration is written to a temporary directory, measured, and
deleted. Prints figures; asserts nothing. Searching 10,000 sessions is measured by
bench/session_search.py (the full-text index in the store).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hoopctl.replay import commands, export, open_index, play
from hoopctl.replay.index import index_paths

PROMPT = "\x1b]133;A\x07\x1b[1;32malice@web-1\x1b[0m:\x1b[1;34m~/app\x1b[0m$ \x1b]133;B\x07"
COMMANDS = [
    "journalctl -u api --since today",
    "tail -n 2000 /var/log/app/access.log",
    "ls --color=auto -la /srv/app/releases",
    "top",
    "kubectl logs deploy/api --tail=500",
    "grep -r timeout /etc/app",
    "psql -c 'select count(*) from orders'",
]


def write_synthetic_recording(
    path: Path,
    *,
    megabytes: float = 100.0,
    minutes: float = 60.0,
    width: int = 120,
    height: int = 40,
    seed: int = 7,
    last_command: str = "echo needle-at-the-end",
) -> dict[str, float]:
    """Write an asciicast v2 file of about ``megabytes`` MB spread over ``minutes``.

    The last command typed is ``last_command`` (its mark and its output close the file).
    Returns {"bytes": ..., "duration": ..., "events": ...}.
    """
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    # Written with a nominal clock first (bulk output at `rate`, plus typing and pauses),
    # then every time is scaled so that the recording lasts `minutes`.
    rate = 2_000_000.0
    nominal = path.with_name(path.name + ".nominal")
    t = 0.0
    events = 0
    written = 0
    header = {
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": 1_790_000_000,
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        "hoop": {"session_id": "bench", "user": "alice", "target": "web"},
    }
    with nominal.open("w", encoding="utf-8") as file:
        file.write(json.dumps(header) + "\n")
        written += file.tell()

        def emit(code: str, data: str, advance: float = 0.0) -> None:
            nonlocal t, events, written
            t += advance
            line = f"[{t:.6f}, {json.dumps(code)}, {json.dumps(data, ensure_ascii=False)}]\n"
            file.write(line)
            written += len(line)
            events += 1

        def type_command(command: str) -> None:
            emit("o", PROMPT, rng.uniform(0.05, 0.3))
            for char in command:
                emit("i", char, rng.uniform(0.03, 0.12))
                emit("o", char, 0.002)
            emit("i", "\r", rng.uniform(0.1, 0.4))
            emit("m", f"command: {command}", 0.001)
            emit("o", "\r\n", 0.001)

        def bulk(text: str) -> None:
            # Output arrives in chunks of up to 16 KiB, as a PTY reader would deliver it.
            for start in range(0, len(text), 16384):
                chunk = text[start : start + 16384]
                emit("o", chunk, len(chunk) / rate)

        while written < target:
            command = rng.choice(COMMANDS)
            type_command(command)
            if command == "top":
                frames = [_top_frame(rng, width, height) for _ in range(rng.randint(20, 60))]
                emit("o", "\x1b[?1049h\x1b[22;0;0t\x1b[?1h\x1b=\x1b[H\x1b[2J", 0.01)
                for frame in frames:
                    emit("o", frame, 2.0)
                emit("o", "\x1b[?1l\x1b>\x1b[?1049l", 0.2)
            elif command.startswith("ls"):
                bulk(_ls_listing(rng))
            else:
                bulk("".join(_log_line(rng) for _ in range(rng.randint(200, 3000))))
            if rng.random() < 0.05:
                emit("m", "blocked: rm -rf /srv/app", rng.uniform(1, 5))
            emit("o", "", rng.expovariate(1 / 8.0))  # a pause before the next prompt
        type_command(last_command)
        emit("o", last_command.removeprefix("echo ") + "\r\n" + PROMPT, 0.01)
    scale = minutes * 60.0 / t
    last = 0.0
    with nominal.open("r", encoding="utf-8") as source, path.open("w", encoding="utf-8") as file:
        file.write(source.readline())
        for line in source:
            comma = line.index(",")
            last = float(line[1:comma]) * scale
            file.write(f"[{last:.6f}{line[comma:]}")
    nominal.unlink()
    return {"bytes": path.stat().st_size, "duration": float(f"{last:.6f}"), "events": events}


def _log_line(rng: random.Random) -> str:
    level = rng.choices(["INFO", "WARN", "ERROR"], [90, 8, 2])[0]
    colour = {"INFO": "32", "WARN": "33", "ERROR": "1;31"}[level]
    return (
        f"2026-11-23T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z "
        f"\x1b[{colour}m{level:5}\x1b[0m api[{rng.randint(100, 999)}]: "
        f"GET /v1/orders/{rng.getrandbits(40):x} status={rng.choice([200, 200, 200, 404, 500])} "
        f"took={rng.randint(1, 900)}ms user={rng.getrandbits(24):06x}\r\n"
    )


def _ls_listing(rng: random.Random) -> str:
    lines = ["total 4242\r\n"]
    for _ in range(rng.randint(20, 200)):
        name = f"release-{rng.getrandbits(32):08x}"
        lines.append(
            f"drwxr-xr-x  2 deploy deploy 4096 Nov 23 12:{rng.randint(0, 59):02d} "
            f"\x1b[01;34m{name}\x1b[0m\r\n"
        )
    return "".join(lines)


def _top_frame(rng: random.Random, width: int, height: int) -> str:
    parts = [
        f"\x1b[H\x1b[7mtop - 12:00:00 up 42 days, load average: {rng.random() * 4:.2f}\x1b[m\x1b[K"
    ]
    for row in range(2, height):
        parts.append(
            f"\x1b[{row};1H{rng.randint(1, 99999):>7} alice  20   0 "
            f"{rng.randint(1000, 999999):>8} {rng.random() * 100:5.1f} {rng.random() * 10:4.1f} "
            f"{rng.choice(['python3', 'postgres', 'nginx', 'bash'])}\x1b[K"
        )
    return "".join(parts)[: width * height * 2]


class _FirstWrite(Exception):
    """Raised by the output at the player's first write: the time to first paint."""


class _StopAtFirstWrite:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, text: str) -> int:
        self.bytes += len(text)
        raise _FirstWrite

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    try:
        work()
    except _FirstWrite:
        pass
    return time.perf_counter() - start


def _first_paint(path: Path, **options: object) -> float:
    return _timed(lambda: play(path, out=_StopAtFirstWrite(), keys=False, **options))


def _subprocess_first_byte(path: Path, *args: str) -> float:
    """Wall time from starting `python -m hoopctl.replay FILE ARGS` to its first output byte."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "hoopctl.replay", str(path), "--no-keys", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    process.stdout.read(1)
    elapsed = time.perf_counter() - start
    process.kill()
    process.wait()
    return elapsed


def _spread(samples: list[float]) -> str:
    return f"min {_fmt(min(samples))}, max {_fmt(max(samples))}, {len(samples)} runs"


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100.0)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=10, help="samples of each warm figure")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="hoopctl-bench-replay-"))
    old_cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(workdir / "cache")
    try:
        recording = workdir / "session.cast"
        began = time.perf_counter()
        info = write_synthetic_recording(recording, megabytes=args.megabytes, minutes=args.minutes)
        generated = time.perf_counter() - began
        duration = info["duration"]
        end = f"{math.floor(duration * 1000) / 1000:.3f}"
        print(
            f"recording: {info['bytes'] / 1e6:.1f} MB, {info['events']:,} events, "
            f"{duration / 60:.1f} min (generated in {generated:.1f} s)"
        )
        rows: list[tuple[str, str, str]] = []

        # Opening and starting: no index needed to play from the start.
        starts = [_first_paint(recording) for _ in range(args.rounds)]
        rows.append(
            (
                "open and start playing (in-process: header, first event, first write)",
                _fmt(statistics.median(starts)),
                _spread(starts),
            )
        )

        # The first seek builds the index.
        cpu = time.process_time()
        build = _timed(lambda: open_index(recording))
        build_cpu = time.process_time() - cpu
        index = open_index(recording)
        index_file = next(path for path in index_paths(recording) if path.exists())
        rows.append(
            (
                "index build, first use (whole file)",
                _fmt(build),
                f"{info['bytes'] / 1e6 / build:.1f} MB/s; CPU {_fmt(build_cpu)}",
            )
        )
        rows.append(
            (
                "index size",
                f"{index_file.stat().st_size / 1e6:.2f} MB",
                f"{len(index.keyframes)} keyframes, {len(index.marks)} marks",
            )
        )

        reuse = [_timed(lambda: open_index(recording)) for _ in range(args.rounds)]
        rows.append(
            (
                "index reuse (unchanged file: checked and loaded)",
                _fmt(statistics.median(reuse)),
                _spread(reuse),
            )
        )

        screen = [_timed(lambda: index.terminal_at(duration)) for _ in range(args.rounds)]
        rows.append(
            (
                "screen at the end (keyframe + events since)",
                _fmt(statistics.median(screen)),
                _spread(screen),
            )
        )

        seeks = [_first_paint(recording, at=end) for _ in range(args.rounds)]
        rows.append(
            (
                "seek to the end, play --at END (in-process, first paint)",
                _fmt(statistics.median(seeks)),
                _spread(seeks),
            )
        )

        middle = [
            _first_paint(recording, at=f"{duration * random.random():.3f}")
            for _ in range(args.rounds)
        ]
        rows.append(
            (
                "seek to a random time (in-process, first paint)",
                _fmt(statistics.median(middle)),
                _spread(middle),
            )
        )

        grep = [_first_paint(recording, grep="needle-at-the-end") for _ in range(3)]
        rows.append(
            (
                "play --grep, match at the end (scan + seek, first paint)",
                _fmt(statistics.median(grep)),
                _spread(grep),
            )
        )

        cli_start = [_subprocess_first_byte(recording) for _ in range(5)]
        cli_end = [_subprocess_first_byte(recording, "--at", end) for _ in range(5)]
        rows.append(
            (
                "python -m hoopctl.replay FILE (first byte)",
                _fmt(statistics.median(cli_start)),
                _spread(cli_start) + "; Python start-up included",
            )
        )
        rows.append(
            (
                "python -m hoopctl.replay FILE --at END (first byte)",
                _fmt(statistics.median(cli_end)),
                _spread(cli_end) + "; Python start-up included",
            )
        )

        # Growth: a live session that wrote another 1% since the index was built.
        with recording.open("a", encoding="utf-8") as file:
            extra = int(info["bytes"] * 0.01)
            line = json.dumps([duration + 1, "o", "x" * 1000 + "\r\n"]) + "\n"
            file.write(line * max(1, extra // len(line)))
        extend = _timed(lambda: open_index(recording))
        rows.append(
            (
                "index extension after the file grew 1%",
                _fmt(extend),
                "resumes from the last keyframe",
            )
        )

        marks = _timed(lambda: commands(recording))
        rows.append(("commands() (marks from the index)", _fmt(marks), f"{len(index.marks)} marks"))
        for path in index_paths(recording):
            path.unlink(missing_ok=True)
        marks_scan = _timed(lambda: commands(recording))
        rows.append(("commands() without an index (full scan)", _fmt(marks_scan), ""))

        with open(os.devnull, "w", encoding="utf-8") as sink:
            cpu = time.process_time()
            text = _timed(lambda: export(recording, "text", sink))
            text_cpu = time.process_time() - cpu
            as_json = _timed(lambda: export(recording, "json", sink))
        with open(os.devnull, "wb") as sink_bytes:
            as_cast = _timed(lambda: export(recording, "cast", sink_bytes))
        size = recording.stat().st_size / 1e6
        rows.append(
            (
                "export text (emulator, scrollback)",
                _fmt(text),
                f"{size / text:.1f} MB/s; CPU {_fmt(text_cpu)}",
            )
        )
        rows.append(("export json", _fmt(as_json), f"{size / as_json:.1f} MB/s"))
        rows.append(("export cast (checked copy)", _fmt(as_cast), f"{size / as_cast:.1f} MB/s"))

        print()
        print(f"load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        print("| metric | time (median) | note |")
        print("| --- | ---: | --- |")
        for name, value, note in rows:
            print(f"| {name} | {value} | {note} |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if old_cache is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old_cache


if __name__ == "__main__":
    main()
