"""The issue's "done when": alice's `DELETE FROM accounts` (no WHERE) waits in her terminal
(`hoopctl exec`, a real pexpect terminal), bob approves it with `hoopctl approve` in his, it
runs once on a real PostgreSQL, and every step is in the audit trail. Both are real
identities of the third-party OIDC provider (oidc-provider), not the broker's dev issuer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import psycopg
import pytest

from tests.helpers import USER_CODE, BrokerProcess, User, free_port, start_broker
from tests.idp_harness import ACCOUNTS, OidcProviderProcess, approve_device_code
from tests.scratch_databases import scratch_postgres
from tests.test_approvals_helpers import Person

LOGIN_TIMEOUT = 40


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with scratch_postgres(prefix="hoop_approvals_") as name:
        yield name


def fill(database: str, rows: int = 3) -> None:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=database, autocommit=True) as db:
        db.execute(f"SET ROLE {database}_app")
        db.execute("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, email text)")
        db.execute("DELETE FROM accounts")
        for i in range(rows):
            db.execute("INSERT INTO accounts VALUES (%s, %s)", (i, f"user{i}@example.com"))


def count(database: str) -> int:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=database) as db:
        return db.execute("SELECT count(*) FROM accounts").fetchone()[0]  # type: ignore[index]


def config(data_dir: Path, port: int, issuer: str, database: str) -> str:
    return f"""
[broker]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"

[oidc]
issuer = "{issuer}"
client_id = "hoopctl"
scopes = ["openid", "profile", "email", "groups", "offline_access"]

[[targets]]
name = "prod-db"
type = "postgres"
address = "127.0.0.1:5432"
database = "{database}"
user = "{database}_app"
tls = "disable"
allowed_groups = ["dba"]
policy = "sql"

[policies.sql]
default = "allow"
on_unknown = "deny"

[[policies.sql.rules]]
name = "unbounded-writes"
action = "review"
statement = ["UPDATE", "DELETE"]
without_where = true
approvers = ["approvers"]
"""


def login(user: User, broker: BrokerProcess, issuer: str, username: str) -> None:
    child = user.spawn(
        "login",
        "--broker",
        broker.address,
        "--accept-host-key",
        broker.host_fingerprint,
        "--no-browser",
        timeout=LOGIN_TIMEOUT,
    )
    child.expect(USER_CODE)
    approve_device_code(issuer, child.match.group(1), username, ACCOUNTS[username]["password"])
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("approvals-sql")
    with OidcProviderProcess(id_token_ttl=600) as idp:
        broker = start_broker(
            tmp, config(tmp / "data", free_port(), idp.issuer, database), dev=False
        )
        try:
            users = {name: User(tmp / name) for name in ("alice", "bob")}
            for name, user in users.items():
                login(user, broker, idp.issuer, name)
            yield {
                "broker": broker,
                "database": database,
                **users,
                "bob_api": Person.of(broker, users["bob"], "bob"),
                "alice_api": Person.of(broker, users["alice"], "alice"),
            }
        finally:
            broker.stop()


def test_delete_without_where_waits_is_approved_in_another_terminal_and_runs_once(
    world: dict[str, Any],
) -> None:
    broker: BrokerProcess = world["broker"]
    alice: User = world["alice"]
    bob: User = world["bob"]
    database: str = world["database"]
    fill(database)
    requester = alice.spawn(
        "exec", "prod-db", "-c", "DELETE FROM accounts", "--reason", "INC-42", timeout=60
    )
    requester.expect(r"waiting for approval ([0-9a-f]{10}) from approvers")
    request_id = requester.match.group(1)
    assert count(database) == 3  # nothing ran yet
    listed = bob.run("approvals", "--state", "pending", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert request_id in listed.stdout
    approver = bob.spawn("approve", request_id, "--comment", "ticket checked", timeout=60)
    approver.expect(pexpect.EOF)
    approver.close()
    assert approver.exitstatus == 0, approver.before
    requester.expect("approved by bob: ticket checked")
    requester.expect(pexpect.EOF)
    requester.close()
    assert requester.exitstatus == 0, requester.before
    assert count(database) == 0
    # Once: the approved request cannot run again.
    fill(database)
    again = alice.run("exec", "prod-db", "--request", request_id, input="")
    assert again.returncode == 4 and "already executed" in again.stderr
    assert count(database) == 3
    # Every step, with who and when.
    steps = [
        (event["type"], event.get("actor"))
        for event in broker.audit_events()
        if event["type"].startswith("approval.") and event["details"]["request"] == request_id
    ]
    assert steps == [
        ("approval.requested", "alice"),
        ("approval.approved", "bob"),
        ("approval.executed", "alice"),
    ]
    requested = next(
        e
        for e in broker.audit_events("approval.requested")
        if e["details"]["request"] == request_id
    )
    assert requested["details"]["command"] == "DELETE FROM accounts"
    assert requested["details"]["requester_reason"] == "INC-42"
    assert requested["groups"] == ["dba", "engineers"]
    query = [
        e for e in broker.audit_events("query") if e["details"]["query"] == "DELETE FROM accounts"
    ]
    assert len(query) == 1 and query[0]["details"]["approver"] == "bob"
    assert query[0]["outcome"] == "success"


def test_no_wait_then_request_runs_the_approved_sql_once(world: dict[str, Any]) -> None:
    alice: Person = world["alice_api"]
    bob: Person = world["bob_api"]
    database: str = world["database"]
    fill(database, rows=4)
    sql = "UPDATE accounts SET email = 'gone@example.com'"

    async def flow() -> None:
        ran = await alice.run("exec --no-wait prod-db", stdin=sql)
        assert ran.status == 4
        match = re.search(r"request ([0-9a-f]{10}) waits for approvers", ran.stderr)
        assert match, ran.stderr
        request_id = match.group(1)
        await bob.call("approvals.decide", {"id": request_id, "decision": "approve"})
        runs = await asyncio.gather(
            alice.run(f"exec --request {request_id} prod-db", stdin=sql),
            alice.run(f"exec --request {request_id} prod-db"),
        )
        assert sorted(r.status for r in runs) == [0, 4], runs

    asyncio.run(flow())
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=database) as db:
        emails = {row[0] for row in db.execute("SELECT email FROM accounts")}
    assert emails == {"gone@example.com"}
