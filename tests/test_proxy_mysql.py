"""`hoopctl proxy` with real MySQL clients: the mariadb command-line client, PyMySQL, aiomysql,
mysql-connector-python and node mysql2 reach a real MariaDB target through the broker.

Each client: a select whose masked column never shows its values, a DROP the policy denies
(error 1142, the table is still there), and a DELETE that waits in the protocol for another
user's approval and then runs once. Then the protocol's own pieces: several result sets, a
prepared statement judged with its parameters bound (binary rows, masked), COM_PING,
COM_INIT_DB, KILL QUERY, the one-time password, a client leaving while it waits, and bad input.

The clients that can send the one-time password in clear (mysql_clear_password, which the proxy
asks for: the leg is loopback, then SSH) use the proxy with a password: the mariadb client as
it is, PyMySQL and aiomysql as they are, mysql2 with enableCleartextPlugin. mysql-connector-
python refuses mysql_clear_password without TLS: it uses a proxy started with --no-password."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import mysql.connector
import pexpect
import pymysql
import pytest
from pymysql.constants import CLIENT

from broker.protocols.mysql import SAFE_SQL_MODES, lexer
from broker.protocols.mysql import values as v
from tests.fixtures import approvals
from tests.fixtures.approvals import World, approvals_world
from tests.scratch_databases import MY_ADMIN, MY_HOSTS, scratch_mariadb

POLICY = """
[policies.proxied]
default = "allow"
on_unknown = "review"
unknown_approvers = ["dba-leads"]

[[policies.proxied.rules]]
name = "no-drop"
action = "deny"
statement = ["DROP", "TRUNCATE"]

[[policies.proxied.rules]]
name = "unbounded-writes"
action = "review"
statement = ["UPDATE", "DELETE"]
without_where = true
approvers = ["dba-leads"]
"""

MASKING = """
[targets.masking]
detectors = ["card"]

[[targets.masking.columns]]
match = ["email"]
strategy = "redact"
"""

EMAILS = ("ann@example.com", "bo@example.com")
CARD = "4111111111111111"
PASSWORD = "my-" + secrets.token_hex(8)
MARIADB = shutil.which("mariadb") or shutil.which("mysql")
NODE = shutil.which("node")
HERE = Path(__file__).parent
MYSQL2 = HERE / "node" / "node_modules" / "mysql2"
TARGET = "myx"


@dataclass(frozen=True)
class Db:
    """The scratch MariaDB database NAME (its user is NAME too)."""

    name: str

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """SQL run beside the broker, as the administrator."""
        conn = pymysql.connect(**MY_ADMIN, database=self.name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params or None)
                return list(cur.fetchall())
        finally:
            conn.close()

    def count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM accounts")[0][0])

    def restore(self) -> None:
        self.query("DELETE FROM accounts")
        self.query("INSERT INTO accounts VALUES (1, %s), (2, %s)", EMAILS)


@pytest.fixture(scope="module")
def db() -> Iterator[Db]:
    schema = (
        "CREATE TABLE accounts (id int PRIMARY KEY, email text)",
        "INSERT INTO accounts VALUES (1, 'ann@example.com'), (2, 'bo@example.com')",
        "CREATE TABLE cards (id int PRIMARY KEY, number bigint)",
        f"INSERT INTO cards VALUES (1, {CARD})",
        "CREATE PROCEDURE two_results() BEGIN "
        "SELECT id FROM accounts ORDER BY id; SELECT email FROM accounts ORDER BY id; END",
    )
    with scratch_mariadb(schema, password=PASSWORD, prefix="hoop_myproxy_") as name:
        yield Db(name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db: Db) -> Iterator[World]:
    root = tmp_path_factory.mktemp("myproxy")
    secret = root / "my-secret"
    secret.write_text(PASSWORD)
    target = f"""
