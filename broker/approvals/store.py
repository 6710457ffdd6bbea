"""Approval requests and decisions in the broker's SQLite store.

Every state change is one SQL statement, so it is atomic on its own even though the store's
connection is shared with the rest of the broker: a decision is an INSERT guarded by the
request's state and expiry (a trigger moves the request to approved or denied in the same
statement), and running an approved command is an UPDATE from approved to executed that
only one caller can win.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from broker.database import dialect, json_strings
from broker.errors import StoreError
from broker.sessions.approvals import ApprovalRecord, Decided, StandingApproval
from broker.store import write_lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('command', 'access')),
    state TEXT NOT NULL,
    requester TEXT NOT NULL,
    requester_groups TEXT NOT NULL,
    target TEXT NOT NULL,
    session TEXT,
    bound_session TEXT,
    subject TEXT NOT NULL,
    command TEXT,
    command_sha256 TEXT,
    rule TEXT,
    policy TEXT NOT NULL,
    reason TEXT,
    approver_groups TEXT NOT NULL,
    approvals_needed INTEGER NOT NULL,
    screen TEXT NOT NULL,
    timeout INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_at REAL,
    executed_at REAL,
    duration INTEGER,
    grant_until REAL,
    requester_kind TEXT NOT NULL DEFAULT 'person'
);
CREATE INDEX IF NOT EXISTS approval_requests_open ON approval_requests(state, expires_at);
CREATE INDEX IF NOT EXISTS approval_requests_requester
    ON approval_requests(requester, target, kind, state);
CREATE INDEX IF NOT EXISTS approval_requests_created ON approval_requests(created_at);
CREATE TABLE IF NOT EXISTS approval_decisions (
    request TEXT NOT NULL REFERENCES approval_requests(id),
    approver TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    comment TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (request, approver)
);
-- A decision moves its request on in the same statement: any deny denies; enough approvals
-- approve. An approved command may run for `timeout` more seconds; a grant lasts `duration`.
CREATE TRIGGER IF NOT EXISTS approval_decided AFTER INSERT ON approval_decisions
BEGIN
    UPDATE approval_requests SET state = CASE
            WHEN NEW.decision = 'deny' THEN 'denied'
            WHEN (SELECT count(*) FROM approval_decisions
                  WHERE request = NEW.request AND decision = 'approve') >= approvals_needed
                THEN 'approved'
            ELSE state END
        WHERE id = NEW.request AND state = 'pending';
    UPDATE approval_requests SET
            decided_at = NEW.at,
            grant_until = CASE WHEN state = 'approved' AND kind = 'access'
                THEN NEW.at + duration ELSE NULL END,
            expires_at = CASE WHEN state = 'approved' AND kind = 'access' THEN NEW.at + duration
                WHEN state = 'approved' THEN NEW.at + timeout
                ELSE expires_at END
        WHERE id = NEW.request AND state IN ('approved', 'denied') AND decided_at IS NULL;
END;
CREATE TABLE IF NOT EXISTS standing_approvals (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    grp TEXT NOT NULL,
    subject TEXT NOT NULL,
    pattern TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_groups TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    revoked_by TEXT,
    uses INTEGER NOT NULL DEFAULT 0,
    last_used_at REAL
);
CREATE INDEX IF NOT EXISTS standing_approvals_target ON standing_approvals(target, expires_at);
-- Every change to a request, by any process sharing the store (the workers of `serve
-- --workers N`): each worker follows this feed and wakes its own waiters and watchers.
CREATE TABLE IF NOT EXISTS approval_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS approval_change_inserted AFTER INSERT ON approval_requests
BEGIN
    INSERT INTO approval_changes(request, at)
        VALUES (NEW.id, (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TRIGGER IF NOT EXISTS approval_change_updated AFTER UPDATE ON approval_requests
BEGIN
    INSERT INTO approval_changes(request, at)
        VALUES (NEW.id, (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TRIGGER IF NOT EXISTS approval_change_decided AFTER INSERT ON approval_decisions
BEGIN
    INSERT INTO approval_changes(request, at)
        VALUES (NEW.request, (julianday('now') - 2440587.5) * 86400.0);
END;
"""

