"""Keys while a recording plays: the local terminal in raw mode, keystrokes turned into actions."""

from __future__ import annotations

import contextlib
import os
import select
import termios
import time
import tty
from collections.abc import Iterator

PAUSE = "pause"
FASTER = "faster"
SLOWER = "slower"
SKIP = "skip"
BACK = "back"
NEXT = "next"
QUIT = "quit"
INTERRUPT = "interrupt"

_SEQUENCES = {
    b" ": PAUSE,
    b"+": FASTER,
    b"=": FASTER,
    b"-": SLOWER,
    b"_": SLOWER,
    b"\x1b[C": SKIP,
    b"\x1bOC": SKIP,
    b"\x1b[D": BACK,
    b"\x1bOD": BACK,
    b"n": NEXT,
    b"N": NEXT,
    b"q": QUIT,
    b"Q": QUIT,
    b"\x03": INTERRUPT,  # Ctrl-C arrives as a byte in raw mode
    b"\x04": QUIT,  # Ctrl-D
}


def parse_keys(data: bytes) -> list[str]:
    """The actions in ``data``; unknown keys and escape sequences (mouse reports, other
    arrows, function keys) are skipped."""
    actions: list[str] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0x1B:
            for length in (3, 2):
                action = _SEQUENCES.get(data[pos : pos + length])
                if action is not None:
                    actions.append(action)
                    pos += length
                    break
            else:
                pos += _escape_length(data, pos)
            continue
        action = _SEQUENCES.get(data[pos : pos + 1])
        if action is not None:
            actions.append(action)
        pos += 1
    return actions


def _escape_length(data: bytes, pos: int) -> int:
    """Length of the escape sequence at ``pos`` (CSI, SS3 or a lone ESC)."""
    if pos + 1 < len(data) and data[pos + 1] in b"[O":
        end = pos + 2
        while end < len(data) and not 0x40 <= data[end] <= 0x7E:
            end += 1
        return end + 1 - pos
    return 1


class Keys:
    """Reads actions from a terminal (``fd``) in raw mode; a no-op source when ``fd`` is None."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    @contextlib.contextmanager
    def raw(self) -> Iterator[Keys]:
        if self.fd is None:
            yield self
            return
        saved = termios.tcgetattr(self.fd)
        try:
            tty.setraw(self.fd, termios.TCSANOW)
            yield self
        finally:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def wait(self, timeout: float | None) -> list[str]:
        """Actions typed within ``timeout`` seconds (None: wait for a key); [] when none."""
        if self.fd is None:
            if timeout is None:
                raise ValueError("no keys to wait for")
            if timeout > 0:
                time.sleep(timeout)
            return []
        ready, _, _ = select.select(
            [self.fd], [], [], None if timeout is None else max(0.0, timeout)
        )
        if not ready:
            return []
        try:
            data = os.read(self.fd, 1024)
        except OSError:
            data = b""
        if not data:  # the terminal is gone: no more keys
            self.fd = None
            return []
        return parse_keys(data)
