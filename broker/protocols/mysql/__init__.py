"""MySQL and MariaDB: aiomysql with KILL QUERY as the cancel, read by sqlglot's MySQL dialect.

Native clients (`hoopctl proxy`) are served in the package's own modules: packets.py (framing,
OK/ERR/EOF), handshake.py (the connection phase), lexer.py (placeholders, statements, KILL),
values.py (columns, rows, parameters), upstream.py (the broker's raw connection to the target),
results.py (relaying and masking answers) and proxy.py (the server side)."""

# Catalog queries are built as text: every name in them passed literal() or safe_literal().
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiomysql
import pymysql
from pymysql.constants import CLIENT

from broker.protocols.base import TargetError
from broker.protocols.sql import (
    CONNECT_TIMEOUT,
    FETCH_BATCH,
    Batched,
    CatalogRow,
    Client,
    Key,
    ProxyHost,
    Recognised,
    Relation,
    Result,
    SqlUnit,
    StatementError,
    safe_literal,
)
from broker.protocols.sql_connect import ca_file, held_password, split_address, tls_unavailable

if TYPE_CHECKING:
    from pygments.lexer import Lexer

    from broker.config import MysqlTarget


# -- how the session reads text -------------------------------------------------------------

# sql_mode values that change nothing about how statement text is read.
SAFE_SQL_MODES = frozenset(
    {
        "", "STRICT_TRANS_TABLES", "STRICT_ALL_TABLES", "ERROR_FOR_DIVISION_BY_ZERO",
        "NO_AUTO_CREATE_USER", "NO_ENGINE_SUBSTITUTION", "ONLY_FULL_GROUP_BY", "NO_ZERO_DATE",
        "NO_ZERO_IN_DATE", "ALLOW_INVALID_DATES", "NO_AUTO_VALUE_ON_ZERO",
        "NO_UNSIGNED_SUBTRACTION", "PAD_CHAR_TO_FULL_LENGTH", "TRADITIONAL", "REAL_AS_FLOAT",
        "TIME_ROUND_FRACTIONAL", "SIMULTANEOUS_ASSIGNMENT", "NO_DIR_IN_CREATE",
        "NO_FIELD_OPTIONS", "NO_KEY_OPTIONS", "NO_TABLE_OPTIONS", "EMPTY_STRING_IS_NULL",
    }
)  # fmt: skip

_USER_VARIABLE = re.compile(r"(?<!@)@(?!@)(`[^`]*`|[\w$.]+)")
_CHARSET = re.compile(
    r"(?<![\w$])(names|charset|character\s+set|character_set_\w+|collation_connection)(?![\w$])",
    re.I,
)
_SQL_MODE = re.compile(r"(?<![\w$])sql_mode(?![\w$])", re.I)
_SAFE_MODE_SET = re.compile(
    r"\s*SET\s+(?:SESSION\s+|LOCAL\s+|@@(?:SESSION\.|LOCAL\.)?)?sql_mode\s*:?=\s*'([A-Za-z_, ]*)'\s*",
    re.I,
)


def state_problem(text: str, bare: str) -> str | None:
    """Why the broker refuses a statement that changes how later text is read. TEXT is the
    statement; BARE the same with comments and the contents of strings blanked out."""
    if not re.match(r"\s*SET(?![\w$])", bare, re.I):
        return None
    names = _USER_VARIABLE.sub(" ", bare)
    if _CHARSET.search(names):
        return (
            "the broker fixes the connection character set (utf8mb4); in some character sets "
            "(gbk, big5, sjis, cp932, gb18030) a multi-byte character can hide a backslash or "
            "a quote, so the server would read later statements differently from the broker"
        )
    if _SQL_MODE.search(names):
        safe = _SAFE_MODE_SET.fullmatch(text)
        if safe and all(
            mode.strip().upper() in SAFE_SQL_MODES for mode in safe.group(1).split(",")
        ):
            return None
        return (
            "sql_mode may only be set to a literal list of modes that do not change how "
            "statements are read (NO_BACKSLASH_ESCAPES, ANSI_QUOTES, ANSI, PIPES_AS_CONCAT, "
            "IGNORE_SPACE and the compatibility modes are refused)"
        )
    return None


def safe_sql_mode(current: str) -> str:
    """The server's sql_mode without the modes that change how statement text is read."""
    return ",".join(m for m in current.split(",") if m.strip().upper() in SAFE_SQL_MODES)


