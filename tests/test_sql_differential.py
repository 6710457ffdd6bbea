"""The differential test of issue 11: the broker's judgement of SQL against what the server did.

A generated corpus (tests/sql_corpus.py, at least 500 inputs per dialect) runs against real
PostgreSQL and MariaDB servers and SQLite. For every input:

1. the scratch schema is at its baseline (PostgreSQL: each input runs inside BEGIN … ROLLBACK,
   each statement in a savepoint, unless it handles transactions itself; MariaDB: what an input
   changed is rebuilt before the next; SQLite: the database file is restored);
2. the input runs on a connection set up as the broker's (autocommit, utf8mb4 / UTF8), statement
   by statement as parse_sql splits it, as ``hoopctl exec`` runs it: it stops at the first error,
   and after a statement that may change session state (broker.sessions.sql_state.needs_check)
   it reads the server's text settings back and stops when they moved;
3. the baseline is measured again: a relation gone, a column gone, a baseline row lost or changed
   is damage;
4. the input is judged with decide_sql under two policies:

   - ``effect``: ``deny effect = ["destroys"]``. Any damage under ``allow`` is a failure.
   - ``kind``: ``deny statement = ["DROP", "TRUNCATE"]`` and ``review statement = ["UPDATE",
     "DELETE"], without_where = true``, the rules users write today. A failure is damage to a
     whole table under ``allow`` (a relation or column gone, or every row of a table lost or
     changed) by an input whose destruction those rules name: a DROP, TRUNCATE, DELETE or
     UPDATE, wherever it sits (CTE, EXPLAIN ANALYZE, MERGE, CREATE OR REPLACE, code, session
     tricks). The corpus's selective predicates select a strict subset of the rows, so an
     UPDATE or DELETE that changed only the rows its real WHERE selects is no failure. Damage
     the kind rules do not name (ALTER, REPLACE, upserts: sql_corpus.KIND_RULES_SILENT) is
     printed, not failed: only effect rules can catch it.

Each test lists every failing input, grouped by class, in one assertion message. Inputs the
broker says destroy data that destroyed nothing are counted and printed, not failures.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from broker.config import Policy, Rule
from broker.policy.sql import Statement, decide_sql, parse_sql
from broker.protocols.mysql import SAFE_SQL_MODES
from broker.sessions.sql_state import needs_check
from tests.scratch_databases import scratch_postgres
from tests.sql_corpus import KIND_RULES_SILENT, TABLES, VIEWS, Case, corpus

PG_PASSWORD = "pg-" + secrets.token_hex(8)
MY_PASSWORD = "my-" + secrets.token_hex(8)
TIMEOUT_S = 3  # per statement; nothing in the corpus should come near it

POLICIES = {
    "effect": Policy(
        default="allow", on_unknown="review", rules=[Rule(action="deny", effect=["destroys"])]
    ),
    "kind": Policy(
        default="allow",
        on_unknown="review",
        rules=[
            Rule(action="deny", statement=["DROP", "TRUNCATE"]),
            Rule(action="review", statement=["UPDATE", "DELETE"], without_where=True),
        ],
    ),
}


# --------------------------------------------------------------------------- outcomes

# What is measured: relation -> (column names and types, rows as text over the baseline columns).
Shape = dict[str, tuple[tuple[tuple[str, str], ...], list[tuple[str | None, ...]]]]


@dataclass
class Outcome:
    case: Case
    sent: tuple[str, ...]  # the statement texts run, in order (parse_sql's split)
    classified_destroys: bool  # a statement (or an inner one) has the effect "destroys"
    error: str | None = None  # the first error; nothing after it ran
    damage: dict[str, str] = field(default_factory=dict)  # relation -> what happened to it

    @property
    def whole(self) -> bool:
        """A relation or column gone, or every baseline row of a table lost or changed."""
        return any(not d.startswith("rows ") or d.endswith("(all)") for d in self.damage.values())


def _split(text: str, dialect: str) -> tuple[tuple[Statement, ...], bool]:
    """The statements the broker would run, as parse_sql splits them (none when it cannot
    parse the input: the broker runs nothing then), and whether any is said to destroy."""
    try:
        parsed = parse_sql(text, dialect)  # type: ignore[arg-type]
    except Exception:
        return (), False

    def destroys(statement: Statement) -> bool:
        return "destroys" in statement.effects or any(destroys(s) for s in statement.inner)

    return parsed.statements, any(destroys(s) for s in parsed.statements)


def _drift(rows: list[tuple[Any, ...]], dialect: str) -> str | None:
    """As broker.sessions.sql_state.reading_drift: the server no longer reads text as the
    broker does. After a statement that may change session state (needs_check), the broker
    reads the settings back and stops the session when they moved."""
    if not rows:
        return "no settings"
    if dialect == "postgres":
        encoding, conforming = str(rows[0][0]).upper(), str(rows[0][1]).lower()
        if encoding not in ("UTF8", "UTF-8") or conforming != "on":
            return f"client_encoding {encoding}, standard_conforming_strings {conforming}"
        return None
    client, connection, modes = (str(v or "") for v in rows[0])
    unsafe = [m for m in modes.split(",") if m.strip().upper() not in SAFE_SQL_MODES]
    if client.lower() != "utf8mb4" or connection.lower() != "utf8mb4" or unsafe:
        return f"character set {client}/{connection}, sql_mode {modes}"
    return None


DRIFT_SQL = {
    "postgres": "SELECT current_setting('client_encoding'),"
    " current_setting('standard_conforming_strings')",
    "mysql": "SELECT @@character_set_client, @@character_set_connection, @@sql_mode",
}


def _damage(shape: Shape, dialect: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in VIEWS:
        if rel not in shape:
            out[rel] = "gone"
    for rel, (columns, rows) in TABLES.items():
        if rel == "s2.w" and dialect == "sqlite":
            continue  # SQLite has no second schema
        if rel not in shape:
            out[rel] = "gone"
            continue
        have_columns, have_rows = shape[rel]
        missing = [c for c in columns if c not in {name for name, _ in have_columns}]
        if missing:
            out[rel] = "columns gone: " + ", ".join(missing)
            continue
        left = Counter(have_rows)
        lost = 0
        for row in rows:
            if left[row] > 0:
                left[row] -= 1
            else:
                lost += 1
        if lost:
            every = " (all)" if lost == len(rows) else ""
            out[rel] = f"rows lost or changed: {lost} of {len(rows)}{every}"
    return out


def _rows_text(row: tuple[Any, ...]) -> tuple[str | None, ...]:
    return tuple(None if v is None else str(v) for v in row)


# --------------------------------------------------------------------------- PostgreSQL

PG_BASELINE = [
    "CREATE TABLE t (id int PRIMARY KEY, v text, n int)",
    "INSERT INTO t VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30)",
    "CREATE TABLE users (id int PRIMARY KEY, name text, notes text)",
    "INSERT INTO users VALUES (1, 'ann', 'x'), (2, 'bo', 'y'), (3, 'cy', 'z')",
    "CREATE VIEW vw AS SELECT id, name FROM users",
    "CREATE SCHEMA s2",
    "CREATE TABLE s2.w (id int, v text)",
    "INSERT INTO s2.w VALUES (1, 'p'), (2, 'q'), (3, 'r')",
]
PG_RELS = {"t": ("public", "t"), "users": ("public", "users"), "vw": ("public", "vw")}
PG_RELS["s2.w"] = ("s2", "w")
SAVEPOINT = "hoop_differential_sp"


def _pg_shape(conn: psycopg.Connection[Any]) -> Shape:
    found: dict[str, tuple[tuple[str, str], ...]] = {}
    for schema, name, kind, columns in conn.execute(
        "SELECT n.nspname, c.relname, c.relkind,"
        " array_agg(ARRAY[a.attname::text, format_type(a.atttypid, a.atttypmod)]"
        " ORDER BY a.attnum)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE (n.nspname, c.relname) IN"
        " (('public', 't'), ('public', 'users'), ('public', 'vw'), ('s2', 'w'))"
        " GROUP BY 1, 2, 3"
    ):
        rel = next(r for r, sn in PG_RELS.items() if sn == (schema, name))
        if (rel in VIEWS) == (kind == "v"):
            found[rel] = tuple((c[0], c[1]) for c in columns)
    shape: Shape = {rel: (cols, []) for rel, cols in found.items()}
    parts = []
    for rel, (columns, _) in TABLES.items():
        names = {c for c, _ in found.get(rel, ())}
        if rel in found and all(c in names for c in columns):
            schema, name = PG_RELS[rel]
            cols = ", ".join(f'"{c}"::text' for c in columns)
            pad = ", NULL::text" * (3 - len(columns))
            parts.append(f'SELECT \'{rel}\', {cols}{pad} FROM "{schema}"."{name}"')
    # A table that cannot be read (its data gone some other way) keeps no rows.
    try:
        with conn.transaction():
            rows = conn.execute(" UNION ALL ".join(parts)).fetchall() if parts else []  # type: ignore[arg-type]
    except psycopg.Error:
        rows = []
        for part in parts:
            with contextlib.suppress(psycopg.Error), conn.transaction():
                rows += conn.execute(part).fetchall()  # type: ignore[arg-type]
    for rel, *values in rows:
        shape[rel][1].append(_rows_text(tuple(values[: len(TABLES[rel][0])])))
    return shape


def _pg_rebuild(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        for schema in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles"
            " WHERE rolname = current_user) OR nspname IN ('public', 's2')"
        ).fetchall():
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema[0]}" CASCADE')  # type: ignore[arg-type]
        conn.execute("CREATE SCHEMA public")
        for statement in PG_BASELINE:
            conn.execute(statement)  # type: ignore[arg-type]


def _pg_drain_copy(conn: psycopg.Connection[Any]) -> None:
    pgconn = conn.pgconn
    while pgconn.get_copy_data(0)[0] >= 0:
        pass
    while pgconn.get_result() is not None:
        pass


def _pg_connect(db: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        dbname=db,
        user=db + "_app",
        password=PG_PASSWORD,
        autocommit=True,
        prepare_threshold=None,
        options=f"-c statement_timeout={TIMEOUT_S * 1000} -c lock_timeout=1000",
    )


# Inputs that end, open or lean on transactions (or SET LOCAL, which does nothing outside one)
# run in real autocommit, and the schema is rebuilt after them; the others run inside
# BEGIN … ROLLBACK, each statement in a savepoint, which is far faster.
PG_AUTOCOMMIT = re.compile(
    r"\b(BEGIN|COMMIT|ROLLBACK|START|END|ABORT|SAVEPOINT|RELEASE|LOCAL|DISCARD)\b|set_config",
    re.IGNORECASE,
)


def _pg_case(conn: psycopg.Connection[Any], case: Case) -> tuple[Outcome, bool]:
    """Run one input; its outcome, and whether the schema must be rebuilt after it."""
    status = psycopg.pq.TransactionStatus
    statements, destroys = _split(case.text, "postgres")
    outcome = Outcome(case, tuple(s.text for s in statements), destroys)
    wrapped = not PG_AUTOCOMMIT.search(case.text)
    rebuild = not wrapped
    if wrapped:
        conn.execute("BEGIN")
    for statement in statements:
        savepoint = wrapped and conn.info.transaction_status == status.INTRANS
        if savepoint:
            conn.execute(f"SAVEPOINT {SAVEPOINT}")
        try:
            conn.execute(statement.text)  # type: ignore[arg-type]
        except Exception as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            if str(exc).startswith("COPY cannot be used"):
                # COPY … TO STDOUT: the server ran it; the driver refuses the data.
                _pg_drain_copy(conn)
            elif savepoint and conn.info.transaction_status == status.INERROR:
                conn.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            break
        if wrapped and conn.info.transaction_status == status.IDLE:
            rebuild = True  # the input ended our transaction
        elif savepoint:
            conn.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
        if needs_check(statement) and conn.info.transaction_status != status.INERROR:
            drift = _drift(conn.execute(DRIFT_SQL["postgres"]).fetchall(), "postgres")  # type: ignore[arg-type]
            if drift is not None:
                outcome.error = f"the broker stops the session: {drift}"
                break
    if not wrapped and conn.info.transaction_status != status.IDLE:
        conn.execute("ROLLBACK")  # the broker closes its connection: an open transaction ends
    if conn.info.transaction_status == status.INERROR:
        conn.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
    outcome.damage = _damage(_pg_shape(conn), "postgres")
    if conn.info.transaction_status != status.IDLE:
        conn.execute("ROLLBACK")
    conn.execute("DISCARD ALL")
    return outcome, rebuild


def _pg_run(conn: psycopg.Connection[Any], db: str, cases: list[Case]) -> list[Outcome]:
    outcomes = []
    for case in cases:
        try:
            outcome, rebuild = _pg_case(conn, case)
        except psycopg.OperationalError:
            if not conn.closed:
                raise
            conn = _pg_connect(db)  # the server ended the session: measure again, rebuild
            outcome = Outcome(case, (), False, error="connection lost")
            outcome.damage = _damage(_pg_shape(conn), "postgres")
            rebuild = True
        if rebuild:
            _pg_rebuild(conn)
        outcomes.append(outcome)
    conn.close()
    return outcomes


@pytest.fixture(scope="module")
def postgres_outcomes() -> Iterator[list[Outcome]]:
    with scratch_postgres(password=PG_PASSWORD, prefix="hoop_diff_") as name:
        conn = _pg_connect(name)
        version = conn.info.server_version
        _pg_rebuild(conn)
        yield _pg_run(conn, name, corpus("postgres", db="public", pg_version=version))


# --------------------------------------------------------------------------- MariaDB

COM_RESET_CONNECTION = 0x1F


class _Maria:
    """The scratch databases (db: t, users, vw; s2: w), the user's connection (as the broker's),
    and root's connection, which measures and rebuilds what an input changed."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.s2 = db + "_s2"
        self.admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        self.baseline: dict[str, tuple[tuple[str, str], ...]] = {}
        self.conn: pymysql.Connection[Any] | None = None

    def sql(self, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.admin.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())

    def create(self, rel: str) -> None:
        db, s2 = self.db, self.s2
        statements = {
            "t": [
                f"CREATE TABLE {db}.t (id int PRIMARY KEY, v text, n int)",
                f"INSERT INTO {db}.t VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30)",
            ],
            "users": [
                f"CREATE TABLE {db}.users (id int PRIMARY KEY, name text, notes text)",
                f"INSERT INTO {db}.users VALUES (1, 'ann', 'x'), (2, 'bo', 'y'), (3, 'cy', 'z')",
            ],
            "vw": [f"CREATE OR REPLACE VIEW {db}.vw AS SELECT id, name FROM {db}.users"],
            "s2.w": [
                f"CREATE TABLE {s2}.w (id int, v text)",
                f"INSERT INTO {s2}.w VALUES (1, 'p'), (2, 'q'), (3, 'r')",
            ],
        }[rel]
        for statement in statements:
            self.sql(statement)

    def qualified(self, rel: str) -> str:
        """`db`.`name` for t, users, vw and what the input created; `s2`.`name` for s2.*."""
        schema, name = (self.s2, rel[3:]) if rel.startswith("s2.") else (self.db, rel)
        return f"`{schema}`.`{name}`"

    def setup(self) -> None:
        for db in (self.db, self.s2):
            self.sql(f"CREATE DATABASE {db}")
        for host in ("%", "localhost"):
            self.sql(f"CREATE USER '{self.db}'@'{host}' IDENTIFIED BY '{MY_PASSWORD}'")
            for db in (self.db, self.s2):
                self.sql(f"GRANT ALL ON {db}.* TO '{self.db}'@'{host}'")
        for rel in ("t", "users", "vw", "s2.w"):
            self.create(rel)
        self.baseline = self.columns()
        self.connect()

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()
        for db in (self.db, self.s2):
            self.sql(f"DROP DATABASE IF EXISTS {db}")
        for host in ("%", "localhost"):
            self.sql(f"DROP USER IF EXISTS '{self.db}'@'{host}'")
        self.admin.close()

    def connect(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        # As broker.protocols.mysql opens it: autocommit, utf8mb4, no multi-statements.
        self.conn = pymysql.connect(
            host="127.0.0.1",
            user=self.db,
            password=MY_PASSWORD,
            database=self.db,
            autocommit=True,
            charset="utf8mb4",
            init_command=f"SET SESSION max_statement_time = {TIMEOUT_S}",
        )

    def reset_session(self) -> None:
        """Back to a fresh connection's state (session variables, character set, temporary
        tables, prepared statements, locks) without reconnecting."""
        assert self.conn is not None
        try:
            self.conn._execute_command(COM_RESET_CONNECTION, b"")  # type: ignore[attr-defined]
            self.conn._read_packet()  # type: ignore[attr-defined]
        except Exception:
            self.connect()

    def restore_session(self) -> None:
        assert self.conn is not None
        try:
            self.conn.select_db(self.db)
            with self.conn.cursor() as cur:
                cur.execute(f"SET SESSION max_statement_time = {TIMEOUT_S}")
        except Exception:
            self.connect()

    def columns(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """ "name|table" or "name|view" -> (column, type) of every relation in the two
        databases (s2's as "s2.name"); a database that is gone is created again, empty.
        (information_schema is slower by far after DDL: SHOW TABLES, and the result
        description of SELECT … LIMIT 0.)"""
        out: dict[str, tuple[tuple[str, str], ...]] = {}
        for schema, prefix in ((self.db, ""), (self.s2, "s2.")):
            try:
                listed = self.sql(f"SHOW FULL TABLES FROM `{schema}`")
            except pymysql.err.MySQLError:
                self.sql(f"CREATE DATABASE `{schema}`")
                continue
            for name, kind in listed:
                view = kind == "VIEW"
                key = f"{prefix}{name}|{'view' if view else 'table'}"
                try:
                    with self.admin.cursor() as cur:
                        cur.execute(f"SELECT * FROM `{schema}`.`{name}` LIMIT 0")
                        description = cur.description or ()
                except pymysql.err.MySQLError:
                    description = ()  # a view whose table is gone
                out[key] = tuple((d[0], f"{d[1]}/{d[3]}") for d in description)
        return out

    def measure_and_repair(self) -> dict[str, str]:
        columns = self.columns()
        shape: Shape = {}
        for key, cols in columns.items():
            rel, kind = key.split("|")
            if (rel in VIEWS and kind == "view") or (rel in TABLES and kind == "table"):
                shape[rel] = (cols, [])
        parts = []
        for rel, (cols, _) in TABLES.items():
            if rel in shape and all(c in {n for n, _ in shape[rel][0]} for c in cols):
                names = ", ".join(f"CAST(`{c}` AS CHAR)" for c in cols)
                pad = ", NULL" * (3 - len(cols))
                parts.append(f"SELECT '{rel}', {names}{pad} FROM {self.qualified(rel)}")
        # A table that cannot be read (its tablespace discarded, …) keeps no rows.
        try:
            rows = self.sql(" UNION ALL ".join(parts)) if parts else []
        except pymysql.err.MySQLError:
            rows = []
            for part in parts:
                with contextlib.suppress(pymysql.err.MySQLError):
                    rows += self.sql(part)
        for rel, *values in rows:
            shape[rel][1].append(_rows_text(tuple(values[: len(TABLES[rel][0])])))
        damage = _damage(shape, "mysql")
        self.repair(columns, shape)
        return damage

    def repair(self, columns: dict[str, tuple[tuple[str, str], ...]], shape: Shape) -> None:
        # Objects the input created: drop them.
        for key in columns:
            if key not in self.baseline:
                rel, kind = key.split("|")
                what = "VIEW" if kind == "view" else "TABLE"
                self.sql(f"DROP {what} IF EXISTS {self.qualified(rel)}")
        for schema, name, kind in self.sql(
            "SELECT db, name, type FROM mysql.proc WHERE db IN (%s, %s)", (self.db, self.s2)
        ):
            self.sql(f"DROP {kind} IF EXISTS `{schema}`.`{name}`")
        for schema in (self.db, self.s2):
            for row in self.sql(f"SHOW TRIGGERS FROM `{schema}`"):
                self.sql(f"DROP TRIGGER IF EXISTS `{schema}`.`{row[0]}`")
        # Baseline relations: rebuilt when their shape changed, refilled when their rows did.
        for rel, (_, rows) in TABLES.items():
            key = f"{rel}|table"
            if columns.get(key) != self.baseline[key]:
                self.sql(f"DROP TABLE IF EXISTS {self.qualified(rel)}")
                self.create(rel)
            elif sorted(shape[rel][1]) != sorted(rows):
                qualified = self.qualified(rel)
                values = ", ".join(
                    "(" + ", ".join(v if v.isdigit() else f"'{v}'" for v in row) + ")"
                    for row in rows
                )
                try:
                    self.sql("BEGIN")  # one commit, not two
                    self.sql(f"DELETE FROM {qualified}")
                    self.sql(f"INSERT INTO {qualified} VALUES {values}")
                    self.sql("COMMIT")
                except pymysql.err.MySQLError:  # unreadable (tablespace discarded, …)
                    self.sql("ROLLBACK")
                    self.sql(f"DROP TABLE IF EXISTS {qualified}")
                    self.create(rel)
        if columns.get("vw|view") != self.baseline["vw|view"]:
            self.sql(f"DROP TABLE IF EXISTS {self.db}.vw")
            self.create("vw")

    def run(self, cases: list[Case]) -> list[Outcome]:
        outcomes = []
        for case in cases:
            statements, destroys = _split(case.text, "mysql")
            outcome = Outcome(case, tuple(s.text for s in statements), destroys)
            for statement in statements:
                assert self.conn is not None
                try:
                    with self.conn.cursor() as cur:
                        cur.execute(statement.text)
                        cur.fetchall()
                        if needs_check(statement):
                            cur.execute(DRIFT_SQL["mysql"])
                            drift = _drift(list(cur.fetchall()), "mysql")
                            if drift is not None:
                                outcome.error = f"the broker stops the session: {drift}"
                                break
                except pymysql.err.MySQLError as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    if not self.conn.open:
                        self.connect()
                    break
                except Exception as exc:  # e.g. a result the driver cannot decode
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    self.connect()
                    break
            self.reset_session()
            outcome.damage = self.measure_and_repair()
            self.restore_session()
            outcomes.append(outcome)
        return outcomes


@pytest.fixture(scope="module")
def mysql_outcomes() -> Iterator[list[Outcome]]:
    maria = _Maria("hoop_diff_" + secrets.token_hex(4))
    try:
        maria.setup()
        yield maria.run(corpus("mysql", db=maria.db, s2=maria.s2))
    finally:
        maria.teardown()


# --------------------------------------------------------------------------- SQLite

SQLITE_BASELINE = [
    "CREATE TABLE t (id int PRIMARY KEY, v text, n int)",
    "INSERT INTO t VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30)",
    "CREATE TABLE users (id int PRIMARY KEY, name text, notes text)",
    "INSERT INTO users VALUES (1, 'ann', 'x'), (2, 'bo', 'y'), (3, 'cy', 'z')",
    "CREATE VIEW vw AS SELECT id, name FROM users",
]


def _sqlite_shape(conn: sqlite3.Connection) -> Shape:
    shape: Shape = {}
    for kind, name in conn.execute("SELECT type, name FROM main.sqlite_master"):
        if name in VIEWS and kind == "view":
            shape[name] = ((), [])  # only whether it is there (its table may be gone)
        elif name in TABLES and kind == "table":
            cols = tuple(
                (row[1], row[2]) for row in conn.execute(f"PRAGMA main.table_info('{name}')")
            )
            shape[name] = (cols, [])
    for rel, (cols, _) in TABLES.items():
        if rel in shape and all(c in {n for n, _ in shape[rel][0]} for c in cols):
            names = ", ".join(f'"{c}"' for c in cols)
            with contextlib.suppress(sqlite3.Error):  # unreadable: no rows
                for row in conn.execute(f"SELECT {names} FROM main.{rel}"):
                    shape[rel][1].append(_rows_text(row))
    return shape


def _sqlite_run(path: Path, cases: list[Case]) -> list[Outcome]:
    with sqlite3.connect(path) as db:
        for statement in SQLITE_BASELINE:
            db.execute(statement)
    db.close()
    baseline = path.read_bytes()
    outcomes = []
    for case in cases:
        for suffix in ("-journal", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        path.write_bytes(baseline)
        statements, destroys = _split(case.text, "sqlite")
        outcome = Outcome(case, tuple(s.text for s in statements), destroys)
        # As the broker's aiosqlite connection: autocommit, one statement per call.
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for text in outcome.sent:
                try:
                    conn.execute(text).fetchall()
                except Exception as exc:  # sqlite3.Error, or several statements in one text
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    break
            if conn.in_transaction:
                conn.rollback()  # the broker's connection closes: what is not committed is lost
            outcome.damage = _damage(_sqlite_shape(conn), "sqlite")
        finally:
            conn.close()
        outcomes.append(outcome)
    return outcomes


@pytest.fixture(scope="module")
def sqlite_outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    path = tmp_path_factory.mktemp("differential") / "scratch.db"
    return _sqlite_run(path, corpus("sqlite", db="main"))


# --------------------------------------------------------------------------- the tests

FIXTURES = {
    "postgres": "postgres_outcomes",
    "mysql": "mysql_outcomes",
    "sqlite": "sqlite_outcomes",
}
MIN_CASES = 500


def _short(text: str, limit: int = 300) -> str:
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _report(title: str, failures: list[tuple[Outcome, Any]]) -> str:
    groups: dict[str, list[tuple[Outcome, Any]]] = defaultdict(list)
    for outcome, decision in failures:
        groups[outcome.case.family].append((outcome, decision))
    lines = [title]
    for family, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"== {family} ({len(items)})")
        for outcome, decision in items:
            damage = "; ".join(f"{rel}: {what}" for rel, what in sorted(outcome.damage.items()))
            lines.append(f"  {outcome.case.id} [{damage}] {_short(outcome.case.text)}")
            lines.append(f"        broker: {decision.action}: {_short(decision.reason, 200)}")
    return "\n".join(lines)


@pytest.mark.parametrize("dialect", list(FIXTURES))
def test_the_corpus_is_large_enough(dialect: str) -> None:
    args: dict[str, Any] = {"db": "main" if dialect == "sqlite" else "public"}
    assert len(corpus(dialect, **args)) >= MIN_CASES


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("dialect", list(FIXTURES))
def test_no_allowed_input_destroys_data(
    dialect: str, policy: str, request: pytest.FixtureRequest
) -> None:
    outcomes: list[Outcome] = request.getfixturevalue(FIXTURES[dialect])
    assert len(outcomes) >= MIN_CASES
    failures = []
    silent = []
    for outcome in outcomes:
        decision, _ = decide_sql(POLICIES[policy], outcome.case.text, dialect)  # type: ignore[arg-type]
        if decision.action != "allow":
            continue
        if policy == "effect" and outcome.damage:
            failures.append((outcome, decision))
        elif policy == "kind" and outcome.whole:
            named = outcome.case.family not in KIND_RULES_SILENT
            (failures if named else silent).append((outcome, decision))
    idle = sum(1 for o in outcomes if o.classified_destroys and not o.damage)
    destroyed = sum(1 for o in outcomes if o.damage)
    summary = (
        f"{dialect}: {len(outcomes)} inputs, {destroyed} damaged the baseline; "
        f"{idle} classified as destroying destroyed nothing"
    )
    if silent:
        # Not failures: damage the kind rules do not name (ALTER, REPLACE, upserts, …).
        summary += "\n" + _report(
            f"for information, {len(silent)} allowed inputs damaged a whole table in ways the "
            "kind rules do not name (only effect rules catch these):",
            silent,
        )
    print(summary)
    title = (
        f"{dialect}, policy {policy!r}: {len(failures)} of {len(outcomes)} inputs damaged the "
        "baseline and were allowed"
    )
    assert not failures, _report(title, failures) + "\n" + summary
