"""Audit sinks benchmark: events per second into the store and into each sink.

    cd /work/main && .venv/bin/python -m bench.audit_sinks [--events 20000] [--max-seconds 300]

In one process, with the broker's own classes (broker.audit.AuditLog, broker.store.Store, the
sinks of broker/audit/sinks) and real endpoints on loopback:

- store only: the hash-chained append to SQLite (WAL) that every event pays;
- stdout (to /dev/null), file (JSON lines, rotated at 100 MiB), syslog over UDP and over TCP (a
  listener socket in a thread, counting messages), webhook (an aiohttp server in a thread,
  answering 200; batches of 100);
- webhook backlog: the same endpoint down while --events events are spooled, then up: how
  fast the spool drains.

Each run emits --events `command` events one after another (`await audit.emit(...)`, as a
session does) with a fresh store in a temporary directory. "emit" is the rate the emitting
side sees (the store append included, the sink's work not); "delivered" is the rate until the
last event reached the sink's endpoint (or file). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from broker.audit.config import SinkConfig
from broker.audit.events import AuditEvent, AuditLog
from broker.audit.sinks import Sink, build_sink
from broker.store import Store


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n


def udp_listener(counter: Counter) -> tuple[int, Callable[[], None]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                sock.recvfrom(65536)
            except OSError:
                return
            counter.add(1)

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1], sock.close


def tcp_listener(counter: Counter) -> tuple[int, Callable[[], None]]:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()

    def read(conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while chunk := conn.recv(1 << 20):
                buffer += chunk
                while True:
                    length, space, rest = buffer.partition(b" ")
                    if not space or len(rest) < int(length):
                        break
                    counter.add(1)
                    buffer = rest[int(length) :]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=read, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], server.close


class Webhook:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        events = await request.json()
        self.counter.add(len(events))
        return web.Response(text="ok")

    async def _up(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _down(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._up(), self.loop).result(10)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self._down(), self.loop).result(10)


async def run(
    label: str,
    events: int,
    make_sink: Callable[[Path], Sink | None],
    delivered: Callable[[], int],
    *,
    before: Callable[[], None] | None = None,
    after_emit: Callable[[], None] | None = None,
    deadline: float,
) -> tuple[str, float, float | None, str]:
    with tempfile.TemporaryDirectory(prefix="hoop-bench-audit-") as tmp:
        data_dir = Path(tmp)
        store = await Store.open(data_dir)
        sink = make_sink(data_dir)
        audit = AuditLog(store, stdout=False, sinks=[sink] if sink else [])
        await audit.start()
        if before:
            before()
        start = time.perf_counter()
        for n in range(events):
            await audit.emit(
                AuditEvent(
                    type="command",
                    actor="alice",
                    groups=("engineers",),
                    target="web-1",
                    session="20261123-0123456789ab",
                    remote="10.0.0.7:50022",
                    details={"command": f"ls -la /srv/app/{n}", "decision": "allow", "rule": None},
                )
            )
        emitted = time.perf_counter() - start
        if after_emit:
            after_emit()
            start = time.perf_counter()
        done: float | None = None
        while time.perf_counter() < deadline:
            if delivered() >= events:
                done = time.perf_counter() - start
                break
            await asyncio.sleep(0.005)
        note = "" if done is not None else f"{delivered()} of {events} by the deadline"
        if sink is not None:
            health = sink.health()
            if health.dropped:
                note = f"{health.dropped} dropped ({health.message})"
        await audit.close()
        await store.close()
    return label, events / emitted, (events / done if done else None), note


def file_count(path_holder: list[Path]) -> Callable[[], int]:
    def count() -> int:
        if not path_holder or not path_holder[0].exists():
            return 0
        with path_holder[0].open("rb") as file:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))

    return count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    deadline = time.perf_counter() + args.max_seconds
    n = args.events
    results = []

    results.append(await run("store only", n, lambda d: None, lambda: n, deadline=deadline))

    devnull = open(os.devnull, "w")  # closed at the end
    stdout_sink = SinkConfig(type="stdout")
    results.append(
        await run(
            "stdout (/dev/null)",
            n,
            lambda d: build_sink(stdout_sink, data_dir=d, stream=devnull),
            lambda: n,
            deadline=deadline,
        )
    )

    holder: list[Path] = []

    def make_file(d: Path) -> Sink:
        holder[:] = [d / "audit.jsonl"]
        return build_sink(SinkConfig(type="file", path=Path("audit.jsonl")), data_dir=d)

    results.append(await run("file", n, make_file, file_count(holder), deadline=deadline))

    for transport, listen in (("udp", udp_listener), ("tcp", tcp_listener)):
        counter = Counter()
        port, close = listen(counter)
        config = SinkConfig(type="syslog", address=f"127.0.0.1:{port}", transport=transport)
        results.append(
            await run(
                f"syslog {transport}",
                n,
                lambda d, c=config: build_sink(c, data_dir=d),
                lambda c=counter: c.count,
                deadline=deadline,
            )
        )
        close()

    counter = Counter()
    hook = Webhook(counter)
    hook.up()
    webhook = SinkConfig(type="webhook", url=f"http://127.0.0.1:{hook.port}/")
    results.append(
        await run(
            "webhook (batches of 100)",
            n,
            lambda d: build_sink(webhook, data_dir=d),
            lambda: counter.count,
            deadline=deadline,
        )
    )
    hook.down()
    backlog = Counter()
    hook.counter = backlog
    retry = SinkConfig(
        type="webhook", url=f"http://127.0.0.1:{hook.port}/", retry_initial=0.05, retry_max=0.05
    )
    results.append(
        await run(
            "webhook backlog (spooled, then drained)",
            n,
            lambda d: build_sink(retry, data_dir=d),
            lambda: backlog.count,
            after_emit=hook.up,
            deadline=deadline,
        )
    )
    hook.down()
    devnull.close()

    print(
        f"{n} events per run; {os.cpu_count()} cores, CPython {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )
    print()
    print("| sink | emit | delivered | note |")
    print("| --- | ---: | ---: | --- |")
    for label, emit_rate, delivered_rate, note in results:
        shown = f"{delivered_rate:,.0f}/s" if delivered_rate else "-"
        print(f"| {label} | {emit_rate:,.0f}/s | {shown} | {note} |")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