# The same in PostgreSQL ([store] url): the triggers are PL/pgSQL functions, and each change
# is also a NOTIFY on hoop_approvals, which wakes every node's feed reader at once.
_SCHEMA_PG = """
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('command', 'access')),
    state TEXT NOT NULL,
    requester TEXT NOT NULL,
    requester_groups TEXT NOT NULL,
    target TEXT NOT NULL,
    session TEXT,
    bound_session TEXT,
    subject TEXT NOT NULL,
    command TEXT,
    command_sha256 TEXT,
    rule TEXT,
    policy TEXT NOT NULL,
    reason TEXT,
    approver_groups TEXT NOT NULL,
    approvals_needed INTEGER NOT NULL,
    screen TEXT NOT NULL,
    timeout INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    decided_at DOUBLE PRECISION,
    executed_at DOUBLE PRECISION,
    duration INTEGER,
    grant_until DOUBLE PRECISION,
    requester_kind TEXT NOT NULL DEFAULT 'person'
);
CREATE INDEX IF NOT EXISTS approval_requests_open ON approval_requests(state, expires_at);
CREATE INDEX IF NOT EXISTS approval_requests_requester
    ON approval_requests(requester, target, kind, state);
CREATE INDEX IF NOT EXISTS approval_requests_created ON approval_requests(created_at);
CREATE TABLE IF NOT EXISTS approval_decisions (
    request TEXT NOT NULL REFERENCES approval_requests(id),
    approver TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    comment TEXT,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request, approver)
);
CREATE TABLE IF NOT EXISTS standing_approvals (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    grp TEXT NOT NULL,
    subject TEXT NOT NULL,
    pattern TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_groups TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    revoked_by TEXT,
    uses INTEGER NOT NULL DEFAULT 0,
    last_used_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS standing_approvals_target ON standing_approvals(target, expires_at);
CREATE TABLE IF NOT EXISTS approval_changes (
    seq BIGSERIAL PRIMARY KEY,
    request TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE OR REPLACE FUNCTION approval_decided() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE approval_requests SET state = CASE
            WHEN NEW.decision = 'deny' THEN 'denied'
            WHEN (SELECT count(*) FROM approval_decisions
                  WHERE request = NEW.request AND decision = 'approve') >= approvals_needed
                THEN 'approved'
            ELSE state END
        WHERE id = NEW.request AND state = 'pending';
    UPDATE approval_requests SET
            decided_at = NEW.at,
            grant_until = CASE WHEN state = 'approved' AND kind = 'access'
                THEN NEW.at + duration ELSE NULL END,
            expires_at = CASE WHEN state = 'approved' AND kind = 'access' THEN NEW.at + duration
                WHEN state = 'approved' THEN NEW.at + timeout
                ELSE expires_at END
        WHERE id = NEW.request AND state IN ('approved', 'denied') AND decided_at IS NULL;
    INSERT INTO approval_changes(request, at)
        VALUES (NEW.request, extract(epoch FROM clock_timestamp()));
    PERFORM pg_notify('hoop_approvals', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION approval_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO approval_changes(request, at)
        VALUES (NEW.id, extract(epoch FROM clock_timestamp()));
    PERFORM pg_notify('hoop_approvals', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS approval_decided ON approval_decisions;
CREATE TRIGGER approval_decided AFTER INSERT ON approval_decisions
    FOR EACH ROW EXECUTE FUNCTION approval_decided();
DROP TRIGGER IF EXISTS approval_change ON approval_requests;
CREATE TRIGGER approval_change AFTER INSERT OR UPDATE ON approval_requests
    FOR EACH ROW EXECUTE FUNCTION approval_changed();
"""

# How long the change feed keeps a change (a worker reads it within a fraction of a second).
CHANGES_KEPT = 600.0

_COLUMNS = (
    "id, kind, state, requester, requester_groups, target, session, bound_session, subject, "
    "command, command_sha256, rule, policy, reason, approver_groups, approvals_needed, screen, "
    "timeout, created_at, expires_at, decided_at, executed_at, duration, grant_until, "
    "requester_kind"
)


_STANDING_COLUMNS = (
    "id, target, grp, subject, pattern, granted_by, granted_groups, comment, created_at, "
    "expires_at, revoked_at, revoked_by, uses, last_used_at"
)


def _standing(row: Sequence[Any]) -> StandingApproval:
    values = list(row)
    values[6] = tuple(json.loads(values[6]))
    return StandingApproval(*values)


