"""The approval workflow from the command line: escaping untrusted text, `hoopctl exec` waiting
for approval, `hoopctl approve ID`, `approvals`, `request` and `requests`.

The end-to-end tests run a real broker process (tests/fixtures/approvals.py) and the real
`hoopctl` console script as several users: alice (engineers, dba) asks, bob (engineers,
approvers) decides; carol (engineers) may reach the targets but is in no approver group.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import time
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pexpect
import pytest

from hoopctl.approval_listing import exec_words
from hoopctl.approval_requests import ApprovalRequest, clock, describe_decision, timestamp
from hoopctl.broker_lines import BrokerLines
from hoopctl.errors import UsageError
from hoopctl.escape import escape, escape_parts, for_rich, has_hidden
from hoopctl.exec_relay import _ExecRelay
from hoopctl.live_line import LiveLine
from tests.fixtures import approvals
from tests.fixtures.approvals import AccountsDb, World, approvals_world, record_of
from tests.helpers import User, assert_one_line_error

# ---------------------------------------------------------------------------
# hoopctl.escape
# ---------------------------------------------------------------------------


def unescape(shown: str) -> str:
    """The inverse of escape(), to prove that escape() loses nothing and is unambiguous."""
    out: list[str] = []
    i = 0
    while i < len(shown):
        char = shown[i]
        if char == "\\" and i + 1 < len(shown):
            lead = shown[i + 1]
            if lead == "\\":
                out.append("\\")
                i += 2
                continue
            if lead in "nrt":
                out.append({"n": "\n", "r": "\r", "t": "\t"}[lead])
                i += 2
                continue
            width = {"x": 2, "u": 4, "U": 8}.get(lead)
            if width:
                out.append(chr(int(shown[i + 2 : i + 2 + width], 16)))
                i += 2 + width
                continue
        out.append(char)
        i += 1
    return "".join(out)


VISIBLE_BAD = {
    "\x1b": "\\x1b",
    "\r": "\\r",
    "\n": "\\n",
    "\t": "\\t",
    "\x00": "\\x00",
    "\x07": "\\x07",
    "\x08": "\\x08",
    "\x7f": "\\x7f",
    "\x9b": "\\x9b",  # C1 CSI: an escape sequence without ESC
    "\x85": "\\x85",  # C1 NEL: a newline
    "\u202e": "\\u202e",  # right-to-left override
    "\u2066": "\\u2066",  # left-to-right isolate
    "\u200b": "\\u200b",  # zero-width space
    "\u200d": "\\u200d",  # zero-width joiner
    "\ufeff": "\\ufeff",  # BOM
    "\u00ad": "\\u00ad",  # soft hyphen
    "\u2028": "\\u2028",  # line separator
    "\u00a0": "\\u00a0",  # no-break space (not a space to the shell)
    "\u3164": "\\u3164",  # Hangul filler: a "letter" that shows as nothing
    "\U000e0041": "\\U000e0041",  # tag character (invisible ASCII)
}


@pytest.mark.parametrize(("char", "shown"), sorted(VISIBLE_BAD.items()))
def test_escape_writes_hidden_characters_out(char: str, shown: str) -> None:
    assert escape(f"a{char}b") == f"a{shown}b"


def test_escape_leaves_ordinary_text_and_lone_backslashes_alone() -> None:
    for text in [
        "DELETE FROM accounts WHERE id = 1",
        "grep 'a\\|b' /var/log/syslog",
        "find . -name '*.tmp' -exec rm {} \\;",
        "SELECT 'café', '日本語', '🙂'",
        "",
    ]:
        assert escape(text) == text


def test_escape_doubles_a_backslash_that_would_look_like_an_escape() -> None:
    # A typed backslash-n (two characters) and a real newline must not look the same.
    assert escape("printf 'a\\nb'") == "printf 'a\\\\nb'"
    assert escape("printf 'a\nb'") == "printf 'a\\nb'"
    assert escape("echo \\x1b") == "echo \\\\x1b"
    assert escape("a\\\x1b") == "a\\\\\\x1b"


def test_where_escapes_are_set_apart_a_typed_backslash_shows_as_typed() -> None:
    # The approval queue and a colour terminal style the escapes, so `\rm` reads `\rm`.
    assert escape_parts("\\rm -rf x", set_apart=True) == [("\\rm -rf x", False)]
    assert escape_parts("a\\n\nb", set_apart=True) == [("a\\n", False), ("\\n", True), ("b", False)]


def test_escape_output_holds_nothing_a_terminal_acts_on() -> None:
    for code in [*range(0, 0x3100), *range(0xFE00, 0x10000), *range(0xE0000, 0xE0200)]:
        shown = escape(chr(code))
        assert not has_hidden(shown), hex(code)
        for char in shown:
            assert unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp"), hex(code)


def test_escape_is_reversible_so_it_is_never_ambiguous() -> None:
    alphabet = "ab \\xnuUrt01b[\x1b\r\n\t\x9b\u202e\u200b\u00a0\U000e0041é"
    rng = random.Random(5)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert unescape(escape(text)) == text, repr(text)


def test_escape_parts_mark_the_escapes() -> None:
    assert escape_parts("ok\x1b[31mred") == [("ok", False), ("\\x1b", True), ("[31mred", False)]


def test_rich_markup_in_untrusted_text_stays_literal() -> None:
    from rich.console import Console

    console = Console(width=200, record=True, color_system=None)
    for text in ["[red]x[/red]", "a\\", "\\[bold]y", "[link=file:///etc/passwd]z"]:
        console.print(for_rich(text))
    assert console.export_text().splitlines() == [
        "[red]x[/red]",
        "a\\",
        "\\[bold]y",
        "[link=file:///etc/passwd]z",
    ]


# ---------------------------------------------------------------------------
# The exec side, without a broker
# ---------------------------------------------------------------------------


def test_exec_words_follow_the_contract() -> None:
    assert exec_words(None, False, None) == []
    assert exec_words("5m", False, None) == ["--wait", "300"]
    assert exec_words("90", False, None) == ["--wait", "90"]
    assert exec_words(None, True, None) == ["--no-wait"]
    assert exec_words(None, False, "r-1") == ["--request", "r-1"]
    with pytest.raises(UsageError, match="not both"):
        exec_words("5m", True, None)
    with pytest.raises(UsageError, match="--wait: not a duration"):
        exec_words("soon", False, None)


def _relay(live: bool) -> tuple[_ExecRelay, int]:
    if live:
        reader, writer = os.openpty()
    else:
        reader, writer = os.pipe()
    return _ExecRelay(LiveLine(writer)), reader


def _drain(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_relay_on_a_pipe_passes_the_broker_lines_and_tracks_the_request() -> None:
    relay, out = _relay(live=False)
    relay.stderr(b"hoop: waiting for approval r-7 from approvers (4:59 left)\nhoop: wait")
    assert relay.request_id == "r-7"
    relay.stderr(b"ing for approval r-7 from approvers (4:49 left)\n")
    relay.stderr(b"hoop: denied by bob: \x1b[2Jnot today\n")
    assert relay.request_id is None
    relay.close()
    assert _drain(out) == (
        "hoopctl: waiting for approval r-7 from approvers (4:59 left)\n"
        "hoopctl: waiting for approval r-7 from approvers (4:49 left)\n"
        "hoopctl: denied by bob: \\x1b[2Jnot today\n"
    )


def test_relay_on_a_terminal_keeps_one_live_line_and_then_passes_output_untouched() -> None:
    relay, out = _relay(live=True)
    relay.stderr(b"hoop: waiting for approval r-7 from approvers (4:59 left)\n")
    relay.live.tick()
    relay.stderr(b"hoop: approved by bob: go\n")
    relay.stderr(b"\x1b[31mthe command's own colours\x1b[0m\n")
    relay.close()
    shown = _drain(out).replace("\r\n", "\n")
    assert shown.startswith("\r\x1b[Khoopctl: waiting for approval r-7 from approvers (4:5")
    assert shown.count("\r\x1b[K") == 2
    assert "left)\nhoopctl: approved by bob: go\n" in shown
    assert shown.endswith("\x1b[31mthe command's own colours\x1b[0m\n")


def test_broker_lines_become_hoopctl_lines_until_the_first_line_of_the_session() -> None:
    lines = BrokerLines()
    shown = lines.feed(b"hoop-broker: no target 'x' is open to you\nhoop: appro")
    shown += lines.feed(b"ved by bob\nls: cannot access\nhoop: not the broker\n")
    shown += lines.feed(b"hoop: still not\n") + lines.close()
    assert shown == (
        b"hoopctl: no target 'x' is open to you\nhoopctl: approved by bob\n"
        b"ls: cannot access\nhoop: not the broker\nhoop: still not\n"
    )
    unfinished = BrokerLines()
    assert unfinished.feed(b"hoop-broker: refused") == b""
    assert unfinished.close() == b"hoopctl: refused"


def test_a_broker_line_split_across_reads_is_shown_whole_and_later_lines_too() -> None:
    """hoopctl's stderr copy holds a broker line back until its end arrives; the empty result
    of that hold is not the end of the stream (it once was: later lines were lost)."""
    import asyncio

    from hoopctl.terminal import _copy_out

    class Chunks:
        def __init__(self, *chunks: bytes) -> None:
            self._chunks = list(chunks)

        async def read(self, _size: int) -> bytes:
            return self._chunks.pop(0) if self._chunks else b""

    reader, writer = os.pipe()
    stream = Chunks(b"hoop-broker: refu", b"sed\r\n", b"[hoop] later", b" line\r\n")
    asyncio.run(_copy_out(stream, writer, BrokerLines()))  # type: ignore[arg-type]
    os.close(writer)
    with os.fdopen(reader, "rb") as shown:
        assert shown.read() == b"hoopctl: refused\r\n[hoop] later line\r\n"


def test_relay_ends_the_broker_phase_at_the_first_line_that_is_not_the_broker() -> None:
    relay, out = _relay(live=False)
    relay.stderr(b"hoop: approved by bob\nwarning: \x1b[1mbold\x1b[0m\nhoop: not the broker\n")
    relay.close()
    assert (
        _drain(out)
        == "hoopctl: approved by bob\nwarning: \x1b[1mbold\x1b[0m\nhoop: not the broker\n"
    )


# ---------------------------------------------------------------------------
# The record model
# ---------------------------------------------------------------------------


def test_record_times_may_be_epoch_or_iso() -> None:
    assert timestamp(1_800_000_000) == 1_800_000_000.0
    assert timestamp("2027-01-15T08:00:00Z") == timestamp("2027-01-15T08:00:00+00:00")
    assert timestamp(None) is None and timestamp("soon") is None
    assert clock(299.5) == "4:59" and clock(3723) == "1:02:03" and clock(-3) == "0:00"


def test_decision_line_says_where_the_request_stands() -> None:
    base = {
        "id": "r-1",
        "requester": "alice",
        "target": "prod-db",
        "command": "DELETE FROM accounts\x1b[8m",
        "approvals_needed": 2,
        "decisions": [{"approver": "bob", "decision": "approve"}],
    }
    pending = ApprovalRequest.from_record({**base, "state": "pending"})
    assert describe_decision("approve", pending) == (
        "approved r-1 (alice on prod-db: DELETE FROM accounts\\x1b[8m); waiting for 1 more approval"
    )
    done = ApprovalRequest.from_record({**base, "state": "approved"})
    assert describe_decision("approve", done).endswith("DELETE FROM accounts\\x1b[8m)")
    denied = ApprovalRequest.from_record({**base, "state": "denied"})
    assert describe_decision("deny", denied) == (
        "denied r-1 (alice on prod-db: DELETE FROM accounts\\x1b[8m)"
    )


# ---------------------------------------------------------------------------
# End to end: a real broker, the real console script, several users
# ---------------------------------------------------------------------------

APPROVAL_TARGETS = """
[[targets]]
name = "box"
type = "local"
guard = "screen"
run_as = "hoop-target"
command = ["bash", "--noprofile", "--norc"]
description = "a shell whose printf needs review"
allowed_groups = ["engineers"]
policy = "gate"
# Who decides reviews that no rule names (on_unknown).
access_approvers = ["approvers"]

