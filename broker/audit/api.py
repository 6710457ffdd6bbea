"""hoop-api methods for incident response: list, show and search sessions, download recordings.

Who sees what (``[audit]`` in the broker config): members of an ``auditors`` group see every
session; anyone else sees only their own, and only while ``replay_own`` is true. A session
that exists but is not visible gets the same ``not_found`` answer as one that does not exist.
Every recording download and every search is itself an audit event (``session.replayed``,
``session.searched``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from broker.api_methods import ApiMethods, Push
from broker.audit.chain import canonical_json
from broker.audit.events import AuditEvent
from broker.audit.index import MarkClock, SearchError, index_for, read_marks
from broker.database import json_field
from broker.protocol import ApiError
from broker.session_context import ConnectionContext

if TYPE_CHECKING:
    from broker.audit.events import AuditLog
    from broker.config import BrokerConfig
    from broker.keys import BrokerKeys
    from broker.recording_objects import RecordingObjects
    from broker.signals import SignalWatch
    from broker.store import Store

SESSION_ID = re.compile(r"\d{8}-[0-9a-f]{12}")
STATES = ("open", "closed", "interrupted", "failed", "terminated", "blocked")
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 10_000
CHUNK = 192 * 1024  # recording bytes per pushed event (256 KiB once in base64)
FOLLOW_POLL = 0.2  # seconds between looks at a live recording
STATE_POLL = 1.0  # seconds between looks at a live session's state
SEAL_WAIT = 10.0  # a session followed from the bucket: how long its sealed copy may take
TIMELINE_EVENTS = (
    "command",
    "query",
    "command.blocked",
    "query.blocked",
    "file.transfer",
    "file.change",
)

_SESSION_COLUMNS = (
    "id",
    "user",
    "target",
    "kind",
    "state",
    "started_at",
    "ended_at",
    "exit_status",
    "reason",
    "command",
    "recording",
)


def _not_found(session_id: object) -> ApiError:
    return ApiError("not_found", f"no session {session_id} on this broker (or not yours to see)")


class ApprovalRecords(Protocol):
    """The approval records an evidence bundle holds (the broker's approval gate)."""

    async def get(self, request_id: str) -> Any: ...

    async def standing_record(self, standing_id: str) -> Any: ...


class AuditHost(Protocol):
    """What the audit methods need of the broker."""

    config: BrokerConfig
    store: Store
    audit: AuditLog
    recording_objects: RecordingObjects | None
    keys: BrokerKeys
    approvals: ApprovalRecords
    signals: SignalWatch

    @property
    def data_dir(self) -> Path: ...


class AuditApi:
    def __init__(self, broker: AuditHost) -> None:
        self._broker = broker

    # -- access -------------------------------------------------------------------------

    def _is_auditor(self, ctx: ConnectionContext) -> bool:
        auditors = self._broker.config.audit.auditors
        return not ctx.anonymous and bool(set(auditors) & set(ctx.groups))

    def _scope(self, ctx: ConnectionContext) -> str | None:
        """None: every session; a user name: only that user's; "" : nothing."""
        if self._is_auditor(ctx):
            return None
        if self._broker.config.audit.replay_own and not ctx.anonymous:
            return ctx.user
        return ""

    async def _visible_session(self, ctx: ConnectionContext, session_id: Any) -> dict[str, Any]:
        if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
            raise ApiError("bad_request", "id must be a session id (YYYYMMDD-12 hex digits)")
        scope = self._scope(ctx)
        rows = await self._select_sessions("WHERE id = ?", [session_id])
        if not rows or scope == "" or (scope is not None and rows[0]["user"] != scope):
            raise _not_found(session_id)
        return rows[0]

    # -- queries ------------------------------------------------------------------------

    async def _select_sessions(self, where: str, params: list[Any]) -> list[dict[str, Any]]:
        # WHERE is built from constant clauses with ? placeholders only.
        kind = '(SELECT kind FROM identities WHERE identities."user" = sessions."user")'
        columns = ", ".join(f'"{name}"' for name in _SESSION_COLUMNS)
        sql = f"SELECT {columns}, {kind} FROM sessions {where}"  # noqa: S608
        async with self._broker.store.db.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
        return [
            {**dict(zip(_SESSION_COLUMNS, row[:-1], strict=True)), "user_kind": row[-1] or "person"}
            for row in rows
        ]

    async def _counts(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        await index_for(self._broker.store).ensure_schema()  # the index on audit_events(session)
        for start in range(0, len(session_ids), 500):
            part = session_ids[start : start + 500]
            marks = ",".join("?" * len(part))
            approver = json_field(self._broker.store.db, "event", "details", "approver")
            sql = (
                "SELECT session, "  # noqa: S608 (placeholders only)
                "SUM(CASE WHEN type IN ('command', 'query') THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN type LIKE '%.blocked' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN type IN ('command', 'query') "
                f"    AND {approver} IS NOT NULL THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN type = 'approval.executed' THEN 1 ELSE 0 END) "
                f"FROM audit_events WHERE session IN ({marks}) GROUP BY session"
            )
            async with self._broker.store.db.execute(sql, part) as cursor:
                for session, commands, blocked, approved, executed in await cursor.fetchall():
                    counts[session] = {
                        "commands": commands or 0,
                        "blocked": blocked or 0,
                        # A run after approval shows as a command with its approver and, for a
                        # request run later, as approval.executed: count each run once.
                        "approved": max(approved or 0, executed or 0),
                    }
        return counts

    @staticmethod
    def _summary(row: dict[str, Any], counts: dict[str, int] | None) -> dict[str, Any]:
        ended = row["ended_at"]
        summary = {key: row[key] for key in _SESSION_COLUMNS if key != "recording"}
        summary["user_kind"] = row.get("user_kind", "person")
        summary["duration"] = round(
            (ended if ended is not None else time.time()) - row["started_at"], 3
        )
        summary.update(counts or {"commands": 0, "blocked": 0, "approved": 0})
        return summary

    # -- methods ------------------------------------------------------------------------

    async def list_sessions(
        self, ctx: ConnectionContext, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        scope = self._scope(ctx)
        if scope == "":
            return []
        clauses: list[str] = []
        values: list[Any] = []
        for key in ("user", "target"):
            value = params.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ApiError("bad_request", f"{key} must be a string")
            clauses.append(f'"{key}" = ?')
            values.append(value)
        if scope is not None:
            clauses.append('"user" = ?')
            values.append(scope)
        state = params.get("state")
        if state is not None:
            if state not in STATES:
                raise ApiError("bad_request", f"state must be one of {', '.join(STATES)}")
            clauses.append("state = ?")
            values.append(state)
        since, until = _time(params, "since"), _time(params, "until")
        # A session belongs to the window [since, until] if it was running at any time in it.
        if since is not None:
            clauses.append("(ended_at IS NULL OR ended_at >= ?)")
            values.append(since)
        if until is not None:
            clauses.append("started_at <= ?")
            values.append(until)
        limit = params.get("limit", DEFAULT_LIST_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ApiError("bad_request", "limit must be a positive integer")
        flagged = bool(params.get("flagged"))
        if flagged:
            # Which sessions stand out is for auditors: the insider must not learn it.
            if not self._is_auditor(ctx):
                raise ApiError("forbidden", "only auditors ([audit] auditors) see flagged sessions")
            ids = await self._broker.signals.flagged_sessions()
            if not ids:
                return []
            clauses.append(f"id IN ({','.join('?' * len(ids))})")
            values.extend(ids)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = await self._select_sessions(
            f"{where} ORDER BY started_at DESC LIMIT ?", [*values, min(limit, MAX_LIST_LIMIT)]
        )
        counts = await self._counts([row["id"] for row in rows])
        listed = [self._summary(row, counts.get(row["id"])) for row in rows]
        if flagged:
            names = await self._broker.signals.flagged([row["id"] for row in rows])
            for summary in listed:
                summary["signals"] = names.get(summary["id"], [])
        return listed

    async def list_signals(
        self, ctx: ConnectionContext, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Signals, newest first (auditors only): {id, time, signal, user, target, session,
        details, text}."""
        from broker.signals import describe

        if not self._is_auditor(ctx):
            raise ApiError("forbidden", "only auditors ([audit] auditors) see signals")
        filters: dict[str, Any] = {}
        for key in ("user", "target", "session"):
            value = params.get(key)
            if value is not None and not isinstance(value, str):
                raise ApiError("bad_request", f"{key} must be a string")
            filters[key] = value
        limit = params.get("limit", 1000)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ApiError("bad_request", "limit must be a positive integer")
        found = await self._broker.signals.listing(
            since=_time(params, "since"), limit=min(limit, MAX_LIST_LIMIT), **filters
        )
        return [{**signal.to_dict(), "text": describe(signal)} for signal in found]

    async def show_session(self, ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        row = await self._visible_session(ctx, params.get("id"))
        counts = await self._counts([row["id"]])
        summary = self._summary(row, counts.get(row["id"]))
        path = Path(row["recording"]) if row["recording"] else None
        try:
            summary["recording_bytes"] = path.stat().st_size if path else None
        except OSError:
            summary["recording_bytes"] = None
        marks = ",".join("?" * len(TIMELINE_EVENTS))
        async with self._broker.store.db.execute(
            f"SELECT time, type, event FROM audit_events WHERE session = ? AND type IN ({marks}) "  # noqa: S608
            "ORDER BY id",
            (row["id"], *TIMELINE_EVENTS),
        ) as cursor:
            events = await cursor.fetchall()
        # Offsets as `replay --commands` and the search index give them: at the recording's
        # mark of the command when it has one.
        marks = await asyncio.to_thread(read_marks, path) if path is not None else []
        clock = MarkClock(row["started_at"], marks)
        timeline = []
        for at, event_type, raw in events:
            event = json.loads(raw)
            details = event.get("details") or {}
            subject = "query" if event_type.startswith("query") else "command"
            blocked = event_type.endswith(".blocked") or details.get("state") == "refused"
            text = details.get(subject)
            if event_type.startswith("file."):  # `upload /tmp/f (12 bytes)`, `remove /tmp/f`
                what = details.get("direction") or details.get("operation")
                size = details.get("size")
                text = f"{what} {details.get('path')}" + (
                    f" ({size} bytes)" if isinstance(size, int) else ""
                )
            timeline.append(
                {
                    "offset": clock.offset(text, at)
                    if isinstance(text, str)
                    else round(max(0.0, at - row["started_at"]), 3),
                    "time": at,
                    "type": event_type,
                    "text": text,
                    "decision": details.get("decision"),
                    "outcome": "blocked"
                    if blocked
                    else ("failed" if event.get("outcome") == "failure" else "ran"),
                    "rule": details.get("rule"),
                    "approver": details.get("approver"),
                    "reason": event.get("reason"),
                }
            )
        summary["timeline"] = timeline
        return summary

    async def search(self, ctx: ConnectionContext, params: dict[str, Any]) -> list[dict[str, Any]]:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError("bad_request", "give the text to search for")
        if len(text) > 1000:
            raise ApiError("bad_request", "search text longer than 1000 characters")
        limit = params.get("limit", 50)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ApiError("bad_request", "limit must be a positive integer")
        scope = self._scope(ctx)
        matches = []
        if scope != "":
            try:
                matches = await index_for(self._broker.store).search(text, user=scope, limit=limit)
            except SearchError as exc:
                raise ApiError("bad_request", str(exc)) from None
        await self._broker.audit.emit(
            AuditEvent(
                type="session.searched",
                actor=ctx.user,
                groups=ctx.groups,
                remote=ctx.remote,
                details={
                    "text": text,
                    "matches": len(matches),
                    "sessions": sorted({match.session for match in matches}),
                    "scope": "all" if scope is None else "own",
                },
            )
        )
        return [match.to_json() for match in matches]

    async def recording(self, ctx: ConnectionContext, params: dict[str, Any], push: Push) -> None:
        """Stream a session's recording: {"type": "start"}, {"type": "chunk"}…, {"type": "end"}.

        With ``follow`` and a session still open, the stream goes on as the recording grows
        (whole lines only) and ends once the session has ended and everything is sent.
        """
        session_id = params.get("id")
        offset = params.get("offset", 0)
        follow = bool(params.get("follow", False))
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ApiError("bad_request", "offset must be a byte offset (a non-negative integer)")
        try:
            row = await self._visible_session(ctx, session_id)
        except ApiError as exc:
            if exc.code == "not_found":
                await self._audit_replay(ctx, str(session_id), None, offset, follow, exc.message)
            raise
        path = self._recording_path(row)
        copy: BucketCopy | None = None
        if path is None and row["recording"] and self._broker.recording_objects is not None:
            # Recorded on another node (or this node's copy is gone): the bucket's copy.
            copy = await BucketCopy.fetch(
                self._broker.recording_objects,
                row["id"],
                self._broker.data_dir,
                live=row["state"] == "open",
            )
            path = copy.path if copy is not None else None
        if path is None:
            await self._audit_replay(ctx, row["id"], row["target"], offset, follow, "no recording")
            raise ApiError("not_found", f"session {row['id']} has no recording")
        size = path.stat().st_size
        try:
            await self._stream(ctx, row, path, size, offset, follow, push, copy)
        finally:
            if copy is not None:
                copy.discard()

    async def _stream(
        self,
        ctx: ConnectionContext,
        row: dict[str, Any],
        path: Path,
        size: int,
        offset: int,
        follow: bool,
        push: Push,
        copy: BucketCopy | None,
    ) -> None:
        await self._audit_replay(ctx, row["id"], row["target"], offset, follow, None)
        state = row["state"]
        await push(
            {
                "type": "start",
                "session": row["id"],
                "user": row["user"],
                "target": row["target"],
                "state": state,
                "size": size,
            }
        )
        position = offset
        seal_deadline = time.monotonic() + SEAL_WAIT
        with path.open("rb") as file:
            next_state_check = time.monotonic() + STATE_POLL
            while True:
                live = follow and state == "open"
                file.seek(position)
                data = file.read(CHUNK)
                if live and data and len(data) < CHUNK:
                    data = data[: data.rfind(b"\n") + 1]  # whole lines while it grows
                if data:
                    await push(
                        {
                            "type": "chunk",
                            "offset": position,
                            "data": base64.b64encode(data).decode(),
                        }
                    )
                    position += len(data)
                    continue
                if not live:
                    if copy is None or copy.sealed or time.monotonic() > seal_deadline:
                        break
                    # Ended on its node, which ships the rest with the sealed copy.
                    await asyncio.sleep(FOLLOW_POLL)
                    await copy.catch_up()
                    continue
                seal_deadline = time.monotonic() + SEAL_WAIT
                await asyncio.sleep(FOLLOW_POLL)
                if copy is not None:
                    await copy.catch_up()
                if time.monotonic() >= next_state_check:
                    next_state_check = time.monotonic() + STATE_POLL
                    rows = await self._select_sessions("WHERE id = ?", [row["id"]])
                    state = rows[0]["state"] if rows else "closed"
            await push({"type": "end", "state": state, "size": position})

    async def verify(self, ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        """The session's recording signature and audit events checked: {"ok", "lines"}."""
        row = await self._visible_session(ctx, params.get("id"))
        try:
            from broker.audit.integrity import verify_session
        except ImportError:
            raise ApiError("unavailable", "verification is not available on this broker") from None
        problems = await verify_session(
            self._broker.data_dir,
            row["id"],
            self._broker.recording_objects,
            self._broker.config.store.conninfo(),
        )
        notes = []
        if row["state"] == "open":
            notes.append("recording not checked: the session is still open (signed when it ends)")
        await self._broker.audit.emit(
            AuditEvent(
                type="session.verified",
                actor=ctx.user,
                groups=ctx.groups,
                target=row["target"],
                session=row["id"],
                remote=ctx.remote,
                outcome="success" if not problems else "failure",
                reason=f"{len(problems)} problems found" if problems else None,
                details={"problems": problems[:100]},
            )
        )
        return {"ok": not problems, "problems": problems, "notes": notes}

    async def bundle(self, ctx: ConnectionContext, params: dict[str, Any], push: Push) -> None:
        """An ended session's evidence bundle (broker.audit.evidence), as a tar file streamed
        in chunks: {"type": "chunk", "data"}…, then {"type": "end", "size", "sha256"}. The
        whole chain is verified first; a session that does not verify gets no bundle."""
        # Evidence is for auditors: a bundle holds every event of the session, the signals
        # raised about its user included, which the user must not learn of.
        if not self._is_auditor(ctx):
            raise ApiError("forbidden", "only auditors ([audit] auditors) export evidence bundles")
        row = await self._visible_session(ctx, params.get("id"))
        if row["state"] == "open":
            raise ApiError("conflict", f"session {row['id']} is still open: export it once it ends")
        from broker.audit.integrity import verify_session

        problems = await verify_session(
            self._broker.data_dir,
            row["id"],
            self._broker.recording_objects,
            self._broker.config.store.conninfo(),
        )
        if problems:
            raise ApiError(
                "conflict",
                f"session {row['id']} does not verify ({problems[0]}); no bundle is signed for "
                "it: run hoopctl replay --verify",
            )
        place = Path(tempfile.mkdtemp(dir=self._broker.data_dir, prefix=".bundle-"))
        try:
            path = place / "bundle.tar"
            manifest = await self._write_bundle(row, path)
            await self._broker.audit.emit(
                AuditEvent(
                    type="session.exported",
                    actor=ctx.user,
                    groups=ctx.groups,
                    target=row["target"],
                    session=row["id"],
                    remote=ctx.remote,
                    details={
                        "events": len(manifest["events"]),
                        "manifest_sha256": hashlib.sha256(canonical_json(manifest)).hexdigest(),
                        "auditor": self._is_auditor(ctx),
                    },
                )
            )
            digest = hashlib.sha256()
            with path.open("rb") as file:
                while data := file.read(CHUNK):
                    digest.update(data)
                    await push({"type": "chunk", "data": base64.b64encode(data).decode()})
            await push({"type": "end", "size": path.stat().st_size, "sha256": digest.hexdigest()})
        finally:
            shutil.rmtree(place, ignore_errors=True)

    async def _write_bundle(self, row: dict[str, Any], path: Path) -> dict[str, Any]:
        from broker.audit.evidence import bundle_files, signed_files, write_tar
        from broker.audit.integrity import Signer, read_head

        db = self._broker.store.db
        async with db.execute(
            "SELECT seq, prev_hash, hash, event FROM audit_events "
            "WHERE session = ? AND seq IS NOT NULL ORDER BY seq",
            (row["id"],),
        ) as cursor:
            events = [
                {**json.loads(text), "seq": seq, "prev_hash": prev, "hash": digest}
                for seq, prev, digest, text in await cursor.fetchall()
            ]
        async with db.execute(
            "SELECT seq, hash FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)"
        ) as cursor:
            end = await cursor.fetchone()
        approvals = self._broker.approvals
        requests = {
            str(details["request"])
            for event in events
            if isinstance(details := event.get("details"), dict) and details.get("request")
        }
        standing = {
            str(event["details"]["standing_approval"])
            for event in events
            if isinstance(event.get("details"), dict) and event["details"].get("standing_approval")
        }
        records = [r for r in [await approvals.get(i) for i in sorted(requests)] if r]
        kept = [s for s in [await approvals.standing_record(i) for i in sorted(standing)] if s]
        now = time.time()
        approvals_json = json.dumps(
            {
                "requests": [record.to_dict() for record in records],
                "standing": [item.to_dict(now) for item in kept],
            },
            indent=1,
            sort_keys=True,
        ).encode()
        recording, signature = await self._sealed_recording(row, path.parent)
        signer = Signer.from_ssh_key(self._broker.keys.audit_key)
        head, _ = read_head(self._broker.data_dir, signer.verifier)
        if head is not None:
            head = json.loads((self._broker.data_dir / "audit_head").read_bytes())
        recorded = await asyncio.to_thread(recording.read_bytes) if recording else None
        manifest, files = bundle_files(
            session=row,
            events=events,
            recording=recorded,
            recording_signature=signature,
            approvals=approvals_json,
            head=head,
            public_key=self._broker.keys.audit_key.export_public_key(),
            chain_end=(int(end[0]), str(end[1])) if end else None,
            key=signer.fingerprint,
        )
        manifest["signature"] = signer.sign(manifest)

        def write() -> None:
            with path.open("wb") as out:
                write_tar(out, signed_files(manifest, files), manifest["made_at"])

        await asyncio.to_thread(write)
        return manifest

    async def _sealed_recording(
        self, row: dict[str, Any], scratch: Path
    ) -> tuple[Path | None, dict[str, Any] | None]:
        """The session's recording and its signature document, from here or the bucket."""
        from broker.audit.integrity import signature_path

        if not row["recording"]:
            return None, None
        path = self._recording_path(row)
        if path is None and self._broker.recording_objects is not None:
            objects = self._broker.recording_objects
            path = await asyncio.to_thread(objects.fetch, row["id"], scratch, sealed_only=True)
        if path is None:
            raise ApiError("not_found", f"session {row['id']} has no recording here")
        try:
            signature = json.loads(signature_path(path).read_bytes())
        except (OSError, ValueError):
            raise ApiError(
                "conflict", f"the recording of session {row['id']} is not signed"
            ) from None
        return path, signature

    def _recording_path(self, row: dict[str, Any]) -> Path | None:
        """The session's recording, which must be a regular file in the broker's recordings dir."""
        if not row["recording"]:
            return None
        path = Path(row["recording"])
        recordings = (self._broker.data_dir / "recordings").resolve()
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if resolved.parent != recordings or not resolved.is_file():
            return None
        return resolved

    async def _audit_replay(
        self,
        ctx: ConnectionContext,
        session_id: str,
        target: str | None,
        offset: int,
        follow: bool,
        refused: str | None,
    ) -> None:
        await self._broker.audit.emit(
            AuditEvent(
                type="session.replayed",
                actor=ctx.user,
                groups=ctx.groups,
                target=target,
                session=session_id if SESSION_ID.fullmatch(session_id) else None,
                remote=ctx.remote,
                outcome="failure" if refused else "success",
                reason=refused,
                details={"offset": offset, "follow": follow, "auditor": self._is_auditor(ctx)},
            )
        )


class BucketCopy:
    """A session's recording fetched from the bucket into a private directory under the data
    dir; while the session is open elsewhere, catch_up appends what its node shipped since."""

    def __init__(self, objects: RecordingObjects, session_id: str, path: Path) -> None:
        self.objects = objects
        self.session_id = session_id
        self.path = path
        self._sealed = False

    @classmethod
    async def fetch(
        cls, objects: RecordingObjects, session_id: str, data_dir: Path, *, live: bool
    ) -> BucketCopy | None:
        """The copy; None when the bucket has nothing of it and the session has ended (a
        LIVE session's first part may not have been shipped yet)."""
        cache = data_dir / "recordings-cache"
        cache.mkdir(mode=0o700, exist_ok=True)
        place = Path(tempfile.mkdtemp(dir=cache))
        copy = cls(objects, session_id, place / f"{session_id}.cast")
        copy.path.touch(mode=0o600)
        try:
            await copy.catch_up()
        except BaseException:
            copy.discard()
            raise
        if copy.path.stat().st_size == 0 and not copy._sealed and not live:
            copy.discard()
            return None
        return copy

    @property
    def sealed(self) -> bool:
        return self._sealed

    async def catch_up(self) -> None:
        """Append what the bucket holds past the end of the local copy (unreadable: later)."""
        from broker.recording_objects import ObjectStoreError

        if self._sealed:
            return
        size = self.path.stat().st_size
        try:
            stored = await asyncio.to_thread(self.objects.read, self.session_id, size)
        except ObjectStoreError:
            return
        if stored is None:
            return
        with self.path.open("ab") as file:
            file.write(stored.data)
        self._sealed = stored.sealed

    def discard(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)


def _time(params: dict[str, Any], key: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value < 1e11):
        raise ApiError("bad_request", f"{key} must be a unix time in seconds")
    return float(value)


def audit_methods(broker: AuditHost) -> ApiMethods:
    api = AuditApi(broker)
    return ApiMethods(
        calls={
            "sessions.list": api.list_sessions,
            "sessions.show": api.show_session,
            "sessions.search": api.search,
            "sessions.verify": api.verify,
            "signals.list": api.list_signals,
        },
        streams={"sessions.recording": api.recording, "sessions.bundle": api.bundle},
    )
