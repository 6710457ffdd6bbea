"""The broker's state store: SQLite in WAL mode in the data dir (one broker, the default)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from broker.audit.chain import GENESIS, chain_hash
from broker.database import Listener, PgConnection, SyncPgConnection, dialect
from broker.errors import StoreError

log = logging.getLogger("hoop.audit")
T = TypeVar("T")

STORE_FILE = "hoop.db"
WRITE_ATTEMPTS = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    "user" TEXT PRIMARY KEY,
    groups TEXT NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    updated_at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'person'
);
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    actor TEXT,
    session TEXT,
    target TEXT,
    event TEXT NOT NULL,
    seq INTEGER,
    prev_hash TEXT,
    hash TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_type ON audit_events(type);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    event_time REAL NOT NULL,
    created_at REAL NOT NULL,
    cut REAL NOT NULL,
    events INTEGER NOT NULL,
    key TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_status INTEGER,
    recording TEXT,
    reason TEXT,
    command TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions(state);
CREATE TABLE IF NOT EXISTS rate_marks (
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_marks_key ON rate_marks("user", target, at);
"""

# The same tables in PostgreSQL ([store] url): floats are DOUBLE PRECISION (SQLite's REAL is
# 8 bytes), ids BIGINT, and the chain columns are there from the start.
_SCHEMA_PG = """
CREATE TABLE IF NOT EXISTS identities (
    "user" TEXT PRIMARY KEY,
    groups TEXT NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL DEFAULT 'person'
);
CREATE TABLE IF NOT EXISTS audit_events (
    id BIGSERIAL PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    type TEXT NOT NULL,
    actor TEXT,
    session TEXT,
    target TEXT,
    event TEXT NOT NULL,
    seq BIGINT,
    prev_hash TEXT,
    hash TEXT,
    node TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_type ON audit_events(type);
CREATE UNIQUE INDEX IF NOT EXISTS audit_events_seq ON audit_events(seq);
CREATE INDEX IF NOT EXISTS audit_events_node ON audit_events(node, seq);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    event_time DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    cut DOUBLE PRECISION NOT NULL,
    events BIGINT NOT NULL,
    key TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    exit_status INTEGER,
    recording TEXT,
    reason TEXT,
    command TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions(state);
CREATE TABLE IF NOT EXISTS rate_marks (
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_marks_key ON rate_marks("user", target, at);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
"""

StoreLocation = Path | str
"""Where the store is: the SQLite file in the data dir, or a postgresql:// URL."""
SyncConnection = sqlite3.Connection | SyncPgConnection


def store_location(data_dir: Path, url: str | None = None) -> StoreLocation:
    """The store of a broker with this data dir and `[store] url` (None: embedded SQLite)."""
    return url if url else data_dir / STORE_FILE


def describe_location(location: StoreLocation) -> str:
    """The store's location for messages: the file, or the URL without its password."""
    if isinstance(location, Path):
        return str(location)
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(location)
    except Exception:  # an unparsable URL is named by its scheme only
        return "postgresql://…"
    host = parts.get("host", "")
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname', '')}"


_write_locks: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def write_lock(db: aiosqlite.Connection) -> asyncio.Lock:
    """The lock a write on the store's shared connection holds from its first statement to
    its COMMIT or ROLLBACK.

    SQLite's transaction belongs to the connection, not to the coroutine: without the lock, one
    module's rollback after a busy error (or its commit) took another module's write, made
    between that write's execute and its commit, with it. A decision was lost that way: stored
    as "recorded", audited as approved, and gone (issue 16, the lost approval).
    """
    lock = _write_locks.get(db)
    if lock is None:
        lock = _write_locks[db] = asyncio.Lock()
    return lock


def process_owner(pid: int | None = None, node: str | None = None) -> str:
    """Who serves a session: this node (`[broker] node`, else the host name) and process PID
    (this one by default): a worker, or the one broker process."""
    return f"{node or socket.gethostname()}/{os.getpid() if pid is None else pid}"