[[targets]]
name = "vault"
type = "local"
guard = "screen"
run_as = "hoop-target"
command = ["bash", "--noprofile", "--norc"]
description = "connect only with a grant"
allowed_groups = ["engineers"]
access = "request"
access_approvers = ["approvers"]

[policies.gate]
default = "allow"
# A line the broker cannot read for certain (control characters …) goes to a person.
on_unknown = "review"

[[policies.gate.rules]]
name = "printf-needs-review"
action = "review"
program = ["printf"]
approvers = ["approvers"]
timeout = "10m"

[[policies.gate.rules]]
name = "two-eyes-each"
action = "review"
program = ["uname"]
approvers = ["approvers"]
approvals = 2

[[policies.gate.rules]]
name = "quick-expiry"
action = "review"
program = ["date"]
approvers = ["approvers"]
timeout = "2s"
"""

REQUEST_ID = re.compile(r"request (\S+) waits for")
WAITING_LINE = r"hoopctl: waiting for approval (\S+) from approvers"


# alice asks; bob decides; carol may reach box but is in no approver group.
PEOPLE = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One broker and three logged-in users for the module; each test makes its own requests."""
    root = tmp_path_factory.mktemp("approvals")
    with approvals_world(root, targets=APPROVAL_TARGETS, people=PEOPLE) as made:
        yield made


