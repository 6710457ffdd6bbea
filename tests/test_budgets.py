"""Budgets (`[targets.budget]`, per actor kind): a result stopped at max_rows / max_bytes with a
marker in every output format and in the audit event, the statement stopped on the target, the
rate of statements per minute, and the statement timeout, against real PostgreSQL through a
real broker."""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.config import Budget, PostgresTarget, Rule
from broker.config import Policy as PolicyConfig
from broker.sessions.budgets import BudgetMeter, RateBudget, SharedRateBudget
from tests.helpers import BrokerProcess, User, dev_config, free_port, start_broker
from tests.scratch_databases import scratch_mariadb, scratch_postgres

PASSWORD = "pg-" + secrets.token_hex(8)
MILLION = "SELECT g AS n, 'row ' || g AS label FROM generate_series(1, 1000000) g"


# -- the pieces, with an injected clock -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_61st_statement_in_a_minute_is_refused_and_a_minute_later_it_is_not() -> None:
    clock = Clock()
    rates = RateBudget(clock)
    for n in range(60):
        assert await rates.take("agent-7", "pg", 60), n
        clock.now += 0.5  # 60 statements in 30 s
    assert not await rates.take("agent-7", "pg", 60)
    assert await rates.take("alice", "pg", 60)  # another user has a budget of their own
    assert await rates.take("agent-7", "other", 60)  # and so has another target
    clock.now += 30.2  # the first statement (only) is now more than a minute old
    assert await rates.take("agent-7", "pg", 60)
    assert not await rates.take("agent-7", "pg", 60)
    assert await rates.take("agent-7", "pg", None)  # no budget: no limit


async def test_workers_sharing_the_store_share_one_rate_budget(tmp_path: Path) -> None:
    """Two processes' stores on one data dir (as `serve --workers 2` runs them): the 61st
    statement is refused whichever of them counts it, and the minute still slides."""
    from broker.store import Store

    clock = Clock()
    first, second = await Store.open(tmp_path), await Store.open(tmp_path)
    try:
        one, two = SharedRateBudget(first, clock), SharedRateBudget(second, clock)
        for n in range(60):
            assert await (one if n % 2 else two).take("agent-7", "pg", 60), n
            clock.now += 0.5
        assert not await one.take("agent-7", "pg", 60)
        assert not await two.take("agent-7", "pg", 60)
        assert await two.take("alice", "pg", 60)
        clock.now += 30.2
        assert await one.take("agent-7", "pg", 60)
        assert not await two.take("agent-7", "pg", 60)
        assert await one.take("agent-7", "pg", None)
    finally:
        await first.close()
        await second.close()


def test_a_meter_stops_at_the_rows_or_the_bytes() -> None:
    by_rows = BudgetMeter(Budget(max_rows=2))
    assert [by_rows.admit((n,)) for n in range(4)] == [True, True, False, False]
    assert by_rows.cut is not None and by_rows.cut.as_dict() == {
        "budget": "max_rows",
        "limit": 2,
        "rows": 2,
    }
    by_bytes = BudgetMeter(Budget(max_bytes=10))
    assert [by_bytes.admit(("abcd",)) for _ in range(3)] == [True, True, False]
    assert by_bytes.cut is not None and by_bytes.cut.budget == "max_bytes"


def test_an_agents_budget_replaces_the_targets_limits_for_agents_only() -> None:
    budget = Budget(
        max_rows=10_000,
        statement_timeout=60,
        agent={"max_rows": 100, "max_statements_per_minute": 60, "statement_timeout": 5},
    )
    assert budget.for_actor("person").max_rows == 10_000
    assert budget.for_actor("person").max_statements_per_minute is None
    agent = budget.for_actor("agent")
    assert (agent.max_rows, agent.max_statements_per_minute) == (100, 60)
    target = PostgresTarget(
        name="pg", type="postgres", address="127.0.0.1:5432", database="d", user="u",
        statement_timeout=30, budget=budget,
    )  # fmt: skip
    assert target.for_actor("agent").statement_timeout == 5
    assert target.for_actor("person").statement_timeout == 30  # the target's is shorter


def test_rules_for_agents_apply_to_agents_only() -> None:
    policy = PolicyConfig(
        rules=[
            Rule(name="agent-writes", action="review", effect=["writes"], actor_kind="agent"),
            Rule(name="no-drop", action="deny", statement=["DROP"]),
        ]
    )
    assert [r.name for r in policy.for_actor("agent").rules] == ["agent-writes", "no-drop"]
    assert [r.name for r in policy.for_actor("person").rules] == ["no-drop"]


# -- through the broker -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with scratch_postgres(password=PASSWORD) as name:
        yield name


