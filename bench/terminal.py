"""Terminal-session benchmark: a shell on a real sshd, straight and through the broker.

    cd /work/main && .venv/bin/python -m bench.terminal [--rounds 200] [--max-seconds 180]
        [--idle-sessions 100] [--megabytes 50] [--pace 0.03]

Starts a private OpenSSH sshd (tests.sshd_harness) and `hoop-broker serve --dev` with an `ssh`
target "web" pointing at it, logs a user in with the real `hoopctl login` (tests.helpers.User),
then compares two ways to the same shell:

* direct: asyncssh straight to the sshd (its client key, its host key pinned);
* broker: asyncssh to the broker as the logged-in user, with the key and certificate from
  hoopctl's CredentialStore/Profile (what `hoopctl connect` does), command `connect web`.

Both run the same remote shell: the direct path runs the very command the broker's ssh target
runs (bash with the broker's rcfile, so the prompt carries the same OSC 133 marks). Measured:

1. keystroke echo: at the prompt, one printable character until its echo arrives, then a
   backspace until the erase echo; --rounds rounds, the two paths interleaved, --pace seconds
   of quiet before each key (a typist's gap: the broker's line editor has then redrawn the
   previous key; --pace 0 sends each key as soon as the previous echo arrived).
2. Enter round trip: a no-op command (`:`) from Enter until the next prompt.
3. broker memory: VmRSS of the broker process before and after --idle-sessions more sessions
   (one connection each, like `hoopctl connect`) sit at their prompt, and after they close.
4. bulk output: `head -c <MB>M /dev/zero | tr '\\0' x`, from Enter until the next prompt;
   meanwhile, during the broker run, a second broker session types one key every 0.2 s
   (echo latency of a bystander), and the broker's VmHWM shows how much the flood buffered.

Every wait has a time limit and the measuring phases share --max-seconds (set-up not counted);
a phase that runs out of time reports what it got. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.login import isolate
from tests.helpers import BrokerProcess, User, ensure_os_users
from tests.sshd_harness import SshdServer, sshd_available, start_sshd
from tests.terminal_helpers import start_terminal_broker

TERM = "xterm-256color"
COLS, ROWS = 120, 40
CHUNK = 65536
# The screen grade's shell prompt ("$ " then the mark) and the strict grade's prompt drawn by
# the broker's line editor ("$", the mark, a no-break space).
PROMPT = re.compile(rb"[$#] ?\x1b\]133;B\x07")
ECHO_CHAR = b"x"
BACKSPACE = b"\x7f"
ENTER = b"\r"
OPEN_TIMEOUT = 30.0  # one session: connect, authenticate, start the shell, first prompt
STEP_TIMEOUT = 10.0  # one echo or one short command
OPEN_BATCH = 10  # idle sessions opened at once
ENTER_ROUNDS_MAX = 50
MiB = 1 << 20
MAX_CHUNKS = 10_000  # output chunks one echo or prompt wait may read

# Targets from the issue.
ECHO_TARGET_MS = 1.0
THROUGHPUT_TARGET_RATIO = 0.5


def web_target(sshd: SshdServer) -> str:
    """An `ssh` target "web" on SSHD, the broker holding the harness's client key."""
    return f"""
[[targets]]
name = "web"
type = "ssh"
address = "{sshd.host}:{sshd.port}"
user = "{sshd.user}"
credential = "file:{sshd.client_key_path}"
known_host = "{sshd.host_key_line}"
allowed_groups = ["engineers"]
policy = "shell"
"""


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of PID in bytes, from /proc/PID/status."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


