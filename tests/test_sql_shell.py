"""`hoopctl connect` on database targets: the broker's SQL shell, driven in a real terminal
(pexpect) against real PostgreSQL, MariaDB and SQLite through a real broker."""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import psycopg
import pymysql
import pytest

from broker.recording import read_events
from tests.helpers import BrokerProcess, User, dev_config, free_port, start_broker
from tests.test_sql_exec import MY_PASSWORD, PG_PASSWORD, mariadb_db, postgres_db  # noqa: F401
from tests.test_sql_exec import SQL_POLICY as POLICY
from tests.test_ssh_config import ssh_config

TARGETS = ["pg", "maria", "lite"]
SESSION_ID = re.compile(r"session (\d{8}-[0-9a-f]{12}) started")
# prompt-toolkit turns bracketed paste on when a prompt starts and off when it is accepted.
PROMPT_START = "\x1b[?2004h"
PROMPT_DONE = "\x1b[?2004l"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


# Ten thousand rows, one per line, in each dialect.
MANY_ROWS = {
    "pg": "SELECT g AS n FROM generate_series(1, 10000) AS g;",
    "maria": "SELECT seq AS n FROM seq_1_to_10000;",
    "lite": (
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 10000) "
        "SELECT n FROM c;"
    ),
}


def plain(text: str) -> str:
    return ANSI.sub("", text)


def on_screen(text: str) -> str:
    """A pattern for TEXT as a terminal shows it: prompt-toolkit may redraw part of a line, so
    escape sequences can fall between any two characters."""
    return r"(?:\x1b\[[0-9;?]*[A-Za-z])*".join(re.escape(ch) for ch in text)


# -- databases -----------------------------------------------------------------------------


def pg_admin(database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", user="postgres", dbname=database, autocommit=True)


def maria_admin(database: str) -> pymysql.Connection:
    return pymysql.connect(
        host="127.0.0.1", user="root", password="", database=database, autocommit=True
    )


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-shell") / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text, balance real)")
        db.execute(
            "INSERT INTO accounts VALUES (1, 'ann@example.com', 10.5), (2, 'bo@example.com', 20)"
        )
    return path


@pytest.fixture(scope="module")
def databases(postgres_db: str, mariadb_db: str, sqlite_path: Path) -> dict[str, Any]:  # noqa: F811
    return {"pg": postgres_db, "maria": mariadb_db, "lite": sqlite_path}


class Admin:
    """Direct connections to the test databases, beside the broker (another session)."""

    def __init__(self, databases: dict[str, Any]) -> None:
        self.databases = databases

    def run(self, target: str, sql: str) -> list[tuple[Any, ...]]:
        if target == "pg":
            with pg_admin(self.databases["pg"]) as conn:
                conn.execute(f"SET ROLE {self.databases['pg']}_app")
                cursor = conn.execute(sql)
                return cursor.fetchall() if cursor.description else []
        if target == "maria":
            conn = maria_admin(self.databases["maria"])
            try:
                with conn.cursor() as cursor:
                    cursor.execute(sql)
                    return list(cursor.fetchall())
            finally:
                conn.close()
        db = sqlite3.connect(self.databases["lite"], timeout=10)
        try:
            rows = db.execute(sql).fetchall()
            db.commit()
            return rows
        finally:
            db.close()


