"""SQLite: a database file the broker opens itself (aiosqlite), read by sqlglot's SQLite
dialect; its statement timeout is a progress handler, its cancel sqlite3's interrupt."""

# Catalog queries are built as text: every name in them passed literal() or safe_literal().
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

from broker.protocols.base import TargetError
from broker.protocols.sql import (
    FETCH_BATCH,
    USER_CANCEL,
    Batched,
    CatalogRow,
    Client,
    Key,
    Recognised,
    Relation,
    Result,
    SqlUnit,
    StatementError,
    safe_literal,
)

if TYPE_CHECKING:
    from broker.config import SqliteTarget

# SQLite calls the statement-timeout check every this many virtual machine instructions.
PROGRESS_STEPS = 1000


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
            await conn.set_progress_handler(self._past_deadline, PROGRESS_STEPS)
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

        async def batches() -> AsyncIterator[list[tuple[Any, ...]]]:
            try:
                while columns:
                    batch = await cursor.fetchmany(FETCH_BATCH)
                    if not batch:
                        return
                    yield [tuple(row) for row in batch]
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            finally:
                self._finish()
                await cursor.close()

        return Result(columns=columns, rows=Batched(batches()), status=status)

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


# Errors raised while compiling a statement, before anything runs: their messages quote the
# statement's own text.
_COMPILE_ERROR = re.compile(
    r"ERROR: (near \"[^\n]*\": syntax error|incomplete input|no such (table|column|function): "
    r"[\w.$]+|wrong number of arguments to function \w+\(\))"
)
_END = re.compile(r"\s*END(\s+TRANSACTION)?\s*", re.I)
_VACUUM = re.compile(r"\s*VACUUM(\s+\w+)?\s*", re.I)
_EXPLAIN = re.compile(r"\s*EXPLAIN(\s+QUERY\s+PLAN)?\b", re.I)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Sqlite(SqlUnit):
    name = "sqlite"
    parser = "sqlglot"
    glot_name = "sqlite"

    backtick_identifiers = True
    bracket_identifiers = True
    open_comment_ends_input = True

    default_schemas = ("main",)
    name_moving_kinds = ("ATTACH",)

    dangerous_functions = {
        "load_extension": "loads and runs a shared library",
        "readfile": "reads a file",
        "writefile": "writes a file",
        "edit": "starts an editor",
        "fts3_tokenizer": "can load native code",
    }
    clients = {
        "sqlite3": Client(
            r"^\s*\.(shell|system|load)\b|\.(output|once|import)\s+['\"]?\|", flags=re.M
        )
    }
    has_user_functions = False  # SQLite has no functions but the broker's own
    statistics_tables = frozenset({"sqlite_stat1", "sqlite_stat4"})

    keywords = tuple(
        """
        PRAGMA AUTOINCREMENT GLOB REGEXP WITHOUT ROWID REPLACE IGNORE ABORT FAIL VACUUM ATTACH
        DETACH BLOB
        """.split()
    )
    fixed_error_codes = frozenset({9})  # SQLITE_INTERRUPT: cancelled, or the statement timeout

    def recognise(self, code: str, first: str) -> Recognised | None:
        if first == "END" and _END.fullmatch(code):
            return Recognised("COMMIT")
        if first == "VACUUM":
            if re.search(r"\bINTO\b", code, re.I):
                return Recognised(
                    "VACUUM", unknown="VACUUM INTO writes a copy of the database to a file"
                )
            if _VACUUM.fullmatch(code):
                return Recognised("VACUUM")
        explain = _EXPLAIN.match(code)
        if explain:  # SQLite's EXPLAIN shows the program; it does not run the statement
            return Recognised("EXPLAIN", inner_from=explain.end())
        return None

    def compile_error(self, exc: StatementError) -> bool:
        return _COMPILE_ERROR.fullmatch(str(exc)) is not None

    async def open(self, target: Any) -> SqliteConnection:
        return await SqliteConnection.open(target)

    def relations_sql(self) -> str:
        return (
            'SELECT \'main\' AS "Schema", name AS "Name", type AS "Type" '
            "FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        )

    def find_sql(self, schema: str | None, name: str) -> str:
        master = f"{_quote_ident(schema)}.sqlite_master" if schema else "sqlite_master"
        label = self.literal(schema or "main")
        return (
            f"SELECT {label}, name, type FROM {master} "
            f"WHERE type IN ('table', 'view') AND name = {self.literal(name)} "
            "COLLATE NOCASE LIMIT 1"
        )

    def columns_sql(self, relation: Relation) -> str:
        table = self.literal(relation.name)
        schema = self.literal(relation.schema)
        return (
            'SELECT name AS "Column", type AS "Type", '
            "CASE WHEN \"notnull\" THEN 'not null' ELSE '' END AS \"Nullable\", "
            "COALESCE(dflt_value, '') AS \"Default\" "
            f"FROM pragma_table_info({table}, {schema}) ORDER BY cid"
        )

    def indexes_sql(self, relation: Relation) -> str:
        table = self.literal(relation.name)
        schema = self.literal(relation.schema)
        return (
            "SELECT il.name, il.origin = 'pk', il.\"unique\", "
            "'(' || (SELECT group_concat(name, ', ') FROM "
            f"(SELECT ii.name FROM pragma_index_info(il.name, {schema}) ii "
            "ORDER BY ii.seqno)) || ')' "
            f"FROM pragma_index_list({table}, {schema}) il "
            "ORDER BY il.origin = 'pk' DESC, il.name"
        )

    def completion_sql(self, limit: int) -> str:
        return (
            "SELECT m.name, p.name FROM sqlite_master m "
            "JOIN pragma_table_info(m.name) p "
            "WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            f"ORDER BY m.name, p.cid LIMIT {limit}"
        )

    def relations_lookup(self, keys: Sequence[Key]) -> str:
        # Unqualified names: temp first, then main (SQLite's own order; names only in an
        # attached database are not found and stay opaque).
        rows = []
        schemas: dict[str, None] = {"temp": None, "main": None}
        for k, (schema, name) in enumerate(keys):
            for priority, sch in enumerate([schema] if schema else ["temp", "main"]):
                schemas[sch] = None
                rows.append(
                    f"SELECT {k} AS k, {priority} AS pri, {safe_literal(name)} AS n, '{sch}' AS s"
                )
        masters = " UNION ALL ".join(
            f"SELECT '{sch}' AS s, type, name, sql FROM \"{sch}\".sqlite_master"
            for sch in schemas  # (names checked by safe_literal)
        )
        return (
            "SELECT x.k, m.type, m.sql, p.name, x.pri, p.hidden IN (2, 3)"
            f" FROM ({' UNION ALL '.join(rows)}) AS x"
            f" JOIN ({masters}) AS m"
            " ON m.s = x.s AND m.name = x.n COLLATE NOCASE AND m.type IN ('table', 'view')"
            # table_xinfo: generated columns too (hidden 2, 3); not a virtual table's hidden
            # ones.
            " JOIN pragma_table_xinfo(m.name, m.s) AS p ON p.hidden <> 1"
            " ORDER BY x.k, x.pri, p.cid"
        )

    def catalog_row(self, row: tuple[Any, ...]) -> CatalogRow | None:
        k, table_type, definition, column, priority, generated = row
        kind = "view" if table_type == "view" else "table"
        named = (str(column),) if column is not None else ()
        return CatalogRow(
            int(k), kind, definition, named, named if generated else (), priority=priority
        )


UNIT = Sqlite()
