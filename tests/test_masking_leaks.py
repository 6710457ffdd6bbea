"""Masking follows values, not only SELECT lists (issue 11, point 4).

What a session writes into a table, a MySQL variable or a server setting carries the taint of
what went in, for the rest of the session; RETURNING shows it; code the broker cannot follow
makes everything opaque; an error of a statement that reads masked data is told without the
server's message. Against real PostgreSQL, MariaDB and SQLite.

Most tests run in-process through ``SqlSessionBase._query`` (what the SQL shell and
``hoopctl exec`` run for each statement: look up, record what the statement writes, run it,
mask its rows or its error), each attack twice: once on a target without masking, which must
show the clear value (the attack is real), and once with column rules on ``users.email`` and
``users.card`` and every value detector, which must not. The values are looked for in the
forms the attacks produce (reversed, translated, upper case), which no detector recognises.
A few end-to-end ``hoopctl exec`` runs check the output, the recording and the audit log.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.config import MysqlTarget, PostgresTarget, SqliteTarget
from broker.masking.config import MaskingConfig
from broker.masking.detectors import DETECTORS
from broker.masking.lineage_pglast import column_sources_pglast
from broker.masking.masker import Masker
from broker.masking_effects import analyze
from broker.masking_views import SharedTaint, shared_taint
from broker.policy.sql import parse_sql
from broker.protocols import open_database
from broker.protocols.sql import DatabaseConnection, StatementError
from broker.sessions.sql_base import SqlSessionBase
from tests.helpers import BrokerProcess, User, dev_config, free_port, start_broker
from tests.scratch_databases import scratch_mariadb, scratch_postgres

MY_PASSWORD = "my-" + secrets.token_hex(8)
PG_PASSWORD = "pg-" + secrets.token_hex(8)
KEY = b"test-key"

JANE = "jane@example.com"
CARD = "4111111111111111"
# The forms the attacks below give the values: none is what a detector looks for.
FORMS = (
    JANE,
    JANE[::-1],  # reverse(email)
    JANE.upper(),
    JANE.upper()[::-1],
    JANE.replace("@", "_").replace(".", "_"),  # translate(email, '@.', '__')
    CARD,
    CARD[::-1],  # reverse(card): 1111111111111114, not a card number to the detector
    CARD[1:],
)

MASKED = MaskingConfig.model_validate(
    {"detectors": list(DETECTORS), "columns": [{"match": ["users.email", "users.card"]}]}
)
CLEAR = MaskingConfig()  # the control: a target without masking


# One of the variants is MariaDB's deprecated SELECT … FROM … INTO @v.
pytestmark = pytest.mark.filterwarnings("ignore:'<select expression> INTO")


def leaked(text: str) -> list[str]:
    return [form for form in FORMS if form in text]


# --------------------------------------------------------------------------- databases

USERS = [
    (1, "Jane", JANE, CARD, "n1"),
    (2, "Bob", "bob@example.org", "5500000000000004", "n2"),
]


def _users_sql() -> str:
    return ", ".join(f"({i}, '{n}', '{e}', '{c}', '{x}')" for i, n, e, c, x in USERS)


PG_SCHEMA = [
    "CREATE TABLE users (id int PRIMARY KEY, name text, email text, card text, notes text)",
    f"INSERT INTO users VALUES {_users_sql()}",
    "CREATE TABLE archive (id int, note text)",  # an existing table the attacks fill
    "CREATE TABLE logs (id int, x text)",  # with a child (inheritance): rows of one in both
    "CREATE TABLE logs_2024 () INHERITS (logs)",
    "CREATE VIEW v_names AS SELECT id, name FROM users",  # an auto-updatable view
    "CREATE FUNCTION stash(v text) RETURNS int LANGUAGE sql AS "
    "'INSERT INTO archive VALUES (0, v) RETURNING 1'",  # a volatile function that writes
    "CREATE FUNCTION shout(v text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT upper(v)'",
]


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    with scratch_postgres(PG_SCHEMA, password=PG_PASSWORD) as name:
        yield name


@pytest.fixture(scope="module")
def mariadb_db() -> Iterator[str]:
    schema = (
        "CREATE TABLE users (id int PRIMARY KEY, name text, email varchar(100),"
        " card varchar(30), notes text)",
        f"INSERT INTO users VALUES {_users_sql()}",
        "CREATE TABLE archive (id int, note text)",
        "CREATE PROCEDURE fill() INSERT INTO archive SELECT id, REVERSE(email) FROM users",
        "CREATE FUNCTION stash(v text) RETURNS int MODIFIES SQL DATA "
        "BEGIN INSERT INTO archive VALUES (0, v); RETURN 1; END",
    )
    with scratch_mariadb(schema, password=MY_PASSWORD) as name:
        yield name


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("leaks") / "app.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text, email text, card text, notes text)"
        )
        db.execute(f"INSERT INTO users VALUES {_users_sql()}")
        db.execute("CREATE TABLE archive (id int, note text)")
    return path


@pytest.fixture(scope="module")
def targets(
    postgres_db: str, mariadb_db: str, sqlite_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    secret = tmp_path_factory.mktemp("secret") / "my-secret"
    secret.write_text(MY_PASSWORD)
    return {
        "postgres": PostgresTarget(
            name="pg",
            type="postgres",
            address="127.0.0.1:5432",
            database=postgres_db,
            user=postgres_db + "_app",
            tls="disable",
        ),
        "mysql": MysqlTarget(
            name="maria",
            type="mysql",
            address="127.0.0.1:3306",
            database=mariadb_db,
            user=mariadb_db,
            credential=f"file:{secret}",
        ),
        "sqlite": SqliteTarget(name="lite", type="sqlite", path=sqlite_path),
    }


class Session(SqlSessionBase):
    """One SQL session as the shell and `hoopctl exec` run it (SqlSessionBase._query for each
    statement of the input, split as they split it), collecting what the user is shown."""

    def __init__(
        self, target: Any, conn: DatabaseConnection, config: MaskingConfig, shared: Path
    ) -> None:
        self._target = target
        self._masker = Masker(config, hash_key=KEY)
        self.conn = conn
        self.shared = shared

    def _shared_taint(self) -> SharedTaint | None:
        return shared_taint(self.shared)

    async def run(self, sql: str) -> str:
        shown: list[str] = []
        for statement in parse_sql(sql, self.dialect).statements:  # type: ignore[arg-type]
            try:
                result = await self._query(self.conn, statement.text, statement.kind)
                shown.append(" | ".join(result.columns))
                shown += [" | ".join(map(str, row)) async for row in result.rows]
                shown.append(result.status)
            except StatementError as exc:
                shown.append(str(exc))
        return "\n".join(shown)


Opener = Callable[[str, MaskingConfig], Awaitable[Session]]


@pytest.fixture
async def session(targets: dict[str, Any], tmp_path: Path) -> AsyncIterator[Opener]:
    """session(dialect, config): a new session (its own connection) on a target; the sessions
    of one test share what they wrote into lasting tables, as a broker's sessions do."""
    opened: list[DatabaseConnection] = []

    async def open_session(dialect: str, config: MaskingConfig = MASKED) -> Session:
        conn = await open_database(targets[dialect])
        opened.append(conn)
        shared = tmp_path / ("clear" if config is CLEAR else "masked") / f"{dialect}.json"
        return Session(targets[dialect], conn, config, shared)

    yield open_session
    for conn in opened:
        await conn.close()


