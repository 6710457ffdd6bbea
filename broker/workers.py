"""`hoop-broker serve --workers N`: one supervisor and N worker processes on one port.

The supervisor reserves the port (a socket bound with SO_REUSEPORT that never listens), runs
the dev issuer and the audit sinks, closes what an earlier run left open, then starts N
workers. Each worker is `hoop-broker serve` again, with HOOP_WORKER set: it listens on the
same port with SO_REUSEPORT, so the kernel spreads new connections among the workers, and a
session lives in the one worker that accepted it. What they share is in the store: sessions,
approvals (their change feed wakes waiters and watchers in every worker), the audit chain
(the supervisor's sinks and signed head follow it).

A worker that dies is replaced; its open sessions are marked interrupted, their recordings
sealed, and each gets its session.end. On SIGTERM every worker drains its own sessions (each
writes its session.end), then the supervisor hands the last events to the sinks and closes
the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from broker.app import DEV_ISSUER_ENV, DRAIN_SECONDS, Broker, split_host_port, stop_on_signals
from broker.config import BrokerConfig
from broker.errors import BrokerError
from broker.store import process_owner

log = logging.getLogger("hoop.broker.workers")

WORKER_ENV = "HOOP_WORKER"  # set in a worker's environment: its number (1..N)
READY_LINE = b"hoop-worker-ready\n"
START_SECONDS = 60.0  # how long a worker may take to start listening
STOP_GRACE = DRAIN_SECONDS + 10.0  # a worker still running after this is killed
# A worker dying more often than this stops the broker instead of restarting it forever.
RESTARTS_ALLOWED = 5
RESTART_WINDOW = 60.0

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A worker gets SIGTERM when its supervisor dies (Linux): no worker outlives it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def say_ready() -> None:
    """In a worker: tell the supervisor it listens, then let go of the pipe that said so (the
    programs its sessions run must not hold it open)."""
    sys.stdout.buffer.write(READY_LINE)
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to HOST:PORT with SO_REUSEPORT that never listens: it holds the port
    (and picks it, for port 0) while workers come and go."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reservation = socket.socket(family, socket.SOCK_STREAM)
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((host, port))
    except OSError as exc:
        reservation.close()
        raise BrokerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return reservation


@dataclass
class WorkerPool:
    broker: Broker
    count: int
    command: list[str]
    listen: str
    stopping: bool = False
    processes: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    watchers: set[asyncio.Task[None]] = field(default_factory=set)
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: list[float] = field(default_factory=list)

    async def start_all(self) -> None:
        await asyncio.gather(*(self.start(number) for number in range(1, self.count + 1)))

    async def start(self, number: int) -> None:
        env = {**os.environ, WORKER_ENV: str(number)}
        if self.broker.dev_mode:
            env[DEV_ISSUER_ENV] = self.broker.oidc.issuer
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from broker.cli import main; main()",
            *self.command,
            "--listen",
            self.listen,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,  # the ready line; stderr is the broker's own
            env=env,
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_SECONDS)
        except TimeoutError:
            line = b""
        if line != READY_LINE:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            status = await process.wait()
            raise BrokerError(f"broker worker {number} did not start (exit status {status})")
        self.processes[number] = process
        task = asyncio.create_task(self._watch(number, process), name=f"worker-{number}")
        self.watchers.add(task)
        task.add_done_callback(self.watchers.discard)

    async def _watch(self, number: int, process: asyncio.subprocess.Process) -> None:
        status = await process.wait()
        if self.stopping:
            return
        await self._closed_behind(process.pid)
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
        if len(self.restarts) > RESTARTS_ALLOWED:
            log.critical(
                "broker worker %d (pid %d) exited with status %s; workers died %d times in "
                "%ds: stopping",
                number, process.pid, status, len(self.restarts), RESTART_WINDOW,
            )  # fmt: skip
            self.failed.set()
            return
        print(
            f"hoop-broker: worker {number} (pid {process.pid}) exited with status {status}; "
            "its open sessions are marked interrupted; starting a new worker",
            file=sys.stderr,
            flush=True,
        )
        try:
            await self.start(number)
        except BrokerError as exc:
            log.critical("%s", exc)
            self.failed.set()

    async def _closed_behind(self, pid: int) -> None:
        """The sessions a dead worker left open: interrupted, sealed, with their session.end."""
        try:
            await self.broker.close_interrupted_sessions(
                process_owner(pid, node=self.broker.store.node)
            )
        except Exception:
            log.exception("closing the sessions of worker pid %d failed", pid)

    async def stop(self) -> None:
        """SIGTERM every worker; each drains its sessions. One still running after STOP_GRACE
        is killed, and its sessions are closed here."""
        self.stopping = True
        running = {n: p for n, p in self.processes.items() if p.returncode is None}
        for process in running.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in running.values():
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            if process.returncode != 0:
                await self._closed_behind(process.pid)
        for task in list(self.watchers):
            task.cancel()


async def supervise(
    config: BrokerConfig,
    *,
    dev_mode: bool,
    listen: str | None,
    workers: int,
    command: list[str],
) -> None:
    """Run the broker as a supervisor of WORKERS processes until SIGTERM or Ctrl-C.

    COMMAND: the `serve` arguments a worker is started with (config, --dev, log level)."""
    broker = Broker(config, dev_mode=dev_mode, role="supervisor")
    reservation: socket.socket | None = None
    pool: WorkerPool | None = None
    stop = stop_on_signals()
    try:
        await broker.start()
        host, port = split_host_port(listen or config.broker.listen)
        reservation = reserve_port(host, port)
        port = reservation.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        pool = WorkerPool(broker, workers, command, f"{url_host}:{port}")
        await pool.start_all()
        print(
            f"hoop-broker listening on {host}:{port} (host key {broker.keys.host_fingerprint}) "
            f"with {workers} workers",
            file=sys.stderr,
            flush=True,
        )
        ended = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(pool.failed.wait())
        await asyncio.wait({ended, failed}, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        failed.cancel()
        if pool.failed.is_set():
            raise BrokerError("broker workers keep dying; stopped (see the errors above)")
    finally:
        if pool is not None:
            await pool.stop()
        if reservation is not None:
            reservation.close()
        await broker.stop()
