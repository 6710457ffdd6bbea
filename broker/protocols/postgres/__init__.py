"""PostgreSQL: psycopg with libpq's own cancel, read by pglast (PostgreSQL's parser)."""

# Catalog queries are built as text: every name in them passed literal() or safe_literal().
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from broker.protocols.base import TargetError
from broker.protocols.postgres.chunks import stream_chunks
from broker.protocols.sql import (
    CONNECT_TIMEOUT,
    FETCH_BATCH,
    Batched,
    CatalogRow,
    Client,
    Key,
    ProxyHost,
    Relation,
    Result,
    SqlUnit,
    StatementError,
    safe_literal,
)
from broker.protocols.sql_connect import ca_file, held_password, split_address, tls_unavailable

if TYPE_CHECKING:
    from pygments.lexer import Lexer

    from broker.config import PostgresTarget


class PostgresConnection:
    dialect = "postgres"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, target: PostgresTarget) -> PostgresConnection:
        host, port = split_address(target.address)
        tls: dict[str, str] = {"sslmode": target.tls}
        if target.tls == "verify-full":
            # psycopg's bundled libpq does not find the system CA store by itself ("system").
            tls["sslrootcert"] = ca_file(target) or "system"
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=host,
                port=port,
                dbname=target.database,
                user=target.user,
                password=held_password(target),
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
            raise TargetError(_connect_error(target, exc)) from None
        return cls(conn)

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        if not query:
            return await self._execute_buffered(sql)
        # Rows come in chunks (libpq chunked rows mode): memory stays bounded however many
        # rows the statement returns.
        cursor = self._conn.cursor()
        chunks = stream_chunks(cursor, sql, FETCH_BATCH)
        try:
            first = await anext(chunks, None)
        except psycopg.Error as exc:
            await cursor.close()
            raise _statement_error(exc) from None
        columns = [column.name for column in cursor.description or []]
        status = cursor.statusmessage or ""

        async def batches() -> AsyncIterator[list[tuple[Any, ...]]]:
            try:
                if first is None:
                    return
                yield first
                async for chunk in chunks:
                    yield chunk
            except psycopg.Error as exc:
                raise _statement_error(exc) from None
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
                await cursor.close()

        return Result(columns=columns, rows=Batched(batches()), status=status)

    async def _execute_buffered(self, sql: str) -> Result:
        async with self._conn.cursor() as cursor:
            try:
                await cursor.execute(sql)  # type: ignore[arg-type]
                columns = [column.name for column in cursor.description or []]
                fetched = await cursor.fetchall() if columns else []
            except psycopg.Error as exc:
                raise _statement_error(exc) from None
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


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    return f"{diag.severity or 'ERROR'}: {diag.message_primary or str(exc).splitlines()[0]}"


def _statement_error(exc: psycopg.Error) -> StatementError:
    sqlstate = exc.diag.sqlstate or getattr(exc, "sqlstate", None)
    name = type(exc).__name__  # the driver's own errors have no SQLSTATE: ProgrammingError
    if sqlstate:
        with contextlib.suppress(KeyError):
            name = psycopg.errors.lookup(sqlstate).__name__  # InvalidTextRepresentation
    condition = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).lower()
    return StatementError(_message(exc), sqlstate=sqlstate, condition=condition)


def _connect_error(target: PostgresTarget, exc: psycopg.OperationalError) -> str:
    text = str(exc)
    if "password authentication failed" in text or "no password supplied" in text:
        return f"target {target.name}: the database refused the broker's credentials"
    if "does not exist" in text:
        return f"target {target.name}: database or role does not exist"
    if "does not support SSL" in text:
        return str(tls_unavailable(target))
    if "does not match host name" in text:
        host = split_address(target.address)[0]
        return (
            f"target {target.name}: TLS certificate verification failed: "
            f"the certificate is not valid for {host}"
        )
    if "certificate verify failed" in text:
        return f"target {target.name}: TLS certificate verification failed"
    return f"target {target.name} unreachable: the database did not accept a connection"