async def attack(session: Opener, dialect: str, script: str, *, echoes: bool = True) -> str:
    """Run ``script`` (``{t}``, ``{u}``: fresh table names) in a session on a target without
    masking, which must show a clear value when ``echoes``, then in a new session on a
    masked target, which must show none. Returns what the masked session showed."""
    clear = await session(dialect, CLEAR)
    shown_clear = await clear.run(script.format(t=_fresh(), u=_fresh()))
    if echoes:
        assert leaked(shown_clear), f"the attack shows nothing without masking:\n{shown_clear}"
    masked = await session(dialect, MASKED)
    shown = await masked.run(script.format(t=_fresh(), u=_fresh()))
    assert not leaked(shown), shown
    return shown


def _fresh() -> str:
    return "s_" + secrets.token_hex(4)


# --------------------------------------------------------------------------- RETURNING

RETURNING = {
    "postgres": [
        "CREATE TABLE {t} (id int, x text);"
        " INSERT INTO {t} (id, x) SELECT id, reverse(card) FROM users RETURNING x",
        "CREATE TABLE {t} (id int, x text);"
        " INSERT INTO {t} SELECT id, email FROM users RETURNING translate(x, '@.', '__') AS u, reverse(x) AS v",
        "CREATE TABLE {t} (id int, x text);"
        " INSERT INTO {t} SELECT * FROM (SELECT id, reverse(email) FROM users) s RETURNING *",
        "CREATE TABLE {t} (id int, x text);"
        " WITH i AS (INSERT INTO {t} SELECT id, translate(email, '@.', '__') FROM users"
        " RETURNING x) SELECT x AS harmless FROM i",
        "CREATE TABLE {t} (id int, x text);"
        " WITH i AS (INSERT INTO {t} SELECT id, reverse(card) FROM users RETURNING *)"
        " SELECT * FROM i",
        "CREATE TABLE {t} AS SELECT id, name AS x FROM users;"
        " UPDATE {t} SET x = (SELECT reverse(card) FROM users u WHERE u.id = {t}.id)"
        " RETURNING x",
        "CREATE TABLE {t} AS SELECT id, name AS x FROM users;"
        " UPDATE {t} SET x = reverse(u.email) FROM users u WHERE u.id = {t}.id RETURNING {t}.x",
        "CREATE TABLE {t} (id int, x text); INSERT INTO {t} SELECT id, reverse(email) FROM users;"
        " DELETE FROM {t} RETURNING x",
        "CREATE TABLE {t} (id int PRIMARY KEY, x text); INSERT INTO {t} SELECT id, name FROM users;"
        " INSERT INTO {t} SELECT id, reverse(card) FROM users"
        " ON CONFLICT (id) DO UPDATE SET x = excluded.x RETURNING x",
        # UPDATE of the masked table itself, rolled back: notes now holds the card.
        "BEGIN; UPDATE users SET notes = reverse(card) RETURNING notes; ROLLBACK",
    ],
    "mysql": [
        "CREATE TABLE {t} (id int, x text);"
        " INSERT INTO {t} (id, x) SELECT id, REVERSE(card) FROM users RETURNING x",
        "CREATE TABLE {t} (id int, x text);"
        " INSERT INTO {t} SELECT id, email FROM users RETURNING REPLACE(REPLACE(x, '@', '_'), '.', '_') AS u, REVERSE(x) v",
        "CREATE TABLE {t} (id int PRIMARY KEY, x text);"
        " REPLACE INTO {t} SELECT id, REVERSE(email) FROM users RETURNING *",
        "CREATE TABLE {t} (id int, x text); INSERT INTO {t} SELECT id, REVERSE(card) FROM users;"
        " DELETE FROM {t} RETURNING x",
        "CREATE TABLE {t} (id int, x text);"
        " INSERT INTO {t} SET id = 1, x = (SELECT REVERSE(email) FROM users WHERE id = 1)"
        " RETURNING x",
    ],
    "sqlite": [
        "CREATE TABLE {t} (id int, x text);"
        " INSERT INTO {t} (id, x) SELECT id, substr(card, 2) FROM users RETURNING x",
        "CREATE TABLE {t} (id int, x text);"
        " INSERT INTO {t} SELECT id, email FROM users RETURNING replace(replace(x, '@', '_'), '.', '_') AS u",
        "CREATE TABLE {t} AS SELECT id, name AS x FROM users;"
        " UPDATE {t} SET x = replace(replace(u.email, '@', '_'), '.', '_') FROM users u WHERE u.id = {t}.id RETURNING x",
        "CREATE TABLE {t} (id int, x text); INSERT INTO {t} SELECT id, substr(card, 2) FROM users;"
        " DELETE FROM {t} RETURNING *",
    ],
}