def like_prefix(text: str) -> str:
    """TEXT for a LIKE pattern, its wildcards taken literally (with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class StoredIdentity:
    user: str
    groups: tuple[str, ...]
    updated_at: float
    kind: str = "person"


_CHAIN_COLUMNS = (("seq", "INTEGER"), ("prev_hash", "TEXT"), ("hash", "TEXT"))
_EVENT_COLUMNS = "id, seq, prev_hash, hash, time, type, actor, session, target, event"


def connect_sync(location: StoreLocation) -> SyncConnection:
    """A plain connection to the store for a thread, in autocommit mode (explicit
    transactions): sqlite3's, or its PostgreSQL counterpart (broker.database)."""
    if isinstance(location, str):
        return SyncPgConnection.connect(location)
    conn = sqlite3.connect(location, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def connect_existing(data_dir: Path, url: str | None = None) -> SyncConnection:
    """connect_sync to the store of a broker that has run (for the CLI's commands): its
    SQLite file in DATA_DIR must exist; StoreError saying which store when it cannot."""
    location = store_location(data_dir, url)
    if isinstance(location, Path) and not location.exists():
        raise StoreError(f"no store at {location}: is this the broker's data dir?")
    try:
        return connect_sync(location)
    except sqlite3.Error as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"cannot open store {describe_location(location)}: {detail}") from None


def migrate_audit_chain(conn: SyncConnection, now: float | None = None) -> int:
    """Bring a store made by an older broker up to the hash chain; return events newly chained.

    Adds the chain columns when they are missing and chains every event that has none, in
    the order they were written. Changes made to those events before this ran cannot be
    detected; `audit_meta.chain_since` records when chaining began. A PostgreSQL store is
    made with the chain from the start.
    """
    since = (repr(time.time() if now is None else now),)
    if dialect(conn) == "postgres":
        conn.executescript(_SCHEMA_PG)
        conn.execute("ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS node TEXT")
        conn.execute(
            "INSERT INTO audit_meta(key, value) VALUES ('chain_since', ?) ON CONFLICT DO NOTHING",
            since,
        )
        return 0
    conn.executescript(_SCHEMA)
    known = {row[1] for row in conn.execute("PRAGMA table_info(identities)")}
    if "kind" not in known:  # a store from before agent identities: everyone was a person
        conn.execute("ALTER TABLE identities ADD COLUMN kind TEXT NOT NULL DEFAULT 'person'")
    if "owner" not in {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}:
        conn.execute("ALTER TABLE sessions ADD COLUMN owner TEXT")  # from before workers
    columns = {row[1] for row in conn.execute("PRAGMA table_info(audit_events)")}
    for name, kind in _CHAIN_COLUMNS:
        if name not in columns:
            conn.execute(f"ALTER TABLE audit_events ADD COLUMN {name} {kind}")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS audit_events_seq ON audit_events(seq)")
    conn.execute(
        "INSERT INTO audit_meta(key, value) VALUES ('chain_since', ?) ON CONFLICT DO NOTHING",
        since,
    )
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "SELECT id, event FROM audit_events WHERE seq IS NULL ORDER BY id"
        ).fetchall()
        seq, prev = chain_head(conn)
        for row_id, text in rows:
            record = json.loads(text)
            for key in ("seq", "prev_hash", "hash"):
                record.pop(key, None)
            seq += 1
            digest = chain_hash(record, seq, prev)
            conn.execute(
                "UPDATE audit_events SET seq = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (seq, prev, digest, row_id),
            )
            prev = digest
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    if rows:
        log.warning("audit: chained %d events written by an older broker", len(rows))
    return len(rows)


