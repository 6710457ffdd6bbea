"""`hoopctl exec` with SQL against real PostgreSQL, MariaDB and SQLite through the broker."""

from __future__ import annotations

import csv
import io
import json
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import HOOPCTL, BrokerProcess, User, dev_config, free_port, start_broker
from tests.scratch_databases import scratch_mariadb, scratch_postgres

PG_PASSWORD = "pg-" + secrets.token_hex(8)
MY_PASSWORD = "my-" + secrets.token_hex(8)

SQL_POLICY = """
[policies.sql]
default = "allow"
on_unknown = "review"

[[policies.sql.rules]]
name = "no-drop"
action = "deny"
statement = ["DROP", "TRUNCATE"]

[[policies.sql.rules]]
name = "unbounded-writes"
action = "review"
statement = ["UPDATE", "DELETE"]
without_where = true
approvers = ["dba-leads"]
"""


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    schema = (
        "CREATE TABLE accounts (id int PRIMARY KEY, email text, balance numeric)",
        "INSERT INTO accounts VALUES (1, 'ann@example.com', 10.5), (2, 'bo@example.com', 20)",
    )
    with scratch_postgres(schema, password=PG_PASSWORD) as name:
        yield name


@pytest.fixture(scope="module")
def mariadb_db() -> Iterator[str]:
    schema = (
        "CREATE TABLE accounts (id int PRIMARY KEY, email text, balance decimal(10,2))",
        "INSERT INTO accounts VALUES (1, 'ann@example.com', 10.5), (2, 'bo@example.com', 20)",
    )
    with scratch_mariadb(schema, password=MY_PASSWORD) as name:
        yield name


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text, balance real)")
        db.execute(
            "INSERT INTO accounts VALUES (1, 'ann@example.com', 10.5), (2, 'bo@example.com', 20)"
        )
    return path


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, postgres_db: str, mariadb_db: str, sqlite_db: Path
) -> Iterator[BrokerProcess]:
    tmp = tmp_path_factory.mktemp("sqlbroker")
    secret_file = tmp / "pg-secret"
    secret_file.write_text(PG_PASSWORD)
    wrong_file = tmp / "wrong-secret"
    wrong_file.write_text("not-the-password")
    my_file = tmp / "my-secret"
    my_file.write_text(MY_PASSWORD)
    targets = (
        f"""
[[targets]]
name = "pg"
type = "postgres"
address = "127.0.0.1:5432"
database = "{postgres_db}"
user = "{postgres_db}_app"
credential = "file:{secret_file}"
tls = "disable"
allowed_groups = ["dba"]
policy = "sql"

[targets.masking]
detectors = ["card"]

[[targets.masking.columns]]
match = ["email"]
strategy = "redact"


[[targets]]
name = "maria-wrong-secret"
type = "mysql"
address = "127.0.0.1:3306"
database = "{mariadb_db}"
user = "{mariadb_db}"
credential = "file:{wrong_file}"
allowed_groups = ["dba"]

[[targets]]
name = "pg-slow"
type = "postgres"
address = "127.0.0.1:5432"
database = "{postgres_db}"
user = "{postgres_db}_app"
tls = "disable"
statement_timeout = "1s"
allowed_groups = ["dba"]

[[targets]]
name = "maria-slow"
type = "mysql"
address = "127.0.0.1:3306"
database = "{mariadb_db}"
user = "{mariadb_db}"
credential = "file:{my_file}"
statement_timeout = "1s"
allowed_groups = ["dba"]

[[targets]]
name = "pg-down"
type = "postgres"
address = "127.0.0.1:{free_port()}"
database = "x"
user = "x"
tls = "disable"
allowed_groups = ["dba"]

[[targets]]
name = "maria"
type = "mysql"
address = "127.0.0.1:3306"
database = "{mariadb_db}"
user = "{mariadb_db}"
credential = "file:{my_file}"
allowed_groups = ["dba"]
policy = "sql"

[[targets]]
name = "lite"
type = "sqlite"
path = "{sqlite_db}"
allowed_groups = ["dba"]
policy = "sql"

[targets.masking]
[[targets.masking.columns]]
match = ["accounts.email"]
strategy = "partial"
"""
        + SQL_POLICY
    )
    config = dev_config(tmp / "data", port=free_port(), dev_port=free_port(), targets=targets)
    process = start_broker(tmp, config)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def dba(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> User:
    user = User(tmp_path_factory.mktemp("alice"))
    assert user.login(broker).returncode == 0
    return user


TARGETS = ["pg", "maria", "lite"]


@pytest.mark.parametrize("target", TARGETS)
def test_select_as_json(dba: User, target: str) -> None:
    sql = "SELECT id, id * 10 AS tens FROM accounts ORDER BY id"
    result = dba.run("exec", target, "-c", sql, "--output", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"id": 1, "tens": 10}, {"id": 2, "tens": 20}]


