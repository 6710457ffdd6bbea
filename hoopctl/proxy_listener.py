"""`hoopctl proxy`'s listener: each local client connection on 127.0.0.1 becomes one
`proxy TARGET` channel on the SSH connection to the broker, which speaks the database's own
protocol with the client (it holds the target's credentials; the client never sees them)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shlex
import sys
from collections.abc import Awaitable, Callable

import asyncssh

from hoopctl.broker_lines import as_ours

CHUNK = 65536


def password_digest(password: str) -> str:
    """What the broker is told of the one-time password: its SHA-256 (never the password)."""
    return hashlib.sha256(password.encode()).hexdigest()


class ProxyListener:
    """Carries local client connections to the broker, one channel each."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        target: str,
        *,
        password: str | None,
        reason: str | None = None,
        say: Callable[[str], None] | None = None,
        reconnect: Callable[[], Awaitable[asyncssh.SSHClientConnection]] | None = None,
    ) -> None:
        self.conn = conn
        self.reconnect = reconnect
        self._connecting = asyncio.Lock()
        self._replaced = asyncio.Event()
        self.target = target
        words = ["proxy"]
        if reason:
            words += ["--reason", reason]
        if password is not None:
            words += ["--password-sha256", password_digest(password)]
        self.command = shlex.join([*words, target])
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.clients: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            await self._carry(reader, writer)
        finally:
            self.clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The SSH connection to the broker; after it was lost (a broker restart), a new one."""
        async with self._connecting:
            if self.conn.is_closed() and self.reconnect is not None:
                self.conn = await self.reconnect()
                self._replaced.set()
                self.say("hoopctl: reconnected to the broker")
            return self.conn

    async def watch(self) -> None:
        """Say when the connection to the broker is lost: open clients end with it, the next
        client makes a new one."""
        while True:
            conn = self.conn
            await conn.wait_closed()
            if conn is self.conn:
                self.say("hoopctl: lost the connection to the broker; the next client reconnects")
                self._replaced.clear()
                await self._replaced.wait()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await self.connection()
            process = await conn.create_process(self.command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            self.say(f"hoopctl: the broker did not take the connection: {_reason(exc)}")
            return

        async def upward() -> None:
            while data := await reader.read(CHUNK):
                process.stdin.write(data)
                await process.stdin.drain()
            process.stdin.write_eof()

        async def downward() -> None:
            while data := await process.stdout.read(CHUNK):
                writer.write(data)
                await writer.drain()

        async def lines() -> None:
            held = b""
            while data := await process.stderr.read(CHUNK):
                held += data
                while b"\n" in held:
                    line, held = held.split(b"\n", 1)
                    self.say(as_ours(line.decode("utf-8", "replace")))

        up = asyncio.ensure_future(upward())
        down = asyncio.ensure_future(downward())
        told = asyncio.ensure_future(lines())
        try:
            # The client leaving, or the broker ending the channel, ends the connection.
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if up.done() and not down.done():
                with contextlib.suppress(asyncio.TimeoutError, OSError, asyncssh.Error):
                    await asyncio.wait_for(asyncio.shield(down), 5)
        except (OSError, asyncssh.Error):
            pass
        finally:
            for task in (up, down):
                task.cancel()
            process.close()
            with contextlib.suppress(asyncio.TimeoutError, OSError, asyncssh.Error):
                await asyncio.wait_for(told, 2)
            told.cancel()

    async def close(self) -> None:
        for task in list(self.clients):
            task.cancel()
        for task in list(self.clients):
            with contextlib.suppress(BaseException):
                await task


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__
