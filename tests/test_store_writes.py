"""Writes on the store's shared SQLite connection do not take each other with them.

SQLite's transaction belongs to the connection, not to the coroutine that began it. The store,
the approval gate, the certificate registry and the search index all write on one connection;
a write that failed used to roll back whatever another module had executed and not committed
yet. Under load that lost an approver's decision: recorded, audited as approved, and gone, so
the requester waited forever (issue 16, the lost approval; seen in a CI run of
tests/test_approvals_burst.py). These tests make the interleaving happen on purpose, on the
real store file: one module's write is paused between its statement and its commit while
another module's write fails.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from broker.approvals.store import ApprovalStore
from broker.store import Store

PAUSE = 0.3


def pause_first_commit(store: Store) -> asyncio.Event:
    """The next COMMIT on the shared connection waits until the returned event is set."""
    db: Any = store.db
    original: Callable[[], Awaitable[None]] = db.commit
    release = asyncio.Event()
    paused = False

    async def commit() -> None:
        nonlocal paused
        if not paused:
            paused = True
            await release.wait()
        await original()

    db.commit = commit
    return release


async def failing_session_write(store: Store) -> None:
    """A write of the store's own that fails (a trigger refuses it): it rolls back."""
    await store.db.execute(
        "CREATE TRIGGER IF NOT EXISTS refuse_end BEFORE UPDATE ON sessions "
        "BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
    )
    await store.db.commit()


async def new_request(approvals: ApprovalStore, now: float) -> str:
    return await approvals.insert(
        {
            "kind": "command",
            "state": "pending",
            "requester": "alice",
            "requester_groups": json.dumps(["engineers"]),
            "target": "shell",
            "session": "s-1",
            "bound_session": None,
            "subject": "command",
            "command": "touch /tmp/x",
            "command_sha256": "0" * 64,
            "rule": "r",
            "policy": json.dumps({}),
            "reason": None,
            "approver_groups": json.dumps(["approvers"]),
            "approvals_needed": 1,
            "screen": json.dumps([]),
            "timeout": 600,
            "created_at": now,
            "expires_at": now + 600,
            "requester_kind": "person",
        }
    )


async def test_a_failing_write_does_not_roll_back_a_decision_in_flight(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        approvals = ApprovalStore(store.db)
        await approvals.create_tables()
        now = time.time()
        request_id = await new_request(approvals, now)
        await store.create_session(
            session_id="s-1",
            user="alice",
            target="shell",
            kind="exec",
            started_at=now,
            recording=None,
            reason=None,
            command=None,
        )
        await failing_session_write(store)

        release = pause_first_commit(store)
        decided = asyncio.ensure_future(
            approvals.decide(request_id, "bob", "approve", None, time.time())
        )
        await asyncio.sleep(PAUSE)  # the decision is executed; its commit waits
        ending = asyncio.ensure_future(
            store.end_session("s-1", state="closed", ended_at=time.time(), exit_status=0)
        )
        await asyncio.sleep(PAUSE)  # the failing write runs now, unless it waits its turn
        release.set()
        assert await decided is True
        failed = await asyncio.gather(ending, return_exceptions=True)
        assert failed and isinstance(failed[0], Exception)  # it failed, on its own
    finally:
        await store.close()

    # What the decision wrote is on disk: read with a connection of its own.
    with sqlite3.connect(tmp_path / "hoop.db") as conn:
        decisions = conn.execute(
            "SELECT approver, decision FROM approval_decisions WHERE request = ?", (request_id,)
        ).fetchall()
        (state,) = conn.execute(
            "SELECT state FROM approval_requests WHERE id = ?", (request_id,)
        ).fetchone()
    assert decisions == [("bob", "approve")]
    assert state == "approved"


async def test_the_approval_change_feed_keeps_only_recent_changes(tmp_path: Path) -> None:
    """Triggers write the feed in every mode; what is older than CHANGES_KEPT goes."""
    from broker.approvals.store import CHANGES_KEPT

    store = await Store.open(tmp_path)
    try:
        approvals = ApprovalStore(store.db)
        await approvals.create_tables()
        request_id = await new_request(approvals, time.time())
        assert [request for _, request in await approvals.changes_after(0)] == [request_id]
        await approvals.forget_changes(time.time() - CHANGES_KEPT)
        assert len(await approvals.changes_after(0)) == 1  # recent: kept
        await approvals.forget_changes(time.time() + 1)
        assert await approvals.changes_after(0) == []
    finally:
        await store.close()
