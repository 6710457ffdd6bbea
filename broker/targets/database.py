"""Database targets (`postgres`, `mysql`, `sqlite`): the broker connects with credentials only it
holds and runs statements itself, streaming result rows with bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiomysql
import aiosqlite
import psycopg
import pymysql
from psycopg.pq import TransactionStatus
from pymysql.constants import CLIENT

from broker.config import MysqlTarget, PostgresTarget, SqliteTarget
from broker.credentials import resolve_credential
from broker.policy.sql_session import safe_sql_mode
from broker.targets.base import TargetError

CONNECT_TIMEOUT = 10
FETCH_BATCH = 500
# SQLite calls the statement-timeout check every this many virtual machine instructions.
SQLITE_PROGRESS_STEPS = 1000

USER_CANCEL = "canceling statement due to user request"

DatabaseTarget = PostgresTarget | MysqlTarget | SqliteTarget


class StatementError(Exception):
    """The database refused a statement; the message is the database's own.

    ``sqlstate`` (PostgreSQL's and MySQL's SQLSTATE), ``code`` (MySQL's error number, SQLite's
    extended result code) and ``condition`` (the error's fixed name: "invalid text
    representation", "truncated wrong value", "SQLITE_CONSTRAINT_UNIQUE") come from the
    error's class, never from the data: what the broker may still show when the message
    itself must be withheld (broker.sessions.sql_base)."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        code: int | None = None,
        condition: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.code = code
        self.condition = condition

    def with_message(self, message: str) -> StatementError:
        """The same error (its SQLSTATE, code and condition) with another message."""
        return StatementError(
            message, sqlstate=self.sqlstate, code=self.code, condition=self.condition
        )


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

    async def cancel(self) -> None:
        """Ask the database to stop the statement running on this connection, from any task,
        while execute() or the row iteration awaits. The statement then raises StatementError and
        the connection stays usable. A no-op when nothing runs; never raises."""
        ...

    async def close(self) -> None: ...


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _password(target: PostgresTarget | MysqlTarget) -> str | None:
    if target.credential is None:
        return None
    return resolve_credential(target.credential, target=target.name).rstrip("\n")


def _ca_file(target: PostgresTarget | MysqlTarget) -> str | None:
    """The CA bundle that verify-full checks the server against: tls_ca, else the system's."""
    if target.tls_ca is None:
        return ssl.get_default_verify_paths().cafile
    if not os.access(target.tls_ca, os.R_OK):
        raise TargetError(f"target {target.name}: cannot read the CA bundle {target.tls_ca}")
    return str(target.tls_ca)


def _tls_unavailable(target: PostgresTarget | MysqlTarget) -> TargetError:
    return TargetError(
        f"target {target.name}: TLS is unavailable: the server does not offer TLS "
        f'and tls = "{target.tls}" requires it'
    )


class PostgresConnection:
    dialect = "postgres"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, target: PostgresTarget) -> PostgresConnection:
        host, port = _split(target.address)
        tls: dict[str, str] = {"sslmode": target.tls}
        if target.tls == "verify-full":
            # psycopg's bundled libpq does not find the system CA store by itself ("system").
            tls["sslrootcert"] = _ca_file(target) or "system"
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=host,
                port=port,
                dbname=target.database,
                user=target.user,
                password=_password(target),
                connect_timeout=CONNECT_TIMEOUT,
                autocommit=True,
                application_name="hoop-broker",
                # Connection options outrank ALTER ROLE/DATABASE/SYSTEM: the session reads
                # text as the broker's parser does (broker.policy.sql_session).
                client_encoding="UTF8",
                options=" ".join(
                    [
                        "-c standard_conforming_strings=on",
                        *(
                            [f"-c statement_timeout={target.statement_timeout * 1000}"]
                            if target.statement_timeout
                            else []
                        ),
                    ]
                ),
                **tls,
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
            raise _postgres_error(exc) from None
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
                raise _postgres_error(exc) from None
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
                raise _postgres_error(exc) from None
            status = cursor.statusmessage or ""

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            for row in fetched:
                yield tuple(row)

        return Result(columns=columns, rows=rows(), status=status)

    async def cancel(self) -> None:
        # ACTIVE: a statement is in flight. A cancel sent while idle could land on the next one.
        if self._conn.info.transaction_status != TransactionStatus.ACTIVE:
            return
        with contextlib.suppress(psycopg.Error):
            await self._conn.cancel_safe(timeout=CONNECT_TIMEOUT)

    async def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            await self._conn.close()