@pytest.mark.parametrize(
    ("dialect", "script"),
    [(d, s) for d, scripts in RETURNING.items() for s in scripts],
)
async def test_returning_shows_no_masked_value(session: Opener, dialect: str, script: str) -> None:
    await attack(session, dialect, script)


def test_merge_returning() -> None:
    """MERGE … RETURNING (PostgreSQL 17; the test servers run an older version): the
    statement's writes reach its RETURNING list."""
    sql = (
        "MERGE INTO t USING users s ON t.id = s.id"
        " WHEN MATCHED THEN UPDATE SET x = reverse(s.card)"
        " WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.name) RETURNING t.id, t.x, merge_action()"
    )
    columns = {"t": ["id", "x"], "users": ["id", "name", "email", "card", "notes"]}

    def catalog(name: str) -> list[str]:
        return columns.get(name, [])

    analysis = analyze("postgres", sql, catalog)
    written: dict[str, set[str]] = {}
    for write in analysis.effects.writes:
        written.setdefault(write.column, set()).update(write.sources)
    assert written == {"x": {"users.card", "users.name"}, "id": {"users.id"}}

    def taint(name: str) -> dict[str, tuple[str, ...]]:
        return {c: tuple(v) for c, v in written.items()} if name == "t" else {}

    sources = column_sources_pglast(sql, ["id", "x", "merge_action"], catalog, view_sources=taint)
    masker = Masker(MASKED, hash_key=KEY)
    assert [masker.strategy_for(c) is not None for c in sources] == [False, True, False]


async def test_returning_of_clean_columns_stays_clear(session: Opener) -> None:
    pg = await session("postgres", MASKED)
    t = _fresh()
    shown = await pg.run(
        f"CREATE TABLE {t} (id int, x text, n text);"
        f" INSERT INTO {t} SELECT id, email, name FROM users RETURNING id, n"
    )
    assert "Jane" in shown and "[REDACTED]" not in shown, shown
    maria = await session("mysql", MASKED)
    shown = await maria.run(
        f"CREATE TABLE {t} (id int, x text, n text);"
        f" INSERT INTO {t} SELECT id, email, name FROM users RETURNING id, n"
    )
    assert "Jane" in shown and "[REDACTED]" not in shown, shown


# --------------------------------------------------------------------------- variables

VARIABLES = [
    "SET @y = (SELECT GROUP_CONCAT(REVERSE(card)) FROM users); SELECT @y",
    "SET @y := (SELECT REVERSE(email) FROM users WHERE id = 1); SELECT @y AS harmless",
    "SELECT REVERSE(card) INTO @y FROM users WHERE id = 1; SELECT @y",
    "SELECT card, email INTO @c, @e FROM users WHERE id = 1;"
    " SELECT CONCAT(REVERSE(@c), ' ', REPLACE(REPLACE(@e, '@', '_'), '.', '_')) AS x",
    "SELECT REVERSE(card) FROM users WHERE id = 1 INTO @y; SELECT @y",
    "SELECT @y := REVERSE(card) AS n FROM users WHERE id = 1; SELECT id, @y FROM users",
    "SET @a = (SELECT REVERSE(email) FROM users WHERE id = 1), @b = 1; SELECT @b, @a",
    "DO @d := (SELECT REVERSE(card) FROM users WHERE id = 1); SELECT @d",
    # Laundered through a second variable, and through a table.
    "SET @a = (SELECT REVERSE(card) FROM users WHERE id = 1); SET @b = CONCAT(@a, ''); SELECT @b",
    "SET @a = (SELECT REPLACE(REPLACE(email, '@', '_'), '.', '_') FROM users WHERE id = 1);"
    " CREATE TABLE {t} AS SELECT @a AS x; SELECT x FROM {t}",
    # A system variable that holds a number: the card fits.
    "SET SESSION max_join_size = (SELECT CAST(card AS UNSIGNED) FROM users WHERE id = 1);"
    " SELECT @@max_join_size AS n, REVERSE(@@session.max_join_size) AS r",
]


@pytest.mark.parametrize("script", VARIABLES)
async def test_mariadb_variables_hold_the_taint(session: Opener, script: str) -> None:
    await attack(session, "mysql", script)


