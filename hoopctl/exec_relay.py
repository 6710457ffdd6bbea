"""The client half of `hoopctl exec`: the session on the broker, its output relayed.

While the broker holds the command for approval, its "waiting for approval" lines become one
live line on a terminal, shown under hoopctl's own prefix; Ctrl-C while waiting cancels the
request. After that, the command's output is passed on untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys

import asyncssh

from hoopctl.broker_lines import BROKER_PREFIXES, as_ours
from hoopctl.errors import (
    EXIT_APPROVAL,
    ApiCallError,
    BrokerUnreachable,
    HoopError,
)
from hoopctl.escape import escape
from hoopctl.live_line import LiveLine, keep_ticking
from hoopctl.transport import ApiClient

WAITING = re.compile(
    r"^hoop: waiting for approval (\S+) from (.*?)(?: \((?:(\d+):)?(\d+):(\d\d) left\))?$"
)
# Lines after which the session no longer waits (the last: --no-wait, or --wait ran out).
ENDED = re.compile(
    r"^hoop: (approved by|denied by|request \S+ expired|request \S+ cancelled"
    r"|approval required(?: \(.*\))?: request \S+ waits for )"
)

# ---------------------------------------------------------------------------
# `hoopctl exec`: the session, with the approval phase shown and Ctrl-C cancelling
# ---------------------------------------------------------------------------


def _parse_left(match: re.Match[str]) -> float | None:
    if match.group(5) is None:
        return None
    hours = int(match.group(3) or 0)
    return hours * 3600 + int(match.group(4)) * 60 + int(match.group(5))


class _ExecRelay:
    """Relays an exec session's output; reads the broker's `hoop:` lines until the command runs
    and shows them as hoopctl's own (`hoopctl: `)."""

    def __init__(self, live: LiveLine) -> None:
        self.live = live
        self.request_id: str | None = None  # the request we are waiting on, while we wait
        self._phase = True  # before the command's own output: broker lines, one at a time
        self._pending = b""

    def end_phase(self) -> None:
        if self._phase:
            self._phase = False
            self.request_id = None
            if self._pending:
                self.live.raw(self._pending)
                self._pending = b""
            self.live.finish()

    def broker_line(self, text: str) -> None:
        waiting = WAITING.match(text)
        if waiting:
            self.request_id = waiting.group(1)
            self.live.waiting(
                f"hoopctl: waiting for approval {escape(waiting.group(1))} "
                f"from {escape(waiting.group(2))}",
                _parse_left(waiting),
            )
            return
        if ENDED.match(text):
            self.request_id = None  # decided, expired, or no longer waited for
        self.live.line(escape(as_ours(text)))

    def stderr(self, data: bytes) -> None:
        if not self._phase:
            self.live.raw(data)
            return
        self._pending += data
        while self._phase and b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            text = line.decode("utf-8", "replace").rstrip("\r")
            if text.startswith(BROKER_PREFIXES):
                self.broker_line(text)
            else:
                # The command's own stderr: from here on, relay bytes untouched.
                rest, self._pending = line + b"\n" + self._pending, b""
                self.end_phase()
                self.live.raw(rest)

    def close(self) -> None:
        if self._pending:
            text = self._pending.decode("utf-8", "replace")
            self._pending = b""
            if self._phase and text.startswith(BROKER_PREFIXES):
                self.broker_line(text)
            else:
                self.live.raw(text.encode("utf-8", "replace"))
        self.live.finish()


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        view = view[written:]


async def _cancel_request(conn: asyncssh.SSHClientConnection, request_id: str) -> bool:
    """Ask the broker to cancel REQUEST_ID; True when it is cancelled (or already was)."""
    api = ApiClient(conn)
    try:
        record = await asyncio.wait_for(api.call("approvals.cancel", {"id": request_id}), 5)
    except ApiCallError as exc:
        # Closing the channel may have cancelled it already.
        return exc.code == "conflict" and "cancelled" in str(exc)
    except (HoopError, TimeoutError):
        return False
    return isinstance(record, dict) and record.get("state") == "cancelled"


async def run_exec(conn: asyncssh.SSHClientConnection, command: str, stdin_data: bytes) -> int:
    """Run an `exec` session command; return the exit status hoopctl should exit with.

    While the broker holds the command for approval its `hoop: waiting for approval …` lines
    become one live line on a terminal. Ctrl-C while waiting closes the channel (which cancels
    the request at the broker), confirms the cancellation and returns 4; Ctrl-C at any other
    time closes the channel and returns 130.
    """
    try:
        process = await conn.create_process(command, encoding=None)
    except asyncssh.Error as exc:
        raise BrokerUnreachable(f"the broker refused the request: {exc.reason}") from None
    # The broker may answer and close before reading any input (--no-wait, a refusal).
    with contextlib.suppress(OSError, asyncssh.Error):
        process.stdin.write(stdin_data)
        process.stdin.write_eof()
    relay = _ExecRelay(LiveLine(2))
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    async def copy_stdout() -> None:
        while data := await process.stdout.read(65536):
            relay.end_phase()
            await _write_all(1, data)

    async def copy_stderr() -> None:
        while data := await process.stderr.read(65536):
            relay.stderr(data)
        relay.close()

    relays = asyncio.gather(copy_stdout(), copy_stderr())
    ticker = asyncio.ensure_future(keep_ticking(relay.live))
    stop = asyncio.ensure_future(interrupted.wait())
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        await asyncio.wait({relays, stop}, return_when=asyncio.FIRST_COMPLETED)
        if interrupted.is_set():
            waiting_on = relay.request_id
            relay.live.finish()
            process.close()
            relays.cancel()
            with contextlib.suppress(BaseException):
                await relays
            if waiting_on is None:
                print("hoopctl: interrupted", file=sys.stderr)
                return 130
            if await _cancel_request(conn, waiting_on):
                print(f"hoopctl: cancelled approval request {escape(waiting_on)}", file=sys.stderr)
            else:
                print(
                    f"hoopctl: stopped waiting for approval request {escape(waiting_on)}; "
                    "the broker cancels it when it notices the closed session",
                    file=sys.stderr,
                )
            return EXIT_APPROVAL
        await relays
        completed = await process.wait(check=False)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for task in (ticker, stop):
            task.cancel()
        relay.live.finish()
    if completed.exit_status is not None and completed.exit_status >= 0:
        return completed.exit_status
    return 255
