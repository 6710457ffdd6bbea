"""A statement's rows a chunk at a time, as libpq's chunked rows mode delivers them.

psycopg's ``stream(size=N)`` fetches N rows per chunk and then yields them one at a time; an
export pays a Python step per row for that alone (about 0.8 µs a row on the 2-core machine).
Here each chunk is loaded whole (the Transformer's ``load_rows``, in C) through the cursor's
own stream generators. Those are not public psycopg API: where a psycopg release lacks them,
the public ``stream()`` serves, gathered into the same chunks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Generator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.waiting import Ready, Wait

Chunk = list[tuple[Any, ...]]

_INTERNALS = ("_stream_send_gen", "_stream_fetchone_gen", "_tx", "_make_row")


def loads_whole_chunks(cursor: psycopg.AsyncCursor[Any]) -> bool:
    # On the class: the instance sets _tx and _make_row once a query starts.
    return all(hasattr(type(cursor), name) for name in _INTERNALS)


async def stream_chunks(
    cursor: psycopg.AsyncCursor[Any], sql: str, size: int
) -> AsyncIterator[Chunk]:
    """SQL's rows in chunks of at most SIZE (tuples: the default row factory). Closed early,
    the statement is cancelled and the connection left ready for the next one, as stream()
    does."""
    if not loads_whole_chunks(cursor):
        chunk: Chunk = []
        async for row in cursor.stream(sql, size=size):  # type: ignore[arg-type]
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    conn = cursor.connection
    async with conn.lock:
        first = True
        try:
            await conn.wait(cursor._stream_send_gen(sql, None, size=size))  # type: ignore[arg-type]
            readable = _Readable(conn.pgconn.socket)
            while result := await readable.run(cursor._stream_fetchone_gen(first)):
                first = False
                yield cursor._tx.load_rows(0, result.ntuples, cursor._make_row)
        finally:
            if conn.pgconn.transaction_status == TransactionStatus.ACTIVE:
                # Stopped before the end: cancel, read what was already sent, and leave the
                # ACTIVE state (one attempt each, as stream() does).
                with contextlib.suppress(Exception):
                    await conn.cancel_safe(timeout=5.0)
                with contextlib.suppress(Exception):
                    while await conn.wait(cursor._stream_fetchone_gen(False)):
                        pass
                with contextlib.suppress(Exception):
                    await conn.wait(cursor._stream_fetchone_gen(False))


class _Readable:
    """The connection's socket, watched for reading while one chunk of rows is fetched.

    psycopg's own wait registers the socket with the event loop, arms a timer and removes both
    again for every wait, and a chunk takes several waits (libpq reads what has arrived). Here
    the socket is registered once per chunk, and only if the chunk was not complete already.
    Between chunks it is not watched: rows that wait while the client is slow do not keep the
    event loop spinning."""

    # As psycopg's own waits: where every chunk is complete before it is asked for, the
    # statement still lets the other sessions run at least this often.
    MAX_BUSY = 0.005

    def __init__(self, fileno: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._fileno = fileno
        self._waiter: asyncio.Future[None] | None = None
        self._yielded = time.monotonic()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run(self, gen: Generator[Wait, Ready, Any]) -> Any:
        """Drive one of psycopg's reading generators to its result."""
        watching = False
        try:
            state = next(gen)
            while True:
                if state != Wait.R:
                    raise psycopg.InternalError(f"unexpected wait for {state!r} while fetching")
                if not watching:
                    self._loop.add_reader(self._fileno, self._wake)
                    watching = True
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                state = gen.send(Ready.R)
        except StopIteration as done:
            if watching:
                self._yielded = time.monotonic()
            elif time.monotonic() - self._yielded >= self.MAX_BUSY:
                await asyncio.sleep(0)
                self._yielded = time.monotonic()
            return done.value
        except OSError as exc:
            raise psycopg.OperationalError("connection socket closed") from exc
        finally:
            if watching:
                self._loop.remove_reader(self._fileno)
