"""The terminal family's interface: what the session core asks of an `ssh` or `local` unit.

The core never looks at the target's type: it asks ``terminal_unit(target.type)`` for a
screen-grade terminal, the strict guard's helper link, a one-off command (exec), the end of
what is left of a session, and, for file transfers (plain scp, sftp and rsync), an SFTP client
on the target and a command whose input comes from the client (rsync's server)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from broker.config import LocalTarget, SshTarget
from broker.protocols.base import TargetError, Unit

if TYPE_CHECKING:
    import asyncssh

    from broker.protocols.agent_link import AgentLink


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


class ByteReader(Protocol):
    """One output stream of a command (an asyncio or asyncssh reader)."""

    async def read(self, n: int = -1) -> bytes: ...


@dataclass(frozen=True)
class CommandProcess:
    """A one-off command without a PTY: its stdout and stderr apart, then its exit status."""

    stdout: ByteReader
    stderr: ByteReader
    wait: Callable[[], Awaitable[int]]


class ByteWriter(Protocol):
    """The input of a command (an asyncssh writer)."""

    def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...

    async def drain(self) -> None: ...


@dataclass(frozen=True)
class StreamProcess:
    """A command whose input the broker feeds (rsync's server): its three streams and status."""

    stdin: ByteWriter
    stdout: ByteReader
    stderr: ByteReader
    wait: Callable[[], Awaitable[int]]


TargetT = TypeVar("TargetT", SshTarget, LocalTarget)


class TerminalUnit(Unit, Generic[TargetT]):
    """A terminal protocol: a shell on a target, reached one way or another."""

    family = "terminal"

    async def open_terminal(self, target: TargetT, request: TerminalRequest) -> TerminalProcess:
        """A shell (or REQUEST's command) on TARGET under a PTY: the screen-grade guard's."""
        raise NotImplementedError

    async def open_agent(self, target: TargetT, *, term: str) -> AgentLink:
        """The session helper (shell_agent.py) started on TARGET: the strict guard's link.
        Closing the link ends everything it opened."""
        raise NotImplementedError

    def run_command(
        self, target: TargetT, command: str
    ) -> contextlib.AbstractAsyncContextManager[CommandProcess]:
        """COMMAND (shell text) run once on TARGET without a PTY and without input (exec);
        what it opened is closed on leaving the context."""
        raise NotImplementedError

    def end_session(self, shell_pid: int) -> None:
        """Make sure nothing of a strict session whose shell was SHELL_PID (0: not known)
        outlives it, once its helper link is closed."""
        raise NotImplementedError

    def open_sftp(
        self, target: TargetT
    ) -> contextlib.AbstractAsyncContextManager[asyncssh.SFTPClient]:
        """An SFTP client on TARGET (paths and names as bytes), for the broker's own SFTP
        server to pass file operations on to; closed on leaving the context. Raises
        TargetError when the unit takes no file transfers."""
        raise TargetError(f"target {target.name}: {self.name} targets take no file transfers")

    def run_stream(
        self, target: TargetT, command: str
    ) -> contextlib.AbstractAsyncContextManager[StreamProcess]:
        """COMMAND (shell text) run once on TARGET without a PTY, its input fed by the broker
        (rsync's server); closed on leaving the context. Raises TargetError when the unit
        takes no file transfers."""
        raise TargetError(f"target {target.name}: {self.name} targets take no file transfers")
