"""Insider-threat signals: baselines per user and target, and what stands out from them.

The broker keeps, in its store, what each user did on each target: the programs and statement
kinds they ran, the hours their sessions started, the rows each statement read and how long
their sessions lasted (``[signals] history``, 30 days by default). From them it emits
``signal.NAME`` audit events (docs/policy.md, "Signals"):

- ``first-time``: a program or statement kind this user never ran on this target before;
- ``off-hours``: a session starting in an hour of the day the user has not worked in lately;
- ``volume-spike``: a statement that read over ``volume_factor`` times the user's p95;
- ``repeated-denials``: ``denials`` refusals within ``denial_window``;
- ``self-approval``: someone tried to approve their own request, or to grant a standing
  approval to their own group;
- ``approval-overridden``: a command one approver denied, asked again and approved by another;
- ``long-session``: a session running past ``long_factor`` times the user's usual length.

A baseline speaks only once it holds ``min_sessions`` earlier sessions (``min_samples``
statements for volume), so a new user is not a stream of signals. The clock is injected.
Signals are also kept in a table of their own for `hoopctl signals` and `sessions --flagged`,
and a `lock:` action keeps a user off a target until the lock ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from broker.audit.events import AuditEvent
from broker.database import float_type, shared_schema
from broker.store import write_lock

if TYPE_CHECKING:
    from broker.audit.events import AuditLog
    from broker.config import SignalsSection
    from broker.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signal_seen (
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    first_at {real} NOT NULL,
    PRIMARY KEY ("user", target, kind, value)
);
CREATE TABLE IF NOT EXISTS signal_samples (
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    metric TEXT NOT NULL,
    value {real} NOT NULL,
    at {real} NOT NULL,
    session TEXT
);
CREATE INDEX IF NOT EXISTS signal_samples_key ON signal_samples("user", target, metric, at);
CREATE TABLE IF NOT EXISTS signals (
    id TEXT PRIMARY KEY,
    at {real} NOT NULL,
    name TEXT NOT NULL,
    "user" TEXT,
    target TEXT,
    session TEXT,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS signals_at ON signals(at);
CREATE INDEX IF NOT EXISTS signals_session ON signals(session);
CREATE TABLE IF NOT EXISTS signal_locks (
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    until {real} NOT NULL,
    signal TEXT NOT NULL,
    PRIMARY KEY ("user", target)
);
"""

log = logging.getLogger("hoop.broker.signals")

MAX_SEEN_VALUE = 200  # a program name or statement kind longer than this is cut
MAX_SAMPLES = 10_000  # a baseline is computed from at most this many of the latest samples
BASELINE_TTL = 60.0  # a p95 is computed again after this many seconds
PRUNE_EVERY = 3600.0  # samples older than the history are deleted this often
FLUSH_EVERY = 1.0  # row counts are written at most this late...
FLUSH_AT = 500  # ...or once this many wait


@dataclass(frozen=True)
class Signal:
    id: str
    at: float
    name: str
    user: str | None
    target: str | None
    session: str | None
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.at,
            "signal": self.name,
            "user": self.user,
            "target": self.target,
            "session": self.session,
            "details": self.details,
        }


@dataclass
class _Baseline:
    """The samples of one metric as read from the store, and their p95, sorted once per
    reading (not at every statement: the samples a session adds meanwhile move it little)."""

    read_at: float
    samples: list[float]
    _p95: float | None = None

    def p95(self) -> float:
        if self._p95 is None:
            self._p95 = p95(self.samples)
        return self._p95


class SignalHost(Protocol):
    store: Store
    audit: AuditLog