def _postgres_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    return f"{diag.severity or 'ERROR'}: {diag.message_primary or str(exc).splitlines()[0]}"


def _postgres_error(exc: psycopg.Error) -> StatementError:
    sqlstate = exc.diag.sqlstate or getattr(exc, "sqlstate", None)
    name = type(exc).__name__  # the driver's own errors have no SQLSTATE: ProgrammingError
    if sqlstate:
        with contextlib.suppress(KeyError):
            name = psycopg.errors.lookup(sqlstate).__name__  # InvalidTextRepresentation
    condition = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).lower()
    return StatementError(_postgres_message(exc), sqlstate=sqlstate, condition=condition)


def _postgres_connect_error(target: PostgresTarget, exc: psycopg.OperationalError) -> str:
    text = str(exc)
    if "password authentication failed" in text or "no password supplied" in text:
        return f"target {target.name}: the database refused the broker's credentials"
    if "does not exist" in text:
        return f"target {target.name}: database or role does not exist"
    if "does not support SSL" in text:
        return str(_tls_unavailable(target))
    if "does not match host name" in text:
        host = _split(target.address)[0]
        return (
            f"target {target.name}: TLS certificate verification failed: "
            f"the certificate is not valid for {host}"
        )
    if "certificate verify failed" in text:
        return f"target {target.name}: TLS certificate verification failed"
    return f"target {target.name} unreachable: the database did not accept a connection"


class _TlsUnavailableError(Exception):
    pass


