"""Masking against real databases: column rules through views (broker.masking_views), and the
values database error messages echo (broker.masking.error_messages.mask_error). PostgreSQL,
MariaDB and SQLite, through the broker's own connections (broker.protocols.open_database)."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from broker import masking_views
from broker.config import MysqlTarget, PostgresTarget, SqliteTarget
from broker.masking.config import MaskingConfig
from broker.masking.error_messages import mask_error
from broker.masking.masker import Masker
from broker.masking.plans import MaskPlan
from broker.masking.strategies import REDACTED
from broker.masking_views import column_sources, forget_views, prepare_column_sources
from broker.protocols import open_database
from broker.protocols.sql import DatabaseConnection, Result, StatementError
from tests.scratch_databases import scratch_postgres

MY_PASSWORD = "my-" + secrets.token_hex(8)
KEY = b"test-key"
# A rule naming the base table's column: view columns are not called "email", so only the
# lineage through the view definitions can mask them.
RULE = MaskingConfig.model_validate({"columns": [{"match": ["users.email"]}]})
JANE = "jane@example.com"


# --------------------------------------------------------------------------- databases

PG_SCHEMA = [
    "CREATE TABLE users (id int PRIMARY KEY, name text, email text UNIQUE, phone text)",
    f"INSERT INTO users VALUES (1, 'Jane', '{JANE}', '+1 415 555 2671'), "
    "(2, 'Bob', 'bob@example.com', NULL)",
    "CREATE VIEW v_users AS SELECT id, name, email FROM users",
    "CREATE VIEW v_renamed AS SELECT id, email AS e FROM users",
    "CREATE VIEW v_upper AS SELECT id, upper(email) AS shout FROM users",
    "CREATE VIEW v_nested AS SELECT id, e AS contact FROM v_renamed",  # a view over a view
    "CREATE VIEW v_deeper AS SELECT n.contact AS c, n.id FROM v_nested n",
    "CREATE VIEW v_names AS SELECT id, name FROM users",  # nothing sensitive
    "CREATE VIEW v_whole AS SELECT id, row_to_json(u) AS doc FROM users u",
    "CREATE VIEW v_cols (ident, addr) AS SELECT id, email FROM users",
    "CREATE FUNCTION email_of(int) RETURNS text AS 'SELECT email FROM users WHERE id = $1' "
    "LANGUAGE sql",
    "CREATE VIEW v_func AS SELECT id, email_of(id) AS x FROM users",
    "CREATE MATERIALIZED VIEW mv_users AS SELECT id, email AS m FROM users",
    "CREATE SCHEMA reporting",
    "CREATE VIEW reporting.v_people AS SELECT u.id, u.name, u.email AS mail FROM public.users u",
    "CREATE TABLE reporting.users (id int, email text)",
    "INSERT INTO reporting.users VALUES (5, 'r@example.com')",
]


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    with scratch_postgres(PG_SCHEMA) as name:
        yield name


@pytest.fixture(scope="module")
def mariadb_db() -> Iterator[str]:
    name = "hoop_test_" + secrets.token_hex(4)
    other = name + "_rep"
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cur:
            for db in (name, other):
                cur.execute(f"CREATE DATABASE {db}")
            for host in ("%", "localhost"):
                cur.execute(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY '{MY_PASSWORD}'")
                for db in (name, other):
                    cur.execute(f"GRANT ALL ON {db}.* TO '{name}'@'{host}'")
            cur.execute(f"USE {name}")
            for statement in (
                "CREATE TABLE users (id int PRIMARY KEY, name text, email varchar(100) UNIQUE,"
                " n int)",
                f"INSERT INTO users VALUES (1, 'Jane', '{JANE}', 1), (2, 'Bob', 'b@example.com', 2)",
                "CREATE VIEW v_users AS SELECT id, name, email FROM users",
                "CREATE VIEW v_renamed AS SELECT id, email AS e FROM users",
                "CREATE VIEW v_upper AS SELECT id, upper(email) AS shout FROM users",
                "CREATE VIEW v_nested AS SELECT id, e AS contact FROM v_renamed",
                "CREATE VIEW v_names AS SELECT id, name FROM users",
                "CREATE VIEW v_concat AS SELECT id, concat(name, ' <', email, '>') AS who "
                "FROM users",
                f"CREATE VIEW {other}.v_people AS SELECT u.id, u.email AS mail FROM {name}.users u",
            ):
                cur.execute(statement)
        yield name
    finally:
        with admin.cursor() as cur:
            for db in (name, other):
                cur.execute(f"DROP DATABASE IF EXISTS {db}")
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{name}'@'{host}'")
        admin.close()


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("views") / "app.db"
    with sqlite3.connect(path) as db:
        for statement in (
            "CREATE TABLE users (id int PRIMARY KEY, name text, email text UNIQUE)",
            f"INSERT INTO users VALUES (1, 'Jane', '{JANE}'), (2, 'Bob', 'bob@example.com')",
            "CREATE VIEW v_users AS SELECT id, name, email FROM users",
            "CREATE VIEW v_renamed AS SELECT id, email AS e FROM users",
            "CREATE VIEW v_upper AS SELECT id, upper(email) AS shout FROM users",
            "CREATE VIEW v_nested AS SELECT id, e AS contact FROM v_renamed",
            "CREATE VIEW v_names AS SELECT id, name FROM users",
            "CREATE VIEW v_cols (ident, addr) AS SELECT id, email FROM users",
        ):
            db.execute(statement)
    return path


@pytest.fixture
async def pg(postgres_db: str) -> AsyncIterator[DatabaseConnection]:
    target = PostgresTarget(
        name="pg",
        type="postgres",
        address="127.0.0.1:5432",
        database=postgres_db,
        user=postgres_db + "_app",
        tls="disable",
    )
    conn = await open_database(target)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def maria(mariadb_db: str, tmp_path: Path) -> AsyncIterator[DatabaseConnection]:
    secret = tmp_path / "my-secret"
    secret.write_text(MY_PASSWORD)
    target = MysqlTarget(
        name="maria",
        type="mysql",
        address="127.0.0.1:3306",
        database=mariadb_db,
        user=mariadb_db,
        credential=f"file:{secret}",
    )
    conn = await open_database(target)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def lite(sqlite_path: Path) -> AsyncIterator[DatabaseConnection]:
    conn = await open_database(SqliteTarget(name="lite", type="sqlite", path=sqlite_path))
    try:
        yield conn
    finally:
        await conn.close()


class Counting:
    """A connection that counts the statements it runs and can be told to fail lookups."""

    def __init__(self, conn: DatabaseConnection) -> None:
        self.conn = conn
        self.dialect = conn.dialect
        self.statements: list[str] = []
        self.fail = False

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        self.statements.append(sql)
        if self.fail:
            raise StatementError("ERROR: lookup refused")
        return await self.conn.execute(sql, query=query)

    async def close(self) -> None:
        await self.conn.close()


async def run(
    conn: Any, dialect: str, sql: str, config: MaskingConfig = RULE
) -> tuple[dict[str, list[object]], MaskPlan]:
    """What the broker does per statement: look up, execute, resolve (while the result
    streams), plan, mask. Returns {column: values} and the plan."""
    await prepare_column_sources(conn, dialect, sql)
    result = await conn.execute(sql, query=True)
    # The rows are still streaming here: column_sources must not need the connection.
    sources = await asyncio.wait_for(column_sources(conn, dialect, sql, result.columns), 10)
    plan = Masker(config, hash_key=KEY).plan(sources)
    rows = [plan.apply(row) async for row in result.rows]
    return {c: [row[i] for row in rows] for i, c in enumerate(result.columns)}, plan


def all_masked(values: list[object]) -> bool:
    return bool(values) and all(v == REDACTED for v in values if v is not None)


def none_masked(values: list[object]) -> bool:
    return REDACTED not in values


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize(
    ("sql", "masked", "clear"),
    [
        ("SELECT email FROM v_users", ["email"], []),
        ("SELECT * FROM v_users", ["email"], ["id", "name"]),
        ("SELECT e FROM v_renamed", ["e"], []),
        ("SELECT shout, id FROM v_upper", ["shout"], ["id"]),
        ("SELECT contact, id FROM v_nested", ["contact"], ["id"]),  # view over a view
        ("SELECT * FROM v_deeper", ["c"], ["id"]),  # and over that one
        ("SELECT mail, name FROM reporting.v_people", ["mail"], ["name"]),  # another schema
        ("SELECT ident, addr FROM v_cols", ["addr"], ["ident"]),  # column list in the view
        ("SELECT doc FROM v_whole", ["doc"], []),  # row_to_json(u) holds the email
        ("SELECT id, x FROM v_func", ["x"], ["id"]),  # a user-defined function: opaque
        ("SELECT m FROM mv_users", ["m"], []),  # a materialised view
        ("SELECT name, id FROM v_names", [], ["name", "id"]),  # nothing sensitive
        ("SELECT v.e, u.name FROM v_renamed v JOIN users u USING (id)", ["e"], ["name"]),
        ("SELECT lower(x.contact) AS l FROM (SELECT contact FROM v_nested) x", ["l"], []),
        ("WITH w AS (SELECT e FROM v_renamed) SELECT e AS k FROM w", ["k"], []),
        ("WITH w AS (SELECT name FROM v_names) SELECT name FROM w", [], ["name"]),  # a CTE
        ("SELECT name FROM v_names UNION ALL SELECT e FROM v_renamed", ["name"], []),
        ("SELECT count(*) AS n FROM v_users", [], ["n"]),
        ("SELECT id, email FROM reporting.users", ["email"], ["id"]),  # users in any schema
    ],
)
async def test_postgres_views(
    pg: DatabaseConnection, sql: str, masked: list[str], clear: list[str]
) -> None:
    values, plan = await run(pg, "postgres", sql)
    assert set(plan.masked_columns) >= set(masked), plan.masked_columns
    for column in masked:
        assert all_masked(values[column]), (column, values[column])
    for column in clear:
        assert none_masked(values[column]), (column, values[column])
    assert JANE not in repr(values) and JANE.upper() not in repr(values)


async def test_postgres_search_path_and_cache(pg: DatabaseConnection) -> None:
    conn = Counting(pg)
    sql = "SELECT mail FROM v_people"
    await prepare_column_sources(conn, "postgres", "SET search_path = reporting, public")
    await conn.execute("SET search_path = reporting, public", query=False)
    before = len(conn.statements)
    values, _ = await run(conn, "postgres", sql)
    assert all_masked(values["mail"])
    first = len(conn.statements) - before
    assert first >= 2  # the lookup, then the statement
    # Looked up again for each statement (another session may have replaced the view).
    await run(conn, "postgres", sql)
    assert len(conn.statements) == before + 2 * first
    lookups = len(conn.statements)
    await run(conn, "postgres", "SELECT 1 AS one")  # no relation: no lookup
    assert len(conn.statements) == lookups + 1
    # DDL drops the cache: the view is looked up again, and its new definition holds.
    ddl = (
        "CREATE OR REPLACE VIEW reporting.v_people AS SELECT u.id, u.name, u.name AS mail, "
        "u.email AS other FROM public.users u"
    )
    await prepare_column_sources(conn, "postgres", ddl)
    await conn.execute(ddl, query=False)
    values, _ = await run(conn, "postgres", "SELECT mail, other FROM v_people")
    assert none_masked(values["mail"]) and all_masked(values["other"])
    assert len(conn.statements) > lookups + 3
    restore = (
        "CREATE OR REPLACE VIEW reporting.v_people AS SELECT u.id, u.name, u.email AS mail "
        "FROM public.users u"
    )
    await conn.execute("DROP VIEW reporting.v_people", query=False)
    await conn.execute(restore, query=False)
    forget_views(conn)


async def test_postgres_fails_closed(
    pg: DatabaseConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not looked up (prepare_column_sources not called): opaque, so masked.
    conn = Counting(pg)
    sql = "SELECT name FROM v_names"
    result = await conn.execute(sql)
    sources = await column_sources(conn, "postgres", sql, result.columns)
    [row async for row in result.rows]
    assert sources[0].opaque
    # The lookup fails: opaque.
    conn.fail = True
    await prepare_column_sources(conn, "postgres", sql)
    conn.fail = False
    values, _ = await run(Counting(pg), "postgres", sql)  # a fresh cache: fine again
    assert none_masked(values["name"])
    conn.fail = True
    await prepare_column_sources(conn, "postgres", "SELECT e FROM v_renamed")
    conn.fail = False
    result = await conn.execute("SELECT e FROM v_renamed")
    sources = await column_sources(conn, "postgres", "SELECT e FROM v_renamed", result.columns)
    [row async for row in result.rows]
    assert sources[0].opaque
    # Nested deeper than MAX_DEPTH: the view's columns are opaque.
    monkeypatch.setattr(masking_views, "MAX_DEPTH", 1)
    values, _ = await run(Counting(pg), "postgres", "SELECT id FROM v_deeper")
    assert all_masked(values["id"])


async def test_postgres_without_views_plain_tables_stay_exact(pg: DatabaseConnection) -> None:
    values, plan = await run(pg, "postgres", "SELECT * FROM users")
    assert plan.masked_columns == ("email",)
    assert values["name"] == ["Jane", "Bob"]


# --------------------------------------------------------------------------- MariaDB


@pytest.mark.parametrize(
    ("sql", "masked", "clear"),
    [
        ("SELECT email FROM v_users", ["email"], []),
        ("SELECT * FROM v_users", ["email"], ["id", "name"]),
        ("SELECT e FROM v_renamed", ["e"], []),
        ("SELECT shout, id FROM v_upper", ["shout"], ["id"]),
        ("SELECT contact, id FROM v_nested", ["contact"], ["id"]),
        ("SELECT who FROM v_concat", ["who"], []),
        ("SELECT name, id FROM v_names", [], ["name", "id"]),
        ("SELECT v.e, u.name FROM v_renamed v JOIN users u USING (id)", ["e"], ["name"]),
    ],
)
async def test_mariadb_views(
    maria: DatabaseConnection, sql: str, masked: list[str], clear: list[str]
) -> None:
    values, _ = await run(maria, "mysql", sql)
    for column in masked:
        assert all_masked(values[column]), (column, values[column])
    for column in clear:
        assert none_masked(values[column]), (column, values[column])
    assert JANE not in repr(values).lower()


async def test_mariadb_view_in_another_database(maria: DatabaseConnection, mariadb_db: str) -> None:
    values, _ = await run(maria, "mysql", f"SELECT id, mail FROM {mariadb_db}_rep.v_people")
    assert all_masked(values["mail"]) and none_masked(values["id"])


# --------------------------------------------------------------------------- SQLite


@pytest.mark.parametrize(
    ("sql", "masked", "clear"),
    [
        ("SELECT email FROM v_users", ["email"], []),
        ("SELECT * FROM v_users", ["email"], ["id", "name"]),
        ("SELECT e FROM v_renamed", ["e"], []),
        ("SELECT shout FROM v_upper", ["shout"], []),
        ("SELECT contact, id FROM v_nested", ["contact"], ["id"]),
        ("SELECT ident, addr FROM v_cols", ["addr"], ["ident"]),
        ("SELECT name FROM v_names", [], ["name"]),
        ("SELECT * FROM main.v_renamed", ["e"], ["id"]),
    ],
)
async def test_sqlite_views(
    lite: DatabaseConnection, sql: str, masked: list[str], clear: list[str]
) -> None:
    values, _ = await run(lite, "sqlite", sql)
    for column in masked:
        assert all_masked(values[column]), (column, values[column])
    for column in clear:
        assert none_masked(values[column]), (column, values[column])


async def test_sqlite_temporary_view_shadows(lite: DatabaseConnection) -> None:
    ddl = "CREATE TEMP VIEW v_names AS SELECT id, email AS name FROM users"
    await prepare_column_sources(lite, "sqlite", ddl)
    await lite.execute(ddl, query=False)
    values, _ = await run(lite, "sqlite", "SELECT name FROM v_names")
    assert all_masked(values["name"])  # temp first, as SQLite resolves it


# --------------------------------------------------------------------------- error messages

ANY_MASKING = MaskingConfig.model_validate({"detectors": ["card"]})


def masker(config: MaskingConfig = RULE) -> Masker:
    return Masker(config, hash_key=KEY)


def postgres_error(postgres_db: str, sql: str) -> str:
    """The whole message psycopg reports (primary message, DETAIL, CONTEXT)."""
    with psycopg.connect(
        host="127.0.0.1", user=postgres_db + "_app", dbname=postgres_db, autocommit=True
    ) as db:
        with pytest.raises(psycopg.Error) as caught:
            db.execute(sql)  # type: ignore[arg-type]
    return str(caught.value)


def test_mask_error_postgres_unique_violation(postgres_db: str) -> None:
    text = postgres_error(postgres_db, f"INSERT INTO users VALUES (3, 'X', '{JANE}', NULL)")
    assert f"Key (email)=({JANE}) already exists" in text
    masked = mask_error(text, masker())
    assert JANE not in masked
    assert "Key (email)=([REDACTED]) already exists" in masked
    assert 'unique constraint "users_email_key"' in masked  # the rest stays readable
    assert masker().mask_error(text) == masked
    # Any masking configured (here a detector only): still redacted.
    assert JANE not in mask_error(text, masker(ANY_MASKING))
    # No masking at all: the message as it is.
    assert mask_error(text, masker(MaskingConfig())) == text


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        (f"INSERT INTO users VALUES (3, 'X', NULL, '{JANE}'), (3, 'Y', NULL, NULL)", "Key (id)="),
        (f"UPDATE users SET id = NULL WHERE email = '{JANE}'", "Failing row contains ("),
        (f"SELECT '{JANE}'::int", "invalid input syntax for type integer"),
        (f"SELECT '{{\"a\": {JANE}}}'::json", "Token"),
    ],
)
def test_mask_error_postgres_other_echoes(postgres_db: str, sql: str, fragment: str) -> None:
    text = postgres_error(postgres_db, sql)
    assert fragment in text
    masked = mask_error(text, masker())
    assert JANE not in masked.replace("LINE 1:", "")
    assert REDACTED in masked or "[REDACTED:email]" in masked


async def test_mask_error_through_the_broker_connection(
    pg: DatabaseConnection, maria: DatabaseConnection
) -> None:
    """The messages StatementError carries (what the sessions report)."""
    with pytest.raises(StatementError) as caught:
        await pg.execute(f"INSERT INTO users VALUES (9, 'X', '{JANE}', NULL)", query=False)
    assert JANE not in mask_error(str(caught.value), masker())
    with pytest.raises(StatementError) as caught:
        await maria.execute(f"INSERT INTO users VALUES (9, 'X', '{JANE}', 1)", query=False)
    text = str(caught.value)
    assert f"Duplicate entry '{JANE}' for key" in text
    masked = mask_error(text, masker())
    assert masked == text.replace(JANE, REDACTED)
    with pytest.raises(StatementError) as caught:
        await maria.execute(f"INSERT INTO users VALUES (9, 'X', 'x@y.io', '{JANE}')", query=False)
    text = str(caught.value)
    assert f"Incorrect integer value: '{JANE}'" in text
    assert mask_error(text, masker()) == text.replace(JANE, REDACTED)
    assert JANE not in mask_error(text, masker(ANY_MASKING))


def test_mask_error_runs_the_detectors() -> None:
    text = "ERROR: function f() failed for 4111 1111 1111 1111 and jane@example.com"
    only_card = masker(ANY_MASKING)
    assert mask_error(text, only_card) == (
        "ERROR: function f() failed for [REDACTED:card] and jane@example.com"
    )
    # With a column rule every detector runs: the value may come from a masked column.
    assert mask_error(text, masker()) == (
        "ERROR: function f() failed for [REDACTED:card] and [REDACTED:email]"
    )
