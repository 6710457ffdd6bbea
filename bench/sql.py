"""Database exec benchmark: `hoopctl exec` through the broker vs psql / mariadb straight.

    cd /work/main && .venv/bin/python -m bench.sql [--rows 1000000] [--statements 200]
        [--cli-statements 30] [--export-rounds 3] [--max-seconds 240]

Creates a fresh PostgreSQL database and a fresh MariaDB database (each with its own login),
fills a table `big (id, email, note)` with --rows rows server-side (PostgreSQL
generate_series, MariaDB the Sequence engine's seq_1_to_N, else batched inserts), starts
`hoop-broker serve --dev` with targets `pg` (column rule: email redacted), `pg-detect` (all nine
value detectors, no column rule) and `maria` (no masking), logs a user in with the real `hoopctl
login` (tests.helpers.User), then measures:

1. `SELECT 1`: statements per second and p50/p99 latency of `hoopctl exec` (a subprocess, Python
   start-up included; --cli-statements rounds) against `psql -c` / `mariadb -e` straight to the
   database (--statements rounds).
2. rows per second of `SELECT * FROM big` exported as CSV to /dev/null: `hoopctl exec pg` (column
   rule), `hoopctl exec pg-detect` (detectors), `hoopctl exec maria` (no masking), against psql
   (`COPY ... TO STDOUT CSV`) and `mariadb -B --quick` straight to the database.
3. the broker's VmHWM (/proc/PID/status) before and after each export through it, and the CPU
   time the broker spent on it (/proc/PID/stat): rows per broker CPU-second hardly depends on
   what else the machine is doing, rows per second does (the load average is printed). Each
   export starts once the broker is idle: after a session it still seals the recording and
   indexes the session's text.

Both databases are dropped at the end, also on error. Every subprocess has a time limit and the
measuring phases share --max-seconds (set-up not counted). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pymysql

from bench.terminal import proc_status
from tests.helpers import BrokerProcess, User, dev_config, free_port, start_broker

MiB = 1 << 20
PG = {"host": "127.0.0.1", "user": "postgres"}
MY = {"host": "127.0.0.1", "user": "root", "password": ""}
INSERT_BATCH = 10_000  # MariaDB fallback without the Sequence engine
SETUP_TIMEOUT = 600.0
EXPORT = "SELECT * FROM big"
WARM_EXPORT = "hoopctl exec pg (column rule), warm (HOOPCTL_PERSIST)"
COPY_SHARE_GOAL = 0.25  # issue 16: a 1M-row export with one column rule against psql COPY

# Target from the issue.
MASKED_ROWS_TARGET = 200_000  # rows per second through masking


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


@contextmanager
def warm_start(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """USER's environment with warm start on (hoopctl.warm), in a runtime dir of its own; the
    warm process is started (untimed) first and stopped at the end."""
    runtime = Path(tempfile.mkdtemp(prefix="hb", dir="/tmp"))  # short: a socket path
    runtime.chmod(0o700)
    warm_env = {**env, "HOOPCTL_PERSIST": "10m", "XDG_RUNTIME_DIR": str(runtime)}
    hoopctl = str(Path(sys.executable).parent / "hoopctl")
    try:
        subprocess.run([hoopctl, "whoami"], env=warm_env, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while not list(runtime.glob("hoopctl/warm-*.sock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield warm_env
    finally:
        subprocess.run(["pkill", "-f", f"hoopctl.warm {runtime}"], check=False)
        subprocess.run(["rm", "-rf", str(runtime)], check=False)


@contextmanager
def postgres_database(rows: int, password: str) -> Iterator[str]:
    name = "hoop_bench_" + secrets.token_hex(4)
    role = name + "_app"
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"CREATE DATABASE {name} OWNER {role}")
    try:
        with psycopg.connect(**PG, dbname=name, autocommit=True) as db:
            db.execute(f"SET statement_timeout = '{int(SETUP_TIMEOUT)}s'")
            db.execute(f"SET ROLE {role}")
            db.execute("CREATE TABLE big (id int PRIMARY KEY, email text, note text)")
            # Every 100th note carries a card number, so the card detector has some to find.
            db.execute(
                "INSERT INTO big SELECT i, 'user' || i || '@example.com', "
                "CASE WHEN i %% 100 = 0 THEN 'paid with 4111 1111 1111 1111 order ' || i "
                "ELSE 'order ' || i || ' shipped to desk ' || (i %% 97) END "
                "FROM generate_series(1, %s) AS i",
                (rows,),
            )
            db.execute("ANALYZE big")
        yield name
    finally:
        with psycopg.connect(**PG, dbname="postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {role}")


MARIA_FILL = (
    "INSERT INTO {db}.big SELECT seq, CONCAT('user', seq, '@example.com'), "
    "IF(seq % 100 = 0, CONCAT('paid with 4111 1111 1111 1111 order ', seq), "
    "CONCAT('order ', seq, ' shipped to desk ', seq % 97)) FROM {db}.seq_1_to_{rows}"
)


@contextmanager
def mariadb_database(rows: int, password: str) -> Iterator[tuple[str, str]]:
    name = "hoop_bench_" + secrets.token_hex(4)
    admin = pymysql.connect(**MY, autocommit=True, read_timeout=int(SETUP_TIMEOUT))
    how = "Sequence engine"
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
            for host in ("%", "localhost"):
                cur.execute(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY '{password}'")
                cur.execute(f"GRANT ALL ON {name}.* TO '{name}'@'{host}'")
            cur.execute(f"CREATE TABLE {name}.big (id int PRIMARY KEY, email text, note text)")
            try:
                cur.execute(MARIA_FILL.format(db=name, rows=rows))
            except pymysql.MySQLError:
                how = "batched inserts"
                deadline = time.monotonic() + SETUP_TIMEOUT
                for start in range(1, rows + 1, INSERT_BATCH):
                    if time.monotonic() >= deadline:
                        raise SystemExit("bench: MariaDB table fill ran out of time") from None
                    stop = min(start + INSERT_BATCH, rows + 1)
                    cur.executemany(
                        f"INSERT INTO {name}.big VALUES (%s, %s, %s)",  # noqa: S608 (our own name)
                        [
                            (
                                i,
                                f"user{i}@example.com",
                                f"paid with 4111 1111 1111 1111 order {i}"
                                if i % 100 == 0
                                else f"order {i} shipped to desk {i % 97}",
                            )
                            for i in range(start, stop)
                        ],
                    )
        yield name, how
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{name}'@'{host}'")
        admin.close()


def targets(pg_db: str, my_db: str, pg_secret: Path, my_secret: Path) -> str:
    pg = f"""
