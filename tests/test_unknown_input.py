"""Input the broker cannot parse explains itself (issue 12, point 2).

A real broker, alice's `hoopctl exec` in one terminal and bob's `hoopctl approve` in another:
both see why a statement needs review (`cannot tell what … does: cannot parse: …`), not
`rule: -`; with no approver group for unknown input the line is refused at once, naming the
key to set; and ordinary bash (`$(( ))`, `[[ ]]`) parses in a guarded session.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator

import pexpect
import pytest

from tests.fixtures import approvals
from tests.fixtures.approvals import World, approvals_world
from tests.strict_helpers import local_guard_target, open_strict, run_line
from tests.test_approve_queue import open_queue

TARGETS = """
[[targets]]
name = "ledger"
type = "sqlite"
path = "{db}"
allowed_groups = ["dba"]
policy = "ledger"

[[targets]]
name = "orphan"
type = "sqlite"
path = "{db}"
allowed_groups = ["dba"]
policy = "bare"

[policies.ledger]
default = "allow"
on_unknown = "review"
unknown_approvers = ["approvers"]

[policies.bare]
default = "allow"
on_unknown = "review"

[policies.parse-or-deny]
default = "allow"
on_unknown = "deny"
"""
CAUSE = "cannot tell what `selec 1` does: cannot parse:"


def plain(shown: str) -> list[str]:
    """The lines a terminal showed, without its control sequences."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", shown)
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("unknown-input")
    db = root / "ledger.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    targets = TARGETS.format(db=db) + local_guard_target("box", "parse-or-deny")
    with approvals_world(root, targets=targets) as made:
        yield made


spawned = approvals.spawned


def test_requester_and_approver_both_see_why_a_typo_needs_review(
    world: World, spawned: list[pexpect.spawn]
) -> None:
    bob = open_queue(world.bob.user)
    spawned.append(bob.child)
    alice = world.alice.user.spawn("exec", "ledger", "-c", "selec 1;")
    spawned.append(alice)
    # The requester: the cause, before the wait.
    alice.expect(r"hoopctl: approval required from approvers \((.*?)\): request ([0-9a-f]{10})")
    assert alice.match.group(1).startswith(CAUSE)
    request_id = alice.match.group(2)
    alice.expect(f"waiting for approval {request_id} from approvers")

    # The approver: the cause where a rule's name would be, and in the details.
    bob.wait_for(request_id)
    assert f"    cause: {CAUSE}" in bob.text()
    assert "rule: -" not in bob.text()
    bob.select(request_id)
    bob.press("\r")
    bob.wait_for(f"Cause      {CAUSE}")
    bob.press("\r")
    bob.press("d")
    bob.wait_for(f"Deny {request_id}? Comment")
    bob.press("fix the typo\r")
    alice.expect("hoopctl: denied by bob: fix the typo")
    alice.expect(pexpect.EOF)
    alice.close()
    assert alice.exitstatus == 3
    bob.press("q")
    assert bob.exit_status() == 0

    # The listing says it too: a column in the table, `cause` and `unknown` in JSON.
    listed = world.bob.user.run("approvals", "--state", "denied", "--output", "json")
    (record,) = [r for r in json.loads(listed.stdout) if r["id"] == request_id]
    assert record["rule"] is None and record["unknown"] is True
    assert record["cause"].startswith(CAUSE)
    table = world.bob.user.run("approvals", "--state", "denied")
    assert "Rule or cause" in table.stdout
    row = next(line for line in table.stdout.splitlines() if request_id in line)
    assert "cannot tell what" in row


def test_a_typo_nobody_may_approve_is_refused_at_once_naming_the_key(world: World) -> None:
    result = world.alice.user.run("exec", "orphan", "-c", "select * fro customers;")
    assert result.returncode == 4, result
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("hoopctl: ")]
    assert line.startswith(
        "hoopctl: not run: approval required (cannot tell what `select * fro customers` does: "
        "cannot parse:"
    ), line
    assert line.endswith(
        "but no approver group is set for input the broker cannot judge "
        "(policies.bare.unknown_approvers)"
    ), line
    assert "no approver groups are set" not in result.stderr


def test_arithmetic_expansion_and_double_brackets_parse_in_a_guarded_session(
    world: World,
) -> None:
    # on_unknown = "deny" on box: a line the broker could not parse would be refused.
    child = open_strict(world.alice.user, "box")
    try:
        assert plain(run_line(child, "echo $((6*7))")) == ["42"]
        assert plain(run_line(child, "[[ -d /tmp ]] && echo yes")) == ["yes"]
    finally:
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
    commands = [
        e["details"]["command"]
        for e in world.broker.audit_events("command")
        if e["details"].get("decision") == "allow"
    ]
    assert "echo $((6*7))" in commands and "[[ -d /tmp ]] && echo yes" in commands
