"""SQL guardrails judged as the server reads the text: session state (character sets, quoting
modes), effects wherever they sit (EXPLAIN options, MERGE branches, CREATE OR REPLACE, upserts)
and WHERE clauses that filter nothing. Every case runs through `hoopctl exec` against the
real PostgreSQL, MariaDB and SQLite, and asserts on the data left in the database."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest

from tests.helpers import BrokerProcess, User, dev_config, free_port, start_broker
from tests.test_sql_shell import Shell

PG_PASSWORD = "pg-" + secrets.token_hex(8)
MY_PASSWORD = "my-" + secrets.token_hex(8)

POLICIES = """
[policies.kinds]
default = "allow"
on_unknown = "review"

[[policies.kinds.rules]]
name = "no-drop"
action = "deny"
statement = ["DROP", "TRUNCATE"]

[[policies.kinds.rules]]
name = "unbounded-writes"
action = "review"
statement = ["UPDATE", "DELETE"]
without_where = true
approvers = ["dba-leads"]

[policies.tables]
default = "allow"
on_unknown = "review"

[[policies.tables.rules]]
name = "secret-schema"
action = "deny"
tables = ["secret.*"]

[policies.lax]
default = "allow"
on_unknown = "allow"

[policies.effects]
default = "allow"
on_unknown = "review"

[[policies.effects.rules]]
name = "no-destroy"
action = "deny"
effect = ["destroys"]
"""

ROWS = [(1, "alpha"), (2, "beta"), (3, "gamma")]


@pytest.fixture(scope="module")
def pg_name() -> Iterator[str]:
    name = "hoop_sem_" + secrets.token_hex(4)
    role = name + "_app"
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PG_PASSWORD}'")
        admin.execute(f"CREATE DATABASE {name} OWNER {role}")
    yield name
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="module")
def my_name() -> Iterator[str]:
    name = "hoop_sem_" + secrets.token_hex(4)
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        for host in ("%", "localhost"):
            cur.execute(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY '{MY_PASSWORD}'")
            cur.execute(f"GRANT ALL ON {name}.* TO '{name}'@'{host}'")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        for host in ("%", "localhost"):
            cur.execute(f"DROP USER IF EXISTS '{name}'@'{host}'")
    admin.close()


@pytest.fixture(scope="module")
def lite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sem") / "lite.db"


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, pg_name: str, my_name: str, lite_path: Path
) -> Iterator[BrokerProcess]:
    tmp = tmp_path_factory.mktemp("sembroker")
    (tmp / "pg").write_text(PG_PASSWORD)
    (tmp / "my").write_text(MY_PASSWORD)
    targets = ""
    for policy in ("kinds", "effects"):
        suffix = "" if policy == "kinds" else "-fx"
        targets += f"""
[[targets]]
name = "pg{suffix}"
type = "postgres"
address = "127.0.0.1:5432"
database = "{pg_name}"
user = "{pg_name}_app"
credential = "file:{tmp / "pg"}"
tls = "disable"
allowed_groups = ["dba"]
policy = "{policy}"

[[targets]]
name = "maria{suffix}"
type = "mysql"
address = "127.0.0.1:3306"
database = "{my_name}"
user = "{my_name}"
credential = "file:{tmp / "my"}"
allowed_groups = ["dba"]
policy = "{policy}"

[[targets]]
name = "lite{suffix}"
type = "sqlite"
path = "{lite_path}"
allowed_groups = ["dba"]
policy = "{policy}"
"""
    targets += f"""
[[targets]]
name = "pg-lax"
type = "postgres"
address = "127.0.0.1:5432"
database = "{pg_name}"
user = "{pg_name}_app"
credential = "file:{tmp / "pg"}"
tls = "disable"
allowed_groups = ["dba"]
policy = "lax"

[[targets]]
name = "maria-lax"
type = "mysql"
address = "127.0.0.1:3306"
database = "{my_name}"
user = "{my_name}"
credential = "file:{tmp / "my"}"
allowed_groups = ["dba"]
policy = "lax"