def chain_head(conn: SyncConnection) -> tuple[int, str]:
    """(seq, hash) of the newest event; after a prune that left none, of the checkpoint."""
    row = conn.execute(
        "SELECT seq, hash FROM audit_events WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def chain_node(conn: SyncConnection, node: str | None) -> str | None:
    """The node an event appended by a command (revoke, prune) belongs to: in a store other
    nodes share, NODE (`[broker] node`) or this host's name, so that its sinks send it."""
    if dialect(conn) != "postgres":
        return None
    return node or socket.gethostname()


def append_chained(
    conn: SyncConnection,
    record: dict[str, Any],
    floor: tuple[int, str] | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """Append RECORD to the chain in one write transaction; return it with seq and hashes."""
    return append_chained_batch(conn, [record], floor, node)[0]


def append_chained_batch(
    conn: SyncConnection,
    records: Sequence[dict[str, Any]],
    floor: tuple[int, str] | None = None,
    node: str | None = None,
) -> list[dict[str, Any]]:
    """Append RECORDS to the chain, in order, in one write transaction (one commit for all of
    them); return each with seq and hashes. All are stored or none.

    `BEGIN IMMEDIATE` takes SQLite's write lock before the head is read, so two writers
    (the broker and `hoop-broker prune`) cannot both extend the same head. FLOOR is the head
    this writer last saw: if the store's head is older, events were deleted from its end, and
    the chain goes on from FLOOR so that the gap stays visible to `hoop-broker verify`.
    """
    texts = [json.dumps(record, sort_keys=True) for record in records]  # before the lock
    node_column, node_mark, node_value = (", node", ",?", (node,)) if node else ("", "", ())
    chained: list[dict[str, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        head_seq, prev = chain_head(conn)
        if floor is not None and floor[0] > head_seq:
            log.critical(
                "audit: events seq %d-%d were deleted from the store behind the broker's back; "
                "the chain goes on from seq %d so that the gap stays visible",
                head_seq + 1,
                floor[0],
                floor[0],
            )
            head_seq, prev = floor
        seq = head_seq
        for record, text in zip(records, texts, strict=True):
            seq += 1
            digest = chain_hash(record, seq, prev)
            conn.execute(
                "INSERT INTO audit_events(time, type, actor, session, target, event, seq, "  # noqa: S608
                f"prev_hash, hash{node_column}) VALUES (?,?,?,?,?,?,?,?,?{node_mark})",
                (
                    record["time"],
                    record["type"],
                    record.get("actor"),
                    record.get("session"),
                    record.get("target"),
                    text,
                    seq,
                    prev,
                    digest,
                    *node_value,
                ),
            )
            chained.append({**record, "seq": seq, "prev_hash": prev, "hash": digest})
            prev = digest
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return chained


def _event_row(row: Sequence[Any]) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(row[-1])
    if row[1] is not None:
        record.update(seq=row[1], prev_hash=row[2], hash=row[3])
    return record


class _AuditWriter:
    """The one writer of the audit chain: its own connection, used from one thread only.

    Appends are written in submission order. Events that arrive while a write is under way
    wait for it, then go together in the next one: one transaction (one commit) per batch,
    so the chain keeps up with many sessions. Each batch is a single function call in the
    writer's thread, so a cancelled caller can never leave a transaction half done, nor lose
    its event: it is written all the same.
    """

    def __init__(self, location: StoreLocation) -> None:
        self._location = location
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="hoop-audit-writer")
        self._conn: SyncConnection | None = None
        self.floor: tuple[int, str] | None = None
        # In a store several nodes share: the node whose events these are (its sinks send
        # them, and only them).
        self.node: str | None = None
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def append_soon(self, record: dict[str, Any]) -> dict[str, Any]:
        """RECORD chained, once it is stored (with the events that came with it)."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((record, done))
        if self._writing is None:
            self._writing = asyncio.ensure_future(self._write_waiting())
        return await asyncio.shield(done)

    async def _write_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    chained = await self.call(self.append_batch, [r for r, _ in batch])
                except BaseException as exc:
                    if len(batch) > 1 and isinstance(exc, Exception):
                        # One bad event must not take the others with it: one at a time.
                        for record, done in batch:
                            try:
                                one = await self.call(self.append, record)
                            except Exception as single:
                                _settle(done, error=single)
                            else:
                                _settle(done, result=one)
                        continue
                    for _, done in batch:
                        _settle(done, error=exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for (_, done), one in zip(batch, chained, strict=True):
                        _settle(done, result=one)
        finally:
            self._writing = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def open(self) -> None:
        self._conn = connect_sync(self._location)
        migrate_audit_chain(self._conn)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.append_batch([record])[0]

    def append_batch(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the audit writer is closed")
        chained = append_chained_batch(self._conn, records, self.floor, self.node)
        self.floor = (chained[-1]["seq"], chained[-1]["hash"])
        return chained

    def take_rate(self, user: str, target: str, per_minute: int, now: float, window: float) -> bool:
        """Count one statement of USER on TARGET unless the last WINDOW seconds already hold
        PER_MINUTE of them: one write transaction, so processes sharing the store agree."""
        if self._conn is None:
            raise sqlite3.ProgrammingError("the store is closed")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                'DELETE FROM rate_marks WHERE "user" = ? AND target = ? AND at <= ?',
                (user, target, now - window),
            )
            (count,) = conn.execute(
                'SELECT COUNT(*) FROM rate_marks WHERE "user" = ? AND target = ?', (user, target)
            ).fetchone()
            allowed = count < per_minute
            if allowed:
                conn.execute(
                    'INSERT INTO rate_marks("user", target, at) VALUES (?,?,?)', (user, target, now)
                )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return bool(allowed)

    def close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        if self._writing is not None:  # what was handed in is written first
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._writing)
        await self.call(self.close_sync)
        self._executor.shutdown(wait=False)


MAX_BATCH = 512  # audit events written in one transaction at most


def _settle(
    done: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    if done.done():
        return
    if isinstance(error, asyncio.CancelledError):
        done.cancel()
    elif error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


class Store:
    def __init__(self, db: aiosqlite.Connection, path: Path | None = None) -> None:
        self._db = db
        self._path = path
        self.location: StoreLocation | None = path
        self._writer: _AuditWriter | None = None
        self.node = socket.gethostname()
        self.owner = process_owner(node=self.node)

    @classmethod
    async def open(cls, data_dir: Path, url: str | None = None, node: str | None = None) -> Store:
        """The store in DATA_DIR (SQLite), or at URL (PostgreSQL, shared by every node; NODE
        names this one among them)."""
        location = store_location(data_dir, url)
        writer = _AuditWriter(location)
        db: Any = None
        try:
            if isinstance(location, str):
                # The writer first: it makes the tables (one writer at a time, however many
                # nodes start together).
                await writer.call(writer.open)
                db = await PgConnection.connect(location)
            else:
                db = await aiosqlite.connect(location)
                await db.execute("PRAGMA journal_mode=WAL")
                await db.execute("PRAGMA synchronous=NORMAL")
                await db.execute("PRAGMA busy_timeout=5000")
                await db.executescript(_SCHEMA)
                await db.commit()
                await writer.call(writer.open)
        except (sqlite3.Error, ValueError) as exc:
            await writer.close()
            if db is not None:
                await db.close()
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"cannot open store {describe_location(location)}: {detail}") from None
        if isinstance(location, Path):
            location.chmod(0o600)
        store = cls(db, location if isinstance(location, Path) else None)
        store.location = location
        store._writer = writer
        if node:
            store.node, store.owner = node, process_owner(node=node)
        if store.shared:
            writer.node = store.node
        return store

    def listener(self, channel: str) -> Listener | None:
        """A Listener for NOTIFY CHANNEL on a PostgreSQL store (started); None on SQLite."""
        if not isinstance(self.location, str):
            return None
        listener = Listener(self.location, channel)
        listener.start()
        return listener

    @property
    def shared(self) -> bool:
        """Whether other brokers (nodes) may use this store too: a PostgreSQL store."""
        return dialect(self._db) == "postgres"

    @property
    def db(self) -> aiosqlite.Connection:
        """The store's connection, for modules that keep their own tables in it."""
        return self._db

    @property
    def path(self) -> Path:
        """The SQLite file (for readers that open their own connection, e.g. verification)."""
        if self._path is None:
            raise StoreError("this store was not opened from a file")
        return self._path

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        await self._db.close()

    async def write(self, sql: str, params: Sequence[Any]) -> int:
        """One statement and its commit on the shared connection (busy retried); the number
        of rows it changed."""
        return await asyncio.shield(self._write_now(sql, params, changed=True))

    async def write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """SQL once for each of ROWS, in one transaction (busy retried)."""
        await asyncio.shield(self._write_now(sql, rows, many=True))

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        # Shielded: a caller cancelled between the statement and its commit must not leave
        # its write open on the shared connection (the next commit, anyone's, would take it).
        return await asyncio.shield(self._write_now(sql, params))

    async def _write_now(
        self, sql: str, params: Sequence[Any], *, changed: bool = False, many: bool = False
    ) -> int:
        """The row id of what SQL inserted; with CHANGED, the number of rows it changed; with
        MANY, PARAMS is a list of parameter rows (returns 0)."""
        # Another connection (the audit writer, `hoop-broker prune`) may have written since
        # this connection's read snapshot: SQLite then refuses at once ("database is locked")
        # instead of waiting. Roll back, so no half-open transaction blocks later writes, and
        # try again on a fresh snapshot.
        for attempt in range(WRITE_ATTEMPTS):
            try:
                async with write_lock(self._db):
                    try:
                        if many:
                            await self._db.executemany(sql, params)
                            await self._db.commit()
                            return 0
                        cursor = await self._db.execute(sql, params)
                        await self._db.commit()
                        return cursor.rowcount if changed else cursor.lastrowid or 0
                    except sqlite3.Error:
                        with contextlib.suppress(sqlite3.Error):
                            await self._db.rollback()
                        raise
            except sqlite3.Error as exc:
                retry = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
                if not retry or attempt == WRITE_ATTEMPTS - 1:
                    raise StoreError(f"store write failed: {exc}") from None
                await asyncio.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    async def record_identity(
        self,
        user: str,
        groups: Sequence[str],
        subject: str,
        issuer: str,
        now: float,
        kind: str = "person",
    ) -> None:
        await self._write(
            'INSERT INTO identities("user", groups, subject, issuer, updated_at, kind) '
            "VALUES (?,?,?,?,?,?) "
            'ON CONFLICT("user") DO UPDATE SET groups=excluded.groups, subject=excluded.subject, '
            "issuer=excluded.issuer, updated_at=excluded.updated_at, kind=excluded.kind",
            (user, json.dumps(list(groups)), subject, issuer, now, kind),
        )

    async def identity(self, user: str) -> StoredIdentity | None:
        async with self._db.execute(
            'SELECT "user", groups, updated_at, kind FROM identities WHERE "user" = ?', (user,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return StoredIdentity(
            user=row[0], groups=tuple(json.loads(row[1])), updated_at=row[2], kind=row[3]
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
            'INSERT INTO sessions(id, "user", target, kind, state, started_at, recording, reason, '
            "command, owner) VALUES (?,?,?,?,'open',?,?,?,?,?)",
            (session_id, user, target, kind, started_at, recording, reason, command, self.owner),
        )

    async def end_session(
        self, session_id: str, *, state: str, ended_at: float, exit_status: int | None
    ) -> None:
        await self._write(
            "UPDATE sessions SET state = ?, ended_at = ?, exit_status = ? WHERE id = ?",
            (state, ended_at, exit_status, session_id),
        )

    async def interrupt_open_sessions(
        self, now: float, owner: str | None = None
    ) -> list[dict[str, Any]]:
        """Sessions still open when the broker (re)starts were cut off by a crash or kill:
        those OWNER served (a worker process that died); else all of them, or, in a store
        other nodes share, all of this node's."""
        where, params = "state = 'open'", []
        if owner is not None:
            where, params = "state = 'open' AND owner = ?", [owner]
        elif self.shared:
            where = "state = 'open' AND owner LIKE ? ESCAPE '\\'"
            params = [like_prefix(self.node) + "/%"]
        async with write_lock(self._db):
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                return await self._interrupt(where, params, now)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._db.rollback()
                raise

    async def _interrupt(self, where: str, params: list[Any], now: float) -> list[dict[str, Any]]:
        """Mark the sessions WHERE interrupted and commit; the ones marked. In the caller's
        write transaction, so that no other process (worker, node) marks them too."""
        rows = await self._db.execute_fetchall(
            f'SELECT id, "user", target, recording FROM sessions WHERE {where}',  # noqa: S608
            params,
        )
        await self._db.execute(
            f"UPDATE sessions SET state = 'interrupted', ended_at = ? WHERE {where}",  # noqa: S608
            [now, *params],
        )
        await self._db.commit()
        return [{"id": r[0], "user": r[1], "target": r[2], "recording": r[3]} for r in rows]

    # -- nodes sharing a PostgreSQL store --------------------------------------------------

    async def heartbeat(self, now: float) -> None:
        """This node is alive at NOW (every few seconds, by its supervisor or only process)."""
        await self._write(
            "INSERT INTO nodes(node, seen_at) VALUES (?, ?) "
            "ON CONFLICT(node) DO UPDATE SET seen_at = excluded.seen_at",
            (self.node, now),
        )

    async def silent_nodes(self, before: float) -> list[str]:
        """Other nodes not heard from since BEFORE."""
        rows = await self._db.execute_fetchall(
            "SELECT node FROM nodes WHERE seen_at < ? AND node != ?", (before, self.node)
        )
        return [str(row[0]) for row in rows]

    async def take_over(self, node: str, before: float, now: float) -> list[dict[str, Any]] | None:
        """Mark the open sessions of NODE, silent since BEFORE, interrupted; the sessions, or
        None when another node took over first (or NODE spoke again). One transaction under
        the store's write lock: exactly one node takes over."""
        where = "state = 'open' AND owner LIKE ? ESCAPE '\\'"
        params = [like_prefix(node) + "/%"]
        async with write_lock(self._db):
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                cursor = await self._db.execute(
                    "DELETE FROM nodes WHERE node = ? AND seen_at < ?", (node, before)
                )
                if cursor.rowcount != 1:
                    await self._db.commit()
                    return None
                return await self._interrupt(where, params, now)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._db.rollback()
                raise

    async def session(self, session_id: str) -> dict[str, Any] | None:
        async with self._db.execute(
            'SELECT id, "user", target, kind, state, started_at, ended_at, exit_status, recording, '
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

    # -- the audit chain ------------------------------------------------------------------

    def set_chain_floor(self, seq: int, digest: str) -> None:
        """The newest head this broker knows of (its signed head file): never chain below it."""
        if self._writer is not None and (self._writer.floor or (0, ""))[0] < seq:
            self._writer.floor = (seq, digest)

    async def append_audit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append EVENT (a JSON-safe dict) to the hash chain; return it with seq, prev_hash, hash.

        Appends are serialized (one writer thread, and SQLite's write lock across processes),
        so the chain cannot fork.
        """
        if self._writer is None:
            raise StoreError("the store is closed")
        try:
            return await self._writer.append_soon(event)
        except sqlite3.Error as exc:
            raise StoreError(f"audit event could not be stored: {exc}") from None

    async def take_rate(
        self, user: str, target: str, per_minute: int, now: float, window: float
    ) -> bool:
        """The shared rate budget (SharedRateBudget); a store that cannot count refuses."""
        if self._writer is None:
            raise StoreError("the store is closed")
        try:
            return await self._writer.call(
                self._writer.take_rate, user, target, per_minute, now, window
            )
        except sqlite3.Error as exc:
            log.error("rate budget: the store cannot count statements: %s", exc)
            return False  # fail closed

    async def audit_head(self) -> tuple[int, str]:
        """(seq, hash) of the newest audit event (or of the prune checkpoint, or (0, GENESIS))."""
        async with self._db.execute(
            "SELECT seq, hash FROM audit_events WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1"
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            async with self._db.execute(
                "SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
            ) as cursor:
                row = await cursor.fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    async def audit_events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {_EVENT_COLUMNS} FROM audit_events"  # noqa: S608 (constant)
        params: tuple[Any, ...] = ()
        if event_type:
            sql += " WHERE type = ?"
            params = (event_type,)
        async with self._db.execute(sql + " ORDER BY seq, id", params) as cursor:
            rows = await cursor.fetchall()
        return [_event_row(row) for row in rows]

    async def audit_events_between(
        self, after: int, before: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Chained events with AFTER < seq < BEFORE, oldest first, at most LIMIT of them; in
        a store other nodes share, this node's only (each node's sinks send its own)."""
        sql = f"SELECT {_EVENT_COLUMNS} FROM audit_events WHERE seq > ?"  # noqa: S608
        params: list[Any] = [after]
        if self.shared:
            sql += " AND node = ?"
            params.append(self.node)
        if before is not None:
            sql += " AND seq < ?"
            params.append(before)
        async with self._db.execute(sql + " ORDER BY seq LIMIT ?", [*params, limit]) as cursor:
            rows = await cursor.fetchall()
        return [_event_row(row) for row in rows]