async def test_mariadb_variables_of_clean_values_stay_clear(session: Opener) -> None:
    maria = await session("mysql", MASKED)
    shown = await maria.run(
        "SET @n = (SELECT name FROM users WHERE id = 1), @k = 42; SELECT @n, @k, @never"
    )
    assert "Jane | 42 | None" in shown, shown


async def test_postgres_settings_hold_the_taint(session: Opener) -> None:
    await attack(
        session,
        "postgres",
        "SELECT set_config('my.v', (SELECT reverse(card) FROM users WHERE id = 1), false)"
        " AS harmless; SHOW my.v",
    )
    await attack(
        session,
        "postgres",
        "SELECT length(set_config('my.v', (SELECT reverse(email) FROM users WHERE id = 1),"
        " false)) AS n; SELECT current_setting('my.v') AS v",
    )


async def test_postgres_sequence_holds_the_taint(session: Opener) -> None:
    await attack(
        session,
        "postgres",
        "CREATE SEQUENCE {t}; SELECT 1 AS one FROM (SELECT setval('{t}',"
        " (SELECT reverse(card)::bigint FROM users WHERE id = 1))) s;"
        " SELECT last_value FROM {t}",
    )


# --------------------------------------------------------------------------- filled tables

FILLED = {
    "postgres": [
        "SELECT * INTO TEMP {t} FROM users; SELECT reverse(card) AS c, translate(email, '@.', '__') AS e FROM {t}",
        "SELECT id, reverse(card) AS c INTO {t} FROM users; SELECT * FROM {t}",
        "CREATE TEMP TABLE {t} AS SELECT * FROM users; SELECT reverse(card) FROM {t}",
        "CREATE TABLE {t} AS SELECT id, translate(email, '@.', '__') AS e FROM users;"
        " SELECT e FROM {t}",
        "CREATE TABLE {t} (a int, b text); INSERT INTO {t} VALUES (1, 'x');"
        " INSERT INTO {t} (b, a) SELECT translate(email, '@.', '__'), id FROM users; SELECT a, b FROM {t}",
        # An existing table, filled and read back.
        "INSERT INTO archive (id, note) SELECT id, email FROM users;"
        " SELECT reverse(note) AS r FROM archive",
        "CREATE TABLE {t} AS SELECT id, name FROM users;"
        " UPDATE {t} SET name = (SELECT card FROM users u WHERE u.id = {t}.id);"
        " SELECT reverse(name) AS r FROM {t}",
        "CREATE TABLE {t} (id int, x text); MERGE INTO {t} USING users s ON {t}.id = s.id"
        " WHEN NOT MATCHED THEN INSERT VALUES (s.id, reverse(s.card)); SELECT x FROM {t}",
        "CREATE TABLE {t} AS SELECT id, name AS x FROM users; MERGE INTO {t} USING users s"
        " ON {t}.id = s.id WHEN MATCHED THEN UPDATE SET x = translate(s.email, '@.', '__'); SELECT x FROM {t}",
        # Through another table, a view and a CTE chain.
        "CREATE TEMP TABLE {t} AS SELECT id, card FROM users;"
        " CREATE TEMP TABLE {u} AS SELECT id, reverse(card) AS r FROM {t}; SELECT r FROM {u}",
        "CREATE TABLE {t} AS SELECT id, email FROM users;"
        " CREATE VIEW {u} AS SELECT id, reverse(email) AS r FROM {t}; SELECT r FROM {u}",
        "CREATE TABLE {t} (id int, x text); CREATE TABLE {u} (n int, y text);"
        " WITH i AS (INSERT INTO {t} SELECT id, reverse(card) FROM users RETURNING id, x)"
        " INSERT INTO {u} SELECT id, x FROM i; SELECT y FROM {u}",
        # Renamed: the rule names users.email; the values keep their taint.
        "CREATE TABLE {t} AS SELECT id, email FROM users;"
        " ALTER TABLE {t} RENAME COLUMN email TO contact; SELECT reverse(contact) FROM {t}",
        "BEGIN; ALTER TABLE users RENAME TO {t}; SELECT reverse(email) AS r FROM {t}; ROLLBACK",
        "BEGIN; ALTER TABLE users RENAME COLUMN card TO {t};"
        " SELECT reverse({t}) AS r FROM users; ROLLBACK",
        "CREATE TABLE {t} AS SELECT id, name FROM users;"
        " ALTER TABLE {t} ALTER COLUMN name TYPE text"
        " USING (reverse(name) || '/' || id::text);"  # (USING reads its own row only)
        " UPDATE {t} SET name = (SELECT reverse(card) FROM users u WHERE u.id = {t}.id);"
        " SELECT name FROM {t}",
        # Generated columns, inheritance and partitions: the rows reach other columns, tables.
        "CREATE TABLE {t} (a text, b text GENERATED ALWAYS AS (reverse(a)) STORED);"
        " INSERT INTO {t} (a) SELECT card FROM users; SELECT b FROM {t}",
        "CREATE TABLE {t} (id int, x text); CREATE TABLE {u} () INHERITS ({t});"
        " INSERT INTO {u} SELECT id, reverse(email) FROM users; SELECT x FROM {t}",
        "CREATE TABLE {t} (id int, x text) PARTITION BY RANGE (id);"
        " CREATE TABLE {u} PARTITION OF {t} FOR VALUES FROM (0) TO (100);"
        " INSERT INTO {t} SELECT id, reverse(card) FROM users; SELECT x FROM {u}",
        "BEGIN; INSERT INTO logs_2024 SELECT id, translate(email, '@.', '__') FROM users;"
        " SELECT x FROM logs; ROLLBACK",
        # Through an auto-updatable view into its base table (rolled back).
        "BEGIN; UPDATE v_names SET name = (SELECT reverse(card) FROM users u WHERE u.id = 1);"
        " SELECT name FROM users; ROLLBACK",
    ],
    "mysql": [
        "CREATE TEMPORARY TABLE {t} SELECT * FROM users; SELECT REVERSE(card) AS c FROM {t}",
        "CREATE TEMPORARY TABLE {t} AS SELECT id, REVERSE(email) AS e FROM users;"
        " SELECT * FROM {t}",
        "CREATE TEMPORARY TABLE {t} (a text, b int);"
        " INSERT INTO {t} SELECT REVERSE(card), id FROM users; SELECT a, b FROM {t}",
        "CREATE TABLE {t} SELECT id, REPLACE(REPLACE(email, '@', '_'), '.', '_') AS e FROM users; SELECT e FROM {t}",
        "CREATE TABLE {t} (id int, e text) SELECT id, email AS e FROM users;"
        " SELECT REVERSE(e) AS r FROM {t}",
        "INSERT INTO archive (id, note) SELECT id, REVERSE(card) FROM users;"
        " SELECT note FROM archive",
        "CREATE TABLE {t} AS SELECT id, name FROM users;"
        " UPDATE {t} SET name = (SELECT card FROM users u WHERE u.id = {t}.id);"
        " SELECT REVERSE(name) AS r FROM {t}",
        "CREATE TABLE {t} AS SELECT id, name FROM users;"
        " UPDATE {t} JOIN users u ON u.id = {t}.id SET {t}.name = REVERSE(u.email);"
        " SELECT name FROM {t}",
        "CREATE TABLE {t} (id int PRIMARY KEY, x text); INSERT INTO {t} SELECT id, name FROM users;"
        " INSERT INTO {t} (id, x) SELECT id, REVERSE(card) FROM users"
        " ON DUPLICATE KEY UPDATE x = VALUES(x); SELECT x FROM {t}",
        "CREATE TABLE {t} AS SELECT id, email FROM users;"
        " ALTER TABLE {t} CHANGE email contact varchar(100); SELECT REVERSE(contact) FROM {t}",
        "CREATE TABLE {t} AS SELECT id, card FROM users; RENAME TABLE {t} TO {u};"
        " SELECT REVERSE(card) FROM {u}",
        "CREATE TABLE {t} (x text); SET STATEMENT max_statement_time = 10 FOR"
        " INSERT INTO {t} SELECT REVERSE(card) FROM users; SELECT x FROM {t}",
        "CREATE TABLE {t} (x text);"
        " ANALYZE INSERT INTO {t} SELECT REVERSE(email) FROM users; SELECT x FROM {t}",
        "CREATE TABLE {t} (a text, b text AS (REVERSE(a)) PERSISTENT);"
        " INSERT INTO {t} (a) SELECT email FROM users; SELECT b FROM {t}",
    ],
    "sqlite": [
        "CREATE TEMP TABLE {t} AS SELECT * FROM users; SELECT substr(card, 2) AS c FROM {t}",
        "CREATE TABLE {t} AS SELECT id, replace(replace(email, '@', '_'), '.', '_') AS e FROM users; SELECT e FROM {t}",
        "INSERT INTO archive (id, note) SELECT id, replace(replace(email, '@', '_'), '.', '_') FROM users;"
        " SELECT note FROM archive",
        "CREATE TABLE {t} AS SELECT id, name FROM users;"
        " UPDATE {t} SET name = (SELECT replace(replace(email, '@', '_'), '.', '_') FROM users u WHERE u.id = {t}.id);"
        " SELECT name FROM {t}",
        "CREATE TABLE {t} AS SELECT id, email FROM users;"
        " ALTER TABLE {t} RENAME COLUMN email TO contact; SELECT replace(replace(contact, '@', '_'), '.', '_') FROM {t}",
        "CREATE TABLE {t} AS SELECT id, card FROM users; ALTER TABLE {t} RENAME TO {u};"
        " SELECT substr(card, 2) FROM {u}",
        "CREATE TABLE {t} (a text, b text GENERATED ALWAYS AS (replace(replace(a, '@', '_'), '.', '_')) VIRTUAL);"
        " INSERT INTO {t} (a) SELECT email FROM users; SELECT b FROM {t}",
    ],
}