def ask_no_wait(user: User, *command: str, target: str = "box") -> str:
    """`hoopctl exec TARGET --no-wait -- COMMAND`: exit 4 and the request id it prints."""
    result = user.run("exec", target, "--no-wait", "--", *command)
    assert result.returncode == 4, result
    match = REQUEST_ID.search(result.stderr)
    assert match, result.stderr
    return match.group(1)


def wait_for_state(user: User, request_id: str, state: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = record_of(user, request_id)
        if found["state"] == state or time.monotonic() > deadline:
            assert found["state"] == state, found
            return found
        time.sleep(0.2)


def finished(child: pexpect.spawn, timeout: float = 30) -> tuple[int | None, str]:
    """Wait for a spawned hoopctl to end; its exit status and the rest of what it printed."""
    child.expect(pexpect.EOF, timeout=timeout)
    child.close()
    return child.exitstatus, str(child.before)


def test_exec_waits_in_the_terminal_until_bob_approves_and_runs_once(world: World) -> None:
    alice = world.alice.user.spawn("exec", "box", "--", "printf", "ran-after-approval\\n")
    try:
        alice.expect(WAITING_LINE)
        request_id = alice.match.group(1)
        # A live line: redrawn in place (\r, erase line) about once a second, with a timer.
        alice.expect(r"\r\x1b\[Khoopctl: waiting for approval \S+ from approvers \(\d+:\d\d left\)")
        approved = world.bob.user.run("approve", request_id, "--comment", "go ahead")
        assert approved.returncode == 0, approved
        assert approved.stdout == (
            # The typed backslash-n is doubled: a real newline would show as \n.
            f"approved {request_id} (alice on box: printf 'ran-after-approval\\\\n')\n"
        )
        alice.expect("hoopctl: approved by bob: go ahead")
        alice.expect("ran-after-approval")
        status, _ = finished(alice)
    finally:
        alice.close(force=True)
    assert status == 0
    assert (
        wait_for_state(world.alice.user, request_id, "executed")["decisions"][0]["approver"]
        == "bob"
    )
    again = world.alice.user.run("exec", "box", "--request", request_id)
    assert again.returncode == 4
    assert_one_line_error_or_hoop(again)


def assert_one_line_error_or_hoop(result: subprocess.CompletedProcess[str]) -> str:
    """A refusal from the broker: one `hoopctl:` line, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("hoopctl: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_no_wait_prints_the_id_and_request_runs_it_later_exactly_once(world: World) -> None:
    request_id = ask_no_wait(world.alice.user, "printf", "later\\n")
    listed = world.bob.user.run("approvals", "--state", "pending", "--output", "json")
    assert request_id in [r["id"] for r in json.loads(listed.stdout)]
    assert world.bob.user.run("approve", request_id).returncode == 0

    first = world.alice.user.run("exec", "box", "--request", request_id)
    assert (first.returncode, first.stdout) == (0, "later\n"), first
    second = world.alice.user.run("exec", "box", "--request", request_id)
    assert second.returncode == 4
    assert second.stdout == ""
    assert_one_line_error_or_hoop(second)
    assert record_of(world.alice.user, request_id)["state"] == "executed"


def test_a_different_command_does_not_ride_on_an_approved_id(world: World) -> None:
    request_id = ask_no_wait(world.alice.user, "printf", "approved-text\\n")
    assert world.bob.user.run("approve", request_id).returncode == 0
    other = world.alice.user.run("exec", "box", "--request", request_id, "--", "printf", "other\\n")
    assert other.returncode == 4 and other.stdout == ""
    assert "does not match the approved command" in assert_one_line_error_or_hoop(other)
    # The approval is still there for the approved text.
    right = world.alice.user.run(
        "exec", "box", "--request", request_id, "--", "printf", "approved-text\\n"
    )
    assert (right.returncode, right.stdout) == (0, "approved-text\n"), right


def test_request_id_unknown_is_exit_2(world: World) -> None:
    result = world.alice.user.run("exec", "box", "--request", "no-such-request")
    assert result.returncode == 2, result
    assert_one_line_error_or_hoop(result)


def test_deny_with_a_comment_reaches_the_waiting_requester(world: World) -> None:
    alice = world.alice.user.spawn("exec", "box", "--", "printf", "never\\n")
    try:
        alice.expect(WAITING_LINE)
        request_id = alice.match.group(1)
        denied = world.bob.user.run(
            "approve", request_id, "--deny", "--comment", "use a WHERE clause"
        )
        assert denied.returncode == 0, denied
        assert denied.stdout.startswith(f"denied {request_id} (alice on box: ")
        alice.expect("hoopctl: denied by bob: use a WHERE clause")
        status, rest = finished(alice)
    finally:
        alice.close(force=True)
    assert status == 3
    assert "never" not in rest
    assert record_of(world.bob.user, request_id)["state"] == "denied"
    # The refused exec is a session of its own, and its timeline says who denied it.
    blocked = json.loads(
        world.alice.user.run("sessions", "--state", "blocked", "-o", "json").stdout
    )
    (session,) = [row for row in blocked if row["command"] == "printf 'never\\n'"]
    show = world.alice.user.run("sessions", "show", session["id"], "-o", "json")
    (entry,) = json.loads(show.stdout)["timeline"]
    assert (entry["outcome"], entry["approver"]) == ("blocked", "bob")


def test_self_approval_is_refused_with_exit_3(world: World) -> None:
    request_id = ask_no_wait(world.alice.user, "printf", "mine\\n")
    result = world.alice.user.run("approve", request_id)
    assert result.returncode == 3
    assert_one_line_error(result, f"cannot approve {request_id}", "your own request")
    assert record_of(world.alice.user, request_id)["state"] == "pending"


def test_approval_by_a_non_member_is_answered_as_an_unknown_request(world: World) -> None:
    # Someone outside the approver groups learns nothing: not that the request exists, nor
    # which groups may decide it. The answer is the one for a request id that does not exist.
    request_id = ask_no_wait(world.alice.user, "printf", "members-only\\n")
    result = world.carol.user.run("approve", request_id, "--comment", "sure")
    nonexistent = world.carol.user.run("approve", "ar_doesnotexist")
    assert result.returncode == nonexistent.returncode == 2
    assert_one_line_error(result, f"cannot approve {request_id}", "no request")
    assert "approvers" not in result.stderr
    denied = world.carol.user.run("approve", request_id, "--deny")
    assert denied.returncode == 2
    assert_one_line_error(denied, f"cannot deny {request_id}", "no request")
    assert record_of(world.alice.user, request_id)["decisions"] == []


def test_a_second_decision_by_the_same_approver_is_refused(world: World) -> None:
    request_id = ask_no_wait(world.alice.user, "uname", "-a")
    first = world.bob.user.run("approve", request_id)
    assert first.returncode == 0
    assert first.stdout.endswith("; waiting for 1 more approval\n"), first.stdout
    again = world.bob.user.run("approve", request_id)
    assert again.returncode == 1
    assert_one_line_error(again, "you already decided on this request")
    deny = world.bob.user.run("approve", request_id, "--deny")
    assert deny.returncode == 1
    assert_one_line_error(deny, "you already decided on this request")
    assert record_of(world.alice.user, request_id)["state"] == "pending"


def test_approval_after_expiry_is_refused(world: World) -> None:
    request_id = ask_no_wait(world.alice.user, "date")
    wait_for_state(world.alice.user, request_id, "expired")
    late = world.bob.user.run("approve", request_id)
    assert late.returncode == 1
    assert_one_line_error(late, f"cannot approve {request_id}", "expired")


def test_unknown_request_is_exit_2(world: World) -> None:
    result = world.bob.user.run("approve", "0000000000")
    assert result.returncode == 2
    assert_one_line_error(result, "cannot approve 0000000000")


HIDING_ARG = "safe\x1b[2K\r\x1b[1Arm -rf /srv/data\nfake line"


def test_approvals_table_escapes_what_json_keeps_raw(world: World) -> None:
    request_id = ask_no_wait(world.alice.user, "printf", HIDING_ARG)
    table = world.bob.user.run("approvals", "--state", "pending")
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "\r" not in table.stdout
    (row,) = [line for line in table.stdout.splitlines() if request_id in line]
    assert "printf 'safe\\x1b[2K\\r\\x1b[1Arm -rf /srv/data\\nfake line'" in row
    assert "alice" in row and "approvers" in row

    raw = json.loads(world.bob.user.run("approvals", "--output", "json").stdout)
    (found,) = [r for r in raw if r["id"] == request_id]
    assert found["command"] == "printf " + shlex.quote(HIDING_ARG)


def test_approvals_state_filter_and_scope(world: World) -> None:
    request_id = ask_no_wait(world.alice.user, "printf", "filtered\\n")
    world.bob.user.run("approve", request_id, "--deny")
    pending = json.loads(world.bob.user.run("approvals", "--state", "pending", "-o", "json").stdout)
    denied = json.loads(world.bob.user.run("approvals", "--state", "denied", "-o", "json").stdout)
    # Times are RFC 3339 strings in every JSON output, never epoch numbers.
    record = next(r for r in denied if r["id"] == request_id)
    for key in ("created_at", "expires_at", "decided_at"):
        assert datetime.fromisoformat(record[key]).tzinfo is not None, record[key]
    assert isinstance(record["decisions"][0]["at"], str)
    assert request_id not in [r["id"] for r in pending]
    assert request_id in [r["id"] for r in denied]
    assert all(r["state"] == "denied" for r in denied)
    mine = json.loads(world.bob.user.run("approvals", "--scope", "mine", "-o", "json").stdout)
    assert request_id not in [r["id"] for r in mine]
    bad = world.bob.user.run("approvals", "--state", "maybe")
    assert bad.returncode == 2


def test_wait_duration_runs_out_and_the_request_stays_pending(world: World) -> None:
    started = time.monotonic()
    result = world.alice.user.run("exec", "box", "--wait", "2s", "--", "printf", "slow\\n")
    assert result.returncode == 4, result
    assert time.monotonic() - started > 1.5  # it did wait
    request_id = re.search(WAITING_LINE, result.stderr).group(1)  # type: ignore[union-attr]
    assert record_of(world.alice.user, request_id)["state"] == "pending"


def test_ctrl_c_while_waiting_cancels_the_request_and_exits_4(world: World) -> None:
    alice = world.alice.user.spawn("exec", "box", "--", "printf", "cancel-me\\n")
    try:
        alice.expect(WAITING_LINE)
        request_id = alice.match.group(1)
        alice.sendintr()
        alice.expect(f"hoopctl: cancelled approval request {request_id}")
        status, _ = finished(alice)
    finally:
        alice.close(force=True)
    assert status == 4
    assert record_of(world.alice.user, request_id)["state"] == "cancelled"
    late = world.bob.user.run("approve", request_id)
    assert late.returncode == 1
    assert_one_line_error(late, "request is cancelled")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("exec", "box", "--wait", "5m", "--no-wait", "--", "printf", "x"), "not both"),
        (("exec", "box", "--wait", "soon", "--", "printf", "x"), "--wait: not a duration"),
        (("approve", "--deny"), "--deny and --comment need a request ID"),
        (("approve",), "the live queue needs a terminal"),
        (("request", "vault", "--for", "forever"), "--for: not a duration"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    world: World, args: tuple[str, ...], fragment: str
) -> None:
    result = world.alice.user.run(*args)
    assert result.returncode == 2, result
    assert_one_line_error(result, fragment)


def test_access_request_approved_then_listed_as_a_grant(world: World) -> None:
    refused = world.alice.user.run("connect", "vault", "--", "true")
    assert refused.returncode != 0
    asked = world.alice.user.run("request", "vault", "--for", "30m", "--reason", "INC-1: disk full")
    assert asked.returncode == 0, asked
    request_id = asked.stdout.strip()
    assert re.fullmatch(r"\S+", request_id)
    assert f"request {request_id} waits for approvers" in asked.stderr

    listed = json.loads(world.alice.user.run("requests", "-o", "json").stdout)
    (mine,) = [r for r in listed if r["id"] == request_id]
    assert (mine["kind"], mine["state"], mine["duration"]) == ("access", "pending", 1800)

    approved = world.bob.user.run("approve", request_id, "--comment", "ok for the incident")
    assert approved.returncode == 0, approved
    assert "access to vault for 30m00s" in approved.stdout

    table = world.alice.user.run("requests")
    (row,) = [line for line in table.stdout.splitlines() if request_id in line]
    assert "approved" in row and "granted" in row and "bob: ok for the incident" in row
    child = world.alice.user.spawn("connect", "vault", "--", "echo", "inside")
    try:
        child.expect("inside")
        status, _ = finished(child)
    finally:
        child.close(force=True)
    assert status == 0


def test_access_request_wait_follows_the_decision(world: World) -> None:
    child = world.alice.user.spawn("request", "vault", "--for", "10m", "--reason", "look", "--wait")
    try:
        child.expect(r"request (\S+) waits for approvers")
        request_id = child.match.group(1)
        child.expect(r"waiting for approval \S+ from approvers \(\d+:\d\d left\)")
        assert (
            world.bob.user.run("approve", request_id, "--deny", "--comment", "not now").returncode
            == 0
        )
        child.expect("hoopctl: denied by bob: not now")
        status, _ = finished(child)
    finally:
        child.close(force=True)
    assert status == 3

    child = world.alice.user.spawn(
        "request", "vault", "--for", "10m", "--reason", "again", "--wait"
    )
    try:
        child.expect(r"request (\S+) waits for approvers")
        request_id = child.match.group(1)
        assert world.bob.user.run("approve", request_id).returncode == 0
        child.expect(r"approved by bob; you may connect until \d{4}-\d\d-\d\d")
        status, _ = finished(child)
    finally:
        child.close(force=True)
    assert status == 0


def test_access_request_for_an_unknown_target_is_exit_2(world: World) -> None:
    result = world.alice.user.run("request", "nowhere", "--for", "1h", "--reason", "x")
    assert result.returncode == 2
    assert_one_line_error(result)


def test_requests_lists_only_your_own(world: World) -> None:
    request_id = ask_no_wait(world.alice.user, "printf", "own\\n")
    alice_rows = json.loads(world.alice.user.run("requests", "-o", "json").stdout)
    bob_rows = json.loads(world.bob.user.run("requests", "-o", "json").stdout)
    assert request_id in [r["id"] for r in alice_rows]
    assert request_id not in [r["id"] for r in bob_rows]
    assert all(r["requester"] == "alice" for r in alice_rows)


# ---------------------------------------------------------------------------
# The story on real PostgreSQL: DELETE without WHERE waits, is approved, runs once
# ---------------------------------------------------------------------------


accounts_db = approvals.accounts_db

# approvals_config has a policy "sql" of its own (DELETE without WHERE waits for dba-leads).
ACCOUNTS_POLICY = """
[policies.accounts]
default = "allow"
on_unknown = "deny"

[[policies.accounts.rules]]
name = "unbounded-writes"
action = "review"
statement = ["UPDATE", "DELETE"]
without_where = true
approvers = ["approvers"]
"""


def test_delete_without_where_waits_is_approved_and_runs_once(
    tmp_path: Path, accounts_db: AccountsDb
) -> None:
    targets = accounts_db.target("prod-accounts", tmp_path, policy="accounts") + ACCOUNTS_POLICY
    with approvals_world(tmp_path, targets=targets) as world:
        alice = world.alice.user.spawn("exec", "prod-accounts", "-c", "DELETE FROM accounts")
        try:
            alice.expect(WAITING_LINE)
            request_id = alice.match.group(1)
            assert accounts_db.count() == 2  # nothing ran yet
            pending = record_of(world.bob.user, request_id)
            assert (pending["command"], pending["rule"]) == (
                "DELETE FROM accounts",
                "unbounded-writes",
            )
            assert world.bob.user.run("approve", request_id, "-m", "INC-9").returncode == 0
            alice.expect("hoopctl: approved by bob: INC-9")
            status, _ = finished(alice)
        finally:
            alice.close(force=True)
        assert status == 0
        assert accounts_db.count() == 0
        # Once: the same id does not run again, with or without the text.
        again = world.alice.user.run("exec", "prod-accounts", "--request", request_id)
        assert again.returncode == 4
        assert_one_line_error_or_hoop(again)
        types = [
            event["type"]
            for event in world.broker.audit_events()
            if event.get("details", {}).get("request") == request_id
        ]
        assert types[:3] == ["approval.requested", "approval.approved", "approval.executed"], types