class Shell:
    """One PTY session: the output stream read chunk by chunk, each wait bounded in time."""

    def __init__(self, conn: Any, process: Any) -> None:
        self.conn = conn
        self.process = process
        self._stderr = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        # The broker's "[hoop] session ... started" lines: read so the channel never stalls.
        while await self.process.stderr.read(CHUNK):
            pass

    async def read(self) -> bytes:
        data: bytes = await self.process.stdout.read(CHUNK)
        if not data:
            raise RuntimeError("the session ended unexpectedly")
        return data

    async def wait_for_prompt(self, timeout: float) -> bytes:
        seen = b""
        async with asyncio.timeout(timeout):
            for _ in range(MAX_CHUNKS):
                if PROMPT.search(seen):
                    return seen
                seen += await self.read()
        raise RuntimeError(f"no prompt after {MAX_CHUNKS} chunks of output")

    async def settle(self, quiet: float = 0.3, limit: int = 50) -> None:
        """Read until nothing more arrives for QUIET seconds (at most LIMIT chunks)."""
        for _ in range(limit):
            try:
                async with asyncio.timeout(quiet):
                    await self.read()
            except TimeoutError:
                return

    async def time_echo(self, key: bytes, expected: bytes) -> float:
        """Seconds from sending KEY until output containing EXPECTED arrives."""
        seen = b""
        async with asyncio.timeout(STEP_TIMEOUT):
            start = time.perf_counter()
            self.process.stdin.write(key)
            for _ in range(MAX_CHUNKS):
                if expected in seen:
                    return time.perf_counter() - start
                seen += await self.read()
        raise RuntimeError(f"no echo of {key!r} after {MAX_CHUNKS} chunks of output")

    async def close(self) -> None:
        self.process.close()
        self.conn.close()
        self._stderr.cancel()
        try:
            async with asyncio.timeout(5):
                await self.conn.wait_closed()
        except TimeoutError:
            pass


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    throughput: dict[str, tuple[int, float, bool]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, path: str, value: float) -> None:
        self.samples.setdefault(metric, {}).setdefault(path, []).append(value)


ECHO = "keystroke echo"
ERASE = "backspace erase echo"
ENTER_TRIP = "Enter to next prompt (`:`)"
PROBE = "echo, 2nd session, during bulk"
PROBE_EVERY = 0.2
PROBE_MAX = 500
PATHS = ("direct", "broker")


Opener = Callable[[], Awaitable[Shell]]


async def shell_openers(sshd: SshdServer, broker: BrokerProcess) -> tuple[Opener, Opener]:
    """(open_direct, open_broker): each opens one PTY shell and waits for its prompt, straight
    to SSHD with its client key, or through BROKER (`connect web`) as the user this process
    logged in (bench.login.isolate, then `hoopctl login`)."""
    # Imported only now, so hoopctl and keyring see the isolated user.
    import asyncssh

    from broker.protocols.shell_integration import bash_rcfile, remote_bash_command
    from hoopctl.address import BrokerAddress
    from hoopctl.credentials import CredentialStore
    from hoopctl.session import current_profile
    from hoopctl.transport import open_connection

    address = BrokerAddress.parse(broker.address)
    store = CredentialStore(address)
    profile = await current_profile(store)
    client_keys = [(store.private_key(), profile.cert())]
    shell_command = remote_bash_command(bash_rcfile(startup="login"))
    sshd_host_key = asyncssh.import_public_key(sshd.host_key_line)

    async def start_shell(conn: Any, command: str) -> Shell:
        try:
            process = await conn.create_process(
                command, term_type=TERM, term_size=(COLS, ROWS), encoding=None
            )
        except BaseException:
            conn.close()
            raise
        shell = Shell(conn, process)
        try:
            await shell.wait_for_prompt(OPEN_TIMEOUT)
        except BaseException:
            await shell.close()
            raise
        return shell

    async def open_direct() -> Shell:
        conn = await asyncssh.connect(
            sshd.host,
            sshd.port,
            username=sshd.user,
            client_keys=[str(sshd.client_key_path)],
            known_hosts=([sshd_host_key], [], []),
            agent_path=None,
            config=None,
            password_auth=False,
            kbdint_auth=False,
            connect_timeout=OPEN_TIMEOUT,
        )
        return await start_shell(conn, shell_command)

    async def open_broker() -> Shell:
        conn = await open_connection(address, username=profile.user, client_keys=client_keys)
        return await start_shell(conn, "connect web")

    return open_direct, open_broker


