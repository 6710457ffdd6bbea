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

from hoopctl.errors import BrokerUnreachable

_CHUNK = 65536


def _terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return size.columns or 80, size.lines or 24


async def _copy_out(stream: asyncssh.SSHReader[bytes], fd: int) -> None:
    while True:
        data = await stream.read(_CHUNK)
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
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
        await asyncio.gather(
            _copy_out(process.stdout, stdout_fd), _copy_out(process.stderr, stderr_fd)
        )
        completed = await process.wait(check=False)
    finally:
        if feeder is not None:
            feeder.cancel()
        if stdin_open:
            loop.remove_reader(stdin_fd)
        if interactive:
            loop.remove_signal_handler(signal.SIGWINCH)
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        sys.stdout.flush()
    if completed.exit_status is not None and completed.exit_status >= 0:
        return completed.exit_status
    return 255