@pytest.fixture(scope="module")
def admin(databases: dict[str, Any]) -> Admin:
    return Admin(databases)


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, databases: dict[str, Any]
) -> Iterator[BrokerProcess]:
    tmp = tmp_path_factory.mktemp("shellbroker")
    pg_secret = tmp / "pg-secret"
    pg_secret.write_text(PG_PASSWORD)
    my_secret = tmp / "my-secret"
    my_secret.write_text(MY_PASSWORD)
    targets = f"""
[[targets]]
name = "pg"
type = "postgres"
address = "127.0.0.1:5432"
database = "{databases["pg"]}"
user = "{databases["pg"]}_app"
credential = "file:{pg_secret}"
tls = "disable"
allowed_groups = ["engineers"]
policy = "sql"

[targets.masking]
detectors = ["card"]

[[targets.masking.columns]]
match = ["email"]
strategy = "redact"

[[targets]]
name = "maria"
type = "mysql"
address = "127.0.0.1:3306"
database = "{databases["maria"]}"
user = "{databases["maria"]}"
credential = "file:{my_secret}"
allowed_groups = ["engineers"]
policy = "sql"

[targets.masking]
[[targets.masking.columns]]
match = ["email"]
strategy = "redact"

[[targets]]
name = "lite"
type = "sqlite"
path = "{databases["lite"]}"
allowed_groups = ["engineers"]
policy = "sql"

[targets.masking]
[[targets.masking.columns]]
match = ["accounts.email"]
strategy = "partial"
{POLICY}"""
    config = dev_config(
        tmp / "data", port=free_port(), dev_port=free_port(), auto_approve=None, targets=targets
    )
    process = start_broker(tmp, config)
    yield process
    process.stop()


def _logged_in(broker: BrokerProcess, home: Path, name: str) -> User:
    user = User(home)
    user.login_as(broker, name)
    return user


