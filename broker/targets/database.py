"""Database targets (`postgres`, `mysql`, `sqlite`): the broker connects with credentials only it
holds and runs statements itself, streaming result rows with bounded memory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiomysql
import aiosqlite
import psycopg
import pymysql

from broker.config import MysqlTarget, PostgresTarget, SqliteTarget
from broker.credentials import resolve_credential
from broker.targets.base import TargetError

CONNECT_TIMEOUT = 10
FETCH_BATCH = 500

DatabaseTarget = PostgresTarget | MysqlTarget | SqliteTarget


class StatementError(Exception):
    """The database refused a statement; the message is the database's own."""


@dataclass
class Result:
    columns: list[str]
    rows: AsyncIterator[tuple[Any, ...]]
    status: str


class DatabaseConnection(Protocol):
    dialect: str

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        """Run one statement. QUERY says it is a SELECT-like statement whose rows are streamed;
        other statements (DML with RETURNING included) are run and their few rows buffered."""
        ...

    async def close(self) -> None: ...


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _password(target: PostgresTarget | MysqlTarget) -> str | None:
    if target.credential is None:
        return None
    return resolve_credential(target.credential, target=target.name).rstrip("\n")


class PostgresConnection:
    dialect = "postgres"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, target: PostgresTarget) -> PostgresConnection:
        host, port = _split(target.address)
        sslmode = {"verify-full": "verify-full"}.get(target.tls, target.tls)
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=host,
                port=port,
                dbname=target.database,
                user=target.user,
                password=_password(target),
                sslmode=sslmode,
                connect_timeout=CONNECT_TIMEOUT,
                autocommit=True,
                application_name="hoop-broker",
                options=(
                    f"-c statement_timeout={target.statement_timeout * 1000}"
                    if target.statement_timeout
                    else None
                ),
            )
        except psycopg.OperationalError as exc:
            raise TargetError(_postgres_connect_error(target, exc)) from None
        return cls(conn)

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        if not query:
            return await self._execute_buffered(sql)
        # stream() fetches in chunks (libpq chunked rows mode): memory stays bounded however
        # many rows the statement returns.
        cursor = self._conn.cursor()
        stream = cursor.stream(sql, size=FETCH_BATCH)  # type: ignore[arg-type]
        try:
            first = await anext(stream, None)
        except psycopg.Error as exc:
            await cursor.close()
            raise StatementError(_postgres_message(exc)) from None
        columns = [column.name for column in cursor.description or []]
        status = cursor.statusmessage or ""

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            try:
                if first is None:
                    return
                yield tuple(first)
                async for row in stream:
                    yield tuple(row)
            except psycopg.Error as exc:
                raise StatementError(_postgres_message(exc)) from None
            finally:
                await cursor.close()

        return Result(columns=columns, rows=rows(), status=status)

    async def _execute_buffered(self, sql: str) -> Result:
        async with self._conn.cursor() as cursor:
            try:
                await cursor.execute(sql)  # type: ignore[arg-type]
                columns = [column.name for column in cursor.description or []]
                fetched = await cursor.fetchall() if columns else []
            except psycopg.Error as exc:
                raise StatementError(_postgres_message(exc)) from None
            status = cursor.statusmessage or ""

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            for row in fetched:
                yield tuple(row)

        return Result(columns=columns, rows=rows(), status=status)

    async def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            await self._conn.close()


def _postgres_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    return f"{diag.severity or 'ERROR'}: {diag.message_primary or str(exc).splitlines()[0]}"


def _postgres_connect_error(target: PostgresTarget, exc: psycopg.OperationalError) -> str:
    text = str(exc)
    if "password authentication failed" in text or "no password supplied" in text:
        return f"target {target.name}: the database refused the broker's credentials"
    if "does not exist" in text:
        return f"target {target.name}: database or role does not exist"
    return f"target {target.name} unreachable: the database did not accept a connection"


class MysqlConnection:
    dialect = "mysql"

    def __init__(self, conn: aiomysql.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, target: MysqlTarget) -> MysqlConnection:
        host, port = _split(target.address)
        try:
            conn = await aiomysql.connect(
                host=host,
                port=port,
                user=target.user,
                password=_password(target) or "",
                db=target.database,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                charset="utf8mb4",
                init_command=(
                    f"SET SESSION max_statement_time = {target.statement_timeout}"
                    if target.statement_timeout
                    else None
                ),
            )
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else 0
            if code in (1045, 1698):
                raise TargetError(
                    f"target {target.name}: the database refused the broker's credentials"
                ) from None
            if code == 1049:
                raise TargetError(f"target {target.name}: database does not exist") from None
            raise TargetError(
                f"target {target.name} unreachable: the database did not accept a connection"
            ) from None
        return cls(conn)

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        # An unbuffered cursor streams rows from the server instead of loading them all.
        cursor = await self._conn.cursor(aiomysql.SSCursor)
        try:
            await cursor.execute(sql)
        except pymysql.err.MySQLError as exc:
            await cursor.close()
            message = exc.args[1] if len(exc.args) > 1 else str(exc)
            raise StatementError(f"ERROR: {message}") from None
        columns = [column[0] for column in cursor.description or []]
        status = f"{cursor.rowcount} row(s) affected" if not columns else ""

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            try:
                while columns:
                    batch = await cursor.fetchmany(FETCH_BATCH)
                    if not batch:
                        return
                    for row in batch:
                        yield tuple(row)
            except pymysql.err.MySQLError as exc:
                # With a streaming cursor, errors such as a statement timeout arrive mid-fetch.
                message = exc.args[1] if len(exc.args) > 1 else str(exc)
                raise StatementError(f"ERROR: {message}") from None
            finally:
                with contextlib.suppress(pymysql.err.MySQLError):
                    await cursor.close()

        return Result(columns=columns, rows=rows(), status=status)

    async def close(self) -> None:
        self._conn.close()


class SqliteConnection:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, target: SqliteTarget) -> SqliteConnection:
        if not target.path.exists():
            raise TargetError(f"target {target.name}: database file {target.path} does not exist")
        try:
            conn = await aiosqlite.connect(target.path, isolation_level=None)
            # SQLite will store bytes that are not UTF-8 in a TEXT column; show them, do not fail.
            conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        except Exception as exc:  # sqlite3.Error, OSError
            raise TargetError(f"target {target.name}: cannot open the database: {exc}") from None
        return cls(conn)

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        import sqlite3

        try:
            cursor = await self._conn.execute(sql)
        except sqlite3.Error as exc:
            raise StatementError(f"ERROR: {exc}") from None
        columns = [column[0] for column in cursor.description or []]
        status = "" if columns else f"{cursor.rowcount} row(s) affected"

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            try:
                while columns:
                    batch = await cursor.fetchmany(FETCH_BATCH)
                    if not batch:
                        return
                    for row in batch:
                        yield tuple(row)
            except sqlite3.Error as exc:
                raise StatementError(f"ERROR: {exc}") from None
            finally:
                await cursor.close()

        return Result(columns=columns, rows=rows(), status=status)

    async def close(self) -> None:
        await self._conn.close()


async def open_database(target: DatabaseTarget) -> DatabaseConnection:
    if isinstance(target, PostgresTarget):
        return await PostgresConnection.open(target)
    if isinstance(target, MysqlTarget):
        return await MysqlConnection.open(target)
    return await SqliteConnection.open(target)