# -- catalog queries ------------------------------------------------------------------------

_KIND = (
    "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' "
    "WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' "
    "WHEN 'f' THEN 'foreign table' END"
)
_USER_SCHEMAS = (
    "n.nspname <> 'pg_catalog' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_toast'"
)
_RELKINDS = ("r", "v", "m", "p", "f", "S")


class Postgres(SqlUnit):
    name = "postgres"
    aliases = ("postgresql",)
    parser = "pglast"

    escape_strings = True
    dollar_quotes = True
    nested_comments = True
    folds_to_lower = True

    default_schemas = ("public",)
    catalog_schema_prefix = ("pg_", "pg_catalog")
    names_move_after_unknown = True
    name_moving_kinds = (
        "SET SEARCH_PATH",
        "SET ROLE",
        "SET SESSION AUTHORIZATION",
        "RESET",
        "DISCARD",
    )
    statistics_tables = frozenset(
        {"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data"}
    )
    catalog_sees_session_tables = True

    keywords = tuple(
        """
        SERIAL BIGSERIAL JSONB JSON UUID BYTEA ARRAY ANY SOME LATERAL SCHEMA SEQUENCE
        MATERIALIZED REFRESH VACUUM CONFLICT DO NOTHING TABLESAMPLE SIMILAR RETURNS FUNCTION
        """.split()
    )
    clients = {
        "psql": Client(r"\\!|\\(?:o|out|g|w|write|gx)\s*\||\bprogram\b", ("-c", "--command"), re.I)
    }
    command_tags = True
    cancel_aborts_transaction = True

    drift_query = (
        "SELECT current_setting('client_encoding'), current_setting('standard_conforming_strings')"
    )

    def drift(self, row: tuple[Any, ...]) -> str | None:
        encoding, conforming = str(row[0]).upper(), str(row[1]).lower()
        if encoding not in ("UTF8", "UTF-8"):
            return f"the session's client encoding changed to {encoding}"
        if conforming != "on":
            return "the session turned standard_conforming_strings off"
        return None

    def lexer(self) -> type[Lexer]:
        from pygments.lexers.sql import PostgresLexer

        return PostgresLexer

    def literal(self, text: str) -> str:
        return f"convert_from(decode('{text.encode('utf-8').hex()}', 'hex'), 'UTF8')"

    async def open(self, target: Any) -> PostgresConnection:
        return await PostgresConnection.open(target)

    native_clients = True

    async def serve_native(
        self, host: ProxyHost, reader: Any, writer: Any, *, password_sha256: str | None
    ) -> None:
        from broker.protocols.postgres.proxy import serve_client

        await serve_client(host, reader, writer, password_sha256=password_sha256)

    def relations_sql(self) -> str:
        return (
            'SELECT n.nspname AS "Schema", c.relname AS "Name", '
            f'{_KIND} AS "Type" '
            "FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
            f"AND {_USER_SCHEMAS} AND pg_catalog.pg_table_is_visible(c.oid) "
            "ORDER BY 1, 2"
        )

    def find_sql(self, schema: str | None, name: str) -> str:
        where = (
            f"n.nspname = {self.literal(schema)}"
            if schema is not None
            else "pg_catalog.pg_table_is_visible(c.oid)"
        )
        return (
            f"SELECT n.nspname, c.relname, {_KIND}, c.oid::bigint "
            "FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relname = {self.literal(name)} AND {where} "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') LIMIT 1"
        )

    def columns_sql(self, relation: Relation) -> str:
        return (
            'SELECT a.attname AS "Column", '
            'pg_catalog.format_type(a.atttypid, a.atttypmod) AS "Type", '
            "CASE WHEN a.attnotnull THEN 'not null' ELSE '' END AS \"Nullable\", "
            "COALESCE(pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') AS \"Default\" "
            "FROM pg_catalog.pg_attribute a "
            "LEFT JOIN pg_catalog.pg_attrdef d "
            "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            f"WHERE a.attrelid = {int(relation.oid or 0)} AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY a.attnum"
        )

    def indexes_sql(self, relation: Relation) -> str:
        return (
            "SELECT c2.relname, i.indisprimary, i.indisunique, "
            "regexp_replace(pg_catalog.pg_get_indexdef(i.indexrelid, 0, true), "
            "'^.* USING ', '') "
            "FROM pg_catalog.pg_index i "
            "JOIN pg_catalog.pg_class c2 ON c2.oid = i.indexrelid "
            f"WHERE i.indrelid = {int(relation.oid or 0)} "
            "ORDER BY i.indisprimary DESC, c2.relname"
        )

    def completion_sql(self, limit: int) -> str:
        return (
            "SELECT c.relname, a.attname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_catalog.pg_attribute a "
            "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') "
            f"AND {_USER_SCHEMAS} AND pg_catalog.pg_table_is_visible(c.oid) "
            f"ORDER BY c.relname, a.attnum LIMIT {limit}"
        )

    def relations_lookup(self, keys: Sequence[Key]) -> str:
        rows = []
        for k, (schema, name) in enumerate(keys):
            s = safe_literal(schema) if schema is not None else "NULL"
            rows.append(f"({k}, {s}::text, {safe_literal(name)}::text)")
        return (
            "SELECT x.k, c.relkind::text,"
            " CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END,"
            " ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a"
            " WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attnum),"
            " ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a"
            " WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " AND a.attgenerated <> ''),"
            # Tables that share rows with it: its ancestors and descendants (inheritance,
            # partitions).
            " ARRAY(WITH RECURSIVE up(o) AS (SELECT i.inhparent FROM pg_catalog.pg_inherits i"
            " WHERE i.inhrelid = c.oid UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i"
            " JOIN up ON i.inhrelid = up.o), down(o) AS (SELECT i.inhrelid FROM"
            " pg_catalog.pg_inherits i WHERE i.inhparent = c.oid UNION SELECT i.inhrelid FROM"
            " pg_catalog.pg_inherits i JOIN down ON i.inhparent = down.o)"
            " SELECT r.relname::text FROM pg_catalog.pg_class r"
            " WHERE r.oid IN (SELECT o FROM up UNION SELECT o FROM down))"
            f" FROM (VALUES {', '.join(rows)}) AS x(k, s, r)"
            " JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass("
            "CASE WHEN x.s IS NULL THEN pg_catalog.quote_ident(x.r)"
            " ELSE pg_catalog.quote_ident(x.s) || '.' || pg_catalog.quote_ident(x.r) END)"
        )

    def catalog_row(self, row: tuple[Any, ...]) -> CatalogRow | None:
        k, relkind, definition, names, generated, family = row
        if relkind not in _RELKINDS:
            return None
        kind = "view" if relkind in ("v", "m") else "table"  # materialised: a view too
        return CatalogRow(
            int(k),
            kind,
            definition,
            tuple(names or ()),
            tuple(generated or ()),
            tuple(family or ()),
        )

    def functions_lookup(self, names: Sequence[str]) -> str | None:
        listed = ", ".join(safe_literal(n) or "''" for n in names)
        # Built-ins (oid < 16384) write no table. Any other function may, but for the stable
        # and immutable functions of extensions (pgcrypto's digest, …): PostgreSQL refuses
        # writes in non-volatile functions, but a user's stable function may call a volatile
        # one, which may.
        return (
            "SELECT DISTINCT lower(p.proname::text) FROM pg_catalog.pg_proc p"
            f" WHERE p.oid >= 16384 AND lower(p.proname::text) IN ({listed})"
            " AND (p.provolatile = 'v' OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d"
            " WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid"
            " AND d.deptype = 'e'))"
        )


UNIT = Postgres()
