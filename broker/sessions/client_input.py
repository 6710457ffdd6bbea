"""A native client's bytes, read ahead from its channel so that its leaving is seen while a
statement runs (the protocol server reads the client only between statements).

Read-ahead is bounded: past LIMIT unread bytes the channel is not read until the server has
taken some (SSH flow control then holds the client back)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh

CHUNK = 1 << 16
LIMIT = 1 << 20  # unread bytes held at most


class ClientInput:
    """A reader with ``readexactly`` (what the units' protocol servers use) over SOURCE, an
    asyncssh stream. ``left`` is set once the client has ended its input and every byte of it
    has been read: from then on, nothing it sent is waiting to run."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._buffer = bytearray()
        self._ended = False
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self.left = asyncio.Event()
        self._pump = asyncio.ensure_future(self._read_ahead())

    async def _read_ahead(self) -> None:
        try:
            while True:
                while len(self._buffer) >= LIMIT:
                    self._taken.clear()
                    await self._taken.wait()
                data = await self._source.read(CHUNK)
                if not data:
                    return
                self._buffer += data
                self._arrived.set()
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError):
            return
        finally:
            self._ended = True
            self._arrived.set()
            self._check_left()

    def _check_left(self) -> None:
        if self._ended and not self._buffer:
            self.left.set()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self._ended:
                partial = bytes(self._buffer)
                self._buffer.clear()
                self._check_left()
                raise asyncio.IncompleteReadError(partial, n)
            self._arrived.clear()
            await self._arrived.wait()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._taken.set()
        self._check_left()
        return data

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
