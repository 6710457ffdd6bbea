"""Bulk reads of masked data (issue 17): a rule's `rows_over = N`.

On a real PostgreSQL target whose `email` column is masked: a result with more than N rows
of it is held for approval before any row is sent (`action = "review"`), or stopped at N
(`action = "deny"`). What counts is the result as the database returns it: a cross join, a
cursor's FETCH or a UNION that makes many rows from a short statement is held all the same.
The proof is what the client received: the number of rows, and no masked value at all while
nothing was approved.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pexpect
import psycopg
import pytest

from tests.fixtures import approvals
from tests.fixtures.approvals import AccountsDb, World, approvals_world, listed_requests
from tests.helpers import BrokerProcess
from tests.scratch_databases import PG_ADMIN

accounts_db = approvals.accounts_db
broker, alice, bob = approvals.broker, approvals.alice, approvals.bob
PSQL = shutil.which("psql")

POLICIES = """
[policies.bulk]
default = "allow"
on_unknown = "deny"

[[policies.bulk.rules]]
name = "bulk-email-reads"
action = "review"
rows_over = 5
approvers = ["dba-leads"]

[policies.capped]
default = "allow"
on_unknown = "deny"

[[policies.capped.rules]]
name = "email-cap"
action = "deny"
rows_over = 5
"""

MASKING = """
[targets.masking]

[[targets.masking.columns]]
match = ["email"]
strategy = "redact"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, accounts_db: AccountsDb) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rows-over")
    with psycopg.connect(**PG_ADMIN, dbname=accounts_db.name) as conn:
        conn.execute("DELETE FROM accounts")
        conn.execute(
            "INSERT INTO accounts SELECT n, 'person' || n || '@example.com' "
            "FROM generate_series(1, 12) AS n"
        )
    targets = (
        accounts_db.target("bulk", root, policy="bulk")
        + MASKING
        + accounts_db.target("capped", root, policy="capped")
        + MASKING
        + POLICIES
    )
    with approvals_world(root, targets=targets, people=("alice", "bob")) as made:
        yield made


def exec_json(
    person: approvals.Person, target: str, sql: str, *more: str
) -> subprocess.CompletedProcess[str]:
    return person.user.run("exec", target, "-o", "json", *more, "-c", sql)


def test_a_small_result_goes_out_at_once(alice: approvals.Person) -> None:
    ran = exec_json(alice, "bulk", "SELECT id, email FROM accounts ORDER BY id LIMIT 5")
    assert ran.returncode == 0, ran.stderr
    assert len(json.loads(ran.stdout)) == 5


def test_many_rows_without_masked_columns_are_not_held(alice: approvals.Person) -> None:
    ran = exec_json(alice, "bulk", "SELECT id FROM accounts")
    assert ran.returncode == 0, ran.stderr
    assert len(json.loads(ran.stdout)) == 12


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, email FROM accounts",
        "SELECT a.email FROM accounts a CROSS JOIN generate_series(1, 3) g WHERE a.id <= 2",
        "SELECT email FROM accounts WHERE id <= 3 UNION ALL SELECT email FROM accounts WHERE id <= 3",
        "BEGIN; DECLARE c CURSOR FOR SELECT email FROM accounts; FETCH 50 FROM c; COMMIT",
    ],
)
def test_a_bulk_read_is_held_before_any_row_is_sent_then_approved_runs_whole(
    sql: str, alice: approvals.Person, bob: approvals.Person, broker: BrokerProcess
) -> None:
    held = exec_json(alice, "bulk", sql, "--no-wait")
    assert held.returncode == 4, held.stderr
    assert "bulk-email-reads" in held.stderr
    # Nothing of the result went out: not even a masked value.
    assert "@example.com" not in held.stdout and "REDACTED" not in held.stdout.upper()
    assert not re.search(r'"email"\s*:', held.stdout)
    request = re.search(r"request ([0-9a-f]{10})", held.stderr)
    assert request, held.stderr
    # The approver sees why: the result, not the statement.
    (record,) = [r for r in listed_requests(bob.user) if r["id"] == request.group(1)]
    assert "more than 5 rows of masked columns (email)" in record["cause"]
    assert bob.user.run("approve", request.group(1)).returncode == 0
    ran = alice.user.run("exec", "bulk", "-o", "json", "--request", request.group(1), "-c", sql)
    assert ran.returncode == 0, ran.stderr
    assert "@example.com" not in ran.stdout  # approved: every row, still masked
    query = [
        e
        for e in broker.audit_events("query")
        if e["details"].get("withheld") and e["details"]["query"] in sql
    ]
    assert query and query[-1]["outcome"] == "failure"


def test_a_capped_read_stops_at_the_limit(alice: approvals.Person) -> None:
    ran = exec_json(alice, "capped", "SELECT id, email FROM accounts ORDER BY id")
    assert ran.returncode == 0, ran.stderr
    rows = json.loads(ran.stdout)
    data = [r for r in rows if "hoop_truncated" not in r]
    assert len(data) == 5
    assert "result stopped at rule email-cap" in ran.stderr
    csv = alice.user.run("exec", "capped", "-o", "csv", "-c", "SELECT email FROM accounts")
    assert csv.returncode == 0
    assert len([line for line in csv.stdout.splitlines() if line and not line.startswith("#")]) == 6


