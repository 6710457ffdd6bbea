"""The approver's live queue (`hoopctl approve` without an ID).

First the queue's state and rendering on their own (no terminal, no broker); then the real
thing: a broker process, alice's `hoopctl exec` waiting in one pexpect terminal and bob's
`hoopctl approve` in another, whose screen is read back through a terminal emulator (pyte),
so the assertions are about what a person would see.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pyte
import pytest

from hoopctl.approval_requests import ApprovalRequest
from hoopctl.approve_queue import (
    QueueState,
    detail_lines,
    fit,
    list_fragments,
    row_fragments,
    status_fragments,
)
from tests.fixtures import approvals
from tests.fixtures.approvals import World, approvals_world
from tests.helpers import (
    HOOPCTL,
    USER_CODE,
    BrokerProcess,
    User,
    free_port,
    oidc_config,
    start_broker,
)
from tests.idp_harness import ACCOUNTS, OidcProviderProcess, approve_device_code
from tests.test_approve_cli import APPROVAL_TARGETS, WAITING_LINE, ask_no_wait

NOW = 1_800_000_000.0


def record(request_id: str = "r1", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": request_id,
        "kind": "command",
        "state": "pending",
        "requester": "alice",
        "requester_groups": ["engineers", "dba"],
        "target": "prod-db",
        "session": "20261123-0123456789ab",
        "command": "DELETE FROM accounts",
        "command_sha256": "ab" * 32,
        "rule": "unbounded-writes",
        "reason": "clean up the test rows",
        "approver_groups": ["approvers"],
        "approvals_needed": 1,
        "decisions": [],
        "screen": ["prod=> SELECT 1;", "prod=> DELETE FROM accounts"],
        "created_at": NOW - 12,
        "expires_at": NOW + 888,
        "decided_at": None,
        "executed_at": None,
        "duration": None,
        "grant_until": None,
    }
    base.update(changes)
    return base


def text(fragments: list[tuple[str, ...]]) -> str:
    return "".join(fragment[1] for fragment in fragments)


def styled_escapes(fragments: list[tuple[str, ...]]) -> list[str]:
    return [fragment[1] for fragment in fragments if "class:escape" in fragment[0]]


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------


def test_snapshot_then_new_request_rings_once_and_own_requests_are_set_apart() -> None:
    state = QueueState(me="bob")
    assert state.apply({"type": "snapshot", "requests": [record("r1"), record("r2")]}) is None
    assert [r.id for r in state.rows(NOW)] == ["r1", "r2"]
    assert state.selected_id == "r1"

    arrived = state.apply({"type": "requested", "request": record("r3", expires_at=NOW + 5)})
    assert arrived is not None and arrived.id == "r3"
    # The one expiring first is on top; the selection stays on the first row until bob moves.
    assert [r.id for r in state.rows(NOW)] == ["r3", "r1", "r2"]
    # A repeated event for a known request does not ring again.
    assert state.apply({"type": "requested", "request": record("r3")}) is None
    # Bob's own request is shown after the others and never rings.
    assert state.apply({"type": "requested", "request": record("r4", requester="bob")}) is None
    assert [r.id for r in state.rows(NOW)][-1] == "r4"
    assert "r4" in state.own


def test_decided_request_leaves_the_queue_with_a_status_line() -> None:
    state = QueueState(me="bob")
    state.snapshot([record("r1"), record("r2")])
    state.move(1)
    assert state.selected_id == "r2"
    decided = record(
        "r2",
        state="approved",
        decisions=[{"approver": "carol", "decision": "approve", "comment": "ok", "at": NOW}],
    )
    state.apply({"type": "updated", "request": decided})
    assert [r.id for r in state.rows(NOW)] == ["r1"]
    assert state.selected_id == "r1"
    assert state.status == "r2 is approved (carol: ok)" and not state.status_error


def test_a_request_needing_two_approvals_stays_and_shows_your_decision() -> None:
    state = QueueState(me="bob")
    state.snapshot(
        [
            record(
                "r1",
                approvals_needed=2,
                decisions=[{"approver": "bob", "decision": "approve", "comment": "", "at": NOW}],
            )
        ]
    )
    (request,) = state.rows(NOW)
    line = text(row_fragments(request, "bob", NOW, 200, selected=True))
    assert "1/2 approvals" in line and "[you approved]" in line


def test_requests_long_past_expiry_leave_even_without_an_update() -> None:
    state = QueueState(me="bob")
    state.snapshot([record("r1", expires_at=NOW - 60), record("r2", expires_at=NOW - 1)])
    assert [r.id for r in state.rows(NOW)] == ["r2"]
    assert "expired" in text(list_fragments(state, NOW, 200))


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

HIDING = "echo harmless\x1b[2K\r\x1b[1Arm -rf /srv/data\necho \u202eevil\u200b"


def test_row_shows_who_where_what_why_and_time_left() -> None:
    request = ApprovalRequest.from_record(record())
    shown = text(row_fragments(request, "bob", NOW, 200, selected=True))
    first, command, why, _ = shown.split("\n")
    assert first.startswith("▶ r1  alice → prod-db  14:48 left (age 12s)")
    assert command == "    $ DELETE FROM accounts"
    assert why == (
        "    rule: unbounded-writes · approvers: approvers · reason: clean up the test rows"
    )


def test_row_escapes_a_command_that_tries_to_hide_itself() -> None:
    request = ApprovalRequest.from_record(record(command=HIDING, reason="fine\x1b[8mhidden"))
    fragments = row_fragments(request, "bob", NOW, 400, selected=False)
    shown = text(fragments)
    assert "\x1b" not in shown and "\r" not in shown and "\u202e" not in shown
    assert shown.count("\n") == 3  # three lines, whatever the command holds
    assert "$ echo harmless\\x1b[2K\\r\\x1b[1Arm -rf /srv/data\\necho \\u202eevil\\u200b" in shown
    assert "reason: fine\\x1b[8mhidden" in shown
    assert "! control characters, shown escaped" in shown
    assert styled_escapes(fragments)[:4] == ["\\x1b", "\\r", "\\x1b", "\\n"]


def test_long_command_is_cut_with_a_marker_not_silently() -> None:
    request = ApprovalRequest.from_record(record(command="SELECT 1; " + " " * 300 + "DROP x"))
    shown = text(row_fragments(request, "bob", NOW, 100, selected=False)).split("\n")[1]
    assert len(shown) <= 100
    assert "more, Enter shows all)" in shown
    assert "DROP" not in shown


def test_fit_leaves_short_lines_alone() -> None:
    assert fit([("", "abc")], 10) == [("", "abc")]


def test_details_show_everything_escaped_including_the_screen() -> None:
    request = ApprovalRequest.from_record(
        record(
            command=HIDING,
            screen=["$ ls", "\x1b[31mred\x1b[0m prompt\x07"],
            decisions=[
                {"approver": "carol", "decision": "approve", "comment": "go\r\nahead", "at": NOW}
            ],
        )
    )
    lines = [text(line) for line in detail_lines(request, "bob", NOW)]
    joined = "\n".join(lines)
    assert "\x1b" not in joined and "\r" not in joined and "\x07" not in joined
    assert "Requester  alice (groups: engineers, dba)" in lines
    assert "Rule       unbounded-writes" in lines
    assert "Reason     clean up the test rows" in lines
    assert "Decision   carol approved: go\\r\\nahead" in joined
    assert "  echo harmless\\x1b[2K\\r\\x1b[1Arm -rf /srv/data\\necho \\u202eevil\\u200b" in lines
    assert "Requester's screen (last 2 lines):" in lines
    assert "  │ \\x1b[31mred\\x1b[0m prompt\\x07" in lines
    assert any(line.startswith("! The command holds control characters") for line in lines)


def test_details_of_your_own_request_say_so() -> None:
    request = ApprovalRequest.from_record(record(requester="bob"))
    lines = [text(line) for line in detail_lines(request, "bob", NOW)]
    assert "This is your own request: someone else must decide it." in lines


def test_access_request_row_names_the_access() -> None:
    request = ApprovalRequest.from_record(
        record(kind="access", command=None, duration=3600, rule=None)
    )
    shown = text(row_fragments(request, "bob", NOW, 200, selected=False))
    assert "    access to prod-db for 1h00m" in shown.split("\n")


def test_status_bar_is_one_line_whatever_the_message() -> None:
    state = QueueState(me="bob")
    state.error("cannot approve r1: request is \x1b[2Jgone\nreally")
    shown = text(status_fragments(state, 80))
    assert "\n" not in shown and "\x1b" not in shown
    assert "\\x1b[2Jgone\\nreally" in shown
    assert len(shown) <= 80


def test_queue_time_columns_tick() -> None:
    state = QueueState(me="bob")
    state.snapshot([record()])
    assert "14:48 left (age 12s)" in text(list_fragments(state, NOW, 200))
    assert "14:47 left (age 13s)" in text(list_fragments(state, NOW + 1, 200))


# ---------------------------------------------------------------------------
# End to end: alice waits in one terminal, bob decides in the queue in another
# ---------------------------------------------------------------------------

ROWS, COLS = 40, 200


class Screen:
    """A pexpect terminal whose output is fed to a terminal emulator: what a person would see."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.Stream(self.screen)
        self.raw = ""

    def pump(self, seconds: float = 0.1) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                data = ""
            except pexpect.EOF:
                return
            self.raw += data
            self.stream.feed(data)
            if time.monotonic() >= deadline:
                return

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, needle: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not on the screen:\n{self.text()}")
            self.pump(0.1)
        return self.text()

    def line_with(self, needle: str) -> str:
        for line in self.text().splitlines():
            if needle in line:
                return line
        raise AssertionError(f"no line with {needle!r}:\n{self.text()}")

    def select(self, needle: str) -> None:
        """Move the selection down to the row with NEEDLE (the queue may hold other requests)."""
        for _ in range(20):
            if self.line_with(needle).startswith("▶"):
                break
            self.press("\x1b[B")

    def status_line(self) -> str:
        return self.screen.display[ROWS - 2].rstrip()

    def press(self, keys: str) -> None:
        self.child.send(keys)
        self.pump(0.2)

    def exit_status(self, timeout: float = 15) -> int | None:
        deadline = time.monotonic() + timeout
        while self.child.isalive() and time.monotonic() < deadline:
            self.pump(0.1)
        self.child.close()
        return self.child.exitstatus