@pytest.fixture(scope="module")
def maria() -> Iterator[str]:
    with scratch_mariadb(password=PASSWORD) as name:
        yield name


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, database: str, maria: str
) -> Iterator[BrokerProcess]:
    tmp = tmp_path_factory.mktemp("budgets")
    secret = tmp / "pg-secret"
    secret.write_text(PASSWORD)
    targets = f"""
[[targets]]
name = "maria-few"
type = "mysql"
address = "127.0.0.1:3306"
database = "{maria}"
user = "{maria}"
credential = "file:{secret}"
allowed_groups = ["dba"]

[targets.budget]
max_rows = 5

[[targets]]
name = "pg"
type = "postgres"
address = "127.0.0.1:5432"
database = "{database}"
user = "{database}_app"
credential = "file:{secret}"
tls = "disable"
allowed_groups = ["dba"]

[targets.budget]
max_rows = 1000

[[targets]]
name = "pg-bytes"
type = "postgres"
address = "127.0.0.1:5432"
database = "{database}"
user = "{database}_app"
credential = "file:{secret}"
tls = "disable"
allowed_groups = ["dba"]

[targets.budget]
max_bytes = "4KB"

[[targets]]
name = "pg-few"
type = "postgres"
address = "127.0.0.1:5432"
database = "{database}"
user = "{database}_app"
credential = "file:{secret}"
tls = "disable"
allowed_groups = ["dba"]

[targets.budget]
max_rows = 5

[[targets]]
name = "pg-rate"
type = "postgres"
address = "127.0.0.1:5432"
database = "{database}"
user = "{database}_app"
credential = "file:{secret}"
tls = "disable"
allowed_groups = ["dba"]

[targets.budget.person]
max_statements_per_minute = 3

[[targets]]
name = "pg-slow"
type = "postgres"
address = "127.0.0.1:5432"
database = "{database}"
user = "{database}_app"
credential = "file:{secret}"
tls = "disable"
allowed_groups = ["dba"]

[targets.budget.person]
statement_timeout = "1s"

[targets.budget.agent]
statement_timeout = "1h"
"""
    config = dev_config(tmp / "data", port=free_port(), dev_port=free_port(), targets=targets)
    process = start_broker(tmp, config)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def alice(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> User:
    user = User(tmp_path_factory.mktemp("alice"))
    assert user.login(broker).returncode == 0
    return user


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _still_running(database: str) -> list[str]:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres") as admin:
        rows = admin.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = %s AND state = 'active'",
            (database,),
        ).fetchall()
    return [str(row[0]) for row in rows]


