"""A statement's rows a chunk at a time, as libpq's chunked rows mode delivers them.

psycopg's ``stream(size=N)`` fetches N rows per chunk and then yields them one at a time; an
export pays a Python step per row for that alone (about 0.8 µs a row on the 2-core machine).
Here each chunk is loaded whole (the Transformer's ``load_rows``, in C) through the cursor's
own stream generators. Those are not public psycopg API: where a psycopg release lacks them,
the public ``stream()`` serves, gathered into the same chunks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

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
            while result := await conn.wait(cursor._stream_fetchone_gen(first)):
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