def open_queue(user: User) -> Screen:
    child = pexpect.spawn(
        HOOPCTL,
        ["approve"],
        env=user.env,
        encoding="utf-8",
        timeout=30,
        dimensions=(ROWS, COLS),
    )
    screen = Screen(child)
    screen.wait_for("hoopctl approve ·")
    screen.wait_for("● live")
    return screen


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("queue")
    with approvals_world(root, targets=APPROVAL_TARGETS) as made:
        yield made


spawned = approvals.spawned


def test_request_appears_in_bobs_queue_with_a_bell_and_a_approves_it(
    world: World, spawned: list[pexpect.spawn]
) -> None:
    bob = open_queue(world.bob.user)
    spawned.append(bob.child)
    bob.raw = ""
    alice = world.alice.user.spawn(
        "exec", "box", "--reason", "INC-7 cleanup", "--", "printf", "done\\n"
    )
    spawned.append(alice)
    alice.expect(WAITING_LINE)
    request_id = alice.match.group(1)

    bob.wait_for(request_id)
    assert "\a" in bob.raw  # the bell
    head = bob.line_with(request_id)
    assert head.startswith(f"▶ {request_id}  alice → box  ")
    assert re.search(r"\d+:\d\d left \(age \d+s\)", head)
    # The queue shows escapes highlighted, so a typed backslash shows as typed.
    assert "    $ printf 'done\\n'" in bob.text()
    assert "rule: printf-needs-review · approvers: approvers · reason: INC-7 cleanup" in bob.text()
    assert f"new request {request_id} from alice on box" in bob.status_line()

    bob.press("\r")  # details, with the requester's groups and the full record
    bob.wait_for("Requester  alice (groups: dba, engineers)")
    assert "Command (exactly as it will run):" in bob.text()
    bob.press("\r")
    bob.wait_for("↑/↓ select")

    bob.press("a")
    bob.wait_for(f"Approve {request_id}? Comment (Enter to approve, Esc to cancel):")
    bob.press("\r")
    bob.wait_for(f"approved {request_id} (alice on box: printf 'done\\\\n')")
    alice.expect("hoopctl: approved by bob\r\n")
    alice.expect("done")
    alice.expect(pexpect.EOF)
    alice.close()
    assert alice.exitstatus == 0
    # The request left bob's queue.
    bob.pump(0.5)
    assert f"▶ {request_id}" not in bob.text()

    bob.press("q")
    assert bob.exit_status() == 0