async def bench(args: argparse.Namespace, workdir: Path) -> Results:
    home = workdir / "user"
    isolate(home)  # this process and the `hoopctl login` subprocess share one user
    results = Results()
    sshd = start_sshd(workdir / "sshd")
    broker: BrokerProcess | None = None
    try:
        broker = start_terminal_broker(workdir, web_target(sshd))
        login = User(home).login(broker)
        if login.returncode != 0:
            raise SystemExit(f"bench: hoopctl login failed:\n{login.stderr}")
        open_direct, open_broker = await shell_openers(sshd, broker)
        opener = {"direct": open_direct, "broker": open_broker}
        shells: dict[str, Shell] = {}
        assert broker.process is not None
        pid = broker.process.pid
        try:
            for path in PATHS:
                shells[path] = await opener[path]()
                await shells[path].settle()
            deadline = time.monotonic() + args.max_seconds
            await keystrokes(shells, results, args.rounds, deadline, args.pace)
            await enter_trips(shells, results, min(args.rounds, ENTER_ROUNDS_MAX), deadline)
            await idle_memory(open_broker, pid, results, args.idle_sessions, deadline)
            # A second broker session, typing while the first one floods the broker.
            shells["probe"] = await open_broker()
            await shells["probe"].settle()
            results.memory["pre_bulk"] = proc_status(pid)["VmRSS"] / MiB
            for path in PATHS:
                probe = shells["probe"] if path == "broker" else None
                await bulk_output(path, shells[path], results, args.megabytes, deadline, probe)
            results.memory["peak"] = proc_status(pid)["VmHWM"] / MiB
        finally:
            for shell in shells.values():
                await shell.close()
        return results
    finally:
        if broker is not None:
            broker.stop()
        sshd.stop()


async def keystrokes(
    shells: dict[str, Shell], results: Results, rounds: int, deadline: float, pace: float = 0.0
) -> None:
    """PACE: seconds of quiet before each timed keystroke, as between a typist's keys; the
    broker's line editor then has redrawn the previous key, as it has for a person typing."""
    # Untimed warm-up: a few rounds on each path.
    for _ in range(5):
        for shell in shells.values():
            await shell.time_echo(ECHO_CHAR, ECHO_CHAR)
            await shell.time_echo(BACKSPACE, b"\x08")
    for done in range(rounds):
        if time.monotonic() >= deadline:
            results.notes.append(f"keystroke echo: time budget spent after {done} rounds")
            break
        for path in PATHS:
            shell = shells[path]
            await asyncio.sleep(pace)
            results.add(ECHO, path, await shell.time_echo(ECHO_CHAR, ECHO_CHAR))
            await asyncio.sleep(pace)
            results.add(ERASE, path, await shell.time_echo(BACKSPACE, b"\x08"))


async def enter_trips(
    shells: dict[str, Shell], results: Results, rounds: int, deadline: float
) -> None:
    for done in range(rounds):
        if time.monotonic() >= deadline:
            results.notes.append(f"Enter round trip: time budget spent after {done} rounds")
            break
        for path in PATHS:
            shell = shells[path]
            await shell.time_echo(b":", b":")
            async with asyncio.timeout(STEP_TIMEOUT):
                start = time.perf_counter()
                shell.process.stdin.write(ENTER)
                await shell.wait_for_prompt(STEP_TIMEOUT)
                results.add(ENTER_TRIP, path, time.perf_counter() - start)