@pytest.mark.parametrize(
    ("dialect", "script"),
    [(d, s) for d, scripts in FILLED.items() for s in scripts],
)
async def test_tables_the_session_fills_carry_the_taint(
    session: Opener, dialect: str, script: str
) -> None:
    await attack(session, dialect, script)


@pytest.mark.parametrize("dialect", ["postgres", "mysql", "sqlite"])
async def test_filled_tables_keep_clean_columns_clear(session: Opener, dialect: str) -> None:
    s = await session(dialect, MASKED)
    t = _fresh()
    temp = "TEMPORARY" if dialect == "mysql" else "TEMP"
    shown = await s.run(
        f"CREATE {temp} TABLE {t} AS SELECT id, name, email FROM users; SELECT id, name FROM {t}"
    )
    assert "1 | Jane" in shown and "[REDACTED]" not in shown, shown
    shown = await s.run(f"SELECT * FROM {t}")
    assert "1 | Jane | [REDACTED]" in shown, shown


ACROSS = {
    "postgres": (
        "CREATE TABLE {t} AS SELECT id, reverse(card) AS c FROM users;"
        " CREATE TABLE {u} (id int, x text);"
        " INSERT INTO {u} SELECT id, translate(email, '@.', '__') FROM users",
        "SELECT c FROM {t}; SELECT * FROM {u}; SELECT x::regclass FROM {u}",
    ),
    "mysql": (
        "CREATE TABLE {t} AS SELECT id, REVERSE(card) AS c FROM users;"
        " CREATE TABLE {u} (id int, x text); INSERT INTO {u} SELECT id, REVERSE(email) FROM users",
        "SELECT c FROM {t}; SELECT * FROM {u}; SET lc_time_names = (SELECT x FROM {u} LIMIT 1)",
    ),
    "sqlite": (
        "CREATE TABLE {t} AS SELECT id, substr(card, 2) AS c FROM users;"
        " CREATE TABLE {u} (id int, x text);"
        " INSERT INTO {u} SELECT id, replace(replace(email, '@', '_'), '.', '_') FROM users",
        "SELECT c FROM {t}; SELECT * FROM {u}; SELECT json_extract('{{}}', x) FROM {u}",
    ),
}