def test_d_with_a_comment_shows_the_comment_to_alice(
    world: World, spawned: list[pexpect.spawn]
) -> None:
    bob = open_queue(world.bob.user)
    spawned.append(bob.child)
    alice = world.alice.user.spawn("exec", "box", "--", "printf", "no\\n")
    spawned.append(alice)
    alice.expect(WAITING_LINE)
    request_id = alice.match.group(1)
    bob.wait_for(request_id)
    # Select alice's request (bob's queue may hold others from earlier tests).
    bob.select(request_id)
    bob.press("d")
    bob.wait_for(f"Deny {request_id}? Comment")
    bob.press("please add a WHERE clause\r")
    bob.wait_for(f"denied {request_id}")
    alice.expect("hoopctl: denied by bob: please add a WHERE clause")
    alice.expect(pexpect.EOF)
    alice.close()
    assert alice.exitstatus == 3
    bob.press("q")
    assert bob.exit_status() == 0


def test_escape_sequences_and_a_fake_newline_show_escaped_in_bobs_terminal(
    world: World, spawned: list[pexpect.spawn]
) -> None:
    bob = open_queue(world.bob.user)
    spawned.append(bob.child)
    # What a malicious requester hopes bob sees: "printf 'safe'", with the rest erased, moved
    # up, blacked out or reversed.
    hidden = "safe\x1b[2K\r\x1b[1A\x1b[8mrm -rf /srv/data\x1b[0m\nfake: all good\u202eevil\u200b"
    request_id = ask_no_wait(world.alice.user, "printf", hidden)
    bob.wait_for(request_id)
    shown = "$ printf 'safe\\x1b[2K\\r\\x1b[1A\\x1b[8mrm -rf /srv/data\\x1b[0m\\nfake: all good\\u202eevil\\u200b'"
    screen = bob.wait_for(shown)
    # The hidden part is there to read, on the request's own line, and nothing was erased.
    (command_line,) = [line for line in screen.splitlines() if "rm -rf /srv/data" in line]
    assert command_line.strip() == shown
    assert "fake: all good" not in screen.replace(shown, "")
    assert "! control characters, shown escaped" in bob.line_with(request_id)
    assert "hoopctl approve ·" in screen.splitlines()[0]  # the title was not overwritten

    # Select it and open the details: the same, escaped.
    bob.select(request_id)
    bob.press("\r")
    detail = bob.wait_for("Command (exactly as it will run):")
    assert shown[2:] in detail
    assert "! The command holds control characters" in detail
    bob.press("q")
    assert bob.exit_status() == 0


