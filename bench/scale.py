"""Scale benchmark: N concurrent terminal sessions, keystroke echo of a probe session among them.

    cd /work/main && .venv/bin/python -m bench.scale [--sessions 50,100,250,500]
        [--workers N] [--nodes N] [--gap 1.0] [--probe-rounds 100] [--max-seconds 600]
        [--no-direct]

Starts a private OpenSSH sshd (tests.sshd_harness) and `hoop-broker serve --dev --workers N`
(default: the number of cores) with an `ssh` target "web" on it, logs a user in with the real
`hoopctl login`, then for each N in --sessions, on each path (direct: asyncssh straight to the
sshd; broker: through the broker, as `hoopctl connect web`):

1. opens N sessions (10 at a time), each at its shell prompt;
2. sets them typing: each sends one key and waits for its echo, then a backspace and its erase,
   then rests --gap seconds (staggered), so N sessions make about 2N/gap keystrokes a second;
3. meanwhile one more session, the probe, sends a key every 50 ms and times its echo:
   --probe-rounds echoes give the p50 and p99 at that load;
4. reads the CPU time of the broker's processes (supervisor and workers, /proc/PID/stat)
   over the probing, and the keystrokes the typists made: broker CPU per keystroke round trip.

With --nodes N (more than 1) there are N brokers, each with --workers, sharing a PostgreSQL
store (a fresh database on the machine's PostgreSQL, dropped at the end) and the keys, and the
sessions (the probe's too) are dealt out over them in turn; broker CPU is all nodes' together.

Then the sessions close and the next N starts. Every wait has a time limit; all phases share
--max-seconds (set-up not counted), and an N that runs out of time reports what it got. The
machine running the typists is the broker's own: on a 2-core machine they compete for it.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.login import isolate
from bench.terminal import (
    BACKSPACE,
    ECHO_CHAR,
    OPEN_BATCH,
    Shell,
    percentile,
    shell_openers,
    web_target,
)
from tests.helpers import BrokerProcess, User, ensure_os_users
from tests.sshd_harness import sshd_available, start_sshd
from tests.terminal_helpers import start_terminal_broker

PROBE_EVERY = 0.05
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Point:
    path: str
    sessions: int
    echoes: list[float] = field(default_factory=list)
    keystrokes: int = 0
    seconds: float = 0.0
    broker_cpu: float | None = None
    note: str = ""


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of PIDS (the broker's supervisor and its workers)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def broker_pids(broker: BrokerProcess) -> list[int]:
    assert broker.process is not None
    pid = broker.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [pid, *(int(child) for child in children.read_text().split())]
    except OSError:
        return [pid]


async def typist(shell: Shell, gap: float, offset: float, stop: asyncio.Event) -> int:
    """Type a key and erase it, then rest GAP seconds, until STOP; the keystrokes made."""
    made = 0
    await asyncio.sleep(offset)
    while not stop.is_set():
        try:
            await shell.time_echo(ECHO_CHAR, ECHO_CHAR)
            await shell.time_echo(BACKSPACE, b"\x08")
        except (RuntimeError, TimeoutError):
            break
        made += 2
        try:
            await asyncio.wait_for(stop.wait(), gap)
        except TimeoutError:
            pass
    return made


async def measure(
    path: str,
    sessions: int,
    opener: Callable[[], Awaitable[Shell]],
    args: argparse.Namespace,
    deadline: float,
    pids: list[int],
) -> Point:
    point = Point(path, sessions)
    shells: list[Shell] = []
    try:
        while len(shells) < sessions:
            if time.monotonic() > deadline:
                point.note = f"time budget spent after opening {len(shells)} sessions"
                return point
            batch = min(OPEN_BATCH, sessions - len(shells))
            shells.extend(await asyncio.gather(*(opener() for _ in range(batch))))
        probe = await opener()
        shells.append(probe)
        await probe.settle()
        stop = asyncio.Event()
        typing = [
            asyncio.ensure_future(typist(shell, args.gap, args.gap * i / sessions, stop))
            for i, shell in enumerate(shells[:-1])
        ]
        await asyncio.sleep(min(args.gap, 2.0))  # every typist has started
        cpu_before = cpu_seconds(pids) if pids else None
        started = time.monotonic()
        for _ in range(args.probe_rounds):
            if time.monotonic() > deadline:
                point.note = f"time budget spent after {len(point.echoes)} probe rounds"
                break
            await asyncio.sleep(PROBE_EVERY)
            try:
                point.echoes.append(await probe.time_echo(ECHO_CHAR, ECHO_CHAR))
                await probe.time_echo(BACKSPACE, b"\x08")
            except (RuntimeError, TimeoutError):
                point.note = f"saturated: a probe echo took over 10 s (round {len(point.echoes)})"
                break
        point.seconds = time.monotonic() - started
        if cpu_before is not None:
            point.broker_cpu = cpu_seconds(pids) - cpu_before
        stop.set()
        point.keystrokes = sum(await asyncio.gather(*typing)) + 2 * len(point.echoes)
        return point
    finally:
        await asyncio.gather(*(shell.close() for shell in shells), return_exceptions=True)


def report(points: list[Point], workers: int) -> str:
    lines = [
        f"| sessions | path | probe echo p50 | p99 | keystrokes/s | broker CPU per keystroke "
        f"({workers} workers) | note |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for point in points:
        if not point.echoes:
            lines.append(f"| {point.sessions} | {point.path} | - | - | - | - | {point.note} |")
            continue
        ms = [echo * 1000 for echo in point.echoes]
        rate = point.keystrokes / point.seconds if point.seconds else 0.0
        cpu = (
            f"{point.broker_cpu / point.keystrokes * 1000:.2f} ms"
            if point.broker_cpu is not None and point.keystrokes
            else ""
        )
        lines.append(
            f"| {point.sessions} | {point.path} | {statistics.median(ms):.1f} ms "
            f"| {percentile(ms, 0.99):.1f} ms | {rate:.0f} | {cpu} | {point.note} |"
        )
    return "\n".join(lines)


SHARED_KEYS = ("host_key", "host_key.pub", "user_ca", "user_ca.pub", "audit_key", "audit_key.pub")
ADMIN_DB = "postgresql://postgres@127.0.0.1:5432/postgres"


def start_nodes(workdir: Path, targets: str, args: argparse.Namespace) -> list[BrokerProcess]:
    """One broker, or --nodes brokers sharing a PostgreSQL store (see the module docstring)."""
    if args.nodes == 1:
        return [start_terminal_broker(workdir, targets, workers=args.workers)]
    import psycopg

    with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {args.database}")
    store = f'\n[store]\nurl = "postgresql://postgres@127.0.0.1:5432/{args.database}"\n'
    nodes: list[BrokerProcess] = []
    for number in range(args.nodes):
        name = f"node{number}"
        if nodes:
            data_dir = workdir / f"{name}-data"
            data_dir.mkdir()
            for key in SHARED_KEYS:
                shutil.copy2(nodes[0].data_dir / key, data_dir / key)
        nodes.append(
            start_terminal_broker(
                workdir, targets, name=name, workers=args.workers, extra=store, node=name
            )
        )
    return nodes


def drop_database(args: argparse.Namespace) -> None:
    if args.nodes > 1:
        import psycopg

        with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")


def dealt(openers: list[Callable[[], Awaitable[Shell]]]) -> Callable[[], Awaitable[Shell]]:
    """An opener that opens on each of OPENERS in turn."""
    turn = 0

    def open_next() -> Awaitable[Shell]:
        nonlocal turn
        turn += 1
        return openers[turn % len(openers)]()

    return open_next


async def bench(args: argparse.Namespace, workdir: Path) -> list[Point]:
    home = workdir / "user"
    isolate(home)  # this process and the `hoopctl login` subprocess share one user
    sshd = start_sshd(workdir / "sshd")
    nodes: list[BrokerProcess] = []
    try:
        nodes = start_nodes(workdir, web_target(sshd), args)
        openers = []
        for node in nodes:
            login = User(home).login(node)
            if login.returncode != 0:
                raise SystemExit(f"bench: hoopctl login failed:\n{login.stderr}")
            open_direct, open_node = await shell_openers(sshd, node)
            openers.append(open_node)
        open_broker = dealt(openers)
        pids = [pid for node in nodes for pid in broker_pids(node)]

        deadline = time.monotonic() + args.max_seconds
        points = []
        for sessions in args.sessions:
            paths = (("direct", open_direct, []), ("broker", open_broker, pids))
            for path, opener, pids in paths:
                if path == "direct" and not args.direct:
                    continue
                point = await measure(path, sessions, opener, args, deadline, pids)
                points.append(point)
                print(report([point], args.workers).splitlines()[-1], flush=True)
        return points
    finally:
        for node in nodes:
            node.stop()
        sshd.stop()
        drop_database(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sessions",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[50, 100, 250, 500],
        help="the session counts, comma-separated (default 50,100,250,500)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="broker workers (default cores)"
    )
    parser.add_argument(
        "--nodes", type=int, default=1, help="brokers sharing a PostgreSQL store (default 1)"
    )
    parser.add_argument("--gap", type=float, default=1.0, help="typists' rest between keys (s)")
    parser.add_argument("--probe-rounds", type=int, default=100, help="probe echoes per point")
    parser.add_argument("--max-seconds", type=float, default=600, help="time budget in all")
    parser.add_argument(
        "--no-direct", dest="direct", action="store_false", help="skip the direct-to-sshd path"
    )
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.workers < 1:
        parser.error("--nodes and --workers must be at least 1")
    args.database = f"hoop_bench_scale_{os.getpid()}"
    if not sshd_available():
        parser.error("no OpenSSH sshd on this machine (make system-deps installs it)")
    try:
        ensure_os_users()
    except RuntimeError as exc:
        parser.error(str(exc))
    print(
        f"hoopctl scale benchmark: {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {args.nodes} node(s) x {args.workers} workers; "
        f"typists rest {args.gap} s",
        flush=True,
    )
    # A broker still ending hundreds of sessions may write as the directory goes.
    with tempfile.TemporaryDirectory(prefix="hoop-bench-scale-", ignore_cleanup_errors=True) as tmp:
        started = time.monotonic()
        points = asyncio.run(bench(args, Path(tmp)))
    print()
    print(report(points, args.workers))
    print(f"({time.monotonic() - started:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