def _record(row: Sequence[Any], decisions: Iterable[Decided]) -> ApprovalRecord:
    (
        request_id,
        kind,
        state,
        requester,
        requester_groups,
        target,
        session,
        bound_session,
        subject,
        command,
        command_sha256,
        rule,
        policy,
        reason,
        approver_groups,
        approvals_needed,
        screen,
        timeout,
        created_at,
        expires_at,
        decided_at,
        executed_at,
        duration,
        grant_until,
        requester_kind,
    ) = row
    return ApprovalRecord(
        id=request_id,
        kind=kind,
        state=state,
        requester=requester,
        requester_groups=tuple(json.loads(requester_groups)),
        target=target,
        session=session,
        command=command,
        command_sha256=command_sha256,
        rule=rule,
        reason=reason,
        approver_groups=tuple(json.loads(approver_groups)),
        approvals_needed=approvals_needed,
        created_at=created_at,
        expires_at=expires_at,
        decisions=tuple(sorted(decisions, key=lambda d: d.at)),
        screen=tuple(json.loads(screen)),
        decided_at=decided_at,
        executed_at=executed_at,
        duration=duration,
        grant_until=grant_until,
        requester_kind=requester_kind,
        bound_session=bound_session,
        subject=subject,
        timeout=timeout,
        extra={"policy": json.loads(policy)},
    )


# A write that finds SQLite's write lock taken by the audit writer's connection is retried.
BUSY_RETRIES = 100


def _busy(exc: sqlite3.OperationalError) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith("SQLITE_BUSY") or "locked" in str(exc)


def new_request_id() -> str:
    """Ten hex digits: short enough to type after --request, too many to guess."""
    return secrets.token_hex(5)


class AlreadyDecided(Exception):
    """This approver has decided on this request before."""


class ApprovalStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def create_tables(self) -> None:
        try:
            if dialect(self._db) == "postgres":
                async with write_lock(self._db):
                    # One node at a time (the store's write lock): DROP/CREATE TRIGGER races.
                    await self._db.execute("BEGIN IMMEDIATE")
                    await self._db.executescript(_SCHEMA_PG)
                    await self._db.commit()
                return
            await self._db.executescript(_SCHEMA)
            async with self._db.execute("PRAGMA table_info(approval_requests)") as cursor:
                known = {row[1] for row in await cursor.fetchall()}
            if "requester_kind" not in known:  # a store from before agent identities
                await self._db.execute(
                    "ALTER TABLE approval_requests "
                    "ADD COLUMN requester_kind TEXT NOT NULL DEFAULT 'person'"
                )
            await self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the approval tables: {exc}") from None

    async def _change(self, sql: str, params: Sequence[Any]) -> int:
        """One statement and its commit; the number of rows it changed.

        Shielded: a caller cancelled half way must not leave the shared connection in a
        transaction that holds SQLite's write lock (the audit writer would stall behind it).
        """
        return await asyncio.shield(self._change_now(sql, params))

    async def _change_now(self, sql: str, params: Sequence[Any]) -> int:
        for attempt in range(BUSY_RETRIES):
            try:
                async with write_lock(self._db):
                    try:
                        cursor = await self._db.execute(sql, params)
                        changed = cursor.rowcount
                        await self._db.commit()
                        return changed
                    except sqlite3.IntegrityError:
                        await self._db.commit()  # end the implicit transaction; nothing written
                        raise
                    except sqlite3.OperationalError as exc:
                        if _busy(exc):
                            # The transaction could not get SQLite's write lock, so it holds
                            # no write: end it (dropping its stale snapshot) and try again.
                            # COMMIT, not ROLLBACK: a rollback could abort other modules' reads
                            # in flight.
                            with contextlib.suppress(sqlite3.Error):
                                await self._db.commit()
                        raise
            except sqlite3.IntegrityError:
                raise
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or attempt == BUSY_RETRIES - 1:
                    raise StoreError(f"store write failed: {exc}") from None
                await asyncio.sleep(random.uniform(0.005, 0.05))
            except sqlite3.ProgrammingError:
                raise  # the store was closed: the broker is stopping
            except sqlite3.Error as exc:
                raise StoreError(f"store write failed: {exc}") from None
        raise AssertionError("unreachable")

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # Executed and fetched in one step: a half-read SELECT left open on the shared
        # connection would make the next write there fail at once (SQLITE_BUSY).
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.ProgrammingError:
            raise  # the store was closed: the broker is stopping
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from None

    async def insert(self, fields: dict[str, Any]) -> str:
        """Store a new request; returns its id."""
        for _ in range(5):
            request_id = new_request_id()
            values = {**fields, "id": request_id}
            names = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            try:
                await self._change(
                    f"INSERT INTO approval_requests({names}) VALUES ({marks})",  # noqa: S608
                    list(values.values()),
                )
            except sqlite3.IntegrityError:
                continue  # the id was taken: draw another
            return request_id
        raise StoreError("could not allocate a request id")

    async def _decisions(self, ids: Sequence[str]) -> dict[str, list[Decided]]:
        found: dict[str, list[Decided]] = {request_id: [] for request_id in ids}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await self._rows(
                "SELECT request, approver, decision, comment, at FROM approval_decisions "  # noqa: S608
                f"WHERE request IN ({marks})",
                chunk,
            )
            for request, approver, decision, comment, at in rows:
                found[request].append(Decided(approver, decision, comment, at))
        return found

    async def _records(
        self, where: str, params: Sequence[Any], tail: str = ""
    ) -> list[ApprovalRecord]:
        rows = await self._rows(
            f"SELECT {_COLUMNS} FROM approval_requests WHERE {where} {tail}",  # noqa: S608
            params,
        )
        decisions = await self._decisions([row[0] for row in rows])
        return [_record(row, decisions[row[0]]) for row in rows]

    async def last_change(self) -> int:
        """The newest seq in the change feed (0 when it is empty)."""
        rows = await self._rows("SELECT COALESCE(MAX(seq), 0) FROM approval_changes")
        return int(rows[0][0])

    async def changes_after(self, seq: int, limit: int = 1000) -> list[tuple[int, str]]:
        """(seq, request id) of the changes after SEQ, oldest first."""
        rows = await self._rows(
            "SELECT seq, request FROM approval_changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [(int(row[0]), str(row[1])) for row in rows]

    async def forget_changes(self, before: float) -> int:
        return await self._change("DELETE FROM approval_changes WHERE at < ?", (before,))

    async def get(self, request_id: str) -> ApprovalRecord | None:
        records = await self._records("id = ?", (request_id,))
        return records[0] if records else None

    async def list(
        self, *, user: str, groups: Sequence[str], scope: str, state: str | None, limit: int
    ) -> list[ApprovalRecord]:
        """Requests USER may see, newest first.

        scope "review": those USER may decide (a member of an approver group, not the
        requester); "mine": USER's own; "all": both, and those USER decided on.
        """
        marks = ", ".join("?" for _ in groups) or "NULL"
        member = f"EXISTS (SELECT 1 FROM {json_strings(self._db, 'approver_groups')} WHERE value IN ({marks}))"  # noqa: S608
        if scope == "review":
            where, params = f"requester != ? AND {member}", [user, *groups]
        elif scope == "mine":
            where, params = "requester = ?", [user]
        else:
            decided = (
                "EXISTS (SELECT 1 FROM approval_decisions d "
                "WHERE d.request = approval_requests.id AND d.approver = ?)"
            )
            where, params = f"(requester = ? OR {member} OR {decided})", [user, *groups, user]
        if state:
            where += " AND state = ?"
            params.append(state)
        return await self._records(where, params, f"ORDER BY created_at DESC LIMIT {int(limit)}")

    async def access_requests(self, user: str) -> list[ApprovalRecord]:
        return await self._records(
            "kind = 'access' AND requester = ?", (user,), "ORDER BY created_at DESC LIMIT 500"
        )

    async def active_grant(self, user: str, target: str, now: float) -> ApprovalRecord | None:
        records = await self._records(
            "kind = 'access' AND requester = ? AND target = ? AND state = 'approved' "
            "AND grant_until > ?",
            (user, target, now),
            "ORDER BY grant_until DESC LIMIT 1",
        )
        return records[0] if records else None

    async def pending_access(self, user: str, target: str, now: float) -> ApprovalRecord | None:
        records = await self._records(
            "kind = 'access' AND requester = ? AND target = ? AND state = 'pending' "
            "AND expires_at > ?",
            (user, target, now),
            "ORDER BY created_at DESC LIMIT 1",
        )
        return records[0] if records else None

    async def decide(
        self, request_id: str, approver: str, decision: str, comment: str | None, now: float
    ) -> bool:
        """Record a decision if the request is pending and unexpired; False if it is not.

        Raises AlreadyDecided when APPROVER decided on it before.
        """
        try:
            changed = await self._change(
                "INSERT INTO approval_decisions(request, approver, decision, comment, at) "
                "SELECT id, ?, ?, ?, ? FROM approval_requests "
                "WHERE id = ? AND state = 'pending' AND expires_at > ?",
                (approver, decision, comment, now, request_id, now),
            )
        except sqlite3.IntegrityError:
            raise AlreadyDecided from None
        return changed == 1

    async def execute(self, request_id: str, command_sha256: str, now: float) -> bool:
        """approved -> executed, for exactly one caller; False if this caller lost or it no longer holds."""
        return (
            await self._change(
                "UPDATE approval_requests SET state = 'executed', executed_at = ? "
                "WHERE id = ? AND kind = 'command' AND state = 'approved' AND expires_at > ? "
                "AND command_sha256 = ?",
                (now, request_id, now, command_sha256),
            )
            == 1
        )

    async def cancel(self, request_id: str, requester: str, now: float) -> bool:
        return (
            await self._change(
                "UPDATE approval_requests SET state = 'cancelled', decided_at = ? "
                "WHERE id = ? AND requester = ? AND state IN ('pending', 'approved')",
                (now, request_id, requester),
            )
            == 1
        )

    async def due(self, now: float) -> list[tuple[str, str]]:
        """(id, state) of pending and approved requests whose time is up."""
        rows = await self._rows(
            "SELECT id, state FROM approval_requests "
            "WHERE state IN ('pending', 'approved') AND expires_at <= ?",
            (now,),
        )
        return [(row[0], row[1]) for row in rows]

    async def expire(self, request_id: str, state: str, now: float) -> bool:
        return (
            await self._change(
                "UPDATE approval_requests SET state = 'expired', "
                "decided_at = CASE WHEN state = 'pending' THEN expires_at ELSE decided_at END "
                "WHERE id = ? AND state = ? AND expires_at <= ?",
                (request_id, state, now),
            )
            == 1
        )

    async def next_expiry(self) -> float | None:
        rows = await self._rows(
            "SELECT min(expires_at) FROM approval_requests WHERE state IN ('pending', 'approved')"
        )
        return rows[0][0] if rows and rows[0][0] is not None else None

    async def identities(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every user who has logged in, with the groups of their latest login."""
        rows = await self._rows('SELECT "user", groups FROM identities')
        return [(row[0], tuple(json.loads(row[1]))) for row in rows]

    async def denied_like(self, record: ApprovalRecord, *, since: float) -> list[ApprovalRecord]:
        """Denied requests for the same command, target and requester as RECORD, since SINCE."""
        return await self._records(
            "kind = 'command' AND state = 'denied' AND requester = ? AND target = ? "
            "AND command = ? AND id != ? AND decided_at >= ?",
            (record.requester, record.target, record.command, record.id, since),
            "ORDER BY decided_at DESC LIMIT 10",
        )

    async def groups_of(self, user: str) -> tuple[str, ...]:
        """The groups of USER's latest login (none if they never logged in)."""
        rows = await self._rows('SELECT groups FROM identities WHERE "user" = ?', (user,))
        return tuple(json.loads(rows[0][0])) if rows else ()

    async def session_open(self, session_id: str) -> bool:
        rows = await self._rows("SELECT state FROM sessions WHERE id = ?", (session_id,))
        return bool(rows) and rows[0][0] == "open"

    # -- standing approvals ---------------------------------------------------------------
    async def insert_standing(self, fields: dict[str, Any]) -> str:
        """Store a new standing approval; returns its id ("sa-" and eight hex digits)."""
        for _ in range(5):
            standing_id = "sa-" + secrets.token_hex(4)
            values = {**fields, "id": standing_id}
            names = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            try:
                await self._change(
                    f"INSERT INTO standing_approvals({names}) VALUES ({marks})",  # noqa: S608
                    list(values.values()),
                )
            except sqlite3.IntegrityError:
                continue
            return standing_id
        raise StoreError("could not allocate a standing approval id")

    async def standing(self, standing_id: str) -> StandingApproval | None:
        rows = await self._rows(
            f"SELECT {_STANDING_COLUMNS} FROM standing_approvals WHERE id = ?",  # noqa: S608
            (standing_id,),
        )
        return _standing(rows[0]) if rows else None

    async def standing_list(
        self, *, target: str | None = None, active_at: float | None = None
    ) -> list[StandingApproval]:
        """Standing approvals, newest first: of TARGET only, and in force at ACTIVE_AT only."""
        where, params = ["1 = 1"], []
        if target is not None:
            where.append("target = ?")
            params.append(target)
        if active_at is not None:
            where.append("revoked_at IS NULL AND expires_at > ?")
            params.append(active_at)
        rows = await self._rows(
            f"SELECT {_STANDING_COLUMNS} FROM standing_approvals "  # noqa: S608
            f"WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT 1000",
            params,
        )
        return [_standing(row) for row in rows]

    async def use_standing(self, standing_id: str, now: float) -> bool:
        """Count one use, if it is still in force at NOW (a revocation wins a race)."""
        return (
            await self._change(
                "UPDATE standing_approvals SET uses = uses + 1, last_used_at = ? "
                "WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
                (now, standing_id, now),
            )
            == 1
        )

    async def revoke_standing(self, standing_id: str, actor: str, now: float) -> bool:
        return (
            await self._change(
                "UPDATE standing_approvals SET revoked_at = ?, revoked_by = ? "
                "WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
                (now, actor, standing_id, now),
            )
            == 1
        )
