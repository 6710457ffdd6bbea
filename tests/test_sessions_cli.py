"""`hoopctl sessions` and `sessions show`: real sessions through a real broker, listed and
inspected by their owner, by another user and by an auditor."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.helpers import BrokerProcess, User, assert_one_line_error, dev_config, free_port
from tests.helpers import start_broker as start_broker_process
from tests.terminal_helpers import SHELL_POLICY, local_target, open_shell, run_line

AUDIT_EXTRA = """
[dev.users.dave]
groups = ["auditors"]

[audit]
auditors = ["auditors"]
"""


def audit_broker_config(data_dir: Path, *, replay_own: bool = True, extra: str = "") -> str:
    """A --dev broker with two local shell targets, dave in the auditors group, manual logins."""
    audit = AUDIT_EXTRA if replay_own else AUDIT_EXTRA + "replay_own = false\n"
    return dev_config(
        data_dir,
        port=free_port(),
        dev_port=free_port(),
        auto_approve=None,
        targets=local_target("shell") + local_target("shell2") + extra + SHELL_POLICY + audit,
    )


def hoop_json(user: User, *args: str) -> Any:
    result = user.run(*args, "--output", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def finish(child: pexpect.spawn) -> None:
    child.send("exit\r")
    child.expect(pexpect.EOF)
    child.close()


@dataclass
class World:
    broker: BrokerProcess
    alice: User
    bob: User
    carol: User
    dave: User
    interactive: str  # alice on shell: an echo, a blocked rm -rf, exit
    bob_exec: str  # bob on shell: one command, started after `between`
    alice_shell2: str  # alice on shell2: one command
    live: str  # alice on shell, still open
    live_child: pexpect.spawn
    between: datetime  # local time after the interactive session ended, before bob's


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sessions")
    broker = start_broker_process(tmp, audit_broker_config(tmp / "data"))
    users = {name: User(tmp / name) for name in ("alice", "bob", "carol", "dave")}
    for name, user in users.items():
        user.login_as(broker, name)
    alice, bob = users["alice"], users["bob"]
    child = open_shell(alice, "shell")
    # The command and its output differ, so a search can tell them apart.
    assert "needle-alpha42-output" in run_line(child, "printf 'needle-%s-output\\n' alpha42")
    child.send("rm -rf /tmp/hoop-test-no-such-victim\r")
    child.expect("denied by rule no-recursive-rm")
    finish(child)
    interactive = child.session_id
    time.sleep(1.2)
    between = datetime.now().replace(microsecond=0)
    time.sleep(1.2)
    result = bob.run("exec", "shell", "--", "echo", "bob-was-here")
    assert result.returncode == 0 and "bob-was-here" in result.stdout, result.stderr
    result = alice.run("exec", "shell2", "--", "echo", "on-the-second-target")
    assert result.returncode == 0, result.stderr
    live_child = open_shell(alice, "shell")
    rows = hoop_json(users["dave"], "sessions")
    by_target = {(row["user"], row["target"], row["kind"]): row["id"] for row in rows}
    yield World(
        broker=broker,
        alice=alice,
        bob=bob,
        carol=users["carol"],
        dave=users["dave"],
        interactive=interactive,
        bob_exec=by_target[("bob", "shell", "exec")],
        alice_shell2=by_target[("alice", "shell2", "exec")],
        live=live_child.session_id,
        live_child=live_child,
        between=between,
    )
    live_child.close(force=True)
    broker.stop()


def ids(rows: list[dict[str, Any]]) -> set[str]:
    return {row["id"] for row in rows}


def test_owner_lists_own_sessions_with_counts(world: World) -> None:
    rows = hoop_json(world.alice, "sessions")
    assert ids(rows) == {world.interactive, world.alice_shell2, world.live}
    row = next(row for row in rows if row["id"] == world.interactive)
    assert row["user"] == "alice" and row["target"] == "shell" and row["kind"] == "terminal"
    assert row["state"] == "closed"
    # echo and exit ran; rm -rf was blocked; nothing needed an approval.
    assert (row["commands"], row["blocked"], row["approved"]) == (2, 1, 0)
    assert row["duration"] > 0 and row["started_at"].endswith("+00:00")
    exec_row = next(row for row in rows if row["id"] == world.alice_shell2)
    assert (exec_row["kind"], exec_row["commands"], exec_row["blocked"]) == ("exec", 1, 0)


def test_table_output_names_the_columns(world: World) -> None:
    result = world.alice.run("sessions")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    for column in (
        "Session",
        "User",
        "Target",
        "Started",
        "Duration",
        "Commands",
        "Blocked",
        "Approved",
    ):
        assert column in header
    assert world.interactive in result.stdout


def test_a_piped_table_keeps_each_row_on_one_line_whatever_the_width(world: World) -> None:
    narrow = world.alice.run("sessions", env={"COLUMNS": "30"})
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert "Session" in lines[0] and "Approved" in lines[0]
    (row,) = [line for line in lines if world.interactive in line]  # the whole id, once
    assert "alice" in row and "shell" in row and "closed" in row


def test_filter_by_user(world: World) -> None:
    assert ids(hoop_json(world.dave, "sessions", "--user", "bob")) == {world.bob_exec}
    assert hoop_json(world.dave, "sessions", "--user", "nobody") == []


def test_filter_by_target(world: World) -> None:
    assert ids(hoop_json(world.dave, "sessions", "--target", "shell2")) == {world.alice_shell2}


def test_filter_by_state(world: World) -> None:
    assert ids(hoop_json(world.dave, "sessions", "--state", "open")) == {world.live}
    closed = ids(hoop_json(world.dave, "sessions", "--state", "closed"))
    assert closed == {world.interactive, world.bob_exec, world.alice_shell2}
    assert hoop_json(world.dave, "sessions", "--state", "interrupted") == []


def test_filter_by_time(world: World) -> None:
    between = world.between.isoformat()
    # --until: started at or before; --since: still running at or after.
    assert ids(hoop_json(world.dave, "sessions", "--until", between)) == {world.interactive}
    later = ids(hoop_json(world.dave, "sessions", "--since", between))
    assert later == {world.bob_exec, world.alice_shell2, world.live}
    assert len(hoop_json(world.dave, "sessions", "--since", "1h")) == 4
    assert hoop_json(world.dave, "sessions", "--until", "2000-01-01") == []


def test_filters_combine(world: World) -> None:
    rows = hoop_json(
        world.dave, "sessions", "--user", "alice", "--target", "shell", "--state", "closed"
    )
    assert ids(rows) == {world.interactive}


def test_bad_filter_values_are_usage_errors(world: World) -> None:
    result = world.dave.run("sessions", "--since", "yesterday-ish")
    assert result.returncode == 2
    assert_one_line_error(result, "not a time")
    result = world.dave.run("sessions", "--state", "sleeping")
    assert result.returncode == 2


def test_show_prints_timeline_with_blocked_command(world: World) -> None:
    summary = hoop_json(world.alice, "sessions", "show", world.interactive)
    assert summary["id"] == world.interactive and summary["blocked"] == 1
    timeline = summary["timeline"]
    assert [entry["outcome"] for entry in timeline] == ["ran", "blocked", "ran"]
    blocked = timeline[1]
    assert blocked["text"] == "rm -rf /tmp/hoop-test-no-such-victim"
    assert blocked["decision"] == "deny" and blocked["rule"] == "no-recursive-rm"
    assert blocked["approver"] is None
    assert timeline[0]["text"] == "printf 'needle-%s-output\\n' alpha42"
    assert 0 <= timeline[0]["offset"] <= timeline[1]["offset"] <= timeline[2]["offset"]
    assert summary["recording_bytes"] > 0


def test_show_table_has_summary_and_timeline(world: World) -> None:
    result = world.alice.run("sessions", "show", world.interactive)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Session: {world.interactive}" in " ".join(out.split())
    assert "2 commands, 1 blocked, 0 approved" in out
    line = next(line for line in out.splitlines() if "rm -rf" in line)
    assert "blocked" in line and "deny" in line and "no-recursive-rm" in line
    assert "replay" in result.stderr


def test_typed_backslashes_show_once_in_a_terminal_and_doubled_in_a_pipe(world: World) -> None:
    # The first command is printf 'needle-%s-output\n' alpha42: a typed backslash-n, not a
    # newline. On a colour terminal escapes are reversed, so the text shows as typed; in a
    # pipe (no styles) a typed backslash that could read as an escape is doubled.
    child = world.alice.spawn("sessions", "show", world.interactive)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    shown = re.sub(r"\x1b\[[0-9;]*m", "", child.before)
    assert "printf 'needle-%s-output\\n' alpha42" in shown
    assert "\\\\n" not in shown
    piped = world.alice.run("sessions", "show", world.interactive)
    assert "printf 'needle-%s-output\\\\n' alpha42" in piped.stdout


def test_user_sees_only_own_sessions(world: World) -> None:
    assert ids(hoop_json(world.bob, "sessions")) == {world.bob_exec}
    # Asking for someone else's gives nothing, not an error that confirms they exist.
    assert hoop_json(world.bob, "sessions", "--user", "alice") == []
    assert hoop_json(world.carol, "sessions") == []


def test_other_users_session_looks_like_an_unknown_one(world: World) -> None:
    forbidden = world.bob.run("sessions", "show", world.interactive)
    unknown = world.bob.run("sessions", "show", "20200101-000000000000")
    assert forbidden.returncode == unknown.returncode == 1
    assert_one_line_error(forbidden, "no session", world.interactive)
    assert_one_line_error(unknown, "no session", "20200101-000000000000")
    assert forbidden.stderr.replace(world.interactive, "ID") == unknown.stderr.replace(
        "20200101-000000000000", "ID"
    )


def test_auditor_sees_every_session(world: World) -> None:
    assert ids(hoop_json(world.dave, "sessions")) == {
        world.interactive,
        world.bob_exec,
        world.alice_shell2,
        world.live,
    }
    summary = hoop_json(world.dave, "sessions", "show", world.interactive)
    assert summary["user"] == "alice"


def test_open_session_shows_as_open_with_growing_duration(world: World) -> None:
    first = hoop_json(world.alice, "sessions", "show", world.live)
    assert first["state"] == "open" and first["ended_at"] is None
    run_line(world.live_child, "echo still-open")
    second = hoop_json(world.alice, "sessions", "show", world.live)
    assert second["duration"] > first["duration"]
    assert [entry["text"] for entry in second["timeline"]][-1] == "echo still-open"


def test_malformed_id_for_show_is_a_usage_error_before_any_network(world: World) -> None:
    result = world.alice.run("--broker", "127.0.0.1:1", "sessions", "show", "../../etc/passwd")
    assert result.returncode == 2
    assert_one_line_error(result, "not a session id")


def test_replay_own_false_hides_even_own_sessions(tmp_path: Path) -> None:
    broker = start_broker_process(
        tmp_path, audit_broker_config(tmp_path / "data", replay_own=False)
    )
    try:
        alice, dave = User(tmp_path / "alice"), User(tmp_path / "dave")
        alice.login_as(broker, "alice")
        dave.login_as(broker, "dave")
        assert alice.run("exec", "shell", "--", "true").returncode == 0
        assert hoop_json(alice, "sessions") == []
        (row,) = hoop_json(dave, "sessions")
        assert row["user"] == "alice"
        result = alice.run("sessions", "show", row["id"])
        assert result.returncode == 1
        assert_one_line_error(result, "no session")
    finally:
        broker.stop()