def test_self_approval_in_the_queue_shows_the_error(
    world: World, spawned: list[pexpect.spawn]
) -> None:
    request_id = ask_no_wait(world.alice.user, "printf", "self\\n")
    alice_queue = open_queue(world.alice.user)
    spawned.append(alice_queue.child)
    alice_queue.wait_for(request_id)
    assert "[yours: someone else must decide]" in alice_queue.line_with(request_id)
    alice_queue.select(request_id)
    alice_queue.press("a")
    alice_queue.wait_for(f"Approve {request_id}?")
    alice_queue.press("\r")
    alice_queue.wait_for(f"cannot approve {request_id}: you cannot approve your own request")
    assert "you cannot approve your own request" in alice_queue.status_line()
    alice_queue.press("q")
    assert alice_queue.exit_status() == 0


def test_q_quits_with_0_and_leaves_the_terminal_as_it_was(
    world: World, spawned: list[pexpect.spawn]
) -> None:
    bob = open_queue(world.bob.user)
    spawned.append(bob.child)
    bob.press("q")
    assert bob.exit_status() == 0
    assert "\x1b[?1049l" in bob.raw  # left the alternate screen


# ---------------------------------------------------------------------------
# Two real identities from the third-party OIDC provider (tests/idp)
# ---------------------------------------------------------------------------

