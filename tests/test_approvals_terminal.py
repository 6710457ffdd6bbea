"""The requester's side in a real terminal (pexpect): a held command waits in the session with a
live timer until another user decides, on a real OpenSSH sshd and on a local shell; Ctrl-C
cancels; a required reason is asked for in the terminal; time-boxed access grants end sessions.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from broker.recording import read_events
from tests.fixtures import approvals
from tests.fixtures.approvals import World, approvals_world
from tests.helpers import BrokerProcess
from tests.sshd_harness import SshdServer, sshd_available, start_sshd
from tests.terminal_helpers import PROMPT, SESSION_ID
from tests.test_approvals_helpers import Person, shell_target

WAITING = re.compile(r"waiting for approval ([0-9a-f]{10}) from approvers \((\d+:\d\d) left")
CLOSED_AT = 6  # seconds an access grant lasts in the grant test


def ssh_target(name: str, sshd: SshdServer) -> str:
    return f"""
[[targets]]
name = "{name}"
type = "ssh"
guard = "screen"
address = "{sshd.host}:{sshd.port}"
user = "{sshd.user}"
credential = "file:{sshd.client_key_path}"
known_host = "{sshd.host_key_line}"
allowed_groups = ["engineers"]
policy = "shell"
access_approvers = ["leads"]  # unknown input: nobody here may approve it, so it does not wait
"""


VAULT = shell_target("vault", 'access = "request"\naccess_approvals = 1\naccess_max = "1h"')


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer | None]:
    if not sshd_available():
        yield None
        return
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sshd: SshdServer | None) -> Iterator[World]:
    targets = VAULT + (ssh_target("web", sshd) if sshd else "")
    with approvals_world(tmp_path_factory.mktemp("terminal"), targets=targets) as made:
        yield made


broker, alice, bob = approvals.broker, approvals.alice, approvals.bob


def open_shell(person: Person, target: str) -> pexpect.spawn:
    child = person.user.spawn("connect", target, timeout=30)
    child.expect(SESSION_ID)
    child.session_id = child.match.group(1)  # type: ignore[attr-defined]
    child.expect(PROMPT)
    return child


def close(child: pexpect.spawn) -> int | None:
    child.send("exit 0\r")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def held(child: pexpect.spawn, line: str) -> str:
    """Type LINE and Enter; the id of the request it waits for."""
    child.send(line + "\r")
    child.expect(r"approval required from approvers \(rule [a-z-]+\): request ([0-9a-f]{10})")
    request_id = child.match.group(1)
    child.expect(WAITING)
    assert child.match.group(1) == request_id
    return request_id


def marks(broker: BrokerProcess, session_id: str) -> list[str]:
    _, events = read_events(broker.data_dir / "recordings" / f"{session_id}.cast")
    return [data for _, code, data in events if code == "m"]


def decide(person: Person, request_id: str, decision: str, comment: str | None = None) -> dict:
    params = {"id": request_id, "decision": decision}
    if comment:
        params["comment"] = comment
    return asyncio.run(person.call("approvals.decide", params))


def test_held_command_on_real_sshd_runs_once_approved_in_another_terminal(
    alice: Person, bob: Person, broker: BrokerProcess, target_dir: Path
) -> None:
    if not sshd_available():
        pytest.skip("OpenSSH sshd is not installed")
    proof = target_dir / "approved-on-sshd"
    child = open_shell(alice, "web")
    request_id = held(child, f"touch {proof}")
    # The timer counts down in place, about once a second.
    first = child.match.group(2)
    child.expect(WAITING)
    child.expect(WAITING)
    assert child.match.group(2) != first
    assert not proof.exists()
    record = asyncio.run(bob.call("approvals.get", {"id": request_id}))
    assert record["command"] == f"touch {proof}" and record["session"] == child.session_id
    assert any(f"touch {proof}" in line for line in record["screen"])
    # bob decides with hoopctl, in a terminal of his own.
    approve = bob.user.spawn("approve", request_id, "--comment", "go ahead", timeout=30)
    approve.expect(pexpect.EOF)
    approve.close()
    assert approve.exitstatus == 0, approve.before
    child.expect(r"approved by bob: go ahead")
    child.expect(PROMPT)
    assert proof.exists()
    assert close(child) == 0
    assert asyncio.run(alice.call("approvals.get", {"id": request_id}))["state"] == "executed"
    labels = marks(broker, child.session_id)
    assert f"approval requested: {request_id}" in labels
    assert f"approval: {request_id} approved by bob" in labels
    assert f"command: touch {proof}" in labels
    ran = [
        e
        for e in broker.audit_events("command")
        if e["session"] == child.session_id and e["details"]["command"] == f"touch {proof}"
    ]
    assert len(ran) == 1 and ran[0]["details"]["approver"] == "bob"


def test_denial_names_the_approver_and_the_comment(
    alice: Person, bob: Person, broker: BrokerProcess, target_dir: Path
) -> None:
    proof = target_dir / "denied"
    child = open_shell(alice, "shell")
    request_id = held(child, f"touch {proof}")
    decide(bob, request_id, "deny", "use the runbook")
    child.expect(r"denied by bob: use the runbook")
    child.expect(PROMPT)
    # The session goes on; the line was cancelled on the target.
    child.send("echo still-here\r")
    child.expect("still-here")
    assert close(child) == 0
    assert not proof.exists()
    blocked = [
        e for e in broker.audit_events("command.blocked") if e["session"] == child.session_id
    ]
    assert blocked[-1]["details"]["request"] == request_id


def test_ctrl_c_cancels_the_waiting_request(
    alice: Person, bob: Person, broker: BrokerProcess, target_dir: Path
) -> None:
    proof = target_dir / "cancelled"
    child = open_shell(alice, "shell")
    request_id = held(child, f"touch {proof}")
    child.send("typed while waiting is ignored")
    child.sendcontrol("c")
    child.expect(f"request {request_id} cancelled; not run")
    child.expect(PROMPT)
    record = asyncio.run(bob.call("approvals.get", {"id": request_id}))
    assert record["state"] == "cancelled"
    with pytest.raises(Exception, match="request is cancelled"):
        decide(bob, request_id, "approve")
    child.send("echo after-ctrl-c\r")
    child.expect("after-ctrl-c\r\n")
    assert close(child) == 0
    assert not proof.exists()
    cancelled = [
        e
        for e in broker.audit_events("approval.cancelled")
        if e["details"]["request"] == request_id
    ]
    assert cancelled and cancelled[0]["actor"] == "alice"


def test_a_dropped_session_leaves_the_request_to_run_later_with_request(
    alice: Person, bob: Person, broker: BrokerProcess, target_dir: Path
) -> None:
    import signal

    proof = target_dir / "later"
    child = open_shell(alice, "shell")
    request_id = held(child, f"touch {proof}")
    # The connection drops: hoopctl gets no chance to say anything (a SIGTERM or a closed
    # terminal is different: the person is gone, so the request is cancelled; below).
    child.kill(signal.SIGKILL)
    child.close(force=True)
    deadline = time.monotonic() + 20
    while not [e for e in broker.audit_events("session.end") if e["session"] == child.session_id]:
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.1)
    record = asyncio.run(bob.call("approvals.get", {"id": request_id}))
    assert record["state"] == "pending"
    decide(bob, request_id, "approve")
    other = alice.user.run("exec", "shell", "--request", request_id, "--", "touch", "other")
    assert other.returncode == 4 and "does not match the approved command" in other.stderr
    ran = alice.user.run("exec", "shell", "--request", request_id)
    assert ran.returncode == 0, ran.stderr
    assert proof.exists()
    assert asyncio.run(alice.call("approvals.get", {"id": request_id}))["state"] == "executed"


def test_a_required_reason_is_asked_for_in_the_terminal(alice: Person, bob: Person) -> None:
    child = open_shell(alice, "shell")
    child.send("wall hello\r")
    child.expect("rule needs-a-reason needs a reason; why run this\\? ")
    child.send("INC-7: typo\x7f\x7f\x7f\x7fdisk full\r")
    child.expect(
        r"approval required from approvers \(rule needs-a-reason\): request ([0-9a-f]{10})"
    )
    request_id = child.match.group(1)
    record = asyncio.run(bob.call("approvals.get", {"id": request_id}))
    assert record["reason"] == "INC-7: disk full"
    decide(bob, request_id, "deny")
    child.expect("denied by bob")
    child.expect(PROMPT)
    # Ctrl-C at the reason prompt cancels before anything is asked.
    child.send("wall again\r")
    child.expect("needs a reason")
    child.sendcontrol("c")
    child.expect("not run: cancelled")
    child.expect(PROMPT)
    assert close(child) == 0


def test_one_off_command_waits_on_stderr_and_runs_when_approved(
    alice: Person, bob: Person, target_dir: Path
) -> None:
    proof = target_dir / "one-off"
    child = alice.user.spawn("connect", "shell", "--", "touch", str(proof), timeout=30)
    child.expect(WAITING)
    decide(bob, child.match.group(1), "approve")
    child.expect("approved by bob")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert proof.exists()


# -- time-boxed access ----------------------------------------------------------------------------


def test_access_grant_lets_alice_in_and_closes_the_session_when_it_ends(
    alice: Person, bob: Person, broker: BrokerProcess
) -> None:
    refused = alice.user.run("connect", "vault", "--", "true")
    assert refused.returncode == 4
    assert 'target vault needs an access grant: hoopctl request vault --for 1h --reason "why"' in (
        refused.stderr
    )
    record = asyncio.run(
        alice.call("access.request", {"target": "vault", "duration": CLOSED_AT, "reason": "INC-9"})
    )
    assert (record["kind"], record["state"], record["duration"]) == ("access", "pending", CLOSED_AT)
    pending = alice.user.run("connect", "vault", "--", "true")
    assert pending.returncode == 4
    assert f"your request {record['id']} still waits for approvers" in pending.stderr
    granted = decide(bob, record["id"], "approve")
    assert granted["state"] == "approved"
    assert granted["grant_until"] == pytest.approx(granted["decided_at"] + CLOSED_AT)
    child = alice.user.spawn("connect", "vault", timeout=30)
    child.expect(SESSION_ID)
    child.session_id = child.match.group(1)  # type: ignore[attr-defined]
    # Less than a minute is left: the warning comes at once, the end when the grant ends.
    child.expect(r"your access grant to vault ends in 0:0\d; this session will be closed then")
    child.expect(
        r"your access grant to vault ended; this session is closed", timeout=CLOSED_AT + 10
    )
    child.expect(pexpect.EOF, timeout=20)
    child.close()
    ends = [e for e in broker.audit_events("session.end") if e["session"] == child.session_id]
    assert ends and ends[-1]["details"]["state"] == "terminated"
    starts = [e for e in broker.audit_events("session.start") if e["session"] == child.session_id]
    assert starts[0]["details"]["grant"] == record["id"]
    deadline = time.monotonic() + 10
    while asyncio.run(alice.call("approvals.get", {"id": record["id"]}))["state"] != "expired":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert alice.user.run("connect", "vault", "--", "true").returncode == 4
    listed = asyncio.run(alice.call("access.list", {}))
    assert [r["id"] for r in listed if r["id"] == record["id"]]


def test_access_requests_are_checked_and_capped(alice: Person, bob: Person) -> None:
    async def calls() -> None:
        from hoopctl.errors import ApiCallError

        long = await alice.call(
            "access.request", {"target": "vault", "duration": 7 * 86400, "reason": "long"}
        )
        assert long["duration"] == 3600  # access_max
        for params, code in (
            ({"target": "vault", "duration": 60, "reason": " "}, "bad_request"),
            ({"target": "vault", "duration": 0, "reason": "x"}, "bad_request"),
            ({"target": "shell", "duration": 60, "reason": "x"}, "bad_request"),
            ({"target": "nope", "duration": 60, "reason": "x"}, "not_found"),
        ):
            with pytest.raises(ApiCallError) as caught:
                await alice.call("access.request", params)
            assert caught.value.code == code
        with pytest.raises(ApiCallError) as caught:
            await alice.call("approvals.decide", {"id": long["id"], "decision": "approve"})
        assert str(caught.value) == "you cannot approve your own request"
        await alice.call("approvals.cancel", {"id": long["id"]})

    asyncio.run(calls())


def _state_soon(person: Person, request_id: str, want: str, within: float = 10) -> str:
    deadline = time.monotonic() + within
    state = ""
    while time.monotonic() < deadline:
        state = asyncio.run(person.call("approvals.get", {"id": request_id}))["state"]
        if state == want:
            return state
        time.sleep(0.2)
    return state


@pytest.mark.parametrize(("how", "signame"), [("connect", "SIGTERM"), ("exec", "SIGTERM")])
def test_a_requester_terminated_while_waiting_cancels_the_request_at_once(
    alice: Person, bob: Person, target_dir: Path, how: str, signame: str
) -> None:
    import signal

    proof = target_dir / f"never-{how}-{signame}"
    if how == "connect":
        child = open_shell(alice, "shell")
        request_id = held(child, f"touch {proof}")
    else:
        child = alice.user.spawn("exec", "shell", "--", "touch", str(proof), timeout=30)
        child.expect(WAITING)
        request_id = child.match.group(1)
    child.kill(getattr(signal, signame))
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    # The approver's queue loses it at once: nobody is left to run it.
    assert _state_soon(alice, request_id, "cancelled") == "cancelled"
    pending = asyncio.run(bob.call("approvals.list", {"scope": "review", "state": "pending"}))
    assert request_id not in [r["id"] for r in pending]
    assert not proof.exists()