def test_the_sql_shell_holds_the_result_and_ctrl_c_sends_none(alice: approvals.Person) -> None:
    child = alice.user.spawn("connect", "bulk", timeout=30)
    try:
        child.expect("bulk=>")
        child.sendline("SELECT id, email FROM accounts ORDER BY id;")
        child.expect(r"waiting for approval ([0-9a-f]{10})")
        child.sendcontrol("c")
        child.expect(r"\(no rows sent\)")
        shown_meanwhile = child.before  # from the wait to the end: no table, no row
        child.sendline("SELECT id, email FROM accounts ORDER BY id LIMIT 2;")
        child.expect(r"\(2 rows\)")
        child.sendline("\\q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "email" not in shown_meanwhile and "REDACTED" not in shown_meanwhile.upper()


@contextmanager
def native_proxy(person: approvals.Person, target: str) -> Iterator[tuple[pexpect.spawn, str]]:
    """`hoopctl proxy TARGET` of PERSON's: its terminal and a psql connection string."""
    child = person.user.spawn("proxy", target, "--output", "json", timeout=60)
    try:
        child.expect(r'\{"target": "' + target + r'".*\}')
        info = json.loads(child.match.group(0))
        yield (
            child,
            (
                f"host=127.0.0.1 port={info['port']} dbname={target} user={info['user']} "
                f"password={info['password']} sslmode=disable"
            ),
        )
    finally:
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()


def psql(dsn: str, sql: str) -> subprocess.Popen[str]:
    assert PSQL, "psql is not installed"
    return subprocess.Popen(
        [PSQL, dsn, "-X", "-A", "-t", "-c", sql],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_through_the_native_proxy_a_bulk_read_waits_in_the_protocol(
    world: World, decision: str
) -> None:
    with native_proxy(world.alice, "bulk") as (terminal, dsn):
        client = psql(dsn, "SELECT email FROM accounts ORDER BY id")
        terminal.expect(r"waiting for approval ([0-9a-f]{10})", timeout=30)
        request = terminal.match.group(1)
        assert client.poll() is None  # psql waits: nothing of the result has come
        verb = ["approve", request] + (["--deny"] if decision == "deny" else [])
        assert world.bob.user.run(*verb).returncode == 0
        out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert "@example.com" not in out
    if decision == "approve":
        assert len(out.splitlines()) == 12
    else:
        assert out.strip() == "" and "no rows sent" in err


def test_through_the_native_proxy_a_capped_read_stops_at_the_limit(world: World) -> None:
    with native_proxy(world.alice, "capped") as (_, dsn):
        client = psql(dsn, "SELECT email FROM accounts")
        out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert len(out.splitlines()) == 5
    assert "result stopped at rule email-cap" in err


def test_rows_over_on_an_allow_rule_is_a_config_error(tmp_path) -> None:
    from broker.config import parse_config
    from broker.errors import ConfigError

    text = f"""
[broker]
data_dir = "{tmp_path}"
[policies.p]
[[policies.p.rules]]
action = "allow"
rows_over = 10
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, base_dir=tmp_path)
    assert any("rows_over needs action" in p for p in raised.value.problems)


def test_reading_page_by_page_counts_as_one_read(alice: approvals.Person, world: World) -> None:
    """A cursor's pages, LIMIT/OFFSET pages or a client's fetch size: the rule's limit holds
    for the rows of masked columns the session was sent, not for one result."""
    pages = (
        "BEGIN; DECLARE c CURSOR FOR SELECT email FROM accounts ORDER BY id; "
        "FETCH 4 FROM c; FETCH 4 FROM c; COMMIT"
    )
    held = exec_json(alice, "bulk", pages, "--no-wait")
    assert held.returncode == 4, held.stderr
    assert "bulk-email-reads" in held.stderr
    child = alice.user.spawn("connect", "bulk", timeout=30)
    try:
        child.expect("bulk=>")
        child.sendline("SELECT id, email FROM accounts ORDER BY id LIMIT 4;")
        child.expect(r"\(4 rows\)")
        child.sendline("SELECT id, email FROM accounts ORDER BY id LIMIT 4 OFFSET 4;")
        child.expect(r"waiting for approval ([0-9a-f]{10})")
        child.sendcontrol("c")
        child.expect(r"\(no rows sent\)")
        child.sendline("\\q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)

    import asyncpg

    async def prefetch(dsn_words: dict[str, str]) -> list[str]:
        conn = await asyncpg.connect(**dsn_words)  # type: ignore[arg-type]
        try:
            async with conn.transaction():
                return [
                    row["email"]
                    async for row in conn.cursor("SELECT email FROM accounts", prefetch=3)
                ]
        finally:
            await conn.close()

    with native_proxy(world.alice, "bulk") as (terminal, dsn):
        words = dict(part.split("=", 1) for part in dsn.split())
        params = {
            "host": words["host"],
            "port": words["port"],
            "database": words["dbname"],
            "user": words["user"],
            "password": words["password"],
            "ssl": False,
        }
        import asyncio
        import threading

        got: list[list[str]] = []
        client = threading.Thread(target=lambda: got.append(asyncio.run(prefetch(params))))
        client.start()
        terminal.expect(r"waiting for approval ([0-9a-f]{10})", timeout=30)
        request = terminal.match.group(1)
        assert world.bob.user.run("approve", request, "--deny").returncode == 0
        client.join(60)
    # The first page of 3 went out; the second would pass the limit of 5 and waited; denied,
    # nothing more of the result came.
    assert got and len(got[0]) == 3, got
