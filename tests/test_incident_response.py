"""The incident-response story end to end: a user tries `DROP TABLE` in the SQL shell; a
responder in the auditor group finds that session by searching, replays it from that moment
in a real terminal, shows it was not altered, and the same audit events reached the SIEM
webhook. Real broker, real hoopctl, a real HTTP endpoint on loopback, a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.helpers import BrokerProcess, User, dev_config, free_port, start_broker
from tests.test_audit_sinks import WebhookReceiver, webhook_sink
from tests.test_sql_shell import Shell


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    endpoint = WebhookReceiver()
    endpoint.up()
    yield endpoint
    endpoint.close()


@pytest.fixture
def broker(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[BrokerProcess]:
    ledger = tmp_path / "ledger.db"
    with sqlite3.connect(ledger) as db:
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        db.execute("INSERT INTO accounts (owner) VALUES ('ann')")
    targets = f"""
[[targets]]
name = "ledger"
type = "sqlite"
path = "{ledger}"
allowed_groups = ["engineers"]
policy = "no-drop"

[policies.no-drop]
default = "allow"
on_unknown = "deny"

[[policies.no-drop.rules]]
name = "no-drop"
action = "deny"
statement = ["DROP TABLE", "TRUNCATE"]
"""
    config = dev_config(
        tmp_path / "data",
        port=free_port(),
        dev_port=free_port(),
        auto_approve=None,
        targets=targets,
    )
    audit = '\n[audit]\nauditors = ["approvers"]\n' + webhook_sink(receiver.url)
    process = start_broker(tmp_path, config + audit)
    yield process
    process.stop()


def test_find_the_drop_replay_it_from_there_verify_it_and_see_it_at_the_siem(
    broker: BrokerProcess, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    alice, bob = User(tmp_path / "alice"), User(tmp_path / "bob")
    alice.login_as(broker, "alice")
    bob.login_as(broker, "bob")  # bob is in "approvers", the auditor group here

    sh = Shell(alice, "ledger")
    assert "ann" in sh.run("SELECT owner FROM accounts;")
    time.sleep(1.5)  # so the DROP is a little way into the recording
    refused = sh.run("DROP TABLE accounts;")
    assert "denied by rule no-drop" in refused
    assert sh.quit() == 0

    found = bob.run("sessions", "search", "DROP", "--output", "json")
    assert found.returncode == 0, found.stderr
    matches = [m for m in json.loads(found.stdout) if m["session"] == sh.session_id]
    assert matches, found.stdout
    offset = min(m["offset"] for m in matches)
    assert offset > 1.0

    player = bob.spawn("replay", sh.session_id, "--at", str(offset), timeout=30)
    # The shell highlights SQL, so the words of the statement arrive with colours between them.
    player.expect("DROP")
    player.expect("accounts")
    player.expect("denied by rule no-drop")
    player.send("q")
    player.expect(pexpect.EOF)
    player.close()
    assert player.exitstatus == 0

    verified = bob.run("replay", sh.session_id, "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    deadline = time.monotonic() + 20
    stored = [e for e in broker.audit_events() if e.get("session") == sh.session_id]
    while time.monotonic() < deadline:
        delivered = {e["seq"]: e for e in receiver.events if e.get("session") == sh.session_id}
        if all(e["seq"] in delivered for e in stored):
            break
        time.sleep(0.2)
    assert [delivered[e["seq"]]["hash"] for e in stored] == [e["hash"] for e in stored]
    blocked = [e for e in stored if e["type"] == "query.blocked"]
    assert blocked and "DROP TABLE" in blocked[0]["details"]["query"]