type = "postgres"
address = "127.0.0.1:5432"
database = "{pg_db}"
user = "{pg_db}_app"
credential = "file:{pg_secret}"
tls = "disable"
allowed_groups = ["dba"]
"""
    return f"""
[[targets]]
name = "pg"
{pg}
[targets.masking]
[[targets.masking.columns]]
match = ["email"]
strategy = "redact"

[[targets]]
name = "pg-detect"
{pg}
[targets.masking]
detectors = ["card", "email", "phone", "iban", "us_ssn", "aws_key", "jwt", "private_key", "secret"]

[[targets]]
name = "maria"
type = "mysql"
address = "127.0.0.1:3306"
database = "{my_db}"
user = "{my_db}"
credential = "file:{my_secret}"
allowed_groups = ["dba"]
"""


@dataclass
class Results:
    latency: dict[str, list[float]] = field(default_factory=dict)
    exports: dict[str, tuple[int, float]] = field(default_factory=dict)  # rows, seconds
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # MiB before, after
    cpu: dict[str, float] = field(default_factory=dict)  # broker CPU seconds per export
    export_rounds: dict[str, int] = field(default_factory=dict)  # exports measured
    notes: list[str] = field(default_factory=list)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of PID (all its threads) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, limit: float = 10.0) -> None:
    """Wait until PID uses (almost) no CPU: after a session the broker still seals its
    recording and indexes its text, which would otherwise be counted to the next export."""
    deadline = time.monotonic() + limit
    used = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now - used < 0.005:
            return
        used = now


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    """Run ARGV with its output to /dev/null; fail on a non-zero exit."""
    result = subprocess.run(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=max(timeout, 1.0),
        env=env,
    )
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed:\n{result.stderr}")


def latency(
    results: Results, name: str, rounds: int, deadline: float, once: Callable[[], None]
) -> None:
    once()  # warm-up, untimed
    samples = results.latency.setdefault(name, [])
    for done in range(rounds):
        if done and time.monotonic() >= deadline:
            results.notes.append(f"{name}: time budget spent after {done} rounds")
            break
        start = time.perf_counter()
        once()
        samples.append(time.perf_counter() - start)


# The SQL shell brackets each prompt with bracketed-paste on/off (prompt-toolkit).
SHELL_PROMPT = "\x1b[?2004h"


def shell_latency(
    results: Results,
    name: str,
    argv: list[str],
    env: dict[str, str] | None,
    prompt: str,
    rounds: int,
    deadline: float,
) -> None:
    """`SELECT 1;` + Enter at an interactive prompt until the next prompt, ROUNDS times."""
    import pexpect

    child = pexpect.spawn(
        argv[0], argv[1:], env=env, encoding="utf-8", timeout=30, dimensions=(40, 120)
    )
    child.delaybeforesend = None  # pexpect would add 50 ms before every send

    def at_prompt() -> None:
        if prompt:
            child.expect(prompt)
        else:
            child.expect_exact(SHELL_PROMPT)

    try:
        at_prompt()
        samples = results.latency.setdefault(name, [])
        for done in range(rounds + 1):
            if done and time.monotonic() >= deadline:
                results.notes.append(f"{name}: time budget spent after {done} rounds")
                break
            start = time.perf_counter()
            child.send("SELECT 1;\r")
            at_prompt()
            if done:  # the first round is a warm-up
                samples.append(time.perf_counter() - start)
    finally:
        child.terminate(force=True)


def bench(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results()
    pg_password = "pg-" + secrets.token_hex(8)
    my_password = "my-" + secrets.token_hex(8)
    pg_secret, my_secret = workdir / "pg-secret", workdir / "my-secret"
    pg_secret.write_text(pg_password)
    my_secret.write_text(my_password)
    started = time.monotonic()
    with (
        postgres_database(args.rows, pg_password) as pg_db,
        mariadb_database(args.rows, my_password) as (my_db, how),
    ):
        results.notes.append(
            f"set-up: {args.rows} rows in each database in {time.monotonic() - started:.1f} s "
            f"(MariaDB via {how})"
        )
        config = dev_config(
            workdir / "broker-data",
            port=free_port(),
            dev_port=free_port(),
            targets=targets(pg_db, my_db, pg_secret, my_secret),
        )
        broker: BrokerProcess = start_broker(workdir, config)
        try:
            assert broker.process is not None
            pid = broker.process.pid
            user = User(workdir / "alice")
            login = user.login(broker)
            if login.returncode != 0:
                raise SystemExit(f"bench: hoopctl login failed:\n{login.stderr}")
            deadline = time.monotonic() + args.max_seconds
            psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", pg_db, "-X", "-q"]
            maria = ["mariadb", "-h", "127.0.0.1", "-u", "root", my_db]
            hoopctl = [str(Path(sys.executable).parent / "hoopctl"), "exec"]

            def left() -> float:
                return deadline - time.monotonic()

            def cli(*argv: str) -> Callable[[], None]:
                return lambda: run([*hoopctl, *argv], left(), user.env)

            def direct(*argv: str) -> Callable[[], None]:
                return lambda: run(list(argv), left())

            with warm_start(user.env) as warm_env:

                def warm(*argv: str) -> Callable[[], None]:
                    return lambda: run([*hoopctl, *argv], left(), warm_env)

                for name, rounds, once in (
                    ("psql -c", args.statements, direct(*psql, "-c", "SELECT 1")),
                    ("hoopctl exec pg", args.cli_statements, cli("pg", "-c", "SELECT 1")),
                    (
                        "hoopctl exec pg, warm (HOOPCTL_PERSIST)",
                        args.statements,
                        warm("pg", "-c", "SELECT 1"),
                    ),
                    ("mariadb -e", args.statements, direct(*maria, "-e", "SELECT 1")),
                    ("hoopctl exec maria", args.cli_statements, cli("maria", "-c", "SELECT 1")),
                    (
                        "hoopctl exec maria, warm (HOOPCTL_PERSIST)",
                        args.statements,
                        warm("maria", "-c", "SELECT 1"),
                    ),
                ):
                    latency(results, name, rounds, deadline, once)

            # Interactive shells: the same statement typed at a prompt, timed from Enter until
            # the next prompt, in a real terminal (pexpect) for both.
            shells: tuple[tuple[str, list[str], dict[str, str] | None, str], ...] = (
                ("psql (interactive)", psql[:-1], None, r"=# $"),
                ("hoopctl connect pg (SQL shell)", [*hoopctl[:-1], "connect", "pg"], user.env, ""),
                ("mariadb (interactive)", maria, None, r"\]> $"),
                (
                    "hoopctl connect maria (SQL shell)",
                    [*hoopctl[:-1], "connect", "maria"],
                    user.env,
                    "",
                ),
            )
            for name, argv, env, prompt in shells:
                if left() <= 1:
                    results.notes.append(f"{name}: skipped, time budget spent")
                    continue
                shell_latency(results, name, argv, env, prompt, args.statements, deadline)

            with warm_start(user.env) as export_env:
                exports: tuple[tuple[str, Callable[[], None], bool], ...] = (
                    (
                        "psql COPY TO STDOUT CSV",
                        direct(*psql, "-c", f"COPY ({EXPORT}) TO STDOUT WITH CSV"),
                        False,
                    ),
                    ("hoopctl exec pg (column rule)", cli("pg", "-c", EXPORT, "-o", "csv"), True),
                    (
                        WARM_EXPORT,
                        lambda: run(
                            [*hoopctl, "pg", "-c", EXPORT, "-o", "csv"], left(), export_env
                        ),
                        True,
                    ),
                    (
                        "hoopctl exec pg-detect (detectors)",
                        cli("pg-detect", "-c", EXPORT, "-o", "csv"),
                        True,
                    ),
                    ("mariadb -B --quick", direct(*maria, "-B", "--quick", "-e", EXPORT), False),
                    (
                        "hoopctl exec maria (no masking)",
                        cli("maria", "-c", EXPORT, "-o", "csv"),
                        True,
                    ),
                )
                # Rounds, each running every export once: a slow spell of the machine then
                # falls on all of them alike, and each figure is the median of its rounds.
                times: dict[str, list[float]] = {}
                cpus: dict[str, list[float]] = {}
                for _ in range(args.export_rounds):
                    for name, once, through_broker in exports:
                        if left() <= 1:
                            note = f"{name}: rounds skipped, time budget spent"
                            if note not in results.notes:
                                results.notes.append(note)
                            continue
                        wait_idle(pid)
                        before = proc_status(pid)["VmHWM"] / MiB
                        cpu_before = cpu_seconds(pid)
                        start = time.perf_counter()
                        try:
                            once()
                        except subprocess.TimeoutExpired:
                            results.notes.append(f"{name}: cut off by the time budget")
                            continue
                        times.setdefault(name, []).append(time.perf_counter() - start)
                        if through_broker:
                            first = results.memory.get(name, (before, 0.0))[0]
                            results.memory[name] = (first, proc_status(pid)["VmHWM"] / MiB)
                            cpus.setdefault(name, []).append(cpu_seconds(pid) - cpu_before)
                for name, samples in times.items():
                    results.exports[name] = (args.rows, statistics.median(samples))
                    results.export_rounds[name] = len(samples)
                for name, samples in cpus.items():
                    results.cpu[name] = statistics.median(samples)
            results.notes.append(
                "load average after the exports: " + " ".join(f"{n:.2f}" for n in os.getloadavg())
            )
            results.memory["broker VmRSS at the end"] = (0.0, proc_status(pid)["VmRSS"] / MiB)
        finally:
            broker.stop()
    return results


def render(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [header, tuple("-" * width for width in widths), *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def report(results: Results) -> str:
    parts: list[str] = []
    rows: list[tuple[str, ...]] = []
    for name, values in results.latency.items():
        if values:
            rows.append(
                (
                    f"SELECT 1, {name}",
                    f"{len(values) / sum(values):.1f}/s",
                    f"{statistics.median(values) * 1000:.1f} ms",
                    f"{percentile(values, 0.99) * 1000:.1f} ms",
                    str(len(values)),
                )
            )
    parts.append(render(rows, ("statements", "rate", "p50", "p99", "runs")))
    rows = []
    copy = results.exports.get("psql COPY TO STDOUT CSV")
    copy_rate = copy[0] / copy[1] if copy else None
    for name, (count, seconds) in results.exports.items():
        share = f"{count / seconds / copy_rate:.2f}" if copy_rate else ""
        hwm = ""
        if name in results.memory:
            before, after = results.memory[name]
            hwm = f"{before:.1f} -> {after:.1f} MiB (+{after - before:.1f})"
        cpu = ""
        if results.cpu.get(name):
            used = results.cpu[name]
            cpu = f"{used:.2f} s ({count / used:,.0f} rows/CPU-s)"
        rows.append(
            (
                f"{EXPORT}, {name}",
                f"{count / seconds:,.0f} rows/s",
                share,
                f"{seconds:.2f} s",
                str(results.export_rounds.get(name, 1)),
                hwm,
                cpu,
            )
        )
    parts.append(
        render(
            rows,
            (
                "export (CSV to /dev/null)",
                "rate",
                "of COPY",
                "time",
                "rounds",
                "broker VmHWM",
                "broker CPU",
            ),
        )
    )
    if copy_rate:
        for name in ("hoopctl exec pg (column rule)", WARM_EXPORT):
            if name in results.exports:
                count, seconds = results.exports[name]
                share = count / seconds / copy_rate
                met = "met" if share >= COPY_SHARE_GOAL else "NOT met"
                parts.append(
                    f"issue 16 goal: at least {COPY_SHARE_GOAL} of psql COPY, {name} -- {met} "
                    f"({share:.2f})"
                )
    end = results.memory.get("broker VmRSS at the end")
    if end:
        parts.append(f"broker VmRSS at the end: {end[1]:.1f} MiB")
    for name in ("hoopctl exec pg (column rule)", "hoopctl exec pg-detect (detectors)"):
        if name in results.exports:
            count, seconds = results.exports[name]
            rate = count / seconds
            met = "met" if rate >= MASKED_ROWS_TARGET else "NOT met"
            parts.append(
                f"target: at least {MASKED_ROWS_TARGET:,} rows/s masked, {name} -- {met} "
                f"({rate:,.0f} rows/s)"
            )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sql",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of big (default 1M)")
    parser.add_argument(
        "--statements", type=int, default=200, help="psql/mariadb SELECT 1 rounds (default 200)"
    )
    parser.add_argument(
        "--cli-statements", type=int, default=30, help="hoopctl SELECT 1 rounds (default 30)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=240,
        help="time budget of the measuring phases, set-up excluded (default 240)",
    )
    parser.add_argument(
        "--export-rounds",
        type=int,
        default=3,
        help="rounds of the exports, each running every export once; medians (default 3)",
    )
    args = parser.parse_args(argv)
    if min(args.rows, args.statements, args.cli_statements, args.export_rounds) < 1:
        parser.error(
            "--rows, --statements, --cli-statements and --export-rounds must be at least 1"
        )
    print(
        f"hoopctl database exec benchmark: {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {args.rows} rows",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hoop-bench-") as tmp:
        started = time.monotonic()
        results = bench(args, Path(tmp))
        elapsed = time.monotonic() - started
    print(report(results))
    for note in results.notes:
        print(f"note: {note}")
    print(f"({elapsed:.1f} s in all, with database set-up, broker start-up and one login)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
