"""The store's connection to PostgreSQL (`[store] url = "postgresql://…"`), shaped like the
SQLite connections the store's modules use: aiosqlite's for the event loop, sqlite3's for
worker threads. The modules write one SQL for both where the two agree, and ask
:func:`dialect` where they do not (their schemas, JSON functions, full-text search).

What the shape keeps:

* placeholders are ``?`` (qmark), turned into psycopg's ``%s`` here;
* transactions begin by themselves before a write (INSERT, UPDATE, DELETE) and last until
  :meth:`commit` or :meth:`rollback`, as sqlite3's do; a read outside one sees the newest
  committed data;
* errors are raised as sqlite3's (IntegrityError for a constraint, OperationalError when
  the database cannot be reached), so each module's handling holds for both;
* ``BEGIN IMMEDIATE`` (SQLite: take the write lock first) takes the store's one write lock,
  a transaction-scoped advisory lock, so writers on every node take turns exactly as SQLite's
  writers on one machine do.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql as pgsql

Dialect = Literal["sqlite", "postgres"]

WRITE_LOCK_KEY = 0x686F6F70  # "hoop": the advisory lock every writer of the store shares
_WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
_BEGIN_IMMEDIATE = re.compile(r"^\s*BEGIN\s+IMMEDIATE\s*;?\s*$", re.IGNORECASE)


def dialect(db: object) -> Dialect:
    """Which database a connection of the store talks to."""
    return "postgres" if isinstance(db, (PgConnection, SyncPgConnection)) else "sqlite"


def float_type(db: object) -> str:
    """The column type of a float in DB's dialect."""
    return "DOUBLE PRECISION" if dialect(db) == "postgres" else "REAL"


def shared_schema(db: object) -> bool:
    """Whether DB is shared by several nodes, so that creating a schema needs the store's
    write lock (CREATE and DROP of triggers and functions race between nodes)."""
    return dialect(db) == "postgres"


def json_strings(db: object, column: str) -> str:
    """A FROM item giving the strings of the JSON array in COLUMN (text) as column ``value``."""
    if dialect(db) == "postgres":
        return f"json_array_elements_text({column}::json) AS elements(value)"
    return f"json_each({column})"


def json_field(db: object, column: str, *path: str) -> str:
    """The text at PATH (keys) in the JSON object in COLUMN (text); NULL when absent."""
    if dialect(db) == "postgres":
        return f"({column}::json #>> '{{{','.join(path)}}}')"
    return f"json_extract({column}, '$.{'.'.join(path)}')"


def has_table(conn: Any, name: str) -> bool:
    """Whether the store (a sync connection) has table NAME."""
    if dialect(conn) == "postgres":
        return conn.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def to_format(text: str) -> str:
    """SQL written with ``?`` placeholders in psycopg's ``%s`` style: ``%`` is doubled, and a
    ``?`` inside a quoted literal or identifier is left alone."""
    out: list[str] = []
    quote: str | None = None
    for char in text:
        if quote is not None:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


@contextlib.contextmanager
def _as_sqlite_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise sqlite3.IntegrityError(str(exc).strip()) from None
    except psycopg.OperationalError as exc:
        raise sqlite3.OperationalError(str(exc).strip()) from None
    except psycopg.Error as exc:
        raise sqlite3.DatabaseError(str(exc).strip()) from None


class PgCursor:
    """What a statement gave: its rows (all fetched), rowcount; lastrowid is never known."""

    lastrowid: int | None = None

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    async def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._next = self._rows[self._next :], len(self._rows)
        return rows

    async def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        rows = self._rows[self._next : self._next + size]
        self._next += len(rows)
        return rows

    def __aiter__(self) -> PgCursor:
        return self

    async def __anext__(self) -> tuple[Any, ...]:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        return None