# -- the connection -------------------------------------------------------------------------


class _TlsUnavailableError(Exception):
    pass


class _VerifiedConnection(aiomysql.Connection):  # type: ignore[misc]
    """aiomysql quietly goes on in plain text (credentials included) when the server offers no
    TLS; with require_tls this refuses before anything is sent."""

    def __init__(self, *, require_tls: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._require_tls = require_tls

    async def _request_authentication(self) -> None:
        if self._require_tls and not self.server_capabilities & CLIENT.SSL:
            raise _TlsUnavailableError
        await super()._request_authentication()


def tls_context(target: MysqlTarget) -> ssl.SSLContext | None:
    if target.tls == "disable":
        return None
    if target.tls == "verify-full":
        return ssl.create_default_context(cafile=ca_file(target))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _connect(target: MysqlTarget) -> aiomysql.Connection:
    host, port = split_address(target.address)
    conn = _VerifiedConnection(
        require_tls=target.tls in ("require", "verify-full"),
        host=host,
        port=port,
        user=target.user,
        password=held_password(target) or "",
        db=target.database,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        charset="utf8mb4",
        ssl=tls_context(target),
        init_command=(
            f"SET SESSION max_statement_time = {target.statement_timeout}"
            if target.statement_timeout
            else None
        ),
    )
    try:
        await conn._connect()
        await _fix_sql_mode(conn)
    except _TlsUnavailableError:
        raise tls_unavailable(target) from None
    except pymysql.err.OperationalError as exc:
        raise TargetError(_connect_error(target, exc)) from None
    return conn


async def _fix_sql_mode(conn: aiomysql.Connection) -> None:
    """The server's sql_mode without the modes that change how statement text is read
    (ANSI_QUOTES, NO_BACKSLASH_ESCAPES, …): the broker parses as the server then reads."""
    async with conn.cursor() as cursor:
        await cursor.execute("SELECT @@SESSION.sql_mode")
        (current,) = await cursor.fetchone()
        wanted = safe_sql_mode(current or "")
        if wanted != current:
            await cursor.execute("SET SESSION sql_mode = %s", (wanted,))


def _connect_error(target: MysqlTarget, exc: pymysql.err.OperationalError) -> str:
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


def _message(exc: pymysql.err.MySQLError) -> str:
    return f"ERROR: {exc.args[1] if len(exc.args) > 1 else exc}"


# Error numbers -> their names in pymysql (TRUNCATED_WRONG_VALUE, ...).
_ERROR_NAMES = {
    value: name
    for name, value in reversed(vars(pymysql.constants.ER).items())
    if name.isupper() and isinstance(value, int)
}


def error_condition(code: int | None) -> str | None:
    """The fixed name of server error CODE: 1292 -> "truncated wrong value"."""
    name = _ERROR_NAMES.get(code) if code is not None else None
    return name.replace("_", " ").lower() if name else None


def _statement_error(exc: pymysql.err.MySQLError) -> StatementError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return StatementError(
        _message(exc),
        sqlstate=getattr(exc, "sqlstate", None),
        code=code,
        condition=error_condition(code),
    )


class MysqlConnection:
    dialect = "mysql"

    def __init__(self, conn: aiomysql.Connection, target: MysqlTarget) -> None:
        self._conn = conn
        self._target = target
        self._running = False

    @classmethod
    async def open(cls, target: MysqlTarget) -> MysqlConnection:
        return cls(await _connect(target), target)

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        # An unbuffered cursor streams rows from the server instead of loading them all.
        cursor = await self._conn.cursor(aiomysql.SSCursor)
        self._running = True
        try:
            await cursor.execute(sql)
        except pymysql.err.MySQLError as exc:
            self._running = False
            await cursor.close()
            raise _statement_error(exc) from None
        columns = [column[0] for column in cursor.description or []]
        status = f"{cursor.rowcount} row(s) affected" if not columns else ""
        self._running = bool(columns)

        async def batches() -> AsyncIterator[list[tuple[Any, ...]]]:
            try:
                while columns:
                    batch = await cursor.fetchmany(FETCH_BATCH)
                    if not batch:
                        return
                    yield [tuple(row) for row in batch]
            except pymysql.err.MySQLError as exc:
                # With a streaming cursor, errors such as a statement timeout arrive mid-fetch.
                raise _statement_error(exc) from None
            finally:
                self._running = False
                with contextlib.suppress(pymysql.err.MySQLError):
                    await cursor.close()

        return Result(columns=columns, rows=Batched(batches()), status=status)

    async def cancel(self) -> None:
        if not self._running:
            return
        # The protocol has no in-band cancel: kill the statement from a second connection.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                killer = await _connect(self._target)
                try:
                    async with killer.cursor() as cursor:
                        await cursor.execute(f"KILL QUERY {int(self._conn.thread_id())}")
                finally:
                    killer.close()

    async def close(self) -> None:
        self._conn.close()


# -- the unit -------------------------------------------------------------------------------

_KIND = (
    "CASE TABLE_TYPE WHEN 'BASE TABLE' THEN 'table' WHEN 'SYSTEM VERSIONED' THEN 'table' "
    "WHEN 'VIEW' THEN 'view' WHEN 'SEQUENCE' THEN 'sequence' "
    "WHEN 'TEMPORARY' THEN 'table' ELSE lower(TABLE_TYPE) END"
)
# Errors raised while compiling a statement, before anything runs: their messages quote the
# statement's own text (syntax, unknown column, table or function).
_COMPILE_ERRORS = frozenset({1054, 1064, 1146, 1305})
# MariaDB's ANALYZE [FORMAT=…] statement runs the statement and reports on it.
_ANALYZE = re.compile(
    r"\s*ANALYZE(\s+FORMAT\s*=\s*\w+)?\s+(?=(SELECT|UPDATE|DELETE|INSERT|REPLACE|WITH|VALUES|TABLE)\b)",
    re.I,
)


class Mysql(SqlUnit):
    name = "mysql"
    aliases = ("mariadb",)
    parser = "sqlglot"
    glot_name = "mysql"

    backslash_escapes = True
    backtick_identifiers = True
    hash_comments = True
    dash_comment_needs_space = True
    executable_comments = True
    identifier_quote = "`"

    current_schema_known = False  # the current database: USE may change it at any time

    dangerous_functions = {
        "load_file": "reads a file on the server",
        "sys_exec": "runs a shell command",
        "sys_eval": "runs a shell command",
    }
    clients = dict.fromkeys(
        ("mysql", "mariadb"),
        Client(r"\\!|(?:^|[;\s])system\s", ("-e", "--execute"), re.I),
    )
    coerces_strings = True
    values_function = True
    statistics_tables = frozenset({"column_stats", "column_statistics"})

    keywords = tuple(
        """
        DESCRIBE DESC TABLES DATABASES COLUMNS AUTO_INCREMENT ENGINE REPLACE IGNORE DUPLICATE
        STRAIGHT_JOIN REGEXP RLIKE UNSIGNED TINYINT MEDIUMINT DATETIME LONGTEXT ENUM
        """.split()
    )
    # lock wait, deadlock, interrupted: fixed text
    fixed_error_codes = frozenset({1205, 1213, 1317, 1969, 3024})

    drift_query = "SELECT @@character_set_client, @@character_set_connection, @@sql_mode"

    def drift(self, row: tuple[Any, ...]) -> str | None:
        client, connection, modes = (str(v or "") for v in row)
        for name, value in (("client", client), ("connection", connection)):
            if value.lower() != "utf8mb4":
                return f"the session's {name} character set changed to {value}"
        unsafe = [m for m in modes.split(",") if m.strip().upper() not in SAFE_SQL_MODES]
        if unsafe:
            return f"the session's sql_mode now holds {', '.join(unsafe)}"
        return None

    def state_problem(self, code: str, bare: str) -> str | None:
        return state_problem(code, bare)

    def recognise(self, code: str, first: str) -> Recognised | None:
        analyzed = _ANALYZE.match(code) if first == "ANALYZE" else None
        if analyzed:
            return Recognised("ANALYZE", inner_from=analyzed.end(), runs_inner=True)
        return None

    def compile_error(self, exc: StatementError) -> bool:
        return exc.code in _COMPILE_ERRORS

    def lexer(self) -> type[Lexer]:
        from pygments.lexers.sql import MySqlLexer

        return MySqlLexer

    def literal(self, text: str) -> str:
        return f"CONVERT(X'{text.encode('utf-8').hex()}' USING utf8mb4)"

    async def open(self, target: Any) -> MysqlConnection:
        return await MysqlConnection.open(target)

    native_clients = True

    async def serve_native(
        self, host: ProxyHost, reader: Any, writer: Any, *, password_sha256: str | None
    ) -> None:
        from broker.protocols.mysql.proxy import serve_client

        await serve_client(host, reader, writer, password_sha256=password_sha256)

    def relations_sql(self) -> str:
        return (
            "SELECT TABLE_SCHEMA AS `Schema`, TABLE_NAME AS `Name`, "
            f"{_KIND} AS `Type` "
            "FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "ORDER BY TABLE_NAME"
        )

    def find_sql(self, schema: str | None, name: str) -> str:
        database = self.literal(schema) if schema is not None else "DATABASE()"
        return (
            f"SELECT TABLE_SCHEMA, TABLE_NAME, {_KIND} "
            f"FROM information_schema.TABLES WHERE TABLE_SCHEMA = {database} "
            f"AND TABLE_NAME = {self.literal(name)} LIMIT 1"
        )

    def columns_sql(self, relation: Relation) -> str:
        return (
            "SELECT COLUMN_NAME AS `Column`, COLUMN_TYPE AS `Type`, "
            "CASE IS_NULLABLE WHEN 'NO' THEN 'not null' ELSE '' END AS `Nullable`, "
            "TRIM(CONCAT(COALESCE(CASE WHEN COLUMN_DEFAULT = 'NULL' THEN NULL "
            "ELSE COLUMN_DEFAULT END, ''), ' ', EXTRA)) AS `Default` "
            "FROM information_schema.COLUMNS "
            f"WHERE TABLE_SCHEMA = {self.literal(relation.schema)} "
            f"AND TABLE_NAME = {self.literal(relation.name)} "
            "ORDER BY ORDINAL_POSITION"
        )

    def indexes_sql(self, relation: Relation) -> str:
        return (
            "SELECT INDEX_NAME, INDEX_NAME = 'PRIMARY', MAX(NON_UNIQUE) = 0, "
            "CONCAT(lower(INDEX_TYPE), ' (', "
            "GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ', '), ')') "
            "FROM information_schema.STATISTICS "
            f"WHERE TABLE_SCHEMA = {self.literal(relation.schema)} "
            f"AND TABLE_NAME = {self.literal(relation.name)} "
            "GROUP BY INDEX_NAME, INDEX_TYPE "
            "ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME"
        )

    def completion_sql(self, limit: int) -> str:
        return (
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() "
            f"ORDER BY TABLE_NAME, ORDINAL_POSITION LIMIT {limit}"
        )

    def relations_lookup(self, keys: Sequence[Key]) -> str:
        rows = []
        for k, (schema, name) in enumerate(keys):
            s = safe_literal(schema) if schema is not None else "''"
            rows.append(f"SELECT {k} AS k, {s} AS s, {safe_literal(name)} AS n")
        return (
            "SELECT x.k, t.TABLE_TYPE, v.VIEW_DEFINITION, c.COLUMN_NAME,"
            " c.EXTRA LIKE '%GENERATED%' OR c.EXTRA IN ('VIRTUAL', 'PERSISTENT', 'STORED')"
            f" FROM ({' UNION ALL '.join(rows)}) AS x"
            " JOIN information_schema.TABLES t"
            " ON t.TABLE_SCHEMA = COALESCE(NULLIF(x.s, ''), DATABASE()) AND t.TABLE_NAME = x.n"
            " LEFT JOIN information_schema.VIEWS v"
            " ON v.TABLE_SCHEMA = t.TABLE_SCHEMA AND v.TABLE_NAME = t.TABLE_NAME"
            " LEFT JOIN information_schema.COLUMNS c"
            " ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME"
            " ORDER BY x.k, c.ORDINAL_POSITION"
        )

    def catalog_row(self, row: tuple[Any, ...]) -> CatalogRow | None:
        k, table_type, definition, column, generated = row
        kind = "view" if str(table_type).upper() == "VIEW" else "table"
        named = (str(column),) if column is not None else ()
        return CatalogRow(int(k), kind, definition, named, named if generated else ())

    def functions_lookup(self, names: Sequence[str]) -> str | None:
        listed = ", ".join(safe_literal(n) or "''" for n in names)
        return (
            "SELECT DISTINCT LOWER(ROUTINE_NAME) FROM information_schema.ROUTINES"
            f" WHERE ROUTINE_TYPE = 'FUNCTION' AND LOWER(ROUTINE_NAME) IN ({listed})"
        )


UNIT = Mysql()