class _MysqlConnection(aiomysql.Connection):  # type: ignore[misc]
    """aiomysql quietly goes on in plain text (credentials included) when the server offers no
    TLS; with require_tls this refuses before anything is sent."""

    def __init__(self, *, require_tls: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._require_tls = require_tls

    async def _request_authentication(self) -> None:
        if self._require_tls and not self.server_capabilities & CLIENT.SSL:
            raise _TlsUnavailableError
        await super()._request_authentication()


def _mysql_ssl(target: MysqlTarget) -> ssl.SSLContext | None:
    if target.tls == "disable":
        return None
    if target.tls == "verify-full":
        return ssl.create_default_context(cafile=_ca_file(target))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _mysql_connect(target: MysqlTarget) -> aiomysql.Connection:
    host, port = _split(target.address)
    conn = _MysqlConnection(
        require_tls=target.tls in ("require", "verify-full"),
        host=host,
        port=port,
        user=target.user,
        password=_password(target) or "",
        db=target.database,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        charset="utf8mb4",
        ssl=_mysql_ssl(target),
        init_command=(
            f"SET SESSION max_statement_time = {target.statement_timeout}"
            if target.statement_timeout
            else None
        ),
    )
    try:
        await conn._connect()
        await _mysql_fix_sql_mode(conn)
    except _TlsUnavailableError:
        raise _tls_unavailable(target) from None
    except pymysql.err.OperationalError as exc:
        raise TargetError(_mysql_connect_error(target, exc)) from None
    return conn


async def _mysql_fix_sql_mode(conn: aiomysql.Connection) -> None:
    """The server's sql_mode without the modes that change how statement text is read
    (ANSI_QUOTES, NO_BACKSLASH_ESCAPES, …): the broker parses as the server then reads."""
    async with conn.cursor() as cursor:
        await cursor.execute("SELECT @@SESSION.sql_mode")
        (current,) = await cursor.fetchone()
        wanted = safe_sql_mode(current or "")
        if wanted != current:
            await cursor.execute("SET SESSION sql_mode = %s", (wanted,))


def _mysql_connect_error(target: MysqlTarget, exc: pymysql.err.OperationalError) -> str:
    code = exc.args[0] if exc.args else 0
    if code in (1045, 1698):
        return f"target {target.name}: the database refused the broker's credentials"
    if code == 1049:
        return f"target {target.name}: database does not exist"
    if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
        reason = exc.__cause__.verify_message
        return f"target {target.name}: TLS certificate verification failed: {reason}"
    if isinstance(exc.__cause__, ssl.SSLError):
        return f"target {target.name}: TLS handshake failed"
    return f"target {target.name} unreachable: the database did not accept a connection"


def _mysql_message(exc: pymysql.err.MySQLError) -> str:
    return f"ERROR: {exc.args[1] if len(exc.args) > 1 else exc}"


# MySQL error numbers -> their names in pymysql (TRUNCATED_WRONG_VALUE, ...).
_MYSQL_NAMES = {
    value: name
    for name, value in reversed(vars(pymysql.constants.ER).items())
    if name.isupper() and isinstance(value, int)
}


def _mysql_error(exc: pymysql.err.MySQLError) -> StatementError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    name = _MYSQL_NAMES.get(code) if code is not None else None
    return StatementError(
        _mysql_message(exc),
        sqlstate=getattr(exc, "sqlstate", None),
        code=code,
        condition=name.replace("_", " ").lower() if name else None,
    )


class MysqlConnection:
    dialect = "mysql"

    def __init__(self, conn: aiomysql.Connection, target: MysqlTarget) -> None:
        self._conn = conn
        self._target = target
        self._running = False

    @classmethod
    async def open(cls, target: MysqlTarget) -> MysqlConnection:
        return cls(await _mysql_connect(target), target)

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        # An unbuffered cursor streams rows from the server instead of loading them all.
        cursor = await self._conn.cursor(aiomysql.SSCursor)
        self._running = True
        try:
            await cursor.execute(sql)
        except pymysql.err.MySQLError as exc:
            self._running = False
            await cursor.close()
            raise _mysql_error(exc) from None
        columns = [column[0] for column in cursor.description or []]
        status = f"{cursor.rowcount} row(s) affected" if not columns else ""
        self._running = bool(columns)

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
                raise _mysql_error(exc) from None
            finally:
                self._running = False
                with contextlib.suppress(pymysql.err.MySQLError):
                    await cursor.close()

        return Result(columns=columns, rows=rows(), status=status)

    async def cancel(self) -> None:
        if not self._running:
            return
        # The protocol has no in-band cancel: kill the statement from a second connection.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                killer = await _mysql_connect(self._target)
                try:
                    async with killer.cursor() as cursor:
                        await cursor.execute(f"KILL QUERY {int(self._conn.thread_id())}")
                finally:
                    killer.close()

    async def close(self) -> None:
        self._conn.close()


class SqliteConnection:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, statement_timeout: int | None) -> None:
        self._conn = conn
        self._timeout = statement_timeout
        self._deadline: float | None = None
        self._running = False
        # Why the running statement was interrupted; SQLite itself only says "interrupted".
        self._stopped: str | None = None

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
        self = cls(conn, target.statement_timeout)
        if target.statement_timeout:
            await conn.set_progress_handler(self._past_deadline, SQLITE_PROGRESS_STEPS)
        return self

    def _past_deadline(self) -> int:
        """SQLite's progress handler (on aiosqlite's thread): non-zero interrupts the statement."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            self._stopped = f"canceling statement due to statement timeout ({self._timeout}s)"
            return 1
        return 0

    def _error(self, exc: sqlite3.Error) -> StatementError:
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None)
        if self._stopped and isinstance(exc, sqlite3.OperationalError) and "interrupt" in str(exc):
            return StatementError(f"ERROR: {self._stopped}", code=code, condition=name)
        return StatementError(f"ERROR: {exc}", code=code, condition=name)

    def _finish(self) -> None:
        self._running = False
        self._deadline = None

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        self._stopped = None
        self._running = True
        if self._timeout:
            self._deadline = time.monotonic() + self._timeout
        try:
            cursor = await self._conn.execute(sql)
        except sqlite3.Error as exc:
            self._finish()
            raise self._error(exc) from None
        columns = [column[0] for column in cursor.description or []]
        status = "" if columns else f"{cursor.rowcount} row(s) affected"
        if not columns:
            self._finish()

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            try:
                while columns:
                    batch = await cursor.fetchmany(FETCH_BATCH)
                    if not batch:
                        return
                    for row in batch:
                        yield tuple(row)
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            finally:
                self._finish()
                await cursor.close()

        return Result(columns=columns, rows=rows(), status=status)

    async def cancel(self) -> None:
        if not self._running:
            return
        self._stopped = USER_CANCEL
        # Not queued behind the running statement: sqlite3's interrupt() may be called from
        # any thread, and aiosqlite calls it directly.
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._conn.interrupt()

    async def close(self) -> None:
        await self._conn.close()


async def open_database(target: DatabaseTarget) -> DatabaseConnection:
    if isinstance(target, PostgresTarget):
        return await PostgresConnection.open(target)
    if isinstance(target, MysqlTarget):
        return await MysqlConnection.open(target)
    return await SqliteConnection.open(target)