class _Execution:
    """``db.execute(...)``: awaited, or used as ``async with``, as aiosqlite allows."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self._cursor: PgCursor | None = None

    def __await__(self) -> Any:
        return self._run().__await__()

    async def __aenter__(self) -> PgCursor:
        self._cursor = await self._run()
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        return None


class PgConnection:
    """One asynchronous connection to the store's PostgreSQL database (see the module
    docstring). Its operations take turns: psycopg runs one at a time on a connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._in_transaction = False
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, url: str) -> PgConnection:
        with _as_sqlite_errors():
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
        return cls(conn)

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> _Execution:
        return _Execution(lambda: self._execute(sql, params))

    async def _execute(self, sql: str, params: Sequence[Any] | None) -> PgCursor:
        with _as_sqlite_errors():
            return await self._execute_now(sql, params)

    async def _execute_now(self, sql: str, params: Sequence[Any] | None) -> PgCursor:
        async with self._lock:
            if _BEGIN_IMMEDIATE.match(sql):
                if not self._in_transaction:
                    await self._conn.execute("BEGIN")
                    self._in_transaction = True
                await self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                return PgCursor([], 0)
            if not self._in_transaction and _WRITES.match(sql):
                await self._conn.execute("BEGIN")
                self._in_transaction = True
            try:
                cursor = await self._conn.execute(to_format(sql), tuple(params or ()))
            except psycopg.Error:
                if self._in_transaction:
                    await self._abort()
                raise
            rows = await cursor.fetchall() if cursor.description is not None else []
            return PgCursor(list(rows), cursor.rowcount)

    async def execute_fetchall(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        cursor = await self._execute(sql, params)
        return await cursor.fetchall()

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """SQL once per row, in one round of pipelined statements (psycopg's executemany)."""
        with _as_sqlite_errors():
            async with self._lock:
                if not self._in_transaction and _WRITES.match(sql):
                    await self._conn.execute("BEGIN")
                    self._in_transaction = True
                try:
                    async with self._conn.cursor() as cursor:
                        await cursor.executemany(to_format(sql), [tuple(row) for row in rows])
                except psycopg.Error:
                    await self._abort()
                    raise

    async def executescript(self, script: str) -> None:
        with _as_sqlite_errors():
            async with self._lock:
                await self._conn.execute(pgsql.SQL(script))  # type: ignore[arg-type]

    async def commit(self) -> None:
        with _as_sqlite_errors():
            async with self._lock:
                if self._in_transaction:
                    self._in_transaction = False
                    await self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        with _as_sqlite_errors():
            async with self._lock:
                await self._abort()

    async def _abort(self) -> None:
        if self._in_transaction:
            self._in_transaction = False
            await self._conn.execute("ROLLBACK")

    async def close(self) -> None:
        await self._conn.close()


class SyncPgConnection:
    """The same for a worker thread, shaped like a sqlite3 connection in autocommit mode
    (``isolation_level=None``): transactions are the ones the caller opens and ends."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def connect(cls, url: str) -> SyncPgConnection:
        with _as_sqlite_errors():
            return cls(psycopg.Connection.connect(url, autocommit=True, connect_timeout=10))

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        with _as_sqlite_errors():
            if _BEGIN_IMMEDIATE.match(sql):
                self._conn.execute("BEGIN")
                return self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            try:
                return self._conn.execute(to_format(sql), tuple(params or ()))
            except psycopg.Error:
                # As in SQLite, a failed statement leaves the transaction for the caller to
                # end; PostgreSQL would refuse everything else in it, so it is ended here.
                if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self._conn.execute("ROLLBACK")
                raise

    def executescript(self, script: str) -> None:
        with _as_sqlite_errors():
            self._conn.execute(pgsql.SQL(script))  # type: ignore[arg-type]

    def close(self) -> None:
        self._conn.close()


class Listener:
    """Wakes whoever waits on :attr:`changed` at each NOTIFY on CHANNEL: a connection of its
    own, LISTENing, reconnecting when it drops. A waiter also looks for itself now and then,
    so a notification lost while reconnecting delays a change, never loses it."""

    def __init__(self, url: str, channel: str) -> None:
        self._url = url
        self._channel = channel
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="store-listen")

    async def _listen(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=10
                )
                async with conn:
                    await conn.execute(
                        pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self._channel))
                    )
                    self.changed.set()  # whatever happened while not listening
                    async for _ in conn.notifies():
                        self.changed.set()
            except psycopg.Error:
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
