"""Native-client benchmark: pgbench select-only (-S) three ways, side by side in one run.

    cd /work/main && .venv/bin/python -m bench.proxy [--seconds 15] [--clients 4]
        [--scale 1] [--rounds 2]

Creates a fresh PostgreSQL database with its own login, fills it with `pgbench -i`, starts
`hoop-broker serve --dev` with a postgres target `pg` (no masking rule: the proxy's own cost),
logs alice in with the real `hoopctl login`, starts `hoopctl proxy pg -o json`, then runs
`pgbench -S -T SECONDS -c CLIENTS` (simple protocol, one connection per client, kept) in
rounds against:

1. the database directly;
2. a plain asyncio TCP forwarder on loopback (no parsing: the floor any proxy pays);
3. the proxy (hoopctl → SSH → broker → protocol v3 → database).

Prints TPS and the average statement latency pgbench reports for each, the ratios of the
proxy to direct and to the forwarder, and the latency the proxy adds (pgbench `-r` p50 is not
available, so the added latency is reported from per-transaction logs: p50 and p99 of
transaction latency, `--log`). Asserts nothing; every subprocess has a time limit, the
database is dropped at the end. Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import psycopg

from tests.helpers import User, dev_config, free_port, start_broker

PG = {"host": "127.0.0.1", "user": "postgres"}


@contextmanager
def bench_database(password: str, scale: int) -> Iterator[str]:
    name = "hoop_bench_" + secrets.token_hex(4)
    role = name + "_app"
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"CREATE DATABASE {name} OWNER {role}")
    try:
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-U", role, name],
            env={"PGPASSWORD": password, "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
            timeout=300,
        )
        yield name
    finally:
        with psycopg.connect(**PG, dbname="postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {role}")


class Forwarder:
    """A plain TCP forwarder on loopback, in a thread of its own."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self.ready.set()
        with contextlib.suppress(RuntimeError):
            self.loop.run_forever()
        server.close()

    def __enter__(self) -> Forwarder:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextmanager
def ssh_tunnel(target_port: int, workdir: Path) -> Iterator[int]:
    """The SSH floor (bench/ssh_tunnel.py): a client and a server process, the local port
    carried over SSH, no parsing. Yields the local port."""
    ssh_port, listen = free_port(), free_port()
    server_ready, client_ready = workdir / "tunnel-server", workdir / "tunnel-client"
    tool = [sys.executable, "-m", "bench.ssh_tunnel"]
    processes = [
        subprocess.Popen([*tool, "server", "--port", str(ssh_port), "--ready", str(server_ready)])
    ]
    try:
        wait_for(server_ready, processes[0])
        processes.append(
            subprocess.Popen(
                [
                    *tool,
                    "client",
                    "--ssh-port",
                    str(ssh_port),
                    "--listen",
                    str(listen),
                    "--target-port",
                    str(target_port),
                    "--ready",
                    str(client_ready),
                ]
            )
        )
        wait_for(client_ready, processes[1])
        yield listen
    finally:
        for process in reversed(processes):
            process.kill()
            process.wait(10)


