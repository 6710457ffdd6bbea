"""The broker's state store: SQLite in WAL mode in the data dir (one broker, the default)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from broker.errors import StoreError

STORE_FILE = "hoop.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    user TEXT PRIMARY KEY,
    groups TEXT NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    serial INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    groups TEXT NOT NULL,
    valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    issued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_user ON certificates(user);
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    actor TEXT,
    session TEXT,
    target TEXT,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_type ON audit_events(type);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_status INTEGER,
    recording TEXT,
    reason TEXT,
    command TEXT
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions(state);
"""


@dataclass(frozen=True)
class StoredIdentity:
    user: str
    groups: tuple[str, ...]
    updated_at: float


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, data_dir: Path) -> Store:
        path = data_dir / STORE_FILE
        try:
            db = await aiosqlite.connect(path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(_SCHEMA)
            await db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        path.chmod(0o600)
        return cls(db)

    @property
    def db(self) -> aiosqlite.Connection:
        """The store's connection, for modules that keep their own tables in it."""
        return self._db

    async def close(self) -> None:
        await self._db.close()

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        try:
            cursor = await self._db.execute(sql, params)
            await self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"store write failed: {exc}") from None
        return cursor.lastrowid or 0

    async def record_identity(
        self, user: str, groups: Sequence[str], subject: str, issuer: str, now: float
    ) -> None:
        await self._write(
            "INSERT INTO identities(user, groups, subject, issuer, updated_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT(user) DO UPDATE SET groups=excluded.groups, subject=excluded.subject, "
            "issuer=excluded.issuer, updated_at=excluded.updated_at",
            (user, json.dumps(list(groups)), subject, issuer, now),
        )

    async def identity(self, user: str) -> StoredIdentity | None:
        async with self._db.execute(
            "SELECT user, groups, updated_at FROM identities WHERE user = ?", (user,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return StoredIdentity(user=row[0], groups=tuple(json.loads(row[1])), updated_at=row[2])

    async def record_certificate(
        self,
        *,
        serial: int,
        user: str,
        key_fingerprint: str,
        groups: Sequence[str],
        valid_after: int,
        valid_before: int,
        now: float,
    ) -> None:
        await self._write(
            "INSERT INTO certificates(serial, user, key_fingerprint, groups, valid_after, "
            "valid_before, issued_at) VALUES (?,?,?,?,?,?,?)",
            (
                serial,
                user,
                key_fingerprint,
                json.dumps(list(groups)),
                valid_after,
                valid_before,
                now,
            ),
        )

    async def create_session(
        self,
        *,
        session_id: str,
        user: str,
        target: str,
        kind: str,
        started_at: float,
        recording: str | None,
        reason: str | None,
        command: str | None,
    ) -> None:
        await self._write(
            "INSERT INTO sessions(id, user, target, kind, state, started_at, recording, reason, "
            "command) VALUES (?,?,?,?,'open',?,?,?,?)",
            (session_id, user, target, kind, started_at, recording, reason, command),
        )

    async def end_session(
        self, session_id: str, *, state: str, ended_at: float, exit_status: int | None
    ) -> None:
        await self._write(
            "UPDATE sessions SET state = ?, ended_at = ?, exit_status = ? WHERE id = ?",
            (state, ended_at, exit_status, session_id),
        )

    async def interrupt_open_sessions(self, now: float) -> list[dict[str, Any]]:
        """Sessions still open when the broker (re)starts were cut off by a crash or kill."""
        async with self._db.execute(
            "SELECT id, user, target, recording FROM sessions WHERE state = 'open'"
        ) as cursor:
            rows = await cursor.fetchall()
        await self._write(
            "UPDATE sessions SET state = 'interrupted', ended_at = ? WHERE state = 'open'", (now,)
        )
        return [{"id": r[0], "user": r[1], "target": r[2], "recording": r[3]} for r in rows]

    async def session(self, session_id: str) -> dict[str, Any] | None:
        async with self._db.execute(
            "SELECT id, user, target, kind, state, started_at, ended_at, exit_status, recording, "
            "reason, command FROM sessions WHERE id = ?",
            (session_id,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        keys = (
            "id",
            "user",
            "target",
            "kind",
            "state",
            "started_at",
            "ended_at",
            "exit_status",
            "recording",
            "reason",
            "command",
        )
        return dict(zip(keys, row, strict=True))

    async def append_audit(self, event: dict[str, Any]) -> int:
        return await self._write(
            "INSERT INTO audit_events(time, type, actor, session, target, event) VALUES (?,?,?,?,?,?)",
            (
                event["time"],
                event["type"],
                event.get("actor"),
                event.get("session"),
                event.get("target"),
                json.dumps(event, sort_keys=True),
            ),
        )

    async def audit_events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT event FROM audit_events"
        params: tuple[Any, ...] = ()
        if event_type:
            sql += " WHERE type = ?"
            params = (event_type,)
        async with self._db.execute(sql + " ORDER BY id", params) as cursor:
            rows = await cursor.fetchall()
        return [json.loads(row[0]) for row in rows]