@pytest.mark.parametrize("dialect", ["postgres", "mysql", "sqlite"])
async def test_a_table_filled_in_one_session_is_masked_in_the_next(
    session: Opener, dialect: str
) -> None:
    fill, read = ACROSS[dialect]
    for config in (CLEAR, MASKED):
        names = {"t": _fresh(), "u": _fresh()}
        writer = await session(dialect, config)
        await writer.run(fill.format(**names))
        reader = await session(dialect, config)  # another connection: another session
        shown = await reader.run(read.format(**names))
        if config is CLEAR:
            assert leaked(shown), shown
        else:
            assert not leaked(shown), shown
            assert "1 | " in shown  # the clean column of the other table is shown


async def test_temporary_tables_are_not_shared(session: Opener, tmp_path: Path) -> None:
    pg = await session("postgres", MASKED)
    t, u = _fresh(), _fresh()
    await pg.run(
        f"CREATE TEMP TABLE {t} AS SELECT id, reverse(card) AS c FROM users;"
        f" CREATE TABLE {u} AS SELECT id, reverse(card) AS c FROM users"
    )
    kept = json.loads((tmp_path / "masked" / "postgres.json").read_text())["tables"]
    assert u in kept and t not in kept
    assert kept[u]["c"] == ["users.card"]  # names only, never values
    assert not leaked(json.dumps(kept))


async def test_an_unreadable_shared_taint_makes_everything_opaque(
    session: Opener, tmp_path: Path
) -> None:
    (tmp_path / "masked").mkdir()
    (tmp_path / "masked" / "sqlite.json").write_text("{not json")
    lite = await session("sqlite", MASKED)
    shown = await lite.run("SELECT id, name FROM users WHERE id = 1")
    assert "Jane" not in shown and "[REDACTED]" in shown, shown


async def test_postgres_statistics_are_opaque(session: Opener) -> None:
    # After ANALYZE, the histogram of a column holds its values.
    await attack(
        session,
        "postgres",
        "ANALYZE users; SELECT attname, histogram_bounds::text AS h FROM pg_stats"
        " WHERE tablename = 'users'",
    )


# --------------------------------------------------------------------------- code


CODE = {
    "postgres": [
        # A table the broker cannot see filled: everything read afterwards is opaque.
        "CREATE TABLE {t} (x text);"
        " DO $$ BEGIN INSERT INTO {t} SELECT reverse(card) FROM users; END $$;"
        " SELECT x FROM {t}",
        "PREPARE p_{t} AS SELECT reverse(email) AS x FROM users;"
        " CREATE TABLE {t} AS EXECUTE p_{t}; SELECT x FROM {t}",
        "BEGIN; SELECT stash(reverse(card)) AS n FROM users; SELECT note FROM archive; ROLLBACK",
    ],
    "mysql": [
        "BEGIN; CALL fill(); SELECT note FROM archive; ROLLBACK",
        "CREATE TABLE {t} (x text);"
        " PREPARE s FROM 'INSERT INTO {t} SELECT REVERSE(email) FROM users'; EXECUTE s;"
        " SELECT x FROM {t}",
        "BEGIN; SELECT stash(REVERSE(card)) AS n FROM users; SELECT note FROM archive; ROLLBACK",
        "PREPARE s FROM 'SELECT REVERSE(card) INTO @v FROM users WHERE id = 1'; EXECUTE s;"
        " SELECT @v",
    ],
}


@pytest.mark.parametrize(
    ("dialect", "script"), [(d, s) for d, scripts in CODE.items() for s in scripts]
)
async def test_code_makes_everything_opaque(session: Opener, dialect: str, script: str) -> None:
    await attack(session, dialect, script)


async def test_built_in_functions_do_not_make_everything_opaque(session: Opener) -> None:
    pg = await session("postgres", MASKED)
    shown = await pg.run(
        "SELECT pg_sleep(0), pg_typeof(name)::text AS t FROM users WHERE id = 1;"
        " SELECT name FROM users WHERE id = 1"
    )
    assert "Jane" in shown, shown
    # A user-defined function, even an immutable one (it may call one that writes): opaque.
    shown = await pg.run("SELECT shout(name) AS s FROM users WHERE id = 1; SELECT name FROM users")
    assert "Jane" not in shown and "JANE" not in shown, shown