[[targets]]
name = "{TARGET}"
type = "mysql"
address = "127.0.0.1:3306"
database = "{db.name}"
user = "{db.name}"
credential = "file:{secret}"
tls = "disable"
allowed_groups = ["dba"]
policy = "proxied"
"""
    with approvals_world(root, targets=target + MASKING + POLICY) as made:
        yield made


@dataclass
class Proxy:
    """A running `hoopctl proxy myx` of alice's: where clients connect."""

    child: pexpect.spawn
    port: int
    password: str  # "" when started with --no-password
    user: str

    def request_id(self, timeout: float = 60) -> str:
        """The id of the approval request the proxy's terminal shows next."""
        self.child.expect(r"waiting for approval ([0-9a-f]{10})", timeout=timeout)
        return str(self.child.match.group(1))


def _start(world: World, *extra: str) -> Iterator[Proxy]:
    child = world.alice.user.spawn("proxy", TARGET, "--output", "json", *extra, timeout=60)
    child.expect(r'\{"target": "myx".*\}')
    info = json.loads(child.match.group(0))
    assert info["host"] == "127.0.0.1"
    yield Proxy(child, int(info["port"]), str(info["password"] or ""), str(info["user"]))
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()


@pytest.fixture(scope="module")
def proxy(world: World) -> Iterator[Proxy]:
    """With the one-time password."""
    yield from _start(world)


@pytest.fixture(scope="module")
def open_proxy(world: World) -> Iterator[Proxy]:
    """With --no-password."""
    yield from _start(world, "--no-password")


# -- the clients --------------------------------------------------------------------------------


@dataclass
class Outcome:
    results: list[list[list[str | None]] | int] | None = None  # rows, or an affected count
    error: str | None = None
    errno: int | None = None
    sqlstate: str | None = None

    @property
    def rows(self) -> list[list[str | None]]:
        assert self.results is not None, self.error
        first = self.results[0]
        assert isinstance(first, list), self.results
        return first


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _mariadb(proxy: Proxy, sql: str) -> Outcome:
    assert MARIADB, "the mariadb client is not installed"
    password = [f"--password={proxy.password}"] if proxy.password else ["--skip-password"]
    result = subprocess.run(
        [MARIADB, "-h", "127.0.0.1", "-P", str(proxy.port), "-u", proxy.user, *password,
         "--skip-ssl", "--comments", "--batch", "--skip-column-names", "--raw",
         "--default-character-set=utf8mb4", TARGET, "-e", sql],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if result.returncode:
        found = re.search(r"ERROR (\d+) \((\w{5})\)", result.stderr)
        return Outcome(
            error=result.stderr,
            errno=int(found.group(1)) if found else None,
            sqlstate=found.group(2) if found else None,
        )
    rows = [
        [None if cell == "NULL" else cell for cell in line.split("\t")]
        for line in result.stdout.splitlines()
    ]
    return Outcome(results=[rows])


def _dbapi_results(cur: Any) -> list[list[list[str | None]] | int]:
    results: list[list[list[str | None]] | int] = []
    while True:
        if cur.description is None:
            results.append(cur.rowcount)
        else:
            results.append([[_str(x) for x in row] for row in cur.fetchall()])
        if not cur.nextset():
            return results


def _pymysql(proxy: Proxy, sql: str) -> Outcome:
    try:
        conn = pymysql.connect(
            host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password,
            database=TARGET, client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True,
        )  # fmt: skip
    except pymysql.err.MySQLError as exc:
        return Outcome(error=str(exc), errno=exc.args[0])
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return Outcome(results=_dbapi_results(cur))
    except pymysql.err.MySQLError as exc:
        return Outcome(error=str(exc.args[1]), errno=exc.args[0], sqlstate=_state(exc))
    finally:
        conn.close()


def _state(exc: pymysql.err.MySQLError) -> str | None:
    # PyMySQL keeps the error number and message; the proxy's refusals are 1142/42000.
    return "42000" if exc.args and exc.args[0] == 1142 else None


def _aiomysql(proxy: Proxy, sql: str) -> Outcome:
    async def work() -> Outcome:
        conn = await aiomysql.connect(
            host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password,
            db=TARGET, autocommit=True,
        )  # fmt: skip
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql)
                if cur.description is None:
                    return Outcome(results=[cur.rowcount])
                rows = await cur.fetchall()
                return Outcome(results=[[[_str(x) for x in row] for row in rows]])
        except pymysql.err.MySQLError as exc:
            return Outcome(error=str(exc.args[1]), errno=exc.args[0], sqlstate=_state(exc))
        finally:
            conn.close()

    return asyncio.run(work())


