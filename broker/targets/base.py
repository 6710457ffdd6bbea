"""The one interface every terminal target offers the session core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TerminalRequest:
    """What the client asked for: PTY geometry and an optional one-off command."""

    term: str
    cols: int
    rows: int
    command: list[str] | None = None
    pty: bool = True


class TerminalProcess(Protocol):
    """A running shell or command on a target, seen as a byte stream with a window size."""

    # Whether the broker set up prompt marks (OSC 133) in this shell.
    shell_integration: bool

    async def read(self) -> bytes:
        """Next chunk of output; b"" once the target has closed its side."""
        ...

    def write(self, data: bytes) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def end_input(self) -> None:
        """The client's input has ended: end the target's input as a terminal would (Ctrl-D)."""
        ...

    def echo_enabled(self) -> bool | None:
        """True/False when the target's terminal echo state is known, None when it cannot be seen."""
        ...

    def hangup(self) -> None:
        """End the target side (SIGHUP to the process group, or close the SSH channel)."""
        ...

    async def wait(self) -> int:
        """Exit status of the target process."""
        ...


class TargetError(Exception):
    """The target could not be reached or refused us; the message is safe to show the user."""
