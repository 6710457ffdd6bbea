"""A status line redrawn in place on a terminal's stderr while hoopctl waits (plain lines
when stderr is not a terminal)."""

from __future__ import annotations

import asyncio
import math
import os
import time

from hoopctl.approval_requests import clock


class LiveLine:
    """A status line redrawn in place on a terminal's stderr (plain lines elsewhere)."""

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd
        self.live = os.isatty(fd)
        self._shown = False
        self._text = ""
        self._deadline: float | None = None

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            data = data[written:]

    def waiting(self, text: str, left: float | None) -> None:
        """Show TEXT (no timer) with a countdown from LEFT seconds, redrawn by tick()."""
        self._text = text
        self._deadline = None if left is None else time.monotonic() + left
        if self.live:
            self.tick()
        else:
            suffix = f" ({clock(left)} left)" if left is not None else ""
            self._write(f"{text}{suffix}\n")

    def tick(self) -> None:
        if not self.live or not self._text:
            return
        suffix = ""
        if self._deadline is not None:
            suffix = f" ({clock(math.ceil(self._deadline - time.monotonic()))} left)"
        self._write(f"\r\x1b[K{self._text}{suffix}")
        self._shown = True

    def finish(self) -> None:
        """Leave the live line as it stands and stop redrawing it."""
        if self._shown:
            self._write("\n")
        self._shown = False
        self._text = ""

    def line(self, text: str) -> None:
        """Print TEXT as a line of its own, below the live line."""
        self.finish()
        self._write(text + "\n")

    def raw(self, data: bytes) -> None:
        self.finish()
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            view = view[written:]


async def keep_ticking(live: LiveLine) -> None:
    """Redraw LIVE once a second (its countdown) until cancelled."""
    while True:
        await asyncio.sleep(1)
        live.tick()