@pytest.mark.parametrize("target", TARGETS)
def test_select_without_rows_is_an_empty_json_array(dba: User, target: str) -> None:
    result = dba.run("exec", target, "-c", "SELECT id FROM accounts WHERE id < 0", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_unmasked_target_returns_values_as_stored(dba: User) -> None:
    sql = "SELECT id, email FROM accounts ORDER BY id"
    result = dba.run("exec", "maria", "-c", sql, "-o", "json")
    assert json.loads(result.stdout) == [
        {"id": 1, "email": "ann@example.com"},
        {"id": 2, "email": "bo@example.com"},
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_select_as_csv_and_table(dba: User, target: str) -> None:
    sql = "SELECT id, balance FROM accounts ORDER BY id"
    result = dba.run("exec", target, "-c", sql, "-o", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["id", "balance"] and [r[0] for r in rows[1:]] == ["1", "2"]
    assert float(rows[1][1]) == 10.5
    table = dba.run("exec", target, "-c", sql)
    assert "10.5" in table.stdout and "(2 rows)" in table.stdout


def test_csv_writes_each_kind_of_value_as_text_and_binary_as_hex(dba: User) -> None:
    """NULL is empty, text keeps its commas, quotes and newlines, numbers, dates and booleans
    are as str() gives them, and bytea is \\x and hex, in every row (also after rows with no
    binary value in them)."""
    sql = (
        "SELECT * FROM (VALUES "
        "(1, NULL::text, 1.5::numeric, true, '2024-01-02 03:04:05+00'::timestamptz, NULL::bytea),"
        "(2, 'a, \"b\"' || chr(10) || 'c', 2.25, false, NULL, '\\x00ff'::bytea)"
        ") AS v(n, t, d, b, ts, raw) ORDER BY n"
    )
    result = dba.run("exec", "pg", "-c", sql, "-o", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows == [
        ["n", "t", "d", "b", "ts", "raw"],
        ["1", "", "1.5", "True", "2024-01-02 03:04:05+00:00", ""],
        ["2", 'a, "b"\nc', "2.25", "False", "", "\\x00ff"],
    ]


def test_json_and_arrays_are_written_as_json_text_in_csv_and_table(dba: User) -> None:
    """A jsonb value or an array reads back as JSON, not as Python's repr of it."""
    sql = """SELECT '{"a": [1, null, "é"]}'::jsonb AS j, ARRAY[1, NULL, 3] AS a"""
    result = dba.run("exec", "pg", "-c", sql, "-o", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["j", "a"]
    assert json.loads(rows[1][0]) == {"a": [1, None, "é"]}
    assert json.loads(rows[1][1]) == [1, None, 3]
    table = dba.run("exec", "pg", "-c", sql)
    assert '{"a": [1, null, "é"]}' in table.stdout and "[1, null, 3]" in table.stdout


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE accounts",
        "dRoP tAbLe accounts",
        "/* harmless */ DROP TABLE accounts",
        "SELECT 1; DROP TABLE accounts",
        "SELECT '/* ; */'; TRUNCATE accounts",
    ],
)
def test_drop_and_truncate_are_denied_before_anything_runs(
    dba: User, target: str, sql: str
) -> None:
    result = dba.run("exec", target, "-c", sql)
    assert result.returncode == 3, result.stderr
    assert "denied by rule no-drop" in result.stderr
    assert result.stdout == ""
    check = dba.run("exec", target, "-c", "SELECT count(id) AS n FROM accounts", "-o", "json")
    assert json.loads(check.stdout)[0]["n"] == 2


@pytest.mark.parametrize("target", TARGETS)
def test_delete_without_where_needs_approval(dba: User, target: str) -> None:
    result = dba.run("exec", target, "-c", "DELETE FROM accounts")
    assert result.returncode == 4, result.stderr
    assert "approval required" in result.stderr
    check = dba.run("exec", target, "-c", "SELECT count(id) AS n FROM accounts", "-o", "json")
    assert json.loads(check.stdout)[0]["n"] == 2


def test_sql_from_stdin_and_file(dba: User, tmp_path: Path) -> None:
    piped = dba.run("exec", "pg", "-o", "json", input="SELECT 42 AS answer")
    assert json.loads(piped.stdout) == [{"answer": 42}]
    script = tmp_path / "q.sql"
    script.write_text("SELECT 43 AS answer;")
    from_file = dba.run("exec", "pg", "-f", str(script), "-o", "json")
    assert json.loads(from_file.stdout) == [{"answer": 43}]


def test_statement_error_exits_1_with_the_database_message(dba: User) -> None:
    result = dba.run("exec", "pg", "-c", "SELECT * FROM no_such_table")
    assert result.returncode == 1
    assert 'relation "no_such_table" does not exist' in result.stderr


def test_wrong_credentials_are_a_clear_error_without_the_secret(
    dba: User, broker: BrokerProcess
) -> None:
    # MariaDB checks passwords here; this machine's PostgreSQL trusts loopback connections.
    result = dba.run("exec", "maria-wrong-secret", "-c", "SELECT 1")
    assert result.returncode == 1
    assert "refused the broker's credentials" in result.stderr
    for text in (
        result.stderr,
        result.stdout,
        broker.stdout_path.read_text(),
        broker.stderr_path.read_text(),
    ):
        assert "not-the-password" not in text and MY_PASSWORD not in text


def test_database_down_is_a_clear_error(dba: User) -> None:
    result = dba.run("exec", "pg-down", "-c", "SELECT 1")
    assert result.returncode == 1
    assert "pg-down unreachable" in result.stderr


def test_each_statement_is_an_audit_event(dba: User, broker: BrokerProcess) -> None:
    result = dba.run("exec", "pg", "-c", "SELECT email FROM accounts WHERE id = 1; SELECT 1 AS one")
    assert result.returncode == 0, result.stderr
    queries = broker.audit_events("query")[-2:]
    assert queries[0]["details"]["query"].startswith("SELECT email FROM accounts")
    assert queries[0]["details"]["kind"] == "SELECT"
    assert queries[0]["details"]["tables"] == ["accounts"]
    assert queries[0]["details"]["rows"] == 1
    assert queries[1]["details"]["rows"] == 1


def test_no_sql_is_a_usage_error(dba: User) -> None:
    result = dba.run("exec", "pg", "-c", "SELECT 1", "-f", "x.sql")
    assert result.returncode == 2


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT email FROM accounts WHERE id = 1",
        "SELECT email AS e FROM accounts WHERE id = 1",
        "SELECT email::varchar AS e FROM accounts WHERE id = 1",
        "SELECT 'x' || email AS e FROM accounts WHERE id = 1",
        "SELECT substr(email, 1, 5) AS e FROM accounts WHERE id = 1",
        "SELECT upper(email) AS e FROM accounts WHERE id = 1",
        "SELECT row_to_json(a) AS e FROM accounts a WHERE id = 1",
        "SELECT * FROM accounts WHERE id = 1",
        "WITH c AS (SELECT email FROM accounts) SELECT email AS e FROM c LIMIT 1",
        "SELECT (SELECT email FROM accounts WHERE id = 1) AS e",
    ],
)
@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_masked_column_cannot_be_read_back(
    dba: User, broker: BrokerProcess, sql: str, fmt: str
) -> None:
    result = dba.run("exec", "pg", "-c", sql, "-o", fmt)
    assert result.returncode == 0, result.stderr
    assert "ann@example.com" not in result.stdout
    assert "ANN@EXAMPLE.COM" not in result.stdout and "ann@e" not in result.stdout
    session = broker.audit_events("query")[-1]["session"]
    recording = broker.data_dir / "recordings" / f"{session}.cast"
    assert "ann@example.com" not in recording.read_text()


def test_unmasked_columns_pass_and_masking_is_audited_without_values(
    dba: User, broker: BrokerProcess
) -> None:
    result = dba.run("exec", "pg", "-c", "SELECT id, email FROM accounts ORDER BY id", "-o", "json")
    rows = json.loads(result.stdout)
    assert [row["id"] for row in rows] == [1, 2]
    assert {row["email"] for row in rows} == {"[REDACTED]"}
    event = broker.audit_events("query")[-1]
    assert event["details"]["masked"] == {"email": 2}
    assert "ann@example.com" not in json.dumps(broker.audit_events())


def test_value_detector_masks_card_numbers_in_any_column(dba: User) -> None:
    result = dba.run(
        "exec", "pg", "-c", "SELECT 'paid with 4111 1111 1111 1111 ok' AS note", "-o", "json"
    )
    assert json.loads(result.stdout) == [{"note": "paid with [REDACTED:card] ok"}]


def test_partial_masking_on_sqlite(dba: User) -> None:
    result = dba.run("exec", "lite", "-c", "SELECT email FROM accounts WHERE id = 1", "-o", "json")
    value = json.loads(result.stdout)[0]["email"]
    assert value.endswith(".com") and "ann" not in value


@pytest.mark.parametrize("target", TARGETS)
def test_count_star_is_not_masked(dba: User, target: str) -> None:
    result = dba.run("exec", target, "-c", "SELECT count(*) AS n FROM accounts", "-o", "json")
    assert json.loads(result.stdout) == [{"n": 2}]


def test_invalid_utf8_in_a_text_column_is_shown_not_fatal(dba: User, sqlite_db: Path) -> None:
    with sqlite3.connect(sqlite_db) as db:
        db.execute("CREATE TABLE IF NOT EXISTS raw (v text)")
        db.execute("DELETE FROM raw")
        db.execute("INSERT INTO raw VALUES (CAST(x'41ff42' AS TEXT))")
    result = dba.run("exec", "lite", "-c", "SELECT v FROM raw", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"v": "A\ufffdB"}]