async def idle_memory(
    open_broker: Any, pid: int, results: Results, count: int, deadline: float
) -> None:
    await asyncio.sleep(1)
    before = proc_status(pid)["VmRSS"]
    idle: list[Shell] = []
    try:
        while len(idle) < count:
            if time.monotonic() >= deadline:
                results.notes.append(f"idle sessions: time budget spent after {len(idle)}")
                break
            batch = min(OPEN_BATCH, count - len(idle))
            opened = await asyncio.gather(
                *(open_broker() for _ in range(batch)), return_exceptions=True
            )
            for item in opened:
                if isinstance(item, BaseException):
                    results.notes.append(f"idle sessions: one failed to open: {item!r}")
                else:
                    idle.append(item)
            if len(idle) < count and all(isinstance(i, BaseException) for i in opened):
                break
        await asyncio.sleep(2)  # let every session's start-up output and flush timers run
        after = proc_status(pid)["VmRSS"]
    finally:
        await asyncio.gather(*(shell.close() for shell in idle), return_exceptions=True)
    await asyncio.sleep(3)
    closed = proc_status(pid)["VmRSS"]
    results.memory.update(
        sessions=len(idle), before=before / MiB, after=after / MiB, closed=closed / MiB
    )


async def echo_probe(shell: Shell, results: Results, stop: asyncio.Event) -> None:
    """Keystroke echo on another session every PROBE_EVERY seconds until STOP is set."""
    for _ in range(PROBE_MAX):
        try:
            async with asyncio.timeout(PROBE_EVERY):
                await stop.wait()
            return
        except TimeoutError:
            pass
        results.add(PROBE, "broker", await shell.time_echo(ECHO_CHAR, ECHO_CHAR))
        await shell.time_echo(BACKSPACE, b"\x08")


async def bulk_output(
    path: str,
    shell: Shell,
    results: Results,
    megabytes: int,
    deadline: float,
    probe: Shell | None = None,
) -> None:
    command = f"head -c {megabytes}M /dev/zero | tr '\\0' x".encode()
    payload = megabytes * MiB
    await shell.time_echo(command, command[-10:])
    await shell.settle(quiet=0.2)
    received = 0
    tail = b""
    cut_off = False
    stop = asyncio.Event()
    prober = asyncio.create_task(echo_probe(probe, results, stop)) if probe else None
    start = time.perf_counter()
    shell.process.stdin.write(ENTER)
    try:
        async with asyncio.timeout_at(
            asyncio.get_running_loop().time() + max(deadline - time.monotonic(), 1.0)
        ):
            while received < payload or not PROMPT.search(tail):
                data = await shell.read()
                received += data.count(b"x")
                tail = (tail + data)[-256:]
    except TimeoutError:
        cut_off = True
    elapsed = time.perf_counter() - start
    stop.set()
    if prober is not None:
        try:
            await prober
        except (TimeoutError, RuntimeError) as exc:
            results.notes.append(f"echo probe during bulk output failed: {exc!r}")
    results.throughput[path] = (min(received, payload), elapsed, cut_off)
    if cut_off:
        results.notes.append(
            f"bulk output ({path}): time budget spent after {received / MiB:.1f} of "
            f"{megabytes} MiB; the rate is for the part received"
        )
        # The session is left with unread output: end it rather than drain it.
        await shell.close()


