"""The SQL shell under approvals: a risky statement waits in the requester's shell until a
second user approves it, runs once, and every step is audited; an access grant that ends
closes the shell. Real broker, two real users, hoopctl in real terminals, a real SQLite file."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.helpers import BrokerProcess
from tests.test_approvals_helpers import Person, start_approvals_broker
from tests.test_sql_shell import Shell

REQUEST_ID = r"request ([0-9a-f]{10})"


def sqlite_target(name: str, path: Path, extra: str = "") -> str:
    return f"""
[[targets]]
name = "{name}"
type = "sqlite"
path = "{path}"
allowed_groups = ["engineers"]
policy = "sql"
access_approvers = ["approvers"]
{extra}
"""


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        db.executemany("INSERT INTO accounts (owner) VALUES (?)", [("ann",), ("ben",), ("cy",)])
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ledger: Path) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("shell-approvals")
    targets = sqlite_target("ledger", ledger) + sqlite_target(
        "ledger-vault", ledger, 'access = "request"\naccess_max = "1h"'
    )
    broker = start_approvals_broker(tmp, targets=targets)
    try:
        people = {name: Person.login(broker, tmp, name) for name in ("alice", "bob")}
        yield {"broker": broker, **people}
    finally:
        broker.stop()


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM accounts").fetchone()[0])


def test_delete_without_where_waits_in_the_shell_until_approved_then_runs_once(
    world: dict[str, Any], ledger: Path
) -> None:
    alice: Person = world["alice"]
    bob: Person = world["bob"]
    broker: BrokerProcess = world["broker"]
    before = rows(ledger)
    sh = Shell(alice.user, "ledger")
    assert "ben" in sh.run("SELECT owner FROM accounts ORDER BY id;")
    sh.child.send("DELETE FROM accounts;\r")
    sh.child.expect(REQUEST_ID)
    request_id = sh.child.match.group(1)
    sh.child.expect(rf"waiting for approval {request_id} from dba-leads")
    assert rows(ledger) == before  # nothing ran while it waits
    # The approver sees what the requester's screen showed before the statement.
    screen = asyncio.run(bob.call("approvals.get", {"id": request_id}))["screen"]
    assert any("ben" in line for line in screen), screen
    assert any("SELECT owner FROM accounts" in line for line in screen), screen
    # Each line once: not the prompt's redraws of the line being typed.
    assert sum("SELECT owner FROM accounts" in line for line in screen) == 1, screen
    assert not any(line.rstrip().endswith("SELEC") for line in screen), screen
    assert not any("\x1b" in line for line in screen)
    approve = bob.user.run("approve", request_id, "--comment", "cleanup ticket 7")
    assert approve.returncode == 0, approve.stderr
    sh.child.expect(r"approved by bob")
    sh.child.expect_exact("\x1b[?2004h")  # back at the prompt once the statement ran
    assert rows(ledger) == 0
    again = bob.user.run("approve", request_id)
    assert again.returncode != 0  # decided once
    assert sh.quit() == 0
    types = [
        e["type"]
        for e in broker.audit_events()
        if e.get("details", {}).get("request") == request_id
    ]
    for step in ("approval.requested", "approval.approved", "approval.executed"):
        assert step in types
    queries = [
        e
        for e in broker.audit_events("query")
        if e["session"] == sh.session_id and e["details"]["query"].startswith("DELETE")
    ]
    assert len(queries) == 1 and queries[0]["details"]["approver"] == "bob"


def test_ctrl_c_gives_up_waiting_and_the_request_is_cancelled(
    world: dict[str, Any], ledger: Path
) -> None:
    alice: Person = world["alice"]
    sh = Shell(alice.user, "ledger")
    sh.child.send("UPDATE accounts SET owner = 'x';\r")
    sh.child.expect(REQUEST_ID)
    request_id = sh.child.match.group(1)
    sh.child.expect("waiting for approval")
    sh.child.sendcontrol("c")
    sh.child.expect("cancelled")
    sh.child.expect_exact("\x1b[?2004h")
    state = asyncio.run(alice.call("approvals.get", {"id": request_id}))["state"]
    assert state == "cancelled"
    assert sh.quit() == 0


def test_access_grant_end_closes_the_shell(world: dict[str, Any]) -> None:
    alice: Person = world["alice"]
    bob: Person = world["bob"]
    broker: BrokerProcess = world["broker"]
    refused = alice.user.run("connect", "ledger-vault")
    assert refused.returncode == 4 and "needs an access grant" in refused.stderr
    record = asyncio.run(
        alice.call("access.request", {"target": "ledger-vault", "duration": 8, "reason": "INC-1"})
    )
    asyncio.run(bob.call("approvals.decide", {"id": record["id"], "decision": "approve"}))
    child = alice.user.spawn("connect", "ledger-vault", timeout=20)
    child.expect(r"session (\d{8}-[0-9a-f]{12}) started")
    session_id = child.match.group(1)
    # Less than a minute is left: the warning comes at once, the end when the grant ends.
    child.expect(r"your access grant to ledger-vault ends in")
    child.expect(r"access grant to ledger-vault ended; this session is closed", timeout=20)
    child.expect(pexpect.EOF, timeout=20)
    child.close()
    assert child.exitstatus != 0
    deadline = time.monotonic() + 10
    while True:
        ends = [e for e in broker.audit_events("session.end") if e["session"] == session_id]
        if ends or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ends and ends[-1]["details"]["state"] == "terminated"
    assert re.search("grant", ends[-1]["reason"])
