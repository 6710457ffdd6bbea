"""The client end of an interactive session: the local terminal in raw mode, relayed over SSH."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty

import asyncssh

from hoopctl.broker_lines import BrokerLines
from hoopctl.errors import BrokerUnreachable

_CHUNK = 65536


def _terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return size.columns or 80, size.lines or 24


async def _copy_out(
    stream: asyncssh.SSHReader[bytes], fd: int, broker_lines: BrokerLines | None = None
) -> None:
    """Copy STREAM to FD; with BROKER_LINES, the broker's lines before the session's output
    are shown under hoopctl's prefix (hoopctl.broker_lines)."""
    gone = False  # the terminal went away (EIO after a hang-up): read on, show nothing
    ended = False
    while not ended:
        data = await stream.read(_CHUNK)
        ended = not data
        if broker_lines is not None:
            # A line may be held back until its end arrives: b"" here is not the end.
            data = broker_lines.close() if ended else broker_lines.feed(data)
        view = memoryview(data)
        while view and not gone:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            except OSError:
                gone = True
                break
            view = view[written:]


async def _feed_from_file(fd: int, process: asyncssh.SSHClientProcess[bytes]) -> None:
    while data := await asyncio.to_thread(os.read, fd, _CHUNK):
        process.stdin.write(data)
    with contextlib.suppress(OSError, asyncssh.Error):
        process.stdin.write_eof()


async def run_session(conn: asyncssh.SSHClientConnection, command: str) -> int:
    """Run COMMAND on the broker with a PTY; return the remote exit status."""
    stdin_fd, stdout_fd, stderr_fd = 0, 1, 2
    interactive = os.isatty(stdin_fd)
    cols, rows = _terminal_size(stdout_fd if os.isatty(stdout_fd) else stdin_fd)
    term = os.environ.get("TERM") or "xterm-256color"
    try:
        # Like ssh: a PTY only when the input is a terminal, so piped input is a script.
        process = await conn.create_process(
            command,
            term_type=term if interactive else None,
            term_size=(cols, rows) if interactive else None,
            encoding=None,
        )
    except asyncssh.Error as exc:
        raise BrokerUnreachable(f"the broker refused the session: {exc.reason}") from None
    loop = asyncio.get_running_loop()
    saved = termios.tcgetattr(stdin_fd) if interactive else None
    stdin_open = True
    feeder: asyncio.Future[None] | None = None

    def on_stdin() -> None:
        nonlocal stdin_open
        try:
            data = os.read(stdin_fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            process.stdin.write(data)
            return
        stdin_open = False
        loop.remove_reader(stdin_fd)
        with contextlib.suppress(OSError, asyncssh.Error):
            process.stdin.write_eof()

    def on_resize() -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            process.change_terminal_size(*_terminal_size(stdout_fd))

    ended_by: list[int] = []
    leaving: list[asyncio.Task[None]] = []

    def on_terminate(signum: int) -> None:
        """SIGTERM: hoopctl is being ended on purpose. A Ctrl-C first, so that a command held for
        approval is cancelled rather than left to approvers, then the end. (A hang-up, like a
        dropped connection, ends the session as it is: the target sees the hang-up.)"""
        if ended_by:
            return
        ended_by.append(signum)

        async def leave() -> None:
            with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
                process.stdin.write(b"\x03")
                async with asyncio.timeout(1):
                    await process.stdin.drain()
                await asyncio.sleep(0.2)  # the broker reads the key before the channel closes
            process.close()

        leaving.append(asyncio.ensure_future(leave()))

    try:
        if saved is not None:
            tty.setraw(stdin_fd)
        try:
            loop.add_reader(stdin_fd, on_stdin)
        except PermissionError:
            # A regular file or /dev/null cannot be polled: it is read in a thread instead.
            stdin_open = False
            feeder = asyncio.ensure_future(_feed_from_file(stdin_fd, process))
        if interactive:
            loop.add_signal_handler(signal.SIGWINCH, on_resize)
            loop.add_signal_handler(signal.SIGTERM, on_terminate, signal.SIGTERM)
        await asyncio.gather(
            _copy_out(process.stdout, stdout_fd),
            _copy_out(process.stderr, stderr_fd, BrokerLines()),
        )
        completed = await process.wait(check=False)
    finally:
        if feeder is not None:
            feeder.cancel()
        if stdin_open:
            loop.remove_reader(stdin_fd)
        if interactive:
            for signum in (signal.SIGWINCH, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        for task in leaving:
            task.cancel()
        if saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        with contextlib.suppress(OSError):
            sys.stdout.flush()
    if ended_by:
        return 128 + ended_by[0]
    if completed.exit_status is not None and completed.exit_status >= 0:
        return completed.exit_status
    return 255
