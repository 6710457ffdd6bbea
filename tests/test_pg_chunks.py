"""A PostgreSQL result read a chunk at a time (broker.protocols.postgres.chunks), on the
machine's PostgreSQL: the same rows in the same order as psycopg's own stream(), also where
psycopg's internals are missing (the fallback), and a result closed early leaves the
connection ready for the next statement, with the statement stopped on the server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from broker.protocols.postgres import chunks
from broker.protocols.postgres.chunks import stream_chunks
from tests.scratch_databases import PG_ADMIN, scratch_postgres

ROWS = 1234
SIZE = 500


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with scratch_postgres() as name:
        yield name


def connect(name: str) -> Any:
    return psycopg.AsyncConnection.connect(**PG_ADMIN, dbname=name)


async def read(name: str) -> tuple[list[int], list[tuple[Any, ...]]]:
    async with await connect(name) as conn:
        sizes: list[int] = []
        rows: list[tuple[Any, ...]] = []
        query = f"SELECT i, 'v' || i, NULL::text FROM generate_series(1, {ROWS}) AS i ORDER BY i"
        async for chunk in stream_chunks(conn.cursor(), query, SIZE):
            sizes.append(len(chunk))
            rows.extend(chunk)
        return sizes, rows


@pytest.mark.parametrize("whole", [True, False], ids=["whole-chunks", "stream-fallback"])
def test_chunks_hold_every_row_in_order(
    database: str, whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunks, "loads_whole_chunks", lambda cursor: whole)
    sizes, rows = asyncio.run(read(database))
    assert sizes == [500, 500, 234]
    assert rows == [(i, f"v{i}", None) for i in range(1, ROWS + 1)]


def test_the_installed_psycopg_loads_whole_chunks() -> None:
    # The fast path is the one that runs here; were psycopg to rename its internals, this
    # says so (the fallback still serves).
    assert chunks.loads_whole_chunks(psycopg.AsyncCursor.__new__(psycopg.AsyncCursor))


def test_closed_early_the_statement_stops_and_the_connection_runs_the_next(database: str) -> None:
    async def scenario() -> tuple[list[Any], int]:
        async with await connect(database) as conn:
            query = "SELECT i, pg_sleep(0.01) FROM generate_series(1, 100000) AS i"
            stream = stream_chunks(conn.cursor(), query, 10)
            first = await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
            after = await (await conn.execute("SELECT 42")).fetchall()
            async with await connect(database) as admin:
                cursor = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = %s",
                    ("%pg_sleep(0.01)%generate_series%", "active"),
                )
                running = (await cursor.fetchone() or [0])[0]
            return [len(first), after], running

    (first, after), running = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert first == 10
    assert after == [(42,)]
    assert running == 0


def test_an_error_mid_result_reaches_the_reader(database: str) -> None:
    async def scenario() -> None:
        async with await connect(database) as conn:
            query = "SELECT 1 / (2000 - i) FROM generate_series(1, 3000) AS i"
            with contextlib.suppress(StopAsyncIteration):
                async for _ in stream_chunks(conn.cursor(), query, 100):
                    pass

    with pytest.raises(psycopg.errors.DivisionByZero):
        asyncio.run(scenario())


def test_rows_waiting_for_a_slow_reader_leave_the_event_loop_idle(database: str) -> None:
    # A client that stops reading (a pager, a full pipe) holds the export between chunks while
    # PostgreSQL's rows wait on the socket: the broker must not spin on that readable socket.
    async def scenario() -> float:
        async with await connect(database) as conn:
            query = "SELECT i, repeat('x', 200) FROM generate_series(1, 200000) AS i"
            stream = stream_chunks(conn.cursor(), query, 500)
            await anext(stream)
            await asyncio.sleep(0.3)  # the server fills the socket meanwhile
            before = time.process_time()
            await asyncio.sleep(1.0)
            used = time.process_time() - before
            await stream.aclose()  # type: ignore[attr-defined]
            return used

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) < 0.25


def test_other_tasks_run_while_the_rows_stream(database: str) -> None:
    # Every chunk may already be there when it is asked for; the statement still lets the
    # other sessions' tasks in (psycopg's own rule: at least every 5 ms).
    async def scenario() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async with await connect(database) as conn:
            query = "SELECT i, repeat('x', 100) FROM generate_series(1, 100000) AS i"
            task = asyncio.create_task(ticker())
            seen: list[int] = []
            async for _ in stream_chunks(conn.cursor(), query, 500):
                seen.append(ticks)
            task.cancel()
            return len(seen), seen[-1] - seen[0]

    chunks_read, ticks_between = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert chunks_read == 200
    assert ticks_between >= 20