[[targets]]
name = "pg-tables"
type = "postgres"
address = "127.0.0.1:5432"
database = "{pg_name}"
user = "{pg_name}_app"
credential = "file:{tmp / "pg"}"
tls = "disable"
allowed_groups = ["dba"]
policy = "tables"
"""
    config = dev_config(
        tmp / "data", port=free_port(), dev_port=free_port(), targets=targets + POLICIES
    )
    process = start_broker(tmp, config)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def dba(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> User:
    user = User(tmp_path_factory.mktemp("dba"))
    assert user.login(broker).returncode == 0
    return user


Rows = Callable[[], list[tuple[object, ...]]]


def _pg_admin(pg_name: str) -> psycopg.Connection:
    conn = psycopg.connect(host="127.0.0.1", user="postgres", dbname=pg_name, autocommit=True)
    conn.execute(f"SET ROLE {pg_name}_app")
    return conn


def make_table(dialect: str, names: dict[str, object], table: str, unique: bool = True) -> Rows:
    """A fresh table TABLE(id, note) holding ROWS; return a reader of its rows."""
    key = "PRIMARY KEY" if unique else ""
    if dialect == "postgres":
        with _pg_admin(str(names["pg"])) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (id int {key}, note text)")
            for row in ROWS:
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", row)

        def read_pg() -> list[tuple[object, ...]]:
            with _pg_admin(str(names["pg"])) as conn:
                return list(conn.execute(f"SELECT id, note FROM {table} ORDER BY id"))

        return read_pg
    if dialect == "mysql":
        db = str(names["my"])
        admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {db}.{table}")
            cur.execute(f"CREATE TABLE {db}.{table} (id int {key}, note text)")
            cur.executemany(f"INSERT INTO {db}.{table} VALUES (%s, %s)", ROWS)
        admin.close()

        def read_my() -> list[tuple[object, ...]]:
            conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SELECT id, note FROM {db}.{table} ORDER BY id")
                    return [tuple(r) for r in cur.fetchall()]
            finally:
                conn.close()

        return read_my
    path = Path(str(names["lite"]))
    with sqlite3.connect(path) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int {key}, note text)")
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", ROWS)
    conn.close()

    def read_lite() -> list[tuple[object, ...]]:
        with sqlite3.connect(path) as conn:
            rows = list(conn.execute(f"SELECT id, note FROM {table} ORDER BY id"))
        conn.close()
        return rows

    return read_lite


@pytest.fixture(scope="module")
def names(pg_name: str, my_name: str, lite_path: Path) -> dict[str, object]:
    return {"pg": pg_name, "my": my_name, "lite": lite_path}


TARGET = {"postgres": "pg", "mysql": "maria", "sqlite": "lite"}


def fresh(names: dict[str, object], dialect: str) -> tuple[str, Rows]:
    table = "t_" + secrets.token_hex(3)
    return table, make_table(dialect, names, table)


# -------------------------------------------------------------------- the examples


def test_gbk_split_cannot_rewrite_every_row(dba: User, names: dict[str, object]) -> None:
    table, rows = fresh(names, "mysql")
    sql = f"SET NAMES gbk; UPDATE {table} SET note = '忁\\' WHERE id = 1 AND note = ' -- '"
    result = dba.run("exec", "maria", "-c", sql)
    assert result.returncode == 3, result.stderr
    assert rows() == ROWS
    # One statement per input changes nothing: the setting is refused on its own too.
    alone = dba.run("exec", "maria", "-c", "SET NAMES gbk")
    assert alone.returncode == 3, alone.stderr
    assert "character set" in alone.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "SET CHARACTER SET big5",
        "SET character_set_client = sjis",
        "SET @@session.character_set_connection = 'cp932'",
        "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "SET SESSION sql_mode = 'ANSI_QUOTES'",
        "SET sql_mode = CONCAT(@@sql_mode, ',ANSI')",
    ],
)
def test_mariadb_settings_that_change_lexing_are_refused_and_nothing_runs(
    dba: User, names: dict[str, object], setting: str
) -> None:
    table, rows = fresh(names, "mysql")
    sql = f'{setting}; UPDATE {table} SET note = "x" WHERE id = 2'
    result = dba.run("exec", "maria", "-c", sql)
    assert result.returncode == 3, result.stderr
    assert rows() == ROWS


def test_mariadb_session_runs_with_the_brokers_charset_and_sql_mode(dba: User) -> None:
    result = dba.run(
        "exec",
        "maria",
        "-o",
        "csv",
        "-c",
        "SELECT @@character_set_client AS cs, @@sql_mode LIKE '%ANSI_QUOTES%' AS aq, "
        "@@sql_mode LIKE '%NO_BACKSLASH_ESCAPES%' AS nbe",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "utf8mb4,0,0"


def test_postgres_settings_that_change_lexing_are_refused(
    dba: User, names: dict[str, object]
) -> None:
    table, rows = fresh(names, "postgres")
    for setting in (
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'BIG5'",
    ):
        result = dba.run("exec", "pg", "-c", f"{setting}; DELETE FROM {table} WHERE id = 2")
        assert result.returncode == 3, (setting, result.stderr)
    assert rows() == ROWS


def test_postgres_role_defaults_cannot_change_how_the_broker_session_reads_text(
    dba: User, names: dict[str, object]
) -> None:
    # The role's own defaults would apply to every new session the broker opens; the
    # broker's connection options outrank them.
    role = f"{names['pg']}_app"
    with _pg_admin(str(names["pg"])) as conn:
        conn.execute(f"ALTER ROLE {role} SET standard_conforming_strings = off")
    try:
        result = dba.run(
            "exec",
            "pg",
            "-o",
            "csv",
            "-c",
            "SELECT current_setting('standard_conforming_strings') AS scs, "
            "current_setting('client_encoding') AS enc",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1] == "on,UTF8"
    finally:
        with _pg_admin(str(names["pg"])) as conn:
            conn.execute(f"ALTER ROLE {role} RESET standard_conforming_strings")


@pytest.mark.parametrize(
    "sql",
    [
        "EXPLAIN (ANALYZE off, ANALYZE on) DELETE FROM {t}",
        "EXPLAIN (ANALYZE false, ANALYZE) DELETE FROM {t}",
        "EXPLAIN (ANALYZE 0, FORMAT JSON, ANALYZE 1) UPDATE {t} SET note = 'x'",
        "MERGE INTO {t} USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE",
        "MERGE INTO {t} t USING {t} s ON t.id = s.id WHEN MATCHED THEN UPDATE SET note = 'x'",
        "DELETE FROM {t} WHERE note IS NOT NULL OR true",
        "DELETE FROM {t} WHERE id = id",
        "DELETE FROM {t} WHERE ctid IS NOT NULL",
        "UPDATE {t} SET note = 'x' WHERE 1 = 1 AND NOT false",
        "DELETE FROM {t} WHERE id IN (SELECT id FROM {t})",
        "WITH d AS (DELETE FROM {t} WHERE COALESCE(NULL, true) RETURNING *) SELECT count(*) FROM d",
    ],
)
def test_postgres_statements_that_touch_every_row_do_not_pass_kind_rules(
    dba: User, names: dict[str, object], sql: str
) -> None:
    table, rows = fresh(names, "postgres")
    result = dba.run("exec", "pg", "-c", sql.format(t=table))
    assert result.returncode in (3, 4), result.stderr
    assert rows() == ROWS


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM {t} WHERE note IS NOT NULL OR true",
        "DELETE FROM {t} WHERE 1",
        "DELETE FROM {t} WHERE id <=> id",
        "UPDATE {t} SET note = 'x' WHERE id = 1 || true",
        "DELETE FROM {t} WHERE '1abc'",
        "ANALYZE DELETE FROM {t}",
    ],
)
def test_mariadb_statements_that_touch_every_row_do_not_pass_kind_rules(
    dba: User, names: dict[str, object], sql: str
) -> None:
    table, rows = fresh(names, "mysql")
    result = dba.run("exec", "maria", "-c", sql.format(t=table))
    assert result.returncode in (3, 4), result.stderr
    assert rows() == ROWS


def test_create_or_replace_table_is_stopped_by_the_drop_rule(
    dba: User, names: dict[str, object]
) -> None:
    table, rows = fresh(names, "mysql")
    result = dba.run("exec", "maria", "-c", f"CREATE OR REPLACE TABLE {table} (id int)")
    assert result.returncode == 3, result.stderr
    assert rows() == ROWS


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("postgres", "DELETE FROM {t} WHERE id = 1"),
        ("postgres", "INSERT INTO {t} VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET note = 'x'"),
        ("postgres", "ALTER TABLE {t} DROP COLUMN note"),
        ("postgres", "ALTER TABLE {t} ALTER COLUMN note TYPE varchar(1)"),
        ("postgres", "ALTER TABLE {t} RENAME TO {t}_gone"),
        ("postgres", "EXPLAIN (ANALYZE off, ANALYZE on) UPDATE {t} SET note = 'x' WHERE id = 1"),
        ("mysql", "REPLACE INTO {t} VALUES (1, 'x')"),
        ("mysql", "INSERT INTO {t} VALUES (1, 'x') ON DUPLICATE KEY UPDATE note = 'x'"),
        ("mysql", "CREATE OR REPLACE TABLE {t} (id int)"),
        ("mysql", "ALTER TABLE {t} MODIFY COLUMN note varchar(1)"),
        ("mysql", "RENAME TABLE {t} TO {t}_gone"),
        ("mysql", "ANALYZE FORMAT=JSON UPDATE {t} SET note = 'x' WHERE id = 1"),
        ("sqlite", "INSERT OR REPLACE INTO {t} VALUES (1, 'x')"),
        ("sqlite", "INSERT INTO {t} VALUES (1, 'x') ON CONFLICT(id) DO UPDATE SET note = 'x'"),
        ("sqlite", "ALTER TABLE {t} RENAME TO {t}_gone"),
        ("sqlite", "ALTER TABLE {t} DROP COLUMN note"),
    ],
)
def test_an_effect_rule_stops_everything_that_destroys_data(
    dba: User, names: dict[str, object], dialect: str, sql: str
) -> None:
    table, rows = fresh(names, dialect)
    result = dba.run("exec", TARGET[dialect] + "-fx", "-c", sql.format(t=table))
    assert result.returncode == 3, result.stderr
    assert "no-destroy" in result.stderr
    assert rows() == ROWS


def test_an_effect_rule_lets_harmless_statements_run(dba: User, names: dict[str, object]) -> None:
    table, rows = fresh(names, "postgres")
    result = dba.run(
        "exec",
        "pg-fx",
        "-c",
        f"INSERT INTO {table} VALUES (4, 'delta') ON CONFLICT DO NOTHING; SELECT 1",
    )
    assert result.returncode == 0, result.stderr
    assert rows() == [*ROWS, (4, "delta")]


def test_a_selective_where_still_runs(dba: User, names: dict[str, object]) -> None:
    for dialect in ("postgres", "mysql", "sqlite"):
        table, rows = fresh(names, dialect)
        result = dba.run("exec", TARGET[dialect], "-c", f"DELETE FROM {table} WHERE id = 2")
        assert result.returncode == 0, (dialect, result.stderr)
        assert rows() == [ROWS[0], ROWS[2]]


# ---------------------------------------------------------- state across one shell session


def test_a_search_path_change_in_the_shell_is_remembered_for_later_input(
    dba: User, names: dict[str, object]
) -> None:
    with _pg_admin(str(names["pg"])) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS secret")
        conn.execute("DROP TABLE IF EXISTS secret.data, public.data")
        conn.execute("CREATE TABLE secret.data (id int)")
        conn.execute("CREATE TABLE public.data (id int)")
        conn.execute("INSERT INTO secret.data VALUES (1), (2)")
        conn.execute("INSERT INTO public.data VALUES (1), (2)")
    sh = Shell(dba, "pg-tables")
    assert "DELETE 1" in sh.run("DELETE FROM data WHERE id = 1;")  # public.data: allowed
    sh.run("SET search_path = secret;")
    shown = sh.run("DELETE FROM data WHERE id = 2;")
    assert "secret-schema" in shown
    sh.quit()
    with _pg_admin(str(names["pg"])) as conn:
        assert conn.execute("SELECT count(*) FROM secret.data").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM public.data").fetchone() == (1,)


def test_a_refused_charset_change_in_the_shell_leaves_the_session_in_utf8mb4(dba: User) -> None:
    sh = Shell(dba, "maria")
    assert "character set" in sh.run("SET NAMES gbk;")
    assert "utf8mb4" in sh.run("SELECT @@character_set_client AS cs;")
    assert "sql_mode" in sh.run("SET sql_mode = 'NO_BACKSLASH_ESCAPES';")
    shown = sh.run("SELECT IF(@@sql_mode LIKE '%NO_BACKSLASH%', 'nbe-on', 'nbe-off') AS m;")
    assert "nbe-off" in shown
    sh.quit()


# A policy that lets unknown statements run stands in for an approver who approved one: the
# broker still reads the settings back and stops before anything runs under changed ones.


def test_a_charset_change_the_broker_could_not_see_stops_the_session(
    dba: User, names: dict[str, object]
) -> None:
    table, rows = fresh(names, "mysql")
    sql = (
        "PREPARE s FROM 'SET NAMES gbk'; EXECUTE s; "
        f"UPDATE {table} SET note = 'changed' WHERE id = 2"
    )
    result = dba.run("exec", "maria-lax", "-c", sql)
    assert result.returncode == 1, result.stderr
    assert "character set changed to gbk" in result.stderr
    assert rows() == ROWS


def test_a_hidden_standard_conforming_strings_change_stops_the_session(
    dba: User, names: dict[str, object]
) -> None:
    table, rows = fresh(names, "postgres")
    sql = (
        "DO $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$; "
        f"DELETE FROM {table} WHERE id = 2"
    )
    result = dba.run("exec", "pg-lax", "-c", sql)
    assert result.returncode == 1, result.stderr
    assert "standard_conforming_strings off" in result.stderr
    assert rows() == ROWS