def test_large_single_value_is_returned_whole(dba: User) -> None:
    result = dba.run(
        "exec", "pg", "-c", "SELECT repeat('x', 50000000) AS big", "-o", "csv", timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "x" * 50_000_000


@pytest.mark.parametrize(
    ("target", "sql"), [("pg-slow", "SELECT pg_sleep(10)"), ("maria-slow", "SELECT SLEEP(10) AS s")]
)
def test_statement_timeout_cancels_a_long_statement(dba: User, target: str, sql: str) -> None:
    import time

    started = time.monotonic()
    result = dba.run("exec", target, "-c", sql, "-o", "json")
    assert time.monotonic() - started < 8
    assert result.returncode == 1
    assert "statement timeout" in result.stderr or "max_statement_time exceeded" in result.stderr


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_million_row_export_streams_in_bounded_broker_memory(
    dba: User, broker: BrokerProcess
) -> None:
    import threading

    assert broker.process is not None
    pid = broker.process.pid
    before = _rss_kib(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kib(pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        sql = "SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 1000000) AS g"
        result = dba.run("exec", "pg", "-c", sql, "-o", "csv", timeout=300)
    finally:
        done.set()
        sampler.join()
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1_000_001
    grown_mib = (peak[0] - before) / 1024
    # The result is about 40 MiB of CSV (1M rows); a broker that held it would grow by several
    # times that (a million row tuples). Streaming it grows 15-30 MiB (more on a loaded
    # machine, where the client reads slower and buffers fill).
    assert grown_mib < 40, f"broker memory grew {grown_mib:.1f} MiB during the export"


def test_rows_reach_the_client_while_the_statement_still_runs(dba: User) -> None:
    # The broker gathers rows into writes of about 64 KiB; rows that came are still sent
    # within a moment, not held until more come (here the rows after the 3,000th take 3 s;
    # PostgreSQL itself sends what it has once its 8 KiB buffer is full).
    sql = (
        "SELECT g AS id, CASE WHEN g = 3001 THEN pg_sleep(3)::text END AS pause "
        "FROM generate_series(1, 3100) AS g"
    )
    child = subprocess.Popen(
        [HOOPCTL, "exec", "pg", "-o", "csv", "-c", sql],
        env=dba.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        seen = []
        while line := child.stdout.readline():
            seen.append(line)
            if line.startswith("1000,"):
                break
        # Rows are on the client's side while the 3,001st is being computed: the statement
        # still has seconds to run.
        try:
            child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            running = True
        else:
            running = False
        rest = child.stdout.read()
        errors = child.stderr.read() if child.stderr else ""
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert running, seen[-3:]
    assert child.returncode == 0, errors
    assert rest.splitlines()[-1:] == ["3100,"]


# -- several statements ---------------------------------------------------------------------


def test_json_over_several_statements_is_one_document(dba: User) -> None:
    result = dba.run(
        "exec",
        "pg",
        "-o",
        "json",
        "-c",
        "SELECT 1 AS a; SELECT id FROM accounts ORDER BY id; SET statement_timeout = 0",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [item["kind"] for item in document] == ["SELECT", "SELECT", "SET"]
    assert document[0]["rows"] == [{"a": 1}] and document[0]["columns"] == ["a"]
    assert document[1]["rows"] == [{"id": 1}, {"id": 2}]
    assert document[1]["statement"] == "SELECT id FROM accounts ORDER BY id"
    assert document[2]["status"] == "SET"


@pytest.mark.parametrize("target", TARGETS)
def test_json_document_stays_whole_when_a_statement_fails(dba: User, target: str) -> None:
    result = dba.run(
        "exec", target, "-o", "json", "-c", "SELECT 7 AS n; SELECT * FROM no_such_table"
    )
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document[0]["rows"] == [{"n": 7}]
    assert "no_such_table" in document[1]["error"]


def test_csv_over_several_statements_is_refused_before_anything_runs(dba: User) -> None:
    result = dba.run(
        "exec", "lite", "-o", "csv", "-c", "INSERT INTO accounts VALUES (9, 'x', 1); SELECT 1"
    )
    assert result.returncode == 2
    assert "CSV holds one result" in result.stderr
    check = dba.run("exec", "lite", "-c", "SELECT count(id) AS n FROM accounts", "-o", "json")
    assert json.loads(check.stdout)[0]["n"] == 2


def test_output_format_on_a_command_is_refused_not_ignored(dba: User) -> None:
    result = dba.run("exec", "pg", "-o", "json", "--", "ls")
    assert result.returncode == 2
    assert "--output formats SQL results" in result.stderr
    assert "Traceback" not in result.stderr