def _connector(proxy: Proxy, sql: str, params: tuple[Any, ...] | None = None) -> Outcome:
    assert not proxy.password, "mysql-connector-python needs the --no-password proxy"
    conn = mysql.connector.connect(
        host="127.0.0.1", port=proxy.port, user=proxy.user, database=TARGET,
        use_pure=True, ssl_disabled=True, autocommit=True,
    )  # fmt: skip
    try:
        cur = conn.cursor(prepared=params is not None)
        cur.execute(sql, params)
        if not cur.with_rows:
            return Outcome(results=[cur.rowcount])
        return Outcome(results=[[[_str(x) for x in row] for row in cur.fetchall()]])
    except mysql.connector.Error as exc:
        return Outcome(error=exc.msg, errno=exc.errno, sqlstate=exc.sqlstate)
    finally:
        conn.close()


def _mysql2(
    proxy: Proxy, sql: str, *, mode: str = "query", params: list[Any] | None = None
) -> Outcome:
    assert NODE and MYSQL2.exists(), "node or mysql2 (make clients) is missing"
    result = subprocess.run(
        [NODE, str(HERE / "node" / "mysql2_client.js"), "127.0.0.1", str(proxy.port),
         proxy.user, proxy.password, TARGET, mode, sql, json.dumps(params or [])],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    if "error" in answer:
        return Outcome(error=answer["error"], errno=answer["errno"], sqlstate=answer["code"])
    return Outcome(results=[r["rows"] if "rows" in r else r["affected"] for r in answer["results"]])


# Each client, and whether it takes the one-time password (else: the --no-password proxy).
CLIENTS: dict[str, tuple[Callable[[Proxy, str], Outcome], bool]] = {
    "mariadb": (_mariadb, True),
    "pymysql": (_pymysql, True),
    "aiomysql": (_aiomysql, True),
    "mysql-connector": (_connector, False),
    "node-mysql2": (_mysql2, True),
}


def _run(client: str, proxy: Proxy, open_proxy: Proxy, sql: str) -> Outcome:
    function, with_password = CLIENTS[client]
    return function(proxy if with_password else open_proxy, sql)


def _queries(world: World, sql: str, *, at_least: int = 1) -> list[dict[str, Any]]:
    """The query events of SQL, once there are AT_LEAST of them or 5 s have gone by (an
    event is written as its statement ends)."""
    for _ in range(50):
        found = [e for e in world.broker.audit_events("query") if e["details"]["query"] == sql]
        if len(found) >= at_least:
            break
        time.sleep(0.1)
    return found


# -- every client: a masked select, a denied DROP, a DELETE approved in the protocol ---------


@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_gets_masked_rows(proxy: Proxy, open_proxy: Proxy, db: Db, client: str) -> None:
    db.restore()
    outcome = _run(client, proxy, open_proxy, "SELECT id, email FROM accounts ORDER BY id")
    assert outcome.error is None, outcome.error
    assert [row[0] for row in outcome.rows] == ["1", "2"]
    shown = json.dumps(outcome.rows)
    for email in EMAILS:
        assert email not in shown
    assert all(row[1] for row in outcome.rows)  # masked, not dropped


@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_is_denied_a_drop_and_the_table_survives(
    proxy: Proxy, open_proxy: Proxy, db: Db, client: str
) -> None:
    db.restore()
    outcome = _run(client, proxy, open_proxy, "DROP TABLE accounts")
    assert outcome.results is None
    assert outcome.errno == 1142, outcome
    assert outcome.sqlstate in ("42000", None), outcome
    assert "no-drop" in (outcome.error or "")
    assert db.count() == 2


@pytest.mark.parametrize("client", CLIENTS)
def test_each_clients_delete_waits_for_approval_and_runs_once(
    proxy: Proxy, open_proxy: Proxy, world: World, db: Db, client: str
) -> None:
    db.restore()
    sql = "DELETE FROM accounts"
    before = len(_queries(world, sql, at_least=0))
    used = proxy if CLIENTS[client][1] else open_proxy
    outcome: list[Outcome] = []
    runner = threading.Thread(target=lambda: outcome.append(_run(client, proxy, open_proxy, sql)))
    runner.start()
    request_id = used.request_id(timeout=120)
    assert db.count() == 2  # nothing ran while it waits
    approved = world.bob.user.run("approve", request_id, "--comment", "checked")
    assert approved.returncode == 0, approved.stderr
    runner.join(120)
    assert not runner.is_alive()
    assert outcome and outcome[0].error is None, outcome
    assert db.count() == 0
    ran = _queries(world, sql, at_least=before + 1)[before:]
    assert len(ran) == 1 and ran[0]["details"]["approver"] == "bob"
    assert ran[0]["details"]["rows"] == 2 and ran[0]["actor"] == "alice"


# -- the protocol's pieces ------------------------------------------------------------------


def test_several_statements_answer_with_several_result_sets_each_masked(
    proxy: Proxy, world: World, db: Db
) -> None:
    db.restore()
    sql = (
        "SELECT id FROM accounts ORDER BY id; SELECT email FROM accounts ORDER BY id; "
        "UPDATE accounts SET id = id WHERE id = 0"
    )
    outcome = _pymysql(proxy, sql)
    assert outcome.error is None, outcome.error
    assert outcome.results is not None and len(outcome.results) == 3
    ids, emails, done = outcome.results
    assert ids == [["1"], ["2"]]
    assert isinstance(emails, list) and len(emails) == 2
    assert not any(email in json.dumps(emails) for email in EMAILS)
    assert done == 0
    # Each statement is its own query event.
    assert _queries(world, "SELECT email FROM accounts ORDER BY id")


@pytest.mark.parametrize("client", ["pymysql", "node-mysql2"])
def test_a_procedures_result_sets_come_masked(
    proxy: Proxy, world: World, db: Db, client: str
) -> None:
    db.restore()
    run = _pymysql if client == "pymysql" else _mysql2
    answers: list[Outcome] = []
    runner = threading.Thread(target=lambda: answers.append(run(proxy, "CALL two_results()")))
    runner.start()
    # What a procedure does cannot be told from its call: unknown, reviewed.
    approved = world.bob.user.run("approve", proxy.request_id(timeout=120))
    assert approved.returncode == 0, approved.stderr
    runner.join(120)
    (outcome,) = answers
    assert outcome.error is None, outcome.error
    assert outcome.results is not None
    sets = [r for r in outcome.results if isinstance(r, list)]
    assert len(sets) == 2 and all(len(rows) == 2 for rows in sets)
    # What a procedure returns cannot be traced to columns: every column is masked.
    assert not any(email in json.dumps(sets) for email in EMAILS)


def test_results_that_cannot_be_told_apart_are_all_masked(
    proxy: Proxy, world: World, db: Db
) -> None:
    db.restore()
    # A compound statement answers with results of its own: which result is whose cannot be
    # told, so the email below must not be planned by `SELECT 'x' AS email`.
    sql = (
        "IF 0 THEN SELECT 1; ELSE SELECT 1 AS e; END IF; "
        "SELECT 'x' AS email; SELECT email FROM accounts"
    )
    answers: list[Outcome] = []
    runner = threading.Thread(target=lambda: answers.append(_pymysql(proxy, sql)))
    runner.start()
    approved = world.bob.user.run("approve", proxy.request_id(timeout=120))
    assert approved.returncode == 0, approved.stderr
    runner.join(120)
    (outcome,) = answers
    assert outcome.error is None, outcome.error
    assert outcome.results is not None and len(outcome.results) == 4
    assert not any(email in json.dumps(outcome.results) for email in EMAILS)


def test_after_a_use_the_rest_of_the_batch_is_masked_as_unknown(proxy: Proxy, db: Db) -> None:
    db.restore()
    schema = (
        "CREATE TABLE secrets (email text)",
        "INSERT INTO secrets VALUES ('carl@example.com')",
        "CREATE VIEW accounts AS SELECT email AS id FROM secrets",
    )
    with scratch_mariadb(schema, password=PASSWORD, prefix="hoop_myother_") as other:
        for host in MY_HOSTS:
            db.query(f"GRANT SELECT ON {other}.* TO '{db.name}'@'{host}'")
        # Masking looked `accounts` up before the batch ran, in the first database; after the
        # USE it is another relation (a view over emails).
        sql = f"SELECT id FROM accounts; USE {other}; SELECT id FROM accounts"
        outcome = _pymysql(proxy, sql)
    assert outcome.error is None, outcome.error
    assert outcome.results is not None and outcome.results[0] == [["1"], ["2"]]
    assert "carl@example.com" not in json.dumps(outcome.results)


def test_after_ddl_the_rest_of_the_batch_is_masked_as_unknown(proxy: Proxy, db: Db) -> None:
    db.restore()
    db.query("CREATE OR REPLACE VIEW plain AS SELECT id FROM accounts")
    # Masking looked `plain` up before the batch ran: then it held no email.
    sql = (
        "CREATE OR REPLACE VIEW plain AS SELECT email AS id FROM accounts; "
        "SELECT id FROM plain ORDER BY 1"
    )
    outcome = _pymysql(proxy, sql)
    assert outcome.error is None, outcome.error
    assert not any(email in json.dumps(outcome.results) for email in EMAILS)


def test_what_nothing_masks_passes_through_as_the_target_sent_it(proxy: Proxy, db: Db) -> None:
    sql = (
        "SELECT X'00ff7f80' AS b, 1.5e300 AS d, -7 AS i, 18446744073709551615 AS u, "
        "DATE '2024-02-29' AS day, TIME '-838:59:59' AS t, _utf8mb4 'ünï' AS s, NULL AS n"
    )
    direct = pymysql.connect(**MY_ADMIN, database=db.name)
    via = pymysql.connect(
        host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password,
        database=TARGET,
    )  # fmt: skip
    try:
        answers = []
        for conn in (direct, via):
            with conn.cursor() as cur:
                cur.execute(sql)
                answers.append((cur.description, cur.fetchall()))
    finally:
        direct.close()
        via.close()
    assert answers[0] == answers[1]


def test_a_masked_column_is_described_as_a_string(proxy: Proxy, db: Db) -> None:
    db.restore()
    conn = pymysql.connect(
        host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password,
        database=TARGET,
    )  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, LENGTH(email) FROM accounts ORDER BY id")
            types = [d[1] for d in cur.description]
            rows = cur.fetchall()
    finally:
        conn.close()
    assert types == [pymysql.constants.FIELD_TYPE.LONG, pymysql.constants.FIELD_TYPE.VAR_STRING]
    assert [r[0] for r in rows] == [1, 2] and all(isinstance(r[1], str) for r in rows)


def test_a_value_its_type_cannot_carry_masked_is_sent_as_null_and_audited(
    proxy: Proxy, world: World
) -> None:
    # The card detector finds the number in the text protocol's digits; a BIGINT column
    # cannot carry the masked text.
    outcome = _pymysql(proxy, "SELECT id, number FROM cards")
    assert outcome.rows == [["1", None]]
    (event,) = _queries(world, "SELECT id, number FROM cards")
    assert event["details"]["unmaskable"] == ["number"]


def test_mysql2_prepared_statement_is_judged_with_its_parameters_and_masked(
    proxy: Proxy, world: World, db: Db
) -> None:
    db.restore()
    sql = "SELECT id, email, LENGTH(email) FROM accounts WHERE id = ? AND email <> ?"
    outcome = _mysql2(proxy, sql, mode="execute", params=[1, "x'y"])
    assert outcome.error is None, outcome.error
    ((account_id, email, length),) = outcome.rows
    assert account_id == "1"  # binary rows: an unmasked column keeps its type
    assert email and email != EMAILS[0] and "ann" not in email
    assert length != str(len(EMAILS[0]))  # derived from a masked column: masked too
    # mysql2 sends a JavaScript number as a DOUBLE.
    bound = "SELECT id, email, LENGTH(email) FROM accounts WHERE id = 1.0 AND email <> 'x''y'"
    assert _queries(world, bound)


def test_connector_prepared_delete_is_judged_with_its_parameters_bound(
    open_proxy: Proxy, world: World, db: Db
) -> None:
    db.restore()
    outcome = _connector(open_proxy, "DELETE FROM accounts WHERE id = %s", (2,))
    assert outcome.error is None, outcome.error
    assert outcome.results == [1]
    assert db.query("SELECT id FROM accounts") == [(1,)]
    assert _queries(world, "DELETE FROM accounts WHERE id = 2")
    # Binary rows of a prepared select: masked.
    outcome = _connector(open_proxy, "SELECT id, email FROM accounts WHERE id = %s", (1,))
    assert outcome.rows == [["1", outcome.rows[0][1]]] and outcome.rows[0][1] != EMAILS[0]


def test_a_prepared_drop_is_denied(proxy: Proxy, db: Db) -> None:
    db.restore()
    outcome = _mysql2(proxy, "DROP TABLE accounts", mode="execute")
    assert outcome.errno == 1142 and "no-drop" in (outcome.error or "")
    assert db.count() == 2


def test_ping_and_init_db(proxy: Proxy, world: World, db: Db) -> None:
    conn = pymysql.connect(
        host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password
    )
    try:
        conn.ping(reconnect=False)  # COM_PING
        conn.select_db(db.name)  # COM_INIT_DB, judged as USE
        with conn.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone() == (db.name,)
        with pytest.raises(pymysql.err.OperationalError) as refused:
            conn.select_db("no_such_db_here")
        assert refused.value.args[0] == 1044  # the server's own answer
        conn.ping(reconnect=False)
    finally:
        conn.close()
    assert _queries(world, f"USE `{db.name}`")
    # Another database named at connect is entered as COM_INIT_DB is: judged as USE.
    conn = pymysql.connect(
        host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password,
        database="information_schema",
    )  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone() == ("information_schema",)
    finally:
        conn.close()
    assert _queries(world, "USE `information_schema`")


@pytest.mark.parametrize("client", ["mariadb", "pymysql", "node-mysql2"])
def test_the_no_password_proxy_takes_clients_without_one(
    open_proxy: Proxy, db: Db, client: str
) -> None:
    db.restore()
    outcome = CLIENTS[client][0](open_proxy, "SELECT id FROM accounts ORDER BY id")
    assert outcome.error is None, outcome.error
    assert outcome.rows == [["1"], ["2"]]


def test_kill_query_stops_the_users_own_statement_and_no_other_kill_passes(
    proxy: Proxy, db: Db, world: World
) -> None:
    def connect() -> pymysql.Connection[Any]:
        return pymysql.connect(
            host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password,
            database=TARGET,
        )  # fmt: skip

    sleeper, killer = connect(), connect()
    outcome: dict[str, Any] = {}

    def sleep() -> None:
        started = time.monotonic()
        try:
            with sleeper.cursor() as cur:
                cur.execute("SELECT SLEEP(60)")
                outcome["rows"] = cur.fetchall()
        except pymysql.err.MySQLError as exc:
            outcome["errno"] = exc.args[0]
        outcome["took"] = time.monotonic() - started

    try:
        runner = threading.Thread(target=sleep)
        runner.start()
        running = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = %s"
        for _ in range(300):  # the statement runs on the target
            if db.query(running, ("SELECT SLEEP(60)",))[0][0]:
                break
            time.sleep(0.1)
        with killer.cursor() as cur:
            for refused in (
                "KILL 1",
                "KILL CONNECTION 1",
                f"SELECT 1; KILL QUERY {sleeper.thread_id()}",
            ):
                with pytest.raises(pymysql.err.OperationalError) as exc:
                    cur.execute(refused)
                assert exc.value.args[0] == 1142, refused
            with pytest.raises(pymysql.err.OperationalError) as exc:
                cur.execute("KILL QUERY 7")  # not a connection of the proxy's
            assert exc.value.args[0] == 1094
            cur.execute(f"KILL QUERY {sleeper.thread_id()}")
        runner.join(30)
        assert not runner.is_alive()
        assert outcome.get("errno") == 1317 or outcome.get("rows") == ((1,),), outcome
        assert outcome["took"] < 30
        # Each KILL the proxy answered itself is in the audit trail, refused or done.
        done = f"KILL QUERY {sleeper.thread_id()}"
        assert any(e["details"]["query"] == done for e in world.broker.audit_events("query"))
        blocked = {e["details"]["query"] for e in world.broker.audit_events("query.blocked")}
        assert {"KILL 1", "KILL CONNECTION 1", "KILL QUERY 7"} <= blocked
    finally:
        sleeper.close()
        killer.close()


def test_a_client_that_leaves_while_waiting_cancels_the_request(
    proxy: Proxy, world: World, db: Db
) -> None:
    assert MARIADB
    db.restore()
    client = subprocess.Popen(
        [MARIADB, "-h", "127.0.0.1", "-P", str(proxy.port), "-u", proxy.user,
         f"--password={proxy.password}", "--skip-ssl", TARGET, "-e", "DELETE FROM accounts"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    request_id = proxy.request_id()
    client.kill()
    client.wait(30)
    for _ in range(100):
        state = approvals.record_of(world.bob.user, request_id)["state"]
        if state != "pending":
            break
        time.sleep(0.2)
    assert state == "cancelled"
    late = world.bob.user.run("approve", request_id)
    assert late.returncode != 0
    assert db.count() == 2


# -- the one-time password and bad input -----------------------------------------------------


@pytest.mark.parametrize("client", ["mariadb", "pymysql", "node-mysql2"])
def test_a_wrong_password_is_refused(proxy: Proxy, client: str) -> None:
    wrong = Proxy(proxy.child, proxy.port, "not-it", proxy.user)
    outcome = CLIENTS[client][0](wrong, "SELECT 1")
    assert outcome.errno == 1045, outcome
    assert "one-time password" in (outcome.error or "")


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_client_speaking_another_protocol_gets_an_error_and_the_proxy_goes_on(
    proxy: Proxy,
) -> None:
    answer = _raw(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer[4:5] == b"\x0a"  # the greeting, then an error packet
    assert b"\xff" in answer and b"out of bounds" in answer
    assert _pymysql(proxy, "SELECT 1").rows == [["1"]]


def test_an_unknown_command_is_an_error_and_the_connection_goes_on(proxy: Proxy) -> None:
    conn = pymysql.connect(
        host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password
    )
    try:
        conn._execute_command(0x09, b"")  # COM_STATISTICS
        with pytest.raises(pymysql.err.OperationalError) as exc:
            conn._read_ok_packet()
        assert exc.value.args[0] == 1047
        with conn.cursor() as cur:
            cur.execute("SELECT 3")
            assert cur.fetchone() == (3,)
    finally:
        conn.close()


# -- the pieces the proxy judges by ------------------------------------------------------------


def test_the_lexer_sees_code_as_the_server_does() -> None:
    text = "SELECT '?', \"?\", `?`, ? -- ?\n# ?\n/* ? */ /*!50000 ? */ FROM t WHERE a = ?"
    found = lexer.placeholders(text)
    assert [text[i] for i in found] == ["?", "?", "?"]
    assert len(found) == 3  # the bare one, the executable comment's, and a = ?
    assert lexer.statement_count("SELECT ';'; SELECT 2;;") == 2
    assert lexer.kill_query("KILL QUERY 42") == 42
    assert lexer.kill_query("KILL 42") is None
    assert lexer.has_kill("SELECT 1; /*!KILL 42*/")
    assert not lexer.has_kill("SELECT 'KILL 1'")
    assert lexer.has_kill("IF 1 THEN KILL 42; END IF") and not lexer.has_kill("SELECT t.kill")
    assert lexer.results_of("/* x */ SELECT 1") == "one"
    assert lexer.results_of("CALL p()") == "call"
    assert lexer.results_of("EXECUTE s") is None
    assert lexer.results_of("BEGIN NOT ATOMIC SELECT 1; END") is None
    assert lexer.results_of("IF 1 THEN SELECT 1") is None
    assert lexer.names_utf8mb4("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'")
    assert not lexer.names_utf8mb4("SET NAMES gbk")


def test_parameters_are_bound_as_literals_and_unreadable_ones_are_unknown() -> None:
    sql = "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"
    bound, problem = v.bind(sql, lexer.placeholders(sql), [1, "it's \\ here", b"\xff"])
    assert problem is None
    assert bound == "SELECT * FROM t WHERE a = 1 AND b = 'it''s \\\\ here' AND c = X'ff'"
    # A parameter of a type the broker cannot read: the statement is judged unknown.
    payload = bytes([0x17]) + (1).to_bytes(4, "little") + b"\0" + (1).to_bytes(4, "little")
    payload += b"\0" + b"\x01" + bytes([0x99, 0])  # no NULLs, types given: type 0x99
    execute = v.parse_execute(payload, 1, [], {})
    assert execute.problem and "parameter 1" in execute.problem
    _, problem = v.bind("SELECT ?", [7], [float("nan")])
    assert problem


# -- the broker's own connection to the target ------------------------------------------------


def _target(db: Db, tmp_path: Path, **settings: Any) -> Any:
    from broker.config import MysqlTarget

    secret = tmp_path / "secret"
    secret.write_text(settings.pop("password", PASSWORD))
    fields = {
        "name": TARGET, "type": "mysql", "address": "127.0.0.1:3306", "database": db.name,
        "user": db.name, "credential": f"file:{secret}", "tls": "disable",
        "allowed_groups": ["dba"], **settings,
    }  # fmt: skip
    return MysqlTarget(**fields)


def test_the_upstream_connects_runs_catalog_queries_and_cancels(db: Db, tmp_path: Path) -> None:
    from broker.protocols.mysql.upstream import Upstream
    from broker.protocols.sql import StatementError

    async def work() -> None:
        up = await Upstream.open(_target(db, tmp_path, statement_timeout=30))
        try:
            result = await up.execute("SELECT 1, 'a', NULL, 2.5, @@SESSION.sql_mode")
            ((*values, modes),) = [r async for r in result.rows]
            assert values == [1, "a", None, v.Decimal("2.5")]
            assert set(modes.split(",")) <= SAFE_SQL_MODES  # read as the broker reads
            timeout = await up.execute("SELECT @@SESSION.max_statement_time")
            assert [r async for r in timeout.rows] == [(30.0,)]
            running = asyncio.create_task(up.execute("SELECT SLEEP(30)"))
            await asyncio.sleep(1)
            await up.cancel()
            with pytest.raises(StatementError) as stopped:
                await asyncio.wait_for(running, 20)
            assert stopped.value.code == 1317
            again = await up.execute("SELECT 2")  # the connection goes on
            assert [r async for r in again.rows] == [(2,)]
        finally:
            await up.close()

    asyncio.run(work())


def test_the_upstream_refuses_plain_text_when_tls_is_required(db: Db, tmp_path: Path) -> None:
    from broker.protocols.base import TargetError
    from broker.protocols.mysql.upstream import Upstream

    with pytest.raises(TargetError, match="TLS is unavailable"):
        asyncio.run(Upstream.open(_target(db, tmp_path, tls="require")))
    with pytest.raises(TargetError, match="refused the broker's credentials"):
        asyncio.run(Upstream.open(_target(db, tmp_path, password="not-it")))