def render(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("metric", "direct", "broker", "note")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [header, tuple("-" * width for width in widths), *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def table(results: Results, args: argparse.Namespace) -> tuple[str, list[str]]:
    rows: list[tuple[str, str, str, str]] = []

    def stats(metric: str, path: str) -> tuple[float, float, int]:
        values = results.samples.get(metric, {}).get(path, [])
        if not values:
            return math.nan, math.nan, 0
        return statistics.median(values) * 1000, percentile(values, 0.99) * 1000, len(values)

    verdicts: list[str] = []
    for metric in (ECHO, ERASE, ENTER_TRIP):
        (d50, d99, _), (b50, b99, count) = stats(metric, "direct"), stats(metric, "broker")
        rows.append((f"{metric} p50", f"{d50:.3f} ms", f"{b50:.3f} ms", f"+{b50 - d50:.3f} ms"))
        rows.append((f"{metric} p99", f"{d99:.3f} ms", f"{b99:.3f} ms", f"{count} rounds"))
        if metric == ECHO:
            added = b50 - d50
            met = "met" if added < ECHO_TARGET_MS else "NOT met"
            verdicts.append(
                f"target: added echo latency under {ECHO_TARGET_MS:g} ms p50 -- {met} "
                f"(+{added:.3f} ms)"
            )
    probe = results.samples.get(PROBE, {}).get("broker", [])
    if probe:
        for label, fraction in (("p50", 0.5), ("p99", 0.99)):
            value = statistics.median(probe) if fraction == 0.5 else percentile(probe, fraction)
            rows.append(
                (f"{PROBE} {label}", "-", f"{value * 1000:.3f} ms", f"{len(probe)} samples")
            )
    rates: dict[str, float] = {}
    seconds: dict[str, str] = {}
    for path in PATHS:
        if path in results.throughput:
            received, elapsed, cut_off = results.throughput[path]
            rates[path] = received / MiB / elapsed
            seconds[path] = f"{elapsed:.2f} s" + (" (cut off)" if cut_off else "")
    if len(rates) == 2:
        ratio = rates["broker"] / rates["direct"]
        rows.append(
            (
                f"bulk output, {args.megabytes} MiB",
                f"{rates['direct']:.1f} MiB/s",
                f"{rates['broker']:.2f} MiB/s",
                f"broker/direct {ratio:.3f}",
            )
        )
        rows.append(("bulk output, Enter to prompt", seconds["direct"], seconds["broker"], ""))
        met = "met" if ratio >= THROUGHPUT_TARGET_RATIO else "NOT met"
        verdicts.append(
            f"target: throughput at least {THROUGHPUT_TARGET_RATIO:g} of direct ssh -- {met} "
            f"(broker/direct {ratio:.3f})"
        )
    memory = results.memory
    if "sessions" in memory:
        count = int(memory["sessions"])
        added = memory["after"] - memory["before"]
        per = added / count if count else math.nan
        rows.append(
            (
                f"broker RSS, {count} idle sessions",
                "-",
                f"{memory['before']:.1f} -> {memory['after']:.1f} MiB",
                f"+{added:.1f} MiB, {per * 1024:.0f} KiB/session",
            )
        )
        rows.append(
            (
                "broker RSS after they closed",
                "-",
                f"{memory['closed']:.1f} MiB",
                "",
            )
        )
    if "peak" in memory:
        rows.append(
            (
                "broker RSS before bulk -> peak (VmHWM)",
                "-",
                f"{memory['pre_bulk']:.1f} -> {memory['peak']:.1f} MiB",
                f"+{memory['peak'] - memory['pre_bulk']:.1f} MiB",
            )
        )
    return render(rows), verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.terminal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=200, help="keystroke rounds (default 200)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=180,
        help="time budget of the measuring phases, set-up excluded (default 180)",
    )
    parser.add_argument(
        "--idle-sessions", type=int, default=100, help="idle broker sessions (default 100)"
    )
    parser.add_argument(
        "--megabytes", type=int, default=50, help="bulk output size in MiB (default 50)"
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=0.03,
        help="seconds between timed keystrokes, as a fast typist's (default 0.03; 0: back to back)",
    )
    args = parser.parse_args(argv)
    if args.pace < 0:
        parser.error("--pace must not be negative")
    if args.rounds < 1 or args.idle_sessions < 1 or args.megabytes < 1:
        parser.error("--rounds, --idle-sessions and --megabytes must be at least 1")
    if not sshd_available():
        parser.error("OpenSSH sshd is not installed (make system-deps)")
    try:
        ensure_os_users()  # the OS users local targets run as (run_as); make system-deps too
    except RuntimeError as exc:
        parser.error(str(exc))
    print(
        f"hoopctl terminal benchmark: {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; PTY {COLS}x{ROWS}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hoop-bench-") as tmp:
        started = time.monotonic()
        results = asyncio.run(bench(args, Path(tmp)))
        elapsed = time.monotonic() - started
    text, verdicts = table(results, args)
    print(text)
    for note in results.notes:
        print(f"note: {note}")
    for verdict in verdicts:
        print(verdict)
    print(f"({elapsed:.1f} s in all, with sshd and broker start-up and one login)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
