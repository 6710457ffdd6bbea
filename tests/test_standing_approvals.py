"""Standing approvals (issue 17): `hoopctl approve --standing PATTERN --target T --group G
--for D --comment C`, `hoopctl approvals --standing`, `hoopctl approve --revoke ID`.

The matcher is tested on its own against a table of lines that must not pass for the approved
one (one per way a shell line or an SQL input can run more than it shows). Then the broker:
real local bash and real PostgreSQL targets, with what is on the target (a file, a row count)
showing what ran.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from broker.policy.standing import matches, pattern_problem
from tests.fixtures import approvals
from tests.fixtures.approvals import AccountsDb, World, accounts_db, approvals_world
from tests.helpers import BrokerProcess
from tests.strict_helpers import STRICT_PROMPT
from tests.terminal_helpers import PROMPT
from tests.test_approvals_helpers import shell_target

# -- the matcher -------------------------------------------------------------------------

APPROVED = "systemctl restart nginx"


@pytest.mark.parametrize(
    "line",
    [
        "systemctl restart nginx",
        "systemctl  restart   nginx",
        "systemctl 'restart' \"nginx\"",
        "  systemctl restart nginx  ",
    ],
)
def test_the_approved_command_matches_however_it_is_quoted(line: str) -> None:
    assert matches(APPROVED, line, None)


@pytest.mark.parametrize(
    "line",
    [
        "systemctl restart nginx; rm -rf /srv",  # a list
        "systemctl restart nginx && rm -rf /srv",
        "systemctl restart nginx || rm -rf /srv",
        "systemctl restart nginx | tee /etc/passwd",  # a pipeline
        "systemctl restart nginx & rm -rf /srv",
        "systemctl restart nginx &",  # in the background
        "systemctl restart nginx > /etc/passwd",  # a redirection
        "systemctl restart nginx 2>/etc/passwd",
        "systemctl restart nginx < /dev/zero",
        "systemctl restart nginx <<EOF\nx\nEOF",
        "LD_PRELOAD=/tmp/evil.so systemctl restart nginx",  # an assignment
        "systemctl restart $UNIT",  # expansions and substitutions
        "systemctl restart ${UNIT:-nginx}",
        "systemctl restart $(echo nginx)",
        "systemctl restart `echo nginx`",
        "systemctl restart <(echo nginx)",
        "systemctl restart ngin?",  # globs and brace expansion
        "systemctl restart n*",
        "systemctl restart {nginx,sshd}",
        "systemctl restart ~nginx",
        "systemctl restart nginx\nrm -rf /srv",  # a second line
        "systemctl restart nginx sshd",  # another argument
        "systemctl restart",
        "/tmp/systemctl restart nginx",  # another program of the same name
        "sudo systemctl restart nginx",
        "( systemctl restart nginx )",
        "{ systemctl restart nginx; }",
        "eval systemctl restart nginx",
        "systemctl restart nginx$'\\n'rm",
        "systemctl restart nginx #; rm -rf /srv",  # a comment: text once `#` is not one
        "systemctl restart nginx # note",
    ],
)
def test_a_line_that_runs_more_or_other_than_the_pattern_does_not_match(line: str) -> None:
    assert not matches(APPROVED, line, None)


def test_a_pattern_word_with_a_star_matches_inside_that_argument_only() -> None:
    assert matches("systemctl restart app-*", "systemctl restart app-web", None)
    # Within one path segment, never climbing, never an option the pattern has not.
    assert matches("touch /tmp/*", "touch /tmp/flag", None)
    assert not matches("touch /tmp/*", "touch /tmp/../etc/passwd", None)
    assert not matches("touch /tmp/*", "touch /tmp/a/b", None)
    assert not matches("systemctl restart *", "systemctl restart --host=evil", None)
    assert matches("systemctl restart *", "systemctl restart nginx", None)
    assert not matches("systemctl restart app-*", "systemctl restart app-web extra", None)
    assert not matches("systemctl restart app-*", "systemctl restart app-web; id", None)
    assert not matches("systemctl restart app-*", "systemctl restart other", None)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("rm -rf /tmp/x; ls", "may not hold ';'"),
        ("echo $(id)", "may not hold"),
        ("cat < /etc/passwd", "may not hold '<'"),
        ("*ctl restart x", "program name must be written out"),
        ("'unclosed", "cannot read the pattern"),
        ("   ", "empty"),
    ],
)
def test_a_shell_pattern_is_one_command_with_its_arguments(pattern: str, problem: str) -> None:
    assert problem in (pattern_problem(pattern, None) or "")


def test_postgres_statements_match_by_their_parse_tree() -> None:
    pattern = "UPDATE accounts SET email = lower(email)"
    assert matches(pattern, "update ACCOUNTS set email=LOWER(email);", "postgres")
    assert matches(pattern, "UPDATE accounts -- tidy\n SET email = lower(email)", "postgres")
    for attack in (
        "UPDATE accounts SET email = lower(email); DROP TABLE accounts",
        "UPDATE accounts SET email = lower(email) RETURNING (SELECT pg_sleep(1))",
        "UPDATE accounts SET email = upper(email)",
        "UPDATE accounts SET email = 'lower(email)'",
        "UPDATE other.accounts SET email = lower(email)",
        "WITH x AS (DELETE FROM accounts) UPDATE accounts SET email = lower(email)",
        "UPDATE accounts SET email = lower(email) \\; DROP TABLE accounts",
    ):
        assert not matches(pattern, attack, "postgres"), attack


def test_mysql_statements_match_by_their_text_because_comments_can_run() -> None:
    pattern = "UPDATE accounts SET email = lower(email)"
    assert matches(pattern, "UPDATE accounts SET email = lower(email);", "mysql")
    for attack in (
        "UPDATE accounts SET email = lower(email) /*!, id = 0 */",
        "update accounts set email = lower(email)",
        "UPDATE accounts SET email = lower(email); DROP TABLE accounts",
    ):
        assert not matches(pattern, attack, "mysql"), attack


def test_a_sql_pattern_is_one_statement_the_parser_reads() -> None:
    assert "exactly one" in (pattern_problem("SELECT 1; SELECT 2", "postgres") or "")
    assert "cannot read" in (pattern_problem("UPDATE SET WHERE", "postgres") or "")
    assert pattern_problem("DELETE FROM accounts", "postgres") is None


# -- the broker --------------------------------------------------------------------------

STRICT_SHELL = shell_target("strict-shell").replace('guard = "screen"', 'guard = "strict"')

broker, alice, bob, dave, carol = (
    approvals.broker,
    approvals.alice,
    approvals.bob,
    approvals.dave,
    approvals.carol,
)
_ = accounts_db  # the module's PostgreSQL database (a fixture)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, accounts_db: AccountsDb) -> Iterator[World]:
    root = tmp_path_factory.mktemp("standing")
    targets = accounts_db.target("accounts", root, policy="sql") + STRICT_SHELL
    with approvals_world(root, targets=targets, people=("alice", "bob", "dave", "carol")) as made:
        yield made


def grant(
    person: approvals.Person,
    pattern: str,
    target: str = "shell",
    group: str = "engineers",
    period: str = "1h",
) -> tuple[int, str, str]:
    result = person.user.run(
        "approve", "--standing", pattern, "--target", target, "--group", group,
        "--for", period, "--comment", "weekly restarts, CHG-1234",
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def standing_id(stdout: str) -> str:
    return stdout.split("standing approval ", 1)[1].split(":", 1)[0]


def listed(person: approvals.Person, *extra: str) -> list[dict[str, object]]:
    result = person.user.run("approvals", "--standing", "--output", "json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_matching_command_runs_without_waiting_and_the_audit_names_the_approval(
    broker: BrokerProcess, alice: approvals.Person, dave: approvals.Person, target_dir: Path
) -> None:
    flag = target_dir / "restarted"
    status, out, err = grant(dave, f"touch {flag}")
    assert status == 0, err
    sid = standing_id(out)
    ran = alice.user.run("exec", "shell", "--no-wait", "--", "touch", str(flag))
    assert ran.returncode == 0, ran.stderr
    assert flag.exists()
    assert f"approved by standing approval {sid}" in ran.stderr
    (command,) = [
        e for e in broker.audit_events("command") if e["details"].get("standing_approval") == sid
    ]
    assert command["actor"] == "alice" and command["details"]["approver"] == "dave"
    (used,) = [
        e
        for e in broker.audit_events("approval.standing.used")
        if e["details"]["standing_approval"] == sid
    ]
    assert used["session"] == command["session"]
    assert used["details"]["command"] == f"touch {flag}"
    (granted,) = [
        e
        for e in broker.audit_events("approval.standing.granted")
        if e["details"]["standing_approval"] == sid
    ]
    assert granted["actor"] == "dave" and granted["reason"] == "weekly restarts, CHG-1234"
    # No request was made for it: nothing waits in the approvers' queue.
    assert not [e for e in broker.audit_events("approval.requested") if str(flag) in str(e)]
    (mine,) = [s for s in listed(alice) if s["id"] == sid]
    assert mine["uses"] == 1 and mine["state"] == "active" and mine["granted_by"] == "dave"


@pytest.mark.parametrize("target", ["shell", "strict-shell"])
def test_more_than_the_pattern_waits_for_review_and_nothing_of_it_runs(
    alice: approvals.Person, dave: approvals.Person, target_dir: Path, target: str
) -> None:
    flag, victim = target_dir / "flag", target_dir / "victim"
    victim.write_text("keep me")
    status, _, err = grant(dave, f"touch {flag}", target=target)
    assert status == 0, err
    lines = (
        f"touch {flag}; truncate -s0 {victim}",
        f"touch {flag} > {victim}",
        f"touch {flag} {victim}.new",
        f"touch {flag} && truncate -s0 {victim}",
        f"touch {flag} | tee {victim}",
        f"X=1 touch {flag} {victim}.new",
    )
    prompt = STRICT_PROMPT if target == "strict-shell" else PROMPT
    child = alice.user.spawn("connect", target, timeout=30)
    try:
        child.expect(prompt)
        for line in lines:
            child.send(line + "\r")
            child.expect(r"waiting for approval ([0-9a-f]{10})")
            child.sendcontrol("c")
            child.expect("cancelled")
            child.expect(prompt)
        # `bash -c LINE` is a command of its own: it waits too.
        held = alice.user.run("exec", target, "--no-wait", "--", "bash", "-c", lines[0])
        assert held.returncode == 4, held.stderr
        child.send(f"touch {flag}\r")  # exactly the pattern: it runs
        child.expect("approved by standing approval")
        child.expect(prompt)
        child.send("exit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert victim.read_text() == "keep me"
    assert flag.exists()
    assert not (target_dir / "victim.new").exists()


def test_separation_of_duties_nobody_grants_to_a_group_they_are_in(
    broker: BrokerProcess,
    alice: approvals.Person,
    bob: approvals.Person,
    carol: approvals.Person,
) -> None:
    # bob approves, but he is an engineer himself.
    status, _, err = grant(bob, "touch /tmp/x", group="engineers")
    assert status == 3
    assert "you are a member of it" in err and err.count("\n") == 1
    refused = [e for e in broker.audit_events("approval.standing.refused") if e["actor"] == "bob"]
    assert refused and refused[-1]["details"]["group"] == "engineers"
    # carol and alice may not approve reviews on the target at all.
    for person in (carol, alice):
        status, _, err = grant(person, "touch /tmp/x", group="dba-leads")
        assert status == 3, err
        assert "only members of" in err
    assert not [s for s in listed(bob, "--all") if s["granted_by"] in ("bob", "carol", "alice")]


def test_the_grantor_cannot_use_it_and_other_groups_are_not_covered(
    alice: approvals.Person, bob: approvals.Person, dave: approvals.Person, target_dir: Path
) -> None:
    flag = target_dir / "dba-only"
    status, _, err = grant(bob, f"touch {flag}", group="dba")  # bob is not in dba
    assert status == 0, err
    # bob granted it: it does not cover him (nor is he in dba).
    held = bob.user.run("exec", "shell", "--no-wait", "--", "touch", str(flag))
    assert held.returncode == 4 and not flag.exists()
    # dave is no engineer: he cannot even use the target; alice is in dba: it runs for her.
    ran = alice.user.run("exec", "shell", "--no-wait", "--", "touch", str(flag))
    assert ran.returncode == 0, ran.stderr
    assert flag.exists()


def test_a_rule_that_wants_two_approvers_is_not_pre_approved_by_one(
    alice: approvals.Person, dave: approvals.Person, target_dir: Path
) -> None:
    made = target_dir / "two-person"
    status, _, err = grant(dave, f"mkdir {made}")
    assert status == 0, err
    held = alice.user.run("exec", "shell", "--no-wait", "--", "mkdir", str(made))
    assert held.returncode == 4
    assert not made.exists()


def test_revoked_and_expired_standing_approvals_no_longer_apply(
    broker: BrokerProcess,
    alice: approvals.Person,
    bob: approvals.Person,
    dave: approvals.Person,
    carol: approvals.Person,
    target_dir: Path,
) -> None:
    first, second = target_dir / "first", target_dir / "second"
    status, out, err = grant(dave, f"touch {first}")
    assert status == 0, err
    revoked = standing_id(out)
    # Only its grantor or an approver on the target may revoke it.
    refused = carol.user.run("approve", "--revoke", revoked)
    assert refused.returncode in (2, 3), refused.stderr
    result = bob.user.run("approve", "--revoke", revoked)
    assert result.returncode == 0, result.stderr
    assert f"revoked standing approval {revoked}" in result.stdout
    again = bob.user.run("approve", "--revoke", revoked)
    assert again.returncode == 1 and "is revoked" in again.stderr
    held = alice.user.run("exec", "shell", "--no-wait", "--", "touch", str(first))
    assert held.returncode == 4 and not first.exists()
    assert revoked not in [s["id"] for s in listed(alice)]
    (ended,) = [s for s in listed(alice, "--all") if s["id"] == revoked]
    assert ended["state"] == "revoked" and ended["revoked_by"] == "bob"
    revocation = [
        e
        for e in broker.audit_events("approval.standing.revoked")
        if e["details"]["standing_approval"] == revoked
    ]
    assert revocation and revocation[0]["actor"] == "bob"

    status, out, err = grant(dave, f"touch {second}")
    assert status == 0, err
    expired = standing_id(out)
    # Its hour passes: the store is the clock's source of truth for it.
    with sqlite3.connect(broker.data_dir / "hoop.db") as db:
        db.execute(
            "UPDATE standing_approvals SET expires_at = ? WHERE id = ?", (time.time() - 1, expired)
        )
    held = alice.user.run("exec", "shell", "--no-wait", "--", "touch", str(second))
    assert held.returncode == 4 and not second.exists()
    (ended,) = [s for s in listed(alice, "--all") if s["id"] == expired]
    assert ended["state"] == "expired"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--standing", "touch /x", "--group", "engineers", "--for", "1h", "--comment", "c"], "--target"),
        (["--standing", "touch /x", "--target", "shell", "--group", "engineers", "--for", "1h"], "--comment"),
        (["--standing", "touch /x; id", "--target", "shell", "--group", "engineers", "--for", "1h", "--comment", "c"], "may not hold ';'"),
        (["--standing", "touch /x", "--target", "shell", "--group", "engineers", "--for", "200d", "--comment", "c"], "90 days"),
        (["--standing", "touch /x", "--target", "nope", "--group", "engineers", "--for", "1h", "--comment", "c"], "no target"),
        (["--standing", "DELETE FROM", "--target", "accounts", "--group", "dba", "--for", "1h", "--comment", "c"], "cannot read the pattern as SQL"),
        (["--revoke", "sa-00000000"], "no standing approval"),
        (["--target", "shell"], "go with --standing"),
    ],
)  # fmt: skip
def test_bad_standing_input_is_one_line_and_grants_nothing(
    dave: approvals.Person, args: list[str], fragment: str
) -> None:
    before = len(listed(dave, "--all"))
    result = dave.user.run("approve", *args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert fragment in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(listed(dave, "--all")) == before


def test_a_standing_sql_statement_runs_on_postgres_and_a_longer_one_waits(
    broker: BrokerProcess,
    accounts_db: AccountsDb,
    alice: approvals.Person,
    dave: approvals.Person,
) -> None:
    pattern = "UPDATE accounts SET email = lower(email)"  # no WHERE: reviewed by dba-leads
    status, out, err = grant(dave, pattern, target="accounts", group="dba")
    assert status == 0, err
    sid = standing_id(out)
    rows = accounts_db.count()
    held = alice.user.run("exec", "accounts", "--no-wait", "-c", pattern + "; DELETE FROM accounts")
    assert held.returncode == 4, held.stderr
    assert accounts_db.count() == rows
    held = alice.user.run("exec", "accounts", "--no-wait", "-c", "UPDATE accounts SET email = 'x'")
    assert held.returncode == 4
    assert not accounts_db._query("SELECT 1 FROM accounts WHERE email = 'x'")
    accounts_db._query("UPDATE accounts SET email = upper(email) RETURNING 1")
    ran = alice.user.run(
        "exec", "accounts", "--no-wait", "-c", "update accounts set email=lower(email);"
    )
    assert ran.returncode == 0, ran.stderr
    assert not accounts_db._query("SELECT 1 FROM accounts WHERE email <> lower(email)")
    (query,) = [
        e for e in broker.audit_events("query") if e["details"].get("standing_approval") == sid
    ]
    assert query["actor"] == "alice"


def test_a_rule_that_wants_a_reason_is_not_pre_approved(
    alice: approvals.Person, dave: approvals.Person
) -> None:
    status, out, err = grant(dave, "wall hello")
    assert status == 0, err
    sid = standing_id(out)
    held = alice.user.run("exec", "shell", "--no-wait", "--", "wall", "hello")
    assert held.returncode == 2 and "requires a reason" in held.stderr
    (mine,) = [s for s in listed(alice) if s["id"] == sid]
    assert mine["uses"] == 0