OIDC_TARGETS = """
[[targets]]
name = "box"
type = "local"
guard = "screen"
run_as = "hoop-target"
command = ["bash", "--noprofile", "--norc"]
allowed_groups = ["engineers"]
policy = "gate"

[policies.gate]
default = "allow"
on_unknown = "deny"

[[policies.gate.rules]]
name = "printf-needs-review"
action = "review"
program = ["printf"]
approvers = ["approvers"]
"""


def provider_login(user: User, broker: BrokerProcess, issuer: str, username: str) -> None:
    """`hoopctl login` with the device code approved at the provider as USERNAME."""
    child = user.spawn(
        "login",
        "--broker",
        broker.address,
        "--accept-host-key",
        broker.host_fingerprint,
        "--no-browser",
        timeout=30,
    )
    try:
        child.expect(USER_CODE)
        approve_device_code(issuer, child.match.group(1), username, ACCOUNTS[username]["password"])
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_two_oidc_identities_request_and_approve_in_two_terminals(
    tmp_path: Path, spawned: list[pexpect.spawn]
) -> None:
    with OidcProviderProcess(id_token_ttl=600) as idp:
        broker = start_broker(
            tmp_path,
            oidc_config(
                tmp_path / "data", port=free_port(), issuer=idp.issuer, targets=OIDC_TARGETS
            ),
            dev=False,
        )
        try:
            alice, bob = User(tmp_path / "alice"), User(tmp_path / "bob")
            provider_login(alice, broker, idp.issuer, "alice")
            provider_login(bob, broker, idp.issuer, "bob")

            queue = open_queue(bob)
            spawned.append(queue.child)
            waiting = alice.spawn("exec", "box", "--", "printf", "approved-via-oidc\\n")
            spawned.append(waiting)
            waiting.expect(WAITING_LINE)
            request_id = waiting.match.group(1)

            queue.wait_for(request_id)
            assert queue.line_with(request_id).startswith(f"▶ {request_id}  alice → box  ")
            queue.press("a")
            queue.wait_for(f"Approve {request_id}?")
            queue.press("fine by me\r")
            queue.wait_for(f"approved {request_id}")
            waiting.expect("hoopctl: approved by bob: fine by me")
            waiting.expect("approved-via-oidc")
            waiting.expect(pexpect.EOF)
            waiting.close()
            assert waiting.exitstatus == 0
            queue.press("q")
            assert queue.exit_status() == 0

            events = [
                event
                for event in broker.audit_events()
                if event.get("type", "").startswith("approval.")
                and event.get("details", {}).get("request") == request_id
            ]
            kinds = [event["type"] for event in events]
            assert kinds[0] == "approval.requested" and "approval.approved" in kinds, kinds
            assert [e["actor"] for e in events if e["type"] == "approval.approved"] == ["bob"]
        finally:
            broker.stop()


def test_queue_reconnects_after_a_broker_restart_and_the_request_is_still_there(
    tmp_path: Path, spawned: list[pexpect.spawn]
) -> None:
    with approvals_world(tmp_path, targets=APPROVAL_TARGETS) as world:
        bob = open_queue(world.bob.user)
        spawned.append(bob.child)
        request_id = ask_no_wait(world.alice.user, "printf", "survives\\n")
        bob.wait_for(request_id)

        world.broker.stop()
        bob.wait_for("lost the broker")
        assert "○ reconnecting" in bob.status_line()
        world.broker.start()
        bob.wait_for("● live", timeout=30)
        bob.wait_for(request_id)
        bob.press("a")
        bob.wait_for(f"Approve {request_id}?")
        bob.press("\r")
        bob.wait_for(f"approved {request_id}")
        bob.press("q")
        assert bob.exit_status() == 0

        ran = world.alice.user.run("exec", "box", "--request", request_id)
        assert (ran.returncode, ran.stdout) == (0, "survives\n"), ran