# --------------------------------------------------------------------------- errors

ERRORS = {
    "postgres": [
        "SELECT reverse(card)::int FROM users",
        "SELECT translate(email, '@.', '__')::regclass FROM users",
        "SELECT reverse(email)::date FROM users",
        "SELECT reverse(card)::uuid FROM users",
        "SELECT translate(email, '@.', '__')::inet FROM users",
        "SELECT ('{{' || reverse(email) || '}}')::int[] FROM users",
        "SELECT translate(email, '@.', '__')::regtype FROM users",
        "SELECT current_setting(translate(email, '@.', '__')) FROM users",
        "SELECT 1 AS one FROM users WHERE reverse(card)::int > 0",  # in WHERE
        "SELECT (SELECT reverse(card)::int FROM users LIMIT 1) AS harmless",
        "SELECT 1 AS one FROM (SELECT reverse(email) AS e FROM users) s WHERE e::numeric > 0",
        "CREATE TEMP TABLE {t} AS SELECT reverse(card) AS c FROM users; SELECT c::int FROM {t}",
        "CREATE TABLE {t} AS SELECT translate(email, '@.', '__') AS e FROM users;"
        " SELECT 1 AS one FROM {t} WHERE e::regclass IS NOT NULL",
        "CREATE TABLE {t} (n int); INSERT INTO {t} SELECT reverse(card)::int FROM users",
        "SELECT set_config('my.v', (SELECT reverse(card) FROM users LIMIT 1), false) AS x;"
        " SELECT current_setting('my.v')::int",
    ],
    "mysql": [
        "SET time_zone = (SELECT REVERSE(email) FROM users WHERE id = 1)",
        "SET lc_time_names = (SELECT REPLACE(REPLACE(email, '@', '_'), '.', '_') FROM users WHERE id = 1)",
        "SET collation_connection = (SELECT REVERSE(card) FROM users WHERE id = 1)",
        "SET @x = 1, character_set_client = (SELECT REVERSE(email) FROM users WHERE id = 1)",
        "CREATE TABLE {t} (n int); INSERT INTO {t} SELECT REVERSE(email) FROM users",
        "SET @y = (SELECT REVERSE(card) FROM users WHERE id = 1); SET lc_time_names = @y",
        # Dynamic SQL made of data: its syntax error quotes the data.
        "SET @q = (SELECT CONCAT('SELEC ', REVERSE(card)) FROM users WHERE id = 1);"
        " PREPARE s FROM @q",
        "CREATE TEMPORARY TABLE {t} SELECT REVERSE(email) AS e FROM users;"
        " SET time_zone = (SELECT e FROM {t} LIMIT 1)",
    ],
    "sqlite": [
        "SELECT json_extract('{{}}', replace(replace(email, '@', '_'), '.', '_')) FROM users",
        "SELECT 1 FROM users WHERE json_extract('{{}}', replace(replace(email, '@', '_'), '.', '_')) IS NULL",
        "CREATE TABLE {t} AS SELECT replace(replace(email, '@', '_'), '.', '_') AS e FROM users;"
        " SELECT json_extract('{{}}', e) FROM {t}",
    ],
}


@pytest.mark.parametrize(
    ("dialect", "script"), [(d, s) for d, scripts in ERRORS.items() for s in scripts]
)
async def test_errors_that_echo_values_are_withheld(
    session: Opener, dialect: str, script: str
) -> None:
    shown = await attack(session, dialect, script)
    # The user still learns that it failed, and the server's code for it.
    assert "ERROR" in shown, shown


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT email::json FROM users",  # the value is in DETAIL, which is not shown
        "SELECT card::boolean FROM users",
        "SELECT to_date(reverse(card), 'YYYYMMDD')::text FROM users",
        "SELECT email::xml FROM users",
        "SELECT reverse(card)::smallint FROM users",
        "SELECT (SELECT reverse(card)::bigint::int FROM users LIMIT 1) AS harmless",
    ],
)
async def test_postgres_other_cast_errors_show_no_value(session: Opener, sql: str) -> None:
    await attack(session, "postgres", sql, echoes=False)


async def test_errors_that_read_no_masked_value_keep_their_message(session: Opener) -> None:
    pg = await session("postgres", MASKED)
    assert "division by zero" in await pg.run("SELECT 1 / 0 AS x FROM users")
    assert "cannot cast type integer to uuid" in await pg.run("SELECT id::uuid FROM users")
    assert 'relation "no_such_table" does not exist' in await pg.run("SELECT * FROM no_such_table")
    assert 'syntax error at or near "users"' in await pg.run("SELECT email FROMM users")
    maria = await session("mysql", MASKED)
    assert "doesn't exist" in await maria.run("SELECT * FROM no_such_table")
    assert "error in your SQL syntax" in await maria.run("SELECT email FROM users WHERE")
    assert "Unknown column 'nope'" in await maria.run("SELECT email, nope FROM users")
    lite = await session("sqlite", MASKED)
    assert "no such table" in await lite.run("SELECT email FROM no_such_table")
    assert "no such function: reverse" in await lite.run("SELECT reverse(card) FROM users")
    assert "syntax error" in await lite.run("SELECT card FROM users WHERE id = = 1")