def wait_for(ready: Path, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("bench: the SSH tunnel did not start")
        time.sleep(0.05)


def pgbench(
    port: int, user: str, password: str, db: str, seconds: int, clients: int, logdir: Path
) -> tuple[float, float, list[float]]:
    """(TPS, average latency ms, per-transaction latencies ms) of one pgbench -S run."""
    for old in logdir.glob("pgbench_log.*"):
        old.unlink()
    result = subprocess.run(
        ["pgbench", "-S", "-n", "-T", str(seconds), "-c", str(clients), "-j", str(clients),
         "-h", "127.0.0.1", "-p", str(port), "-U", user, "--log", "--log-prefix",
         str(logdir / "pgbench_log"), db],
        env={"PGPASSWORD": password, "PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=seconds + 120,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"bench: pgbench failed on port {port}:\n{result.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+) ms", result.stdout).group(1))  # type: ignore[union-attr]
    samples = []
    for log in logdir.glob("pgbench_log.*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                samples.append(int(fields[2]) / 1000)  # microseconds
    return tps, latency, samples


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("pgbench"):
        raise SystemExit("bench: pgbench is not installed (postgresql-contrib)")
    password = "pw-" + secrets.token_hex(8)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hoop-bench-proxy-") as tmp:
        workdir = Path(tmp)
        secret = workdir / "pg-secret"
        secret.write_text(password)
        with bench_database(password, args.scale) as db:
            targets = f"""
[[targets]]
name = "pg"
type = "postgres"
address = "127.0.0.1:5432"
database = "{db}"
user = "{db}_app"
credential = "file:{secret}"
tls = "disable"
allowed_groups = ["dba"]
policy = "bench"

[policies.bench]
default = "allow"
on_unknown = "deny"
"""
            config = dev_config(
                workdir / "broker-data", port=free_port(), dev_port=free_port(), targets=targets
            )
            broker = start_broker(workdir, config)
            try:
                user = User(workdir / "alice")
                login = user.login(broker)
                if login.returncode != 0:
                    raise SystemExit(f"bench: hoopctl login failed:\n{login.stderr}")
                proxy = user.spawn("proxy", "pg", "--output", "json", timeout=60)
                proxy.expect(r'\{"target": "pg".*\}')
                info = json.loads(proxy.match.group(0))
                ways: dict[str, tuple[int, str, str]] = {
                    "direct": (5432, f"{db}_app", password),
                    "forwarder": (0, f"{db}_app", password),
                    "ssh tunnel": (0, f"{db}_app", password),
                    "proxy": (int(info["port"]), str(info["user"]), str(info["password"])),
                }
                results: dict[str, list[tuple[float, float, list[float]]]] = {w: [] for w in ways}
                with Forwarder(5432) as forwarder, ssh_tunnel(5432, workdir) as tunnel:
                    ways["forwarder"] = (forwarder.port, f"{db}_app", password)
                    ways["ssh tunnel"] = (tunnel, f"{db}_app", password)
                    for _ in range(args.rounds):
                        for way, (port, login_user, secret_word) in ways.items():
                            results[way].append(
                                pgbench(port, login_user, secret_word, db, args.seconds,
                                        args.clients, workdir)
                            )  # fmt: skip
                proxy.sendintr()
                proxy.expect(pexpect.EOF)
            finally:
                broker.stop()
    print(
        f"pgbench -S, {args.clients} clients, {args.seconds} s x {args.rounds} rounds, "
        f"scale {args.scale}"
    )
    print(f"{'way':<11} {'tps':>10} {'avg ms':>8} {'p50 ms':>8} {'p99 ms':>8}")
    summary: dict[str, tuple[float, float, float]] = {}
    for way, runs in results.items():
        tps = sum(r[0] for r in runs) / len(runs)
        samples = [s for r in runs for s in r[2]]
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        avg = sum(r[1] for r in runs) / len(runs)
        summary[way] = (tps, p50, p99)
        print(f"{way:<11} {tps:>10.0f} {avg:>8.2f} {p50:>8.2f} {p99:>8.2f}")
    direct, plain, proxied = summary["direct"], summary["forwarder"], summary["proxy"]
    tunnel = summary["ssh tunnel"]
    print(f"proxy / direct TPS:      {proxied[0] / direct[0]:.2f}  (goal >= 0.25)")
    print(f"proxy / forwarder TPS:   {proxied[0] / plain[0]:.2f}  (goal >= 0.6)")
    print(f"forwarder / direct TPS:  {plain[0] / direct[0]:.2f}")
    print(f"ssh tunnel / direct TPS: {tunnel[0] / direct[0]:.2f}  (the SSH hop alone, no parsing)")
    print(f"ssh tunnel / forwarder:  {tunnel[0] / plain[0]:.2f}")
    print(f"proxy / ssh tunnel TPS:  {proxied[0] / tunnel[0]:.2f}")
    print(
        f"latency the proxy adds: p50 {proxied[1] - direct[1]:+.2f} ms, "
        f"p99 {proxied[2] - direct[2]:+.2f} ms"
    )
    print(f"({time.monotonic() - started:.1f} s in all)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