@pytest.fixture(scope="module")
def alice_user(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> User:
    return _logged_in(broker, tmp_path_factory.mktemp("alice"), "alice")


@pytest.fixture(scope="module")
def bob_user(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> User:
    return _logged_in(broker, tmp_path_factory.mktemp("bob"), "bob")


# -- the shell in a terminal ---------------------------------------------------------------


class Shell:
    """One `hoopctl connect TARGET` in a pexpect terminal (40 rows, 200 columns)."""

    def __init__(self, user: User, target: str) -> None:
        self.target = target
        self.child = user.spawn("connect", target, timeout=20)
        # hoopctl relays stdout and stderr apart: the session id (stderr) and the first prompt
        # (stdout) may show in either order.
        self.session_id = ""
        prompted = False
        while not (self.session_id and prompted):
            if self.child.expect([SESSION_ID, re.escape(PROMPT_START)]) == 0:
                self.session_id = self.child.match.group(1)
            else:
                prompted = True

    def run(self, text: str, timeout: float = 20) -> str:
        """Type TEXT and Enter; what the terminal showed (without colours) up to the next prompt."""
        self.child.send(text + "\r")
        self.child.expect_exact(PROMPT_DONE, timeout=timeout)
        self.child.expect_exact(PROMPT_START, timeout=timeout)
        return plain(self.child.before)

    def state(self) -> str:
        """Enter on an empty line; the transaction state the new prompt shows ("", "*", "!")."""
        self.run("")
        self.child.expect(rf"{self.target}=([*!]?)>")
        return self.child.match.group(1)

    def expect(self, pattern: str, timeout: float = 20) -> str:
        self.child.expect(pattern, timeout=timeout)
        return plain(self.child.before)

    def quit(self) -> int:
        self.child.send("\\q\r")
        self.child.expect(r"session \S+ ended")
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def recording(self, broker: BrokerProcess) -> Path:
        return broker.data_dir / "recordings" / f"{self.session_id}.cast"


@pytest.fixture
def shell(alice_user: User) -> Iterator[Callable[[str], Shell]]:
    opened: list[Shell] = []

    def open_shell(target: str) -> Shell:
        opened.append(Shell(alice_user, target))
        return opened[-1]

    yield open_shell
    for one in opened:
        if one.child.isalive():
            one.child.terminate(force=True)


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_select_shows_a_table(shell: Callable[[str], Shell], target: str) -> None:
    sh = shell(target)
    out = sh.run("SELECT id, balance FROM accounts ORDER BY id;")
    lines = out.splitlines()
    header = next(line for line in lines if "balance" in line)
    assert "id" in header and "┃" in header
    assert any("━" in line for line in lines)
    assert any(line.startswith("1 ") and "10.5" in line for line in lines), out
    assert "(2 rows)" in out
    assert sh.quit() == 0


@pytest.mark.parametrize("target", TARGETS)
def test_multi_line_statement_runs_at_the_semicolon(
    shell: Callable[[str], Shell], target: str, broker: BrokerProcess
) -> None:
    sh = shell(target)
    sh.child.send("SELECT id\r")
    sh.expect(f"{target}->")
    sh.child.send("FROM accounts -- no ; in a comment\r")
    sh.expect(f"{target}->")
    sh.child.send("WHERE email <> 'semi;colon'\r")
    sh.expect(f"{target}->")
    out = sh.run("AND id = 2;")
    assert "(1 row)" in out
    query = broker.audit_events("query")[-1]
    assert query["session"] == sh.session_id
    assert query["details"]["query"].startswith("SELECT id\nFROM accounts")
    assert sh.quit() == 0


@pytest.mark.parametrize("target", TARGETS)
def test_denied_drop_shows_a_notice_and_nothing_runs(
    shell: Callable[[str], Shell], target: str, admin: Admin, broker: BrokerProcess
) -> None:
    sh = shell(target)
    out = sh.run("DROP TABLE accounts;")
    assert "[hoop] denied by rule no-drop" in out
    out = sh.run("SELECT 4711 AS marker; DROP TABLE accounts;")
    assert "denied by rule no-drop" in out and "nothing in this input was run" in out
    assert "4711" not in out.split("denied")[1]
    assert admin.run(target, "SELECT count(*) FROM accounts")[0][0] >= 2
    # The shell goes on.
    assert "(1 row)" in sh.run("SELECT count(*) AS n FROM accounts;")
    assert sh.quit() == 0
    blocked = broker.audit_events("query.blocked")[-1]
    assert blocked["session"] == sh.session_id and blocked["details"]["rule"] == "no-drop"
    marks = [data for _, code, data in read_events(sh.recording(broker))[1] if code == "m"]
    assert any(mark.startswith("blocked: denied by rule no-drop") for mark in marks)


def test_review_is_not_run_without_approval(shell: Callable[[str], Shell], admin: Admin) -> None:
    sh = shell("pg")
    out = sh.run("DELETE FROM accounts;")
    assert "[hoop] not run:" in out and "approval" in out
    assert admin.run("pg", "SELECT count(*) FROM accounts")[0][0] == 2
    assert sh.quit() == 0


@pytest.mark.parametrize("target", TARGETS)
def test_transaction_spans_inputs(shell: Callable[[str], Shell], target: str, admin: Admin) -> None:
    table = f"tx_{secrets.token_hex(3)}"
    admin.run(target, f"CREATE TABLE {table} (id int)")
    sh = shell(target)
    sh.run("BEGIN;")
    out = sh.run(f"INSERT INTO {table} VALUES (7);")
    assert re.search(r"INSERT (0 )?1", out), out
    # The prompt says a transaction is open, and another session does not see the row yet.
    assert sh.state() == "*"
    assert admin.run(target, f"SELECT count(*) FROM {table}")[0][0] == 0
    sh.run("COMMIT;")
    assert admin.run(target, f"SELECT count(*) FROM {table}")[0][0] == 1
    sh.run("BEGIN;")
    sh.run(f"INSERT INTO {table} VALUES (8);")
    sh.run("ROLLBACK;")
    assert sh.state() == ""
    assert admin.run(target, f"SELECT count(*) FROM {table}")[0][0] == 1
    assert sh.quit() == 0


def test_postgres_error_aborts_the_transaction_as_psql_shows(shell: Callable[[str], Shell]) -> None:
    sh = shell("pg")
    sh.run("BEGIN;")
    out = sh.run("SELECT 1 / 0;")
    assert "ERROR: division by zero" in out
    assert sh.state() == "!"
    assert "current transaction is aborted" in sh.run("SELECT 1;")
    sh.run("ROLLBACK;")
    assert "(1 row)" in sh.run("SELECT 1;")
    assert sh.quit() == 0


@pytest.mark.parametrize("target", TARGETS)
def test_describe_commands(shell: Callable[[str], Shell], target: str, admin: Admin) -> None:
    view = f"v_{secrets.token_hex(3)}"
    admin.run(target, f"CREATE VIEW {view} AS SELECT id FROM accounts")
    sh = shell(target)
    listing = sh.run("\\d")
    assert "List of relations" in listing
    assert re.search(r"accounts\s+│\s+table", listing), listing
    assert re.search(rf"{view}\s+│\s+view", listing), listing
    tables = sh.run("\\dt")
    assert "accounts" in tables and view not in tables
    described = sh.run("\\d accounts")
    assert re.search(r"Table \"\w+\.accounts\"", described), described
    for column in ("Column", "Type", "Nullable", "Default", "id", "email", "balance"):
        assert column in described
    assert re.search(r"id\s+│\s+int", described, re.IGNORECASE), described
    assert "not null" in described.split("email")[0] or target == "lite"
    assert "Indexes:" in described and "PRIMARY KEY" in described
    assert "Did not find any relation named" in sh.run("\\d no_such_thing")
    assert sh.quit() == 0


def test_mysql_show_and_describe_are_ordinary_statements(shell: Callable[[str], Shell]) -> None:
    sh = shell("maria")
    assert "accounts" in sh.run("SHOW TABLES;")
    out = sh.run("DESCRIBE accounts;")
    assert "balance" in out and "(3 rows)" in out
    assert sh.quit() == 0


def test_expanded_timing_help_and_unknown_commands(shell: Callable[[str], Shell]) -> None:
    sh = shell("pg")
    assert "Expanded display is on." in sh.run("\\x")
    out = sh.run("SELECT id, balance FROM accounts ORDER BY id;")
    assert "-[ RECORD 1 ]" in out and "-[ RECORD 2 ]" in out
    assert re.search(r"balance \| 10\.5", out), out
    assert "Expanded display is off." in sh.run("\\x")
    assert "Timing is on." in sh.run("\\timing")
    assert re.search(r"Time: \d+\.\d{3} ms", sh.run("SELECT 1;"))
    assert "Timing is off." in sh.run("\\timing off")
    assert "Time:" not in sh.run("SELECT 1;")
    help_text = sh.run("\\?")
    for command in ("\\d", "\\dt", "\\d NAME", "\\x", "\\timing", "\\?", "\\q"):
        assert command in help_text
    assert "invalid command \\nope" in sh.run("\\nope")
    assert sh.quit() == 0


def test_ctrl_d_on_an_empty_line_quits_with_status_0(shell: Callable[[str], Shell]) -> None:
    sh = shell("lite")
    sh.child.send("\x04")
    sh.child.expect(r"session \S+ ended \(exit 0\)")
    sh.child.expect(pexpect.EOF)
    sh.child.close()
    assert sh.child.exitstatus == 0


def test_ctrl_c_at_the_prompt_clears_the_line(
    shell: Callable[[str], Shell], broker: BrokerProcess
) -> None:
    sh = shell("pg")
    sh.child.send("SELECT 'never run' AS x")
    sh.child.send("\x03")
    sh.child.expect_exact(PROMPT_START)
    out = sh.run("SELECT 'ran' AS x;")
    assert "ran" in out and "never run" not in out
    queries = [e for e in broker.audit_events("query") if e["session"] == sh.session_id]
    assert [q["details"]["query"] for q in queries] == ["SELECT 'ran' AS x"]
    assert sh.quit() == 0


def _running(admin: Admin, target: str, marker: str) -> int:
    if target == "pg":
        sql = (
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        )
    else:
        sql = (
            "SELECT count(*) FROM information_schema.PROCESSLIST "
            f"WHERE COMMAND = 'Query' AND INFO LIKE '%{marker}%' AND ID <> CONNECTION_ID()"
        )
    return int(admin.run(target, sql)[0][0])


@pytest.mark.parametrize(
    ("target", "sleep", "message"),
    [
        ("pg", "pg_sleep(30)", "ERROR: canceling statement due to user request"),
        ("maria", "SLEEP(30)", "ERROR: Query execution was interrupted"),
    ],
)
def test_ctrl_c_cancels_the_statement_on_the_server(
    shell: Callable[[str], Shell], admin: Admin, target: str, sleep: str, message: str
) -> None:
    marker = f"zz_{secrets.token_hex(4)}"
    sh = shell(target)
    sh.child.send(f"SELECT {sleep} AS {marker};\r")
    sh.child.expect_exact(PROMPT_DONE)
    deadline = time.monotonic() + 10
    while _running(admin, target, marker) == 0:
        assert time.monotonic() < deadline, "the statement never started"
        time.sleep(0.05)
    started = time.monotonic()
    sh.child.send("\x03")
    sh.expect(re.escape(message), timeout=10)
    sh.child.expect_exact(PROMPT_START, timeout=25)
    assert time.monotonic() - started < 25  # cancelled, not the 30 s sleep waited out
    assert _running(admin, target, marker) == 0
    # The same connection goes on.
    assert "(1 row)" in sh.run("SELECT 1;")
    assert sh.quit() == 0


@pytest.mark.parametrize("target", TARGETS)
def test_long_results_page_and_q_stops_early(
    shell: Callable[[str], Shell], target: str, broker: BrokerProcess
) -> None:
    sh = shell(target)
    sh.child.send(MANY_ROWS[target] + "\r")
    first = sh.expect("-- more: space/enter next page, q stop --")
    assert re.search(r"^1\s*$", first, re.MULTILINE) and "37" not in first
    sh.child.send(" ")
    second = sh.expect("-- more")
    numbers = [int(n) for n in re.findall(r"^(\d+)\s*$", second.replace("\r", ""), re.MULTILINE)]
    assert numbers and numbers[0] == 37 and numbers[-1] == 72, numbers
    sh.child.send("q")
    out = sh.expect(r"\((\d+) rows shown; stopped\)")
    shown = int(sh.child.match.group(1))
    assert shown == 72
    sh.child.expect_exact(PROMPT_START)
    assert "10000" not in out
    # Nothing of the stopped statement is left on the connection.
    assert "(1 row)" in sh.run("SELECT 1;")
    assert sh.quit() == 0
    query = [
        e
        for e in broker.audit_events("query")
        if e["session"] == sh.session_id and "10000" in e["details"]["query"]
    ]
    assert query and query[0]["details"]["rows"] == 72


def test_stopping_a_result_inside_a_postgres_transaction_keeps_it_usable(
    shell: Callable[[str], Shell],
) -> None:
    sh = shell("pg")
    sh.run("BEGIN;")
    sh.child.send(MANY_ROWS["pg"] + "\r")
    sh.expect("-- more")
    sh.child.send("\x03")  # at the pager, Ctrl-C stops like q
    sh.expect(r"\(36 rows shown; stopped\)")
    sh.child.expect_exact(PROMPT_START)
    assert sh.state() == "*"  # not aborted: the rest was read, not cancelled
    assert "(1 row)" in sh.run("SELECT 1;")
    sh.run("ROLLBACK;")
    assert sh.quit() == 0


def test_masked_column_in_table_and_recording(
    shell: Callable[[str], Shell], broker: BrokerProcess
) -> None:
    sh = shell("pg")
    out = sh.run("SELECT id, email FROM accounts ORDER BY id;")
    assert "[REDACTED]" in out and "ann@example.com" not in out
    sh.run("\\x")
    out = sh.run("SELECT * FROM accounts WHERE id = 1;")
    assert "email   | [REDACTED]" in out
    assert "card" not in out
    out = sh.run("SELECT 'paid with 4111 1111 1111 1111' AS note;")
    assert "[REDACTED:card]" in out and "4111 1111 1111 1111" not in out
    assert sh.quit() == 0
    recording = sh.recording(broker).read_text()
    assert "[REDACTED]" in recording
    assert "ann@example.com" not in recording and "bo@example.com" not in recording
    event = next(e for e in broker.audit_events("query") if e["session"] == sh.session_id)
    assert event["details"]["masked"] == {"email": 2}


def test_partial_masking_on_sqlite(shell: Callable[[str], Shell]) -> None:
    sh = shell("lite")
    out = sh.run("SELECT email FROM accounts WHERE id = 1;")
    assert "***********.com" in out and "ann" not in out
    assert sh.quit() == 0


def test_recording_holds_the_session(shell: Callable[[str], Shell], broker: BrokerProcess) -> None:
    sh = shell("lite")
    sh.run("SELECT 31337 AS leet;")
    sh.child.setwinsize(30, 100)
    sh.run("SELECT 2;")
    assert sh.quit() == 0
    header, events = read_events(sh.recording(broker))
    assert header["hoop"]["session_id"] == sh.session_id and header["width"] == 200
    codes = {code for _, code, _ in events}
    assert codes >= {"o", "i", "r", "m"}
    marks = [data for _, code, data in events if code == "m"]
    assert "query: SELECT 31337 AS leet" in marks and "query: \\q" not in marks
    assert ("r", "100x30") in [(code, data) for _, code, data in events]
    output = "".join(data for _, code, data in events if code == "o")
    assert "31337" in output and "(1 row)" in output
    typed = "".join(data for _, code, data in events if code == "i")
    assert "SELECT 31337 AS leet;\r" in typed
    sessions = [e for e in broker.audit_events() if e.get("session") == sh.session_id]
    types = [e["type"] for e in sessions]
    assert types[0] == "session.start" and types[-1] == "session.end"
    assert sessions[-1]["details"]["exit_status"] == 0


def test_history_is_kept_per_user_and_target(
    broker: BrokerProcess, alice_user: User, bob_user: User
) -> None:
    marker = str(secrets.randbelow(10**8) + 10**8)
    first = Shell(alice_user, "lite")
    first.run(f"SELECT {marker} AS remembered;")
    assert first.quit() == 0
    history = broker.data_dir / "history" / "alice" / "lite"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert stat.S_IMODE(history.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(history.parent.parent.stat().st_mode) == 0o700

    again = Shell(alice_user, "lite")
    again.child.send("\x1b[A\x1b[A")  # Up, Up: the input before the previous session's \q
    again.expect(on_screen(marker))
    out = again.run("")
    assert "remembered" in out and "(1 row)" in out
    again.child.send("\x12" + marker[:6])  # Ctrl-R searches the history
    again.expect("reverse-i-search")
    again.expect("remembered")
    again.child.send("\x03")  # leaves the search, back to the empty line
    assert again.quit() == 0

    other = Shell(bob_user, "lite")
    other.child.send("\x1b[A")
    out = other.run("")
    assert marker not in out
    assert other.quit() == 0
    assert (
        marker not in (history.parent / "pg").read_text()
        if (history.parent / "pg").exists()
        else True
    )


def test_tab_completes_table_names_and_learns_new_ones(
    shell: Callable[[str], Shell], admin: Admin
) -> None:
    table = f"zebra_{secrets.token_hex(3)}"
    sh = shell("pg")
    sh.child.send("SELECT id FROM accou\t")
    sh.expect(on_screen("accounts"))
    assert "(2 rows)" in sh.run(" ORDER BY id;")
    sh.run(f"CREATE TABLE {table} (stripe int); INSERT INTO {table} VALUES (5);")
    # Completion runs between keystrokes: wait for each before typing on.
    sh.child.send("SELECT str\t")
    sh.expect(on_screen("stripe"))
    sh.child.send(f" FROM {table[:8]}\t")
    sh.expect(on_screen(table))
    out = sh.run(";")
    assert "stripe" in out and "(1 row)" in out
    assert sh.quit() == 0
    admin.run("pg", f"DROP TABLE {table}")


def test_each_statement_and_command_is_a_query_event(
    shell: Callable[[str], Shell], broker: BrokerProcess
) -> None:
    sh = shell("pg")
    sh.run("SELECT 1 AS a; SELECT email FROM accounts WHERE id = 1;")
    sh.run("\\dt")
    sh.run("SELECT * FROM no_such_table;")
    assert sh.quit() == 0
    events = [e for e in broker.audit_events("query") if e["session"] == sh.session_id]
    assert [e["details"]["kind"] for e in events] == ["SELECT", "SELECT", "META", "SELECT"]
    assert events[0]["details"]["query"] == "SELECT 1 AS a"
    assert events[1]["details"]["tables"] == ["accounts"]
    assert events[1]["details"]["masked"] == {"email": 1}
    assert events[2]["details"]["query"] == "\\dt"
    assert events[3]["outcome"] == "failure"
    assert 'relation "no_such_table" does not exist' in events[3]["reason"]


def test_piped_input_runs_as_a_script(alice_user: User) -> None:
    result = alice_user.run("connect", "lite", input="SELECT 40 + 2 AS answer;\n")
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout


def test_without_a_pty_the_input_runs_like_exec(
    alice_user: User, tmp_path: Path, broker: BrokerProcess
) -> None:
    block, options = ssh_config(alice_user)
    config = tmp_path / "ssh_config"
    config.write_text(block)
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("SSH_AUTH_SOCK", None)
    result = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-T", options["host"], "connect lite"],
        input="SELECT id, email FROM accounts ORDER BY id;\nDROP TABLE nothing;\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 3, result
    assert "denied by rule no-drop" in result.stderr
    assert "\x1b[" not in result.stdout
    result = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-T", options["host"], "connect lite"],
        input="SELECT id, email FROM accounts ORDER BY id;\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result
    assert "(2 rows)" in result.stdout and "ann@" not in result.stdout
    assert "\x1b[" not in result.stdout


def test_session_is_refused_when_the_recording_cannot_be_written(
    tmp_path: Path, databases: dict[str, Any]
) -> None:
    targets = f"""
[[targets]]
name = "lite"
type = "sqlite"
path = "{databases["lite"]}"
allowed_groups = ["engineers"]
"""
    data = tmp_path / "data"
    data.mkdir()
    (data / "recordings").write_text("not a directory")
    broker = start_broker(
        tmp_path, dev_config(data, port=free_port(), dev_port=free_port(), targets=targets)
    )
    try:
        user = User(tmp_path / "alice")
        assert user.login(broker).returncode == 0
        child = user.spawn("connect", "lite")
        child.expect("session refused: the recording cannot be written")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 1
        assert broker.audit_events("session.rejected")
    finally:
        broker.stop()


# -- when Enter runs the input (no database needed) ----------------------------------------


@pytest.mark.parametrize(
    ("dialect", "text", "complete"),
    [
        ("postgres", "SELECT 1;", True),
        ("postgres", "SELECT 1", False),
        ("postgres", "SELECT ';'", False),
        ("postgres", "SELECT 1; -- done", True),
        ("postgres", "SELECT 1 -- ;", False),
        ("postgres", "SELECT 1 /* ; */", False),
        ("postgres", "SELECT 1 /* /* ; */ still a comment ; */", False),
        ("postgres", "SELECT $$ ; $$;", True),
        ("postgres", "SELECT $tag$ ; $$ ; $tag$", False),
        ("postgres", "SELECT E'it\\'s;'", False),
        ("postgres", "SELECT 'it''s';", True),
        ("postgres", 'SELECT 1 AS "a;b"', False),
        ("postgres", "\\d accounts", True),
        ("postgres", "SELECT 1\n\\x", True),
        ("postgres", "SELECT 'a\n\\x", False),
        ("postgres", "", True),
        ("postgres", "quit", True),
        ("mysql", "SELECT 'it\\'s;'", False),
        ("mysql", "SELECT 1 # ;", False),
        ("mysql", "SELECT `a;b` FROM t;", True),
        ("mysql", "SELECT 1 --;", True),
        ("sqlite", "SELECT 'a\\';", True),
    ],
)
def test_input_is_complete_at_a_semicolon_outside_quotes_and_comments(
    dialect: str, text: str, complete: bool
) -> None:
    from broker.sessions.sql_catalog import input_complete

    assert input_complete(text, dialect) is complete


def test_names_for_describe_and_their_literals() -> None:
    from broker.sessions.sql_catalog import BadName, literal, split_name

    assert split_name("Accounts", "postgres") == (None, "accounts")
    assert split_name('public."Mixed Case"', "postgres") == ("public", "Mixed Case")
    assert split_name("Accounts", "mysql") == (None, "Accounts")
    assert split_name("`we``ird`", "mysql") == (None, "we`ird")
    for bad in ("a.b.c", "a b", '"open', ""):
        with pytest.raises(BadName):
            split_name(bad, "postgres")
    # Names reach the SQL as hex, whatever they hold.
    assert literal("postgres", "x'; DROP TABLE t; --") == (
        "convert_from(decode('78273b2044524f50205441424c4520743b202d2d', 'hex'), 'UTF8')"
    )