def test_a_million_row_select_stops_at_max_rows_in_every_format(
    alice: User, broker: BrokerProcess, database: str
) -> None:
    assert broker.process is not None
    pid = broker.process.pid
    before = _rss_kib(pid)
    result = alice.run("exec", "pg", "-c", MILLION, "-o", "json", timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert len(document) == 1001
    assert document[999] == {"n": 1000, "label": "row 1000"}
    assert document[-1] == {"hoop_truncated": {"budget": "max_rows", "limit": 1000, "rows": 1000}}
    assert "truncated at the target's max_rows budget (1000 rows)" in result.stderr
    # The broker did not hold the million rows, and the target does not go on producing them.
    assert _rss_kib(pid) - before < 100 * 1024
    for _ in range(50):
        if not any("generate_series" in query for query in _still_running(database)):
            break
        time.sleep(0.1)
    assert not any("generate_series" in query for query in _still_running(database))

    rows = list(csv.reader(io.StringIO(alice.run("exec", "pg", "-c", MILLION, "-o", "csv").stdout)))
    assert rows[0] == ["n", "label"] and len(rows) == 1002
    assert rows[-1][0].startswith("# hoop: result truncated at the target's max_rows budget")
    table = alice.run("exec", "pg", "-c", MILLION).stdout
    assert table.rstrip().endswith("(result truncated at the target's max_rows budget (1000 "
                                   "rows): 1000 rows sent)")  # fmt: skip

    events = [e for e in broker.audit_events("query") if e["details"]["query"] == MILLION]
    assert len(events) == 3
    assert all(
        e["details"]["rows"] == 1000
        and e["details"]["truncated"] == {"budget": "max_rows", "limit": 1000, "rows": 1000}
        for e in events
    )


def test_the_next_statement_runs_after_a_cut(alice: User) -> None:
    sql = f"{MILLION}; SELECT 42 AS answer"
    result = alice.run("exec", "pg", "-c", sql, "-o", "json", timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document[0]["rows"][-1] == {
        "hoop_truncated": {"budget": "max_rows", "limit": 1000, "rows": 1000}
    }
    assert document[1]["rows"] == [{"answer": 42}]


def test_max_bytes_stops_a_result_by_its_size(alice: User, broker: BrokerProcess) -> None:
    sql = "SELECT repeat('x', 100) AS pad FROM generate_series(1, 1000)"
    result = alice.run("exec", "pg-bytes", "-c", sql, "-o", "json")
    document = json.loads(result.stdout)
    assert len(document) == 41  # 40 values of 100 bytes fit in 4,000
    assert document[-1]["hoop_truncated"]["budget"] == "max_bytes"


def test_a_rate_budget_refuses_the_statement_past_it(alice: User, broker: BrokerProcess) -> None:
    for n in range(3):
        ran = alice.run("exec", "pg-rate", "-c", f"SELECT {n} AS n", "-o", "json")
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout) == [{"n": n}]
    refused = alice.run("exec", "pg-rate", "-c", "SELECT 3 AS n", "-o", "json")
    assert refused.returncode == 3
    assert "rate budget: at most 3 statements a minute on target pg-rate" in refused.stderr
    assert refused.stdout == ""
    blocked = broker.audit_events("query.blocked")
    assert any(e["details"]["query"] == "SELECT 3 AS n" for e in blocked)


def test_the_persons_statement_timeout_applies(alice: User) -> None:
    slow = alice.run("exec", "pg-slow", "-c", "SELECT pg_sleep(5) AS slept", "-o", "json")
    assert slow.returncode == 1
    assert "statement timeout" in slow.stderr
    assert slow.stdout.strip() in ("", "[]")


def test_the_example_policy_sends_every_write_by_an_agent_to_review() -> None:
    import tomllib

    from broker.policy.sql import decide_sql

    path = Path(__file__).parent.parent / "examples/policies/agents.toml"
    policy = PolicyConfig(**tomllib.loads(path.read_text())["policies"]["agents-review-writes"])
    for sql in (
        "INSERT INTO accounts VALUES (3, 'x')",
        "UPDATE accounts SET email = 'x' WHERE id = 1",
        "DELETE FROM accounts WHERE id = 1",
        "CREATE TABLE t (x int)",
        "SET search_path = other",
    ):
        agent, _ = decide_sql(policy.for_actor("agent"), sql, "postgres")
        person, _ = decide_sql(policy.for_actor("person"), sql, "postgres")
        assert (agent.action, agent.rule) == ("review", "agent-writes"), sql
        assert person.action == "allow", sql
    reads, _ = decide_sql(policy.for_actor("agent"), "SELECT * FROM accounts", "postgres")
    assert reads.action == "allow"
    dropped, _ = decide_sql(policy.for_actor("agent"), "DROP TABLE accounts", "postgres")
    assert dropped.action == "deny"


def test_the_sql_shell_stops_a_result_at_max_rows_and_goes_on(
    alice: User, broker: BrokerProcess
) -> None:
    from tests.test_sql_shell import Shell

    shell = Shell(alice, "pg-few")
    shown = shell.run(MILLION + ";", timeout=60)
    assert "row 5" in shown and "row 6" not in shown
    assert "result truncated at the target's max_rows budget (5 rows): 5 rows sent" in shown
    assert "42" in shell.run("SELECT 42 AS answer;")  # the session goes on
    assert shell.quit() == 0
    event = next(
        e
        for e in broker.audit_events("query")
        if e["details"]["query"] == MILLION and e["target"] == "pg-few"
    )
    assert event["details"]["truncated"] == {"budget": "max_rows", "limit": 5, "rows": 5}


def test_a_native_client_gets_the_rows_within_budget_and_a_warning(
    alice: User, broker: BrokerProcess
) -> None:
    """Through `hoopctl proxy`: psycopg (extended protocol) and psql (simple query) get the
    first rows, a WARNING saying why the rest was held back, and a working connection."""
    import shutil
    import subprocess

    import pexpect

    child = alice.spawn("proxy", "pg-few", "--output", "json", timeout=60)
    child.expect(r'\{"target": "pg-few".*\}')
    info = json.loads(child.match.group(0))
    dsn = (
        f"host=127.0.0.1 port={info['port']} dbname=pg-few user={info['user']} "
        f"password={info['password']} sslmode=disable"
    )
    try:
        notices: list[str] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
            cursor = conn.execute(MILLION)
            assert [row[0] for row in cursor.fetchall()] == [1, 2, 3, 4, 5]
            assert cursor.rowcount == 5
            assert any("truncated at the target's max_rows budget (5 rows)" in n for n in notices)
            assert conn.execute("SELECT 42").fetchone() == (42,)
        psql = shutil.which("psql")
        assert psql is not None
        shown = subprocess.run(
            [psql, dsn, "-X", "-A", "-t", "-c", MILLION],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert shown.stdout.splitlines() == [f"{n}|row {n}" for n in range(1, 6)], shown.stdout
        assert "WARNING:  hoop: result truncated" in shown.stderr
    finally:
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
    events = [
        e
        for e in broker.audit_events("query")
        if e["details"]["query"] == MILLION and e["target"] == "pg-few"
    ]
    assert len(events) >= 2
    assert all(e["details"]["truncated"]["rows"] == 5 for e in events)


def test_a_mysql_client_gets_the_rows_within_budget_and_a_warning(
    alice: User, broker: BrokerProcess
) -> None:
    import pexpect
    import pymysql

    sql = "SELECT seq FROM seq_1_to_1000000"
    child = alice.spawn("proxy", "maria-few", "--output", "json", timeout=60)
    child.expect(r'\{"target": "maria-few".*\}')
    info = json.loads(child.match.group(0))
    try:
        conn = pymysql.connect(
            host="127.0.0.1", port=int(info["port"]), user=info["user"],
            password=info["password"], read_timeout=60,
        )  # fmt: skip
        with conn.cursor() as cursor:
            cursor.execute(sql)
            assert [row[0] for row in cursor.fetchall()] == [1, 2, 3, 4, 5]
            # MySQL's only way to say that more was held back: a warning counted at the end.
            assert conn._result is not None and conn._result.warning_count >= 1
            cursor.execute("SELECT 42")
            assert cursor.fetchone() == (42,)
        conn.close()
    finally:
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
    event = next(e for e in broker.audit_events("query") if e["details"]["query"] == sql)
    assert event["details"]["truncated"] == {"budget": "max_rows", "limit": 5, "rows": 5}


def test_exec_summary_tells_a_program_what_ran(alice: User) -> None:
    """`exec --summary` (what hoopctl mcp asks for): the last stderr line holds the session id,
    the exit status and each statement's rows, masked counts and truncation, as JSON."""
    sql = f"{MILLION}; SELECT 1 AS one"
    ran = alice.run("exec", "pg", "-c", sql, "-o", "json", "--summary", timeout=120)
    assert ran.returncode == 0, ran.stderr
    line = ran.stderr.strip().splitlines()[-1]
    assert line.startswith("hoopctl: summary ") or line.startswith("hoop: summary "), line
    summary = json.loads(line.split("summary ", 1)[1])
    assert re.fullmatch(r"\d{8}-[0-9a-f]{12}", summary["session"])
    assert summary["exit_status"] == 0
    first, second = summary["statements"]
    assert first["rows"] == 1000 and first["truncated"]["budget"] == "max_rows"
    assert second == {"statement": "SELECT 1 AS one", "kind": "SELECT", "rows": 1, "masked": {}}


def test_mariadb_results_stop_at_the_budget_and_the_next_statement_runs(alice: User) -> None:
    sql = "SELECT seq FROM seq_1_to_1000000; SELECT 42 AS answer"
    result = alice.run("exec", "maria-few", "-c", sql, "-o", "json", timeout=120)
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert first["rows"][:5] == [{"seq": n} for n in range(1, 6)]
    assert first["rows"][5] == {"hoop_truncated": {"budget": "max_rows", "limit": 5, "rows": 5}}
    assert second["rows"] == [{"answer": 42}]


@pytest.mark.parametrize("max_rows", [None, 1, 499, 500, 501, 1000, 1234])
@pytest.mark.parametrize("max_bytes", [None, 7, 5000, 10**6])
def test_a_batch_is_admitted_as_its_rows_would_be_one_at_a_time(
    max_rows: int | None, max_bytes: int | None
) -> None:
    # exec takes whole batches (admit_batch): the rows sent and the cut must be those of the
    # row-at-a-time meter, at every boundary.
    limits = Budget(max_rows=max_rows, max_bytes=max_bytes)
    rows = [(i, f"value-{i}", None) for i in range(1200)]
    one, whole = BudgetMeter(limits), BudgetMeter(limits)
    sent_one = []
    for row in rows:
        if not one.admit(row):
            break
        sent_one.append(row)
    sent_whole: list[tuple[object, ...]] = []
    for start in range(0, len(rows), 500):
        admitted = whole.admit_batch(rows[start : start + 500])
        sent_whole.extend(admitted)
        if whole.cut is not None:
            break
    assert sent_whole == sent_one
    assert whole.cut == one.cut
    assert whole.rows == one.rows
