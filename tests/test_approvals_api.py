"""Approvals end to end through a real broker process: requests from `exec`, decisions over the
hoop-api, the rules of separation of duties, expiry, exactly-once runs, push and restarts.

Requesters and approvers are separate real users (alice asks; bob and dave approve; carol is
an engineer outside the approver groups), logged in with the real `hoopctl login`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoopctl.errors import ApiCallError
from tests.fixtures import approvals
from tests.fixtures.approvals import World, approvals_world
from tests.helpers import BrokerProcess
from tests.test_approvals_helpers import Person, next_event, shell_target, wait_for_request

REQUEST_ID = re.compile(r"request ([0-9a-f]{10}) ")


def sqlite_target(path: Path) -> str:
    return f"""
[[targets]]
name = "lite"
type = "sqlite"
path = "{path}"
allowed_groups = ["dba"]
policy = "sql"
access_approvers = ["dba-leads"]
"""


@pytest.fixture(scope="module")
def lite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("lite") / "lite.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text)")
        conn.execute("INSERT INTO accounts VALUES (1, 'ann@example.com'), (2, 'bo@example.com')")
    return db


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, lite_db: Path) -> Iterator[World]:
    with approvals_world(
        tmp_path_factory.mktemp("approvals"),
        targets=shell_target("shell2") + sqlite_target(lite_db),
        people=("alice", "bob", "dave", "carol"),
    ) as made:
        yield made


broker, alice, bob, dave, carol = (
    approvals.broker,
    approvals.alice,
    approvals.bob,
    approvals.dave,
    approvals.carol,
)


def exec_command(*words: str) -> str:
    return shlex.join(["exec", *words])


async def ask(person: Person, target: str, *argv: str, flags: tuple[str, ...] = ()) -> str:
    """PERSON asks for ARGV on TARGET with --no-wait; the request id."""
    ran = await person.run(exec_command("--no-wait", *flags, target, "--", *argv))
    assert ran.status == 4, ran
    match = REQUEST_ID.search(ran.stderr)
    assert match, ran.stderr
    assert f"once approved run: hoopctl exec {target} --request {match.group(1)}" in ran.stderr
    return match.group(1)


async def refused(person: Person, method: str, params: dict[str, Any]) -> ApiCallError:
    with pytest.raises(ApiCallError) as caught:
        await person.call(method, params)
    return caught.value


def events_of(broker: BrokerProcess, request_id: str) -> list[dict[str, Any]]:
    return [
        event
        for event in broker.audit_events()
        if event["type"].startswith("approval.") and event["details"].get("request") == request_id
    ]


# -- separation of duties ---------------------------------------------------------------------


async def test_self_approval_is_refused(bob: Person, target_dir: Path) -> None:
    request_id = await ask(bob, "shell", "touch", str(target_dir / "mine"))
    for decision in ("approve", "deny"):
        error = await refused(bob, "approvals.decide", {"id": request_id, "decision": decision})
        assert error.code == "forbidden"
        assert str(error) == "you cannot approve your own request"
    record = await bob.call("approvals.get", {"id": request_id})
    assert record["state"] == "pending" and record["decisions"] == []


async def test_approval_by_a_non_member_is_refused(
    alice: Person, carol: Person, target_dir: Path
) -> None:
    request_id = await ask(alice, "shell", "touch", str(target_dir / "x"))
    error = await refused(carol, "approvals.decide", {"id": request_id, "decision": "approve"})
    # The answer is the one for a request that does not exist: it names no approver group.
    unknown = await refused(carol, "approvals.decide", {"id": "ar_nosuch", "decision": "approve"})
    assert error.code == unknown.code == "not_found"
    assert str(error).replace(request_id, "ID") == str(unknown).replace("ar_nosuch", "ID")
    assert "approvers" not in str(error)
    # Nor may carol see it, or find it in her queue.
    assert (await refused(carol, "approvals.get", {"id": request_id})).code == "not_found"
    assert request_id not in [r["id"] for r in await carol.call("approvals.list", {})]
    assert (await alice.call("approvals.get", {"id": request_id}))["state"] == "pending"


async def test_second_decision_by_the_same_approver_is_refused(
    alice: Person, bob: Person, dave: Person, target_dir: Path
) -> None:
    # The two-person rule: bob's second approval must not count as the second person's.
    request_id = await ask(alice, "shell", "mkdir", str(target_dir / "two"))
    first = await bob.call("approvals.decide", {"id": request_id, "decision": "approve"})
    assert first["state"] == "pending" and first["approvals_needed"] == 2
    for decision in ("approve", "deny"):
        error = await refused(bob, "approvals.decide", {"id": request_id, "decision": decision})
        assert (error.code, str(error)) == ("conflict", "you already decided on this request")
    second = await dave.call(
        "approvals.decide", {"id": request_id, "decision": "approve", "comment": "second pair"}
    )
    assert second["state"] == "approved"
    assert [d["approver"] for d in second["decisions"]] == ["bob", "dave"]
    late = await refused(dave, "approvals.decide", {"id": request_id, "decision": "deny"})
    assert late.code == "conflict"


async def test_one_deny_denies_and_the_requester_sees_who_and_why(
    alice: Person, bob: Person, dave: Person, target_dir: Path
) -> None:
    request_id = await ask(alice, "shell", "mkdir", str(target_dir / "never"))
    await bob.call("approvals.decide", {"id": request_id, "decision": "approve"})
    denied = await dave.call(
        "approvals.decide", {"id": request_id, "decision": "deny", "comment": "not today"}
    )
    assert denied["state"] == "denied"
    ran = await alice.run(exec_command("--request", request_id, "shell"))
    assert ran.status == 3
    assert f"request {request_id} was denied by dave: not today" in ran.stderr
    assert not (target_dir / "never").exists()


async def test_approval_after_expiry_is_refused(
    alice: Person, bob: Person, broker: BrokerProcess
) -> None:
    request_id = await ask(alice, "shell", "hostname")  # rule short-lived: timeout 2s
    await asyncio.sleep(2.5)
    error = await refused(bob, "approvals.decide", {"id": request_id, "decision": "approve"})
    assert error.code == "expired" and str(error).startswith("request expired at ")
    record = await alice.call("approvals.get", {"id": request_id})
    assert record["state"] == "expired" and record["decisions"] == []
    ran = await alice.run(exec_command("--request", request_id, "shell"))
    assert ran.status == 4 and f"request {request_id} expired at" in ran.stderr
    expired = [e for e in events_of(broker, request_id) if e["type"] == "approval.expired"]
    assert len(expired) == 1 and expired[0]["details"]["previous_state"] == "pending"


async def test_a_waiting_exec_sees_expiry_as_exit_4(alice: Person) -> None:
    ran = await alice.run(exec_command("--wait", "30", "shell", "--", "hostname"))
    assert ran.status == 4
    assert re.search(r"hoop: request [0-9a-f]{10} expired", ran.stderr), ran.stderr


async def test_requester_cancels_and_only_the_requester_may(
    alice: Person, bob: Person, target_dir: Path
) -> None:
    request_id = await ask(alice, "shell", "touch", str(target_dir / "cancelled"))
    error = await refused(bob, "approvals.cancel", {"id": request_id})
    assert (error.code, str(error)) == ("forbidden", "only the requester may cancel a request")
    cancelled = await alice.call("approvals.cancel", {"id": request_id})
    assert cancelled["state"] == "cancelled"
    error = await refused(bob, "approvals.decide", {"id": request_id, "decision": "approve"})
    assert (error.code, str(error)) == ("conflict", "request is cancelled")


# -- binding and exactly once -----------------------------------------------------------------


async def test_an_approved_request_runs_exactly_once(
    alice: Person, bob: Person, broker: BrokerProcess, target_dir: Path
) -> None:
    log = target_dir / "once"
    request_id = await ask(alice, "shell", "touch", str(log))
    await bob.call("approvals.decide", {"id": request_id, "decision": "approve", "comment": "ok"})
    first, second = await asyncio.gather(
        alice.run(exec_command("--request", request_id, "shell")),
        alice.run(exec_command("--request", request_id, "shell")),
    )
    assert sorted([first.status, second.status]) == [0, 4], (first, second)
    loser = first if first.status == 4 else second
    assert f"request {request_id} was already executed at" in loser.stderr
    again = await alice.run(exec_command("--request", request_id, "shell"))
    assert again.status == 4 and "already executed" in again.stderr
    record = await alice.call("approvals.get", {"id": request_id})
    assert record["state"] == "executed" and record["executed_at"]
    executed = [e for e in events_of(broker, request_id) if e["type"] == "approval.executed"]
    assert len(executed) == 1 and executed[0]["actor"] == "alice"
    assert executed[0]["details"]["approvers"] == ["bob"]
    commands = [
        e
        for e in broker.audit_events("command")
        if e["details"]["command"] == f"touch {log}" and e.get("session") == executed[0]["session"]
    ]
    assert commands and commands[0]["details"]["approver"] == "bob"


async def test_a_different_command_or_target_under_an_approved_id_is_refused(
    alice: Person, bob: Person, carol: Person, target_dir: Path
) -> None:
    approved, other = target_dir / "approved", target_dir / "other"
    request_id = await ask(alice, "shell", "touch", str(approved))
    await bob.call("approvals.decide", {"id": request_id, "decision": "approve"})
    for command, fragment in (
        (("--", "touch", str(other)), "does not match the approved command"),
        (("--", "touch", str(approved), str(other)), "does not match the approved command"),
        (("--", "touch", f"{approved} "), "does not match the approved command"),
    ):
        ran = await alice.run(exec_command("--request", request_id, "shell", *command))
        assert ran.status == 4 and fragment in ran.stderr, ran
    ran = await alice.run(exec_command("--request", request_id, "shell2"))
    assert ran.status == 4 and "is for target shell, not shell2" in ran.stderr
    ran = await carol.run(exec_command("--request", request_id, "shell"))
    assert ran.status == 4 and f"request {request_id} is not yours" in ran.stderr
    assert not other.exists() and not approved.exists()
    # None of the refusals used the approval up: the exact command still runs, once.
    ran = await alice.run(
        exec_command("--request", request_id, "shell", "--", "touch", str(approved))
    )
    assert ran.status == 0, ran
    assert approved.exists() and not other.exists()


async def test_request_errors_have_their_exit_codes(alice: Person, target_dir: Path) -> None:
    ran = await alice.run(exec_command("--request", "0123456789", "shell"))
    assert ran.status == 2 and "no request 0123456789" in ran.stderr
    request_id = await ask(alice, "shell", "touch", str(target_dir / "pending"))
    ran = await alice.run(exec_command("--request", request_id, "shell"))
    assert ran.status == 4
    assert f"request {request_id} is still pending: not approved yet by approvers" in ran.stderr


async def test_escape_sequences_and_a_fake_newline_are_stored_and_returned_verbatim(
    alice: Person, bob: Person, dave: Person, broker: BrokerProcess
) -> None:
    hidden = "x\x1b[2K\r\x1b[1A$ touch harmless\nreally-\x07\x9b31m\u202edone"
    request_id = await ask(alice, "shell", "touch", hidden)
    expected = shlex.join(["touch", hidden])
    for person in (alice, bob):
        record = await person.call("approvals.get", {"id": request_id})
        assert record["command"] == expected
        # Control characters make the line unknown: on_unknown = review, by access_approvers.
        assert record["rule"] is None and record["approver_groups"] == ["approvers"]
    listed = [
        r for r in await dave.call("approvals.list", {"state": "pending"}) if r["id"] == request_id
    ]
    assert listed[0]["command"] == expected
    # The same holds for SQL on stdin.
    sql = "DELETE FROM accounts -- \x1b[1A\x1b[2K\rSELECT 1;\n\x1b]0;title\x07"
    ran = await alice.run(exec_command("--no-wait", "lite"), stdin=sql)
    assert ran.status == 4, ran
    sql_id = REQUEST_ID.search(ran.stderr).group(1)  # type: ignore[union-attr]
    record = await bob.call("approvals.get", {"id": sql_id})
    assert record["command"] == sql and record["approver_groups"] == ["dba-leads"]
    event = next(e for e in events_of(broker, sql_id) if e["type"] == "approval.requested")
    assert event["details"]["command"] == sql


async def test_sql_request_runs_once_with_the_approved_text(
    alice: Person, bob: Person, lite_db: Path
) -> None:
    sql = "UPDATE accounts SET email = 'x@example.com'"
    ran = await alice.run(exec_command("--no-wait", "lite"), stdin=sql)
    request_id = REQUEST_ID.search(ran.stderr).group(1)  # type: ignore[union-attr]
    await bob.call("approvals.decide", {"id": request_id, "decision": "approve"})
    other = await alice.run(
        exec_command("--request", request_id, "lite"), stdin="DELETE FROM accounts"
    )
    assert other.status == 4 and "does not match the approved command" in other.stderr
    ran = await alice.run(exec_command("--request", request_id, "lite"))  # no input: as approved
    assert ran.status == 0, ran
    with sqlite3.connect(lite_db) as conn:
        emails = {row[0] for row in conn.execute("SELECT email FROM accounts")}
    assert emails == {"x@example.com"}
    again = await alice.run(exec_command("--request", request_id, "lite"), stdin=sql)
    assert again.status == 4 and "already executed" in again.stderr


async def test_a_required_reason_is_asked_for(alice: Person, bob: Person) -> None:
    ran = await alice.run(exec_command("--no-wait", "shell", "--", "wall", "hello"))
    assert ran.status == 2
    assert "rule needs-a-reason requires a reason: run it again with --reason TEXT" in ran.stderr
    request_id = await ask(
        alice, "shell", "wall", "hello", flags=("--reason", "INC-1: tell everyone")
    )
    record = await bob.call("approvals.get", {"id": request_id})
    assert record["reason"] == "INC-1: tell everyone"


# -- push ---------------------------------------------------------------------------------------


async def test_watch_sees_a_new_request_and_a_waiting_exec_sees_the_decision(
    alice: Person, bob: Person, target_dir: Path
) -> None:
    proof = target_dir / "pushed"
    async with await bob.api() as api:
        stream = api.stream("approvals.watch")
        snapshot = await next_event(stream)
        assert snapshot["type"] == "snapshot"
        waiting = asyncio.create_task(
            alice.run(exec_command("--wait", "60", "shell", "--", "touch", str(proof)))
        )
        event = await next_event(stream, 20)
        while event["request"]["command"] != f"touch {proof}":
            event = await next_event(stream, 20)
        assert event["type"] == "requested" and event["request"]["requester"] == "alice"
        assert not waiting.done()
        assert not proof.exists()
        await bob.call(
            "approvals.decide",
            {"id": event["request"]["id"], "decision": "approve", "comment": "go"},
        )
        ran = await asyncio.wait_for(waiting, 30)
        update = await next_event(stream, 20)
        while update["request"]["id"] != event["request"]["id"]:
            update = await next_event(stream, 20)
        assert update["type"] == "updated"
        await stream.aclose()
    assert ran.status == 0, ran
    assert proof.exists()
    lines = ran.stderr.splitlines()
    assert lines[0].startswith("hoop: approval required from approvers (rule ")
    assert lines[1].startswith(
        f"hoop: waiting for approval {event['request']['id']} from approvers ("
    )
    assert "hoop: approved by bob: go" in lines


async def test_wait_stream_follows_one_request_until_decided(
    alice: Person, bob: Person, target_dir: Path
) -> None:
    request_id = await ask(alice, "shell", "touch", str(target_dir / "followed"))
    async with await alice.api() as api:
        stream = api.stream("approvals.wait", {"id": request_id})
        first = await next_event(stream)
        assert first["request"]["state"] == "pending"
        await bob.call("approvals.decide", {"id": request_id, "decision": "deny", "comment": "no"})
        last = await next_event(stream)
        assert last["request"]["state"] == "denied"
        with pytest.raises(StopAsyncIteration):
            await next_event(stream)


@pytest.mark.parametrize("how", ["close", "signal"])
async def test_ctrl_c_while_exec_waits_cancels_the_request(
    alice: Person, bob: Person, broker: BrokerProcess, target_dir: Path, how: str
) -> None:
    proof = target_dir / f"cancel-{how}"
    conn = await alice.connect()
    process = await conn.create_process(
        exec_command("shell", "--", "touch", str(proof)), encoding=None
    )
    process.stdin.write_eof()
    record = await wait_for_request(
        bob, lambda r: r["command"] == f"touch {proof}" and r["state"] == "pending"
    )
    if how == "signal":
        process.send_signal("INT")
        completed = await asyncio.wait_for(process.wait(check=False), 20)
        assert completed.exit_status == 4
        assert f"request {record['id']} cancelled" in completed.stderr.decode()
    else:
        process.close()
    conn.close()
    deadline = time.monotonic() + 20
    while (await bob.call("approvals.get", {"id": record["id"]}))["state"] != "cancelled":
        assert time.monotonic() < deadline, "the request was not cancelled"
        await asyncio.sleep(0.1)
    cancelled = [e for e in events_of(broker, record["id"]) if e["type"] == "approval.cancelled"]
    assert cancelled and cancelled[0]["actor"] == "alice"
    assert not proof.exists()


# -- load -----------------------------------------------------------------------------------------


async def test_fifty_concurrent_requests_decided_by_two_approvers(
    alice: Person, bob: Person, dave: Person, target_dir: Path
) -> None:
    """Bounded: 50 requests, at most 10 connections at a time per user, all on loopback."""
    limit = asyncio.Semaphore(10)

    async def bounded(work: Any) -> Any:
        async with limit:
            return await work

    dirs = [target_dir / f"d{i:02d}" for i in range(50)]
    ids = await asyncio.gather(*(bounded(ask(alice, "shell", "mkdir", str(d))) for d in dirs))
    assert len(set(ids)) == 50

    async def decide(person: Person, request_id: str) -> str:
        try:
            record = await person.call(
                "approvals.decide", {"id": request_id, "decision": "approve"}
            )
        except ApiCallError as exc:
            return exc.code
        return "ok" if record["id"] == request_id else "wrong"

    # Both approvers at once, and bob twice on the first ten: only one of bob's may count.
    work = [decide(p, i) for i in ids for p in (bob, dave)] + [decide(bob, i) for i in ids[:10]]
    results = await asyncio.gather(*(bounded(w) for w in work))
    assert results.count("ok") == 100 and results.count("conflict") == 10, Counter(results)
    records = {r["id"]: r for r in await alice.call("approvals.list", {"scope": "mine"})}
    for request_id in ids:
        record = records[request_id]
        assert record["state"] == "approved"
        assert sorted(d["approver"] for d in record["decisions"]) == ["bob", "dave"]
    # Run one after the other: what is under test above is the concurrent deciding.
    ran = [await alice.run(exec_command("--request", i, "shell")) for i in ids]
    assert [r.status for r in ran] == [0] * 50, [r for r in ran if r.status]
    assert all(d.is_dir() for d in dirs)


# -- the store is the source of truth ----------------------------------------------------------


async def test_pending_request_survives_a_restart_and_runs_with_request(target_dir: Path) -> None:
    with approvals_world(target_dir, name="restart") as restarted:
        broker, alice, bob = restarted.broker, restarted.alice, restarted.bob
        proof = target_dir / "after-restart"
        request_id = await ask(alice, "shell", "touch", str(proof))
        short_id = await ask(alice, "shell", "hostname")  # expires while the broker is down
        broker.stop()
        await asyncio.sleep(2.5)
        broker.start()
        record = await bob.call("approvals.get", {"id": request_id})
        assert record["state"] == "pending"
        assert (await bob.call("approvals.get", {"id": short_id}))["state"] == "expired"
        await bob.call("approvals.decide", {"id": request_id, "decision": "approve"})
        ran = await alice.run(exec_command("--request", request_id, "shell"))
        assert ran.status == 0, ran
        assert proof.exists()
        types = [e["type"] for e in events_of(broker, request_id)]
        assert types == ["approval.requested", "approval.approved", "approval.executed"]


async def test_every_step_is_an_audit_event_with_who_and_when(
    alice: Person, bob: Person, broker: BrokerProcess, target_dir: Path
) -> None:
    approved = await ask(alice, "shell", "touch", str(target_dir / "a"))
    denied = await ask(alice, "shell", "touch", str(target_dir / "b"))
    cancelled = await ask(alice, "shell", "touch", str(target_dir / "c"))
    expired = await ask(alice, "shell", "hostname")
    await bob.call("approvals.decide", {"id": approved, "decision": "approve", "comment": "ok"})
    await bob.call("approvals.decide", {"id": denied, "decision": "deny", "comment": "no"})
    await alice.call("approvals.cancel", {"id": cancelled})
    assert (await alice.run(exec_command("--request", approved, "shell"))).status == 0
    await asyncio.sleep(2.5)
    assert (await alice.call("approvals.get", {"id": expired}))["state"] == "expired"
    expected = {
        approved: [
            ("approval.requested", "alice"),
            ("approval.approved", "bob"),
            ("approval.executed", "alice"),
        ],
        denied: [("approval.requested", "alice"), ("approval.denied", "bob")],
        cancelled: [("approval.requested", "alice"), ("approval.cancelled", "alice")],
        expired: [("approval.requested", "alice"), ("approval.expired", None)],
    }
    for request_id, steps in expected.items():
        events = events_of(broker, request_id)
        assert [(e["type"], e.get("actor")) for e in events] == steps
        for event in events:
            assert event["time"] > 0 and event["target"] == "shell"
            assert event["details"]["kind"] == "command"
            assert event["details"]["command"].startswith(("touch ", "hostname"))
    decision = events_of(broker, approved)[1]["details"]
    assert (decision["decision"], decision["comment"]) == ("approve", "ok")
    # The store holds the same events (hash-chained by the audit log).
    with sqlite3.connect(broker.data_dir / "hoop.db") as conn:
        rows = conn.execute(
            "SELECT event FROM audit_events WHERE type LIKE 'approval.%'"
        ).fetchall()
    stored = [json.loads(row[0]) for row in rows]
    assert any(e["details"].get("request") == approved for e in stored)