def p95(values: Sequence[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class SignalWatch:
    def __init__(
        self,
        broker: SignalHost,
        settings: SignalsSection,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._broker = broker
        self.settings = settings
        self.clock = clock
        # What this process knows already: values seen (they never become unseen), and
        # baselines computed lately, so a statement costs no full read of its history.
        self._seen: set[tuple[str, str, str, str]] = set()
        self._baselines: dict[tuple[str, str, str], _Baseline] = {}
        self._pruned = 0.0
        # Row counts not written yet (written in batches, off the statement's path).
        self._unwritten: list[tuple[str, str, str, float, float, str | None]] = []
        self._flusher: asyncio.Future[None] | None = None

    @property
    def _db(self) -> Any:
        return self._broker.store.db

    async def create_tables(self) -> None:
        schema = _SCHEMA.format(real=float_type(self._db))
        if shared_schema(self._db):
            async with write_lock(self._db):
                await self._db.execute("BEGIN IMMEDIATE")  # one node at a time
                await self._db.executescript(schema)
                await self._db.commit()
            return
        await self._db.executescript(schema)
        await self._db.commit()

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        return await self._broker.store.write(sql, params)

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, params))

    # -- the baselines ----------------------------------------------------------------------
    async def _sample(
        self, user: str, target: str, metric: str, value: float, session: str | None
    ) -> None:
        await self._write(
            'INSERT INTO signal_samples("user", target, metric, value, at, session) '
            "VALUES (?, ?, ?, ?, ?, ?)",
            (user, target, metric, value, self.clock(), session),
        )

    async def _sample_soon(
        self, user: str, target: str, metric: str, value: float, session: str | None
    ) -> None:
        """A sample written within a second, in a batch: a statement does not wait for it."""
        self._unwritten.append((user, target, metric, value, self.clock(), session))
        cached = self._baselines.get((user, target, metric))
        if cached is not None and len(cached.samples) < MAX_SAMPLES:
            cached.samples.append(value)
        if len(self._unwritten) >= FLUSH_AT:
            await self.flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_EVERY)
        try:
            await self.flush()
        except Exception:
            log.exception("signal samples could not be written")

    async def flush(self) -> None:
        """Write the samples not written yet."""
        rows, self._unwritten = self._unwritten, []
        if rows:
            await self._broker.store.write_many(
                'INSERT INTO signal_samples("user", target, metric, value, at, session) '
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    async def _samples(
        self, user: str, target: str, metric: str, *, exclude: str | None = None
    ) -> list[float]:
        since = self.clock() - self.settings.history
        rows = await self._rows(
            'SELECT value FROM signal_samples WHERE "user" = ? AND target = ? AND metric = ? '
            "AND at >= ? AND (session IS NULL OR session != ?) ORDER BY at DESC LIMIT ?",
            (user, target, metric, since, exclude or "", MAX_SAMPLES),
        )
        unwritten = [
            value
            for u, t, m, value, at, s in self._unwritten
            if (u, t, m) == (user, target, metric) and at >= since and (s is None or s != exclude)
        ]
        return unwritten + [float(row[0]) for row in rows]

    async def _baseline(self, user: str, target: str, metric: str) -> _Baseline:
        """The samples of METRIC, as read at most BASELINE_TTL seconds ago (a baseline too thin
        to speak yet is read every time: it is short)."""
        key = (user, target, metric)
        now = self.clock()
        cached = self._baselines.get(key)
        if (
            cached is None
            or not 0 <= now - cached.read_at < BASELINE_TTL
            or len(cached.samples) < self.settings.min_samples
        ):
            cached = _Baseline(now, await self._samples(user, target, metric))
            self._baselines[key] = cached
            if len(self._baselines) > 10_000:
                self._baselines.pop(next(iter(self._baselines)))
        return cached

    async def _prune(self) -> None:
        now = self.clock()
        if 0 <= now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        await self._write("DELETE FROM signal_samples WHERE at < ?", (now - self.settings.history,))

    def _hour(self, at: float) -> int:
        return datetime.fromtimestamp(at, ZoneInfo(self.settings.tz)).hour

    async def _established(self, user: str, target: str, session: str | None) -> bool:
        """Whether the user's baseline on TARGET holds enough earlier sessions to speak."""
        started = await self._samples(user, target, "start", exclude=session)
        return len(started) >= self.settings.min_sessions

    # -- what sessions report ---------------------------------------------------------------
    async def session_started(
        self, *, user: str, groups: Sequence[str], target: str, session: str
    ) -> list[Signal]:
        now = self.clock()
        hour = self._hour(now)
        fired = []
        if await self._established(user, target, session):
            usual = {int(h) for h in await self._samples(user, target, "start", exclude=session)}
            near = {(hour - 1) % 24, hour, (hour + 1) % 24}
            if not usual & near:
                fired.append(
                    await self.fire(
                        "off-hours",
                        user=user,
                        groups=groups,
                        target=target,
                        session=session,
                        details={"hour": hour, "tz": self.settings.tz, "usual": sorted(usual)},
                    )
                )
        await self._sample_soon(user, target, "start", hour, session)
        return fired

    async def ran(
        self,
        *,
        user: str,
        groups: Sequence[str],
        target: str,
        session: str,
        kind: str,
        values: Sequence[str],
    ) -> list[Signal]:
        """KIND ("program" or "statement") VALUES ran: the ones never seen before are new."""
        new = []
        for value in dict.fromkeys(v[:MAX_SEEN_VALUE] for v in values if v):
            known = (user, target, kind, value)
            if known in self._seen:
                continue
            inserted = await self._write(
                'INSERT INTO signal_seen("user", target, kind, value, first_at) '
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (user, target, kind, value, self.clock()),
            )
            self._seen.add(known)
            if len(self._seen) > 100_000:
                self._seen.clear()
            if inserted:
                new.append(value)
        if not new or not await self._established(user, target, session):
            return []
        return [
            await self.fire(
                "first-time",
                user=user,
                groups=groups,
                target=target,
                session=session,
                details={"kind": kind, "values": new},
            )
        ]

    async def rows_read(
        self, *, user: str, groups: Sequence[str], target: str, session: str, rows: int
    ) -> list[Signal]:
        baseline = await self._baseline(user, target, "rows")
        history = baseline.samples
        fired = []
        if len(history) >= self.settings.min_samples:
            usual = baseline.p95()
            limit = max(usual, 1.0) * self.settings.volume_factor
            if rows > limit:
                fired.append(
                    await self.fire(
                        "volume-spike",
                        user=user,
                        groups=groups,
                        target=target,
                        session=session,
                        details={
                            "rows": rows,
                            "p95": usual,
                            "factor": self.settings.volume_factor,
                            "samples": len(history),
                        },
                    )
                )
        await self._sample_soon(user, target, "rows", rows, session)
        return fired

    async def denied(
        self, *, user: str, groups: Sequence[str], target: str, session: str | None
    ) -> list[Signal]:
        await self._sample(user, "*", "denial", 1, session)
        since = self.clock() - self.settings.denial_window
        count = len(
            await self._rows(
                "SELECT 1 FROM signal_samples WHERE \"user\" = ? AND metric = 'denial' AND at >= ?",
                (user, since),
            )
        )
        if count < self.settings.denials:
            return []
        recent = await self._rows(
            "SELECT 1 FROM signals WHERE name = 'repeated-denials' AND \"user\" = ? AND at >= ?",
            (user, since),
        )
        if recent:
            return []  # said once per window
        return [
            await self.fire(
                "repeated-denials",
                user=user,
                groups=groups,
                target=target,
                session=session,
                details={"denials": count, "window": self.settings.denial_window},
            )
        ]

    async def session_ended(self, *, user: str, target: str, session: str, seconds: float) -> None:
        await self._sample_soon(user, target, "duration", seconds, session)
        await self._prune()

    async def usual_length(self, user: str, target: str) -> float | None:
        """How long a session of USER on TARGET may run before it is a long one; None while the
        baseline is too thin."""
        durations = await self._samples(user, target, "duration")
        if len(durations) < self.settings.min_sessions:
            return None
        return max(p95(durations) * self.settings.long_factor, float(self.settings.long_min))

    # -- signals --------------------------------------------------------------------------
    async def fire(
        self,
        name: str,
        *,
        user: str | None,
        groups: Sequence[str] = (),
        target: str | None,
        session: str | None,
        details: dict[str, Any],
    ) -> Signal:
        signal = Signal(
            id="sg-" + secrets.token_hex(5),
            at=self.clock(),
            name=name,
            user=user,
            target=target,
            session=session,
            details=details,
        )
        await self._write(
            'INSERT INTO signals(id, at, name, "user", target, session, details) '
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (signal.id, signal.at, name, user, target, session, json.dumps(details)),
        )
        await self._broker.audit.emit(
            AuditEvent(
                type=f"signal.{name}",
                actor=user,
                groups=tuple(groups),
                target=target,
                session=session,
                outcome="unknown",
                reason=describe(signal),
                details={"signal": name, "id": signal.id, **details},
            )
        )
        return signal

    async def noted(self, signal: Signal, action: str) -> None:
        """Record what the session did about SIGNAL (its action), as an audit event."""
        await self._broker.audit.emit(
            AuditEvent(
                type="signal.action",
                actor=signal.user,
                target=signal.target,
                session=signal.session,
                outcome="success",
                reason=f"on_signal {signal.name} = {action}",
                details={"signal": signal.name, "id": signal.id, "action": action},
            )
        )

    # -- locks ----------------------------------------------------------------------------
    async def lock(self, user: str, target: str, seconds: int, signal: Signal) -> float:
        until = self.clock() + seconds
        await self._write(
            'INSERT INTO signal_locks("user", target, until, signal) VALUES (?, ?, ?, ?) '
            'ON CONFLICT ("user", target) DO UPDATE SET until = excluded.until, '
            "signal = excluded.signal",
            (user, target, until, signal.id),
        )
        return until

    async def locked_until(self, user: str, target: str) -> tuple[float, str] | None:
        rows = await self._rows(
            'SELECT until, signal FROM signal_locks WHERE "user" = ? AND target = ? AND until > ?',
            (user, target, self.clock()),
        )
        if not rows:
            return None
        found = await self._rows("SELECT name FROM signals WHERE id = ?", (rows[0][1],))
        return float(rows[0][0]), str(found[0][0]) if found else str(rows[0][1])

    # -- reading --------------------------------------------------------------------------
    async def listing(
        self,
        *,
        since: float | None = None,
        user: str | None = None,
        target: str | None = None,
        session: str | None = None,
        limit: int = 1000,
    ) -> list[Signal]:
        where, params = ["1 = 1"], []
        for column, value in (
            ("at >= ", since),
            ('"user" = ', user),
            ("target = ", target),
            ("session = ", session),
        ):
            if value is not None:
                where.append(f"{column}?")
                params.append(value)
        rows = await self._rows(
            f'SELECT id, at, name, "user", target, session, details FROM signals '  # noqa: S608
            f"WHERE {' AND '.join(where)} ORDER BY at DESC LIMIT {int(limit)}",
            params,
        )
        return [
            Signal(row[0], float(row[1]), row[2], row[3], row[4], row[5], json.loads(row[6]))
            for row in rows
        ]

    async def flagged(self, session_ids: Sequence[str]) -> dict[str, list[str]]:
        """The signal names of each of SESSION_IDS that has any."""
        found: dict[str, list[str]] = {}
        for start in range(0, len(session_ids), 500):
            part = list(session_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            for session, name in await self._rows(
                f"SELECT session, name FROM signals WHERE session IN ({marks}) ORDER BY at",  # noqa: S608
                part,
            ):
                found.setdefault(session, []).append(name)
        return found

    async def flagged_sessions(self, limit: int = 10_000) -> list[str]:
        rows = await self._rows(
            "SELECT session FROM signals WHERE session IS NOT NULL "
            "GROUP BY session ORDER BY MAX(at) DESC LIMIT ?",
            (int(limit),),
        )
        return [str(row[0]) for row in rows]


def describe(signal: Signal) -> str:
    """One line about SIGNAL, for the audit event's reason and the listings."""
    d, who = signal.details, signal.user or "someone"
    where = f" on {signal.target}" if signal.target else ""
    match signal.name:
        case "first-time":
            return f"{who} ran a {d.get('kind')} never seen before{where}: {', '.join(d.get('values', []))}"
        case "off-hours":
            return f"{who} started a session{where} at {d.get('hour')}:00 {d.get('tz')}, outside their usual hours"
        case "volume-spike":
            return (
                f"{who} read {d.get('rows')} rows{where}, over {d.get('factor')} x their usual "
                f"{d.get('p95')} (p95)"
            )
        case "repeated-denials":
            return f"{who} was refused {d.get('denials')} times within {d.get('window')} s"
        case "self-approval":
            return f"{who} tried to approve their own {d.get('what', 'request')}{where}"
        case "approval-overridden":
            return (
                f"{who}'s command{where} denied by {d.get('denied_by')} was approved by "
                f"{d.get('approved_by')}"
            )
        case "long-session":
            return f"{who}'s session{where} ran past {d.get('seconds')} s, over their usual length"
    return f"{signal.name}{where}"