async def test_withheld_errors_keep_the_sqlstate(session: Opener) -> None:
    pg = await session("postgres", MASKED)
    shown = await pg.run("SELECT reverse(card)::int FROM users")
    assert "22003" in shown, shown
    maria = await session("mysql", MASKED)
    shown = await maria.run("SET lc_time_names = (SELECT REVERSE(card) FROM users WHERE id = 1)")
    assert "1649" in shown, shown


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("postgres", "SELECT pg_sleep(3), email FROM users"),
        (
            "sqlite",
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c)"
            " SELECT max(n), (SELECT email FROM users LIMIT 1) FROM c",
        ),
    ],
)
async def test_statement_timeouts_still_say_so(
    targets: dict[str, Any], tmp_path: Path, dialect: str, sql: str
) -> None:
    target = targets[dialect].model_copy(update={"statement_timeout": 1})
    conn = await open_database(target)
    try:
        s = Session(target, conn, MASKED, tmp_path / "taint.json")
        shown = await s.run(sql)
    finally:
        await conn.close()
    assert "statement timeout" in shown, shown


# --------------------------------------------------------------------------- hoopctl exec

POLICY = """
[policies.everything]
default = "allow"
on_unknown = "allow"
"""


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, postgres_db: str, mariadb_db: str, sqlite_path: Path
) -> Iterator[BrokerProcess]:
    tmp = tmp_path_factory.mktemp("leakbroker")
    pg_secret = tmp / "pg-secret"
    pg_secret.write_text(PG_PASSWORD)
    my_secret = tmp / "my-secret"
    my_secret.write_text(MY_PASSWORD)
    masking = """
[targets.masking]
detectors = ["card", "email", "phone", "iban", "us_ssn", "aws_key", "jwt", "private_key", "secret"]

[[targets.masking.columns]]
match = ["users.email", "users.card"]
"""
    targets = f"""
[[targets]]
name = "pg"
type = "postgres"
address = "127.0.0.1:5432"
database = "{postgres_db}"
user = "{postgres_db}_app"
credential = "file:{pg_secret}"
tls = "disable"
allowed_groups = ["dba"]
policy = "everything"
{masking}
[[targets]]
name = "maria"
type = "mysql"
address = "127.0.0.1:3306"
database = "{mariadb_db}"
user = "{mariadb_db}"
credential = "file:{my_secret}"
allowed_groups = ["dba"]
policy = "everything"
{masking}
[[targets]]
name = "lite"
type = "sqlite"
path = "{sqlite_path}"
allowed_groups = ["dba"]
policy = "everything"
{masking}
{POLICY}
"""
    config = dev_config(tmp / "data", port=free_port(), dev_port=free_port(), targets=targets)
    process = start_broker(tmp, config)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def dba(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> User:
    user = User(tmp_path_factory.mktemp("alice"))
    assert user.login(broker).returncode == 0
    return user


def _everything_shown(broker: BrokerProcess, result: Any) -> str:
    """What hoopctl printed, what the recording holds and what the audit log says."""
    events = broker.audit_events()
    session = broker.audit_events("query")[-1]["session"]
    recording = broker.data_dir / "recordings" / f"{session}.cast"
    return "\n".join([result.stdout, result.stderr, recording.read_text(), json.dumps(events)])


@pytest.mark.parametrize(
    ("target", "sql"),
    [
        (
            "pg",
            "CREATE TEMP TABLE y AS SELECT * FROM users;"
            " SELECT reverse(card) AS c FROM y;"
            " INSERT INTO y SELECT * FROM users RETURNING translate(email, '@.', '__') AS e;"
            " SELECT reverse(card)::int FROM users",
        ),
        ("pg", "SELECT translate(email, '@.', '__')::regclass FROM users"),
        (
            "maria",
            "SET @y = (SELECT GROUP_CONCAT(REVERSE(card)) FROM users); SELECT @y;"
            " SELECT REVERSE(email) INTO @e FROM users WHERE id = 1; SELECT @e;"
            " CREATE TEMPORARY TABLE y SELECT * FROM users; SELECT REVERSE(card) FROM y",
        ),
        (
            "lite",
            "CREATE TEMP TABLE y AS SELECT * FROM users; SELECT replace(replace(email, '@', '_'), '.', '_') AS e FROM y;"
            " INSERT INTO y SELECT * FROM users RETURNING substr(card, 2) AS c",
        ),
    ],
)
def test_exec_shows_records_and_audits_no_masked_value(
    dba: User, broker: BrokerProcess, target: str, sql: str
) -> None:
    result = dba.run("exec", target, "-c", sql, "-o", "json")
    shown = _everything_shown(broker, result)
    assert not leaked(shown), shown
    assert "[REDACTED]" in result.stdout or "withheld" in result.stderr, result


def test_exec_across_invocations(dba: User, broker: BrokerProcess) -> None:
    """Each `hoopctl exec` is a session of its own: the taint of a lasting table outlives it."""
    t = _fresh()
    fill = dba.run(
        "exec", "pg", "-c", f"CREATE TABLE {t} AS SELECT id, reverse(card) AS c FROM users"
    )
    assert fill.returncode == 0, fill.stderr
    read = dba.run("exec", "pg", "-c", f"SELECT id, c FROM {t} ORDER BY id", "-o", "json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)[0] == {"id": 1, "c": "[REDACTED]"}
    assert not leaked(_everything_shown(broker, read))
