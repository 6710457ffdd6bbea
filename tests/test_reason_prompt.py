"""The reason prompt for a held command (ChannelTerminal.ask_line), in a real terminal against a
real broker: in the guarded terminal (a local target under the strict guard, the default; a
`guard = "screen"` target asks through a prompt of its own, broker/sessions/terminal.py) and in
the SQL shell (a scratch PostgreSQL database).

A rule with `reason_required` asks alice why, on one line, before anything is requested. What
she types (trimmed) is the reason bob sees in `hoopctl approvals`; Ctrl-C, an empty line or
only blanks cancel: no request is made and the command does not run, which is checked on the
target itself (the file is not there, the row is still there).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.fixtures import approvals
from tests.fixtures.approvals import AccountsDb, World, approvals_world, listed_requests, record_of
from tests.strict_helpers import STRICT_PROMPT, local_guard_target, open_strict, run_line
from tests.test_approvals_helpers import Person
from tests.test_sql_shell import PROMPT_START, Shell

POLICIES = """
[policies.reasoned-shell]
default = "allow"
on_unknown = "deny"

[[policies.reasoned-shell.rules]]
name = "touch-needs-a-reason"
action = "review"
program = ["touch"]
approvers = ["approvers"]
reason_required = true

[policies.reasoned-sql]
default = "allow"
on_unknown = "deny"

[[policies.reasoned-sql.rules]]
name = "delete-needs-a-reason"
action = "review"
statement = ["DELETE"]
approvers = ["dba-leads"]
reason_required = true
"""

SHELL_ASKS = r"rule touch-needs-a-reason needs a reason; why run this\?"
SQL_ASKS = r"rule delete-needs-a-reason needs a reason; why run this\?"
REQUESTED = r"approval required from {groups} \(rule {rule}\): request ([0-9a-f]{{10}})"
# How alice gives up at the prompt: Ctrl-C, Enter on an empty line, Enter after blanks only.
CANCELS = {"ctrl-c": "\x03", "empty": "\r", "blank": "   \r"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, accounts_db: AccountsDb) -> Iterator[World]:
    root = tmp_path_factory.mktemp("reason-prompt")
    targets = (
        local_guard_target("box", "reasoned-shell")
        + accounts_db.target("accounts", root, policy="reasoned-sql")
        + POLICIES
    )
    with approvals_world(root, targets=targets) as made:
        yield made


accounts_db, alice, bob, spawned = (
    approvals.accounts_db,
    approvals.alice,
    approvals.bob,
    approvals.spawned,
)


def requests_for(person: Person, command: str) -> list[dict[str, Any]]:
    """The requests PERSON's `hoopctl approvals` lists for COMMAND, in any state."""
    return [r for r in listed_requests(person.user) if r["command"] == command]


def leave(child: pexpect.spawn) -> int | None:
    """`exit` in the guarded terminal; hoopctl's exit status."""
    child.send("exit\r")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def sql_shell(person: Person, spawned: list[pexpect.spawn]) -> Shell:
    shell = Shell(person.user, "accounts")
    spawned.append(shell.child)
    return shell


# -- the guarded terminal -------------------------------------------------------------------


def test_the_typed_reason_reaches_the_approver_in_the_guarded_terminal(
    alice: Person, bob: Person, target_dir: Path, spawned: list[pexpect.spawn]
) -> None:
    proof = target_dir / "with-a-reason"
    child = open_strict(alice.user, "box", timeout=20)
    spawned.append(child)
    child.send(f"touch {proof}\r")
    child.expect(SHELL_ASKS)
    # Blanks around the reason are trimmed; a typo is corrected with backspace.
    child.send("  INC-314: rotate the lgo\x7f\x7fog  \r")
    child.expect(REQUESTED.format(groups="approvers", rule="touch-needs-a-reason"))
    request_id = child.match.group(1)

    seen = record_of(bob.user, request_id)
    assert seen["reason"] == "INC-314: rotate the log"
    assert (seen["requester"], seen["target"], seen["command"]) == (
        "alice",
        "box",
        f"touch {proof}",
    )
    assert seen["state"] == "pending"
    assert not proof.exists()  # it waits for bob

    denied = bob.user.run("approve", request_id, "--deny", "--comment", "not today")
    assert denied.returncode == 0, denied.stderr
    child.expect("denied by bob: not today")
    child.expect(STRICT_PROMPT)
    assert not proof.exists()
    assert leave(child) == 0


@pytest.mark.parametrize("answer", list(CANCELS.values()), ids=list(CANCELS))
def test_giving_no_reason_in_the_guarded_terminal_cancels_the_command(
    alice: Person, bob: Person, target_dir: Path, spawned: list[pexpect.spawn], answer: str
) -> None:
    proof = target_dir / "never"
    child = open_strict(alice.user, "box", timeout=20)
    spawned.append(child)
    child.send(f"touch {proof}\r")
    child.expect(SHELL_ASKS)
    child.send(answer)
    child.expect("not run: cancelled")
    child.expect(STRICT_PROMPT)
    # The session goes on, and what was typed before the prompt did not run on the target.
    assert "still-here" in run_line(child, "echo still-here")
    assert not proof.exists()
    assert requests_for(bob, f"touch {proof}") == []
    assert leave(child) == 0
    assert not proof.exists()


# -- the SQL shell --------------------------------------------------------------------------


def test_the_typed_reason_reaches_the_approver_in_the_sql_shell(
    alice: Person, bob: Person, accounts_db: AccountsDb, spawned: list[pexpect.spawn]
) -> None:
    account = accounts_db.new_account()
    statement = f"DELETE FROM accounts WHERE id = {account};"
    sh = sql_shell(alice, spawned)
    sh.child.send(f"{statement}\r")
    sh.child.expect(SQL_ASKS)
    sh.child.send("  INC-2718: a duplicate signup  \r")
    sh.child.expect(REQUESTED.format(groups="dba-leads", rule="delete-needs-a-reason"))
    request_id = sh.child.match.group(1)

    seen = record_of(bob.user, request_id)
    assert seen["reason"] == "INC-2718: a duplicate signup"
    assert (seen["requester"], seen["target"], seen["command"]) == ("alice", "accounts", statement)
    assert seen["state"] == "pending"
    assert accounts_db.has(account)  # it waits for bob

    denied = bob.user.run("approve", request_id, "--deny", "--comment", "keep it")
    assert denied.returncode == 0, denied.stderr
    sh.child.expect("denied by bob: keep it")
    sh.child.expect_exact(PROMPT_START)
    assert accounts_db.has(account)
    assert sh.quit() == 0


@pytest.mark.parametrize("answer", list(CANCELS.values()), ids=list(CANCELS))
def test_giving_no_reason_in_the_sql_shell_cancels_the_statement(
    alice: Person,
    bob: Person,
    accounts_db: AccountsDb,
    spawned: list[pexpect.spawn],
    answer: str,
) -> None:
    account = accounts_db.new_account()
    statement = f"DELETE FROM accounts WHERE id = {account};"
    sh = sql_shell(alice, spawned)
    sh.child.send(f"{statement}\r")
    sh.child.expect(SQL_ASKS)
    sh.child.send(answer)
    sh.child.expect("not run: cancelled")
    sh.child.expect_exact(PROMPT_START)
    # The shell goes on, and the row is still there: in the shell and in the database.
    assert "(1 row)" in sh.run(f"SELECT id FROM accounts WHERE id = {account};")
    assert accounts_db.has(account)
    assert requests_for(bob, statement) == []
    assert sh.quit() == 0
    assert accounts_db.has(account)
