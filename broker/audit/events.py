"""Structured audit events: hash-chained in the store, then handed to the configured sinks.

:meth:`AuditLog.emit` appends the event to the chain (broker/store.py: seq, prev_hash, hash)
and offers the chained record to every sink. Sinks never block the caller (stdout is written
at once, as it always was; the others have bounded queues and tasks of their own). What the
broker knows about its audit pipeline is in :meth:`AuditLog.health`; with `[audit] strict =
true`, :meth:`AuditLog.refusal_reason` says why new sessions must be refused while an event
could be lost.

The newest seq and hash are also signed into `DATA_DIR/audit_head` (at most once a second,
and at start and close), so `hoop-broker verify` notices events deleted from the end of the
chain, and this broker never re-uses the seq numbers of such events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from broker.audit.config import SinkConfig
from broker.audit.integrity import Signer, json_safe, read_head, write_head
from broker.audit.sinks import OK, Sink, StdoutSink, build_sink
from broker.errors import StoreError
from broker.store import Store

if TYPE_CHECKING:
    from broker.config import BrokerConfig

log = logging.getLogger("hoop.audit")

HEAD_INTERVAL = 1.0  # seconds between rewrites of the signed chain head
FOLLOW_POLL = 0.05  # seconds between reads of the store by a log that follows it (workers)
FOLLOW_CHUNK = 500
# Where the process that runs the sinks (the supervisor of `serve --workers N`) tells the
# workers how the audit pipeline stands, for strict mode.
HEALTH_FILE = "audit_health.json"
HEALTH_STALE = 10.0  # seconds after which a health file nobody rewrote is not trusted
CLOSE_TIMEOUT = 5.0  # seconds each sink gets to drain its queue when the broker stops


@dataclass(frozen=True)
class AuditEvent:
    type: str
    actor: str | None = None
    groups: Sequence[str] = ()
    target: str | None = None
    session: str | None = None
    outcome: str = "success"
    reason: str | None = None
    remote: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    actor_kind: str | None = None  # "person" or "agent"; filled in by AuditLog.emit when known
    client: dict[str, str] | None = None  # what the client said it is (name, version)


def event_record(event: AuditEvent, now: float) -> dict[str, Any]:
    """The stored form of EVENT: empty fields left out, `groups` always a list, `time` set."""
    record = {k: v for k, v in asdict(event).items() if v not in (None, (), {}, [])}
    record["groups"] = list(event.groups)
    record["time"] = now
    return json_safe(record)


class AuditLog:
    def __init__(
        self,
        store: Store,
        *,
        stdout: bool = True,
        stream: TextIO | None = None,
        sinks: Sequence[Sink] = (),
        strict: bool = False,
        data_dir: Path | None = None,
        signer: Signer | None = None,
        role: str = "single",
    ) -> None:
        # ROLE "single": one broker process; events go to the store, then to the sinks.
        # "supervisor": the sinks and the signed head follow the store, where the workers
        # write (this process writes its own events there too). "worker": events go to the
        # store only; strict mode asks the supervisor's health file.
        self._role = role
        self._follow_task: asyncio.Task[None] | None = None
        self._health_cache: tuple[float, dict[str, Any] | None] = (0.0, None)
        self._followed = 0  # the newest seq handed to the sinks (supervisor)
        self._store = store
        self._sinks: list[Sink] = []
        if stdout:
            self._sinks.append(StdoutSink(SinkConfig(type="stdout"), stream=stream))
        self._sinks.extend(sinks)
        self.strict = strict
        # Each user's kind ("person" or "agent"), as last seen at login or SSH authentication:
        # every event with an actor carries it.
        self.actor_kinds: dict[str, str] = {}
        self._data_dir = data_dir
        self._signer = signer
        self._store_error: str | None = None
        self._head: tuple[int, str] | None = None
        self._head_dirty: asyncio.Event | None = None
        self._head_task: asyncio.Task[None] | None = None
        self._head_failed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False

    @property
    def sinks(self) -> list[Sink]:
        return list(self._sinks)

    async def start(self) -> None:
        """Check the signed head against the store, then start the sinks."""
        if self._started:
            return
        self._started = True
        head_seq, head_hash = await self._store.audit_head()
        if self._data_dir is not None and self._signer is not None:
            anchor, problem = read_head(self._data_dir, self._signer.verifier)
            if problem:
                log.error("audit: the signed chain head cannot be trusted: %s", problem)
            if anchor is not None:
                self._store.set_chain_floor(int(anchor["seq"]), str(anchor["hash"]))
                if int(anchor["seq"]) > head_seq:
                    log.critical(
                        "audit: events seq %d-%d are missing from the store (the broker signed "
                        "seq %d as its newest event); new events continue after seq %d so that "
                        "the gap shows in hoop-broker verify",
                        head_seq + 1,
                        anchor["seq"],
                        anchor["seq"],
                        anchor["seq"],
                    )
            self._head = (head_seq, head_hash)
            await self._write_head()
            self._head_dirty = asyncio.Event()
            self._head_task = asyncio.create_task(self._head_loop(), name="audit-head")
        for sink in self._sinks:
            sink.bind(
                fetch=self._store.audit_events_between,
                listener=self._sink_changed,
                head_seq=head_seq,
            )
            await sink.start()
        if self._role == "supervisor":
            self._followed = head_seq
            self._write_health()
            self._follow_task = asyncio.create_task(self._follow(head_seq), name="audit-follow")

    async def _follow(self, after: int) -> None:
        """Hand every event the store gains, in chain order, to the sinks (supervisor)."""
        last_health = time.monotonic()
        while True:
            try:
                after = await self._catch_up(after)
            except Exception:  # the store is read again next time; nothing is skipped
                log.exception("audit: reading new events from the store failed")
            if time.monotonic() - last_health > HEALTH_STALE / 4:
                last_health = time.monotonic()
                await asyncio.to_thread(self._write_health)
            await asyncio.sleep(FOLLOW_POLL)

    async def _catch_up(self, after: int) -> int:
        while records := await self._store.audit_events_between(after, None, FOLLOW_CHUNK):
            for record in records:
                for sink in self._sinks:
                    sink.offer(record)
                after = int(record["seq"])
                self._head = (after, str(record["hash"]))
            if self._head_dirty is not None:
                self._head_dirty.set()
        self._followed = after
        return after

    async def emit(self, event: AuditEvent) -> dict[str, Any]:
        if event.actor is not None and event.actor_kind is None:
            kind = self.actor_kinds.get(event.actor)
            if kind is None and self._role == "worker":
                # The actor authenticated on another worker: their kind is in the store.
                with contextlib.suppress(Exception):
                    stored = await self._store.identity(event.actor)
                    if stored is not None:
                        kind = self.actor_kinds.setdefault(event.actor, stored.kind)
            if kind is not None:
                event = replace(event, actor_kind=kind)
        record = event_record(event, time.time())
        try:
            chained = await self._store.append_audit(record)
        except StoreError as exc:
            if self._store_error is None:
                log.error("audit: the store cannot be written: %s", exc)
            self._store_error = str(exc)
            for sink in self._sinks:
                sink.offer(record)  # not chained, but not lost to the sinks either
            raise
        if self._store_error is not None:
            log.warning("audit: the store can be written again")
            self._store_error = None
        if self._role == "supervisor":
            return chained  # its sinks and head follow the store, which has it now
        for sink in self._sinks:  # (a worker has none)
            sink.offer(chained)
        self._head = (chained["seq"], chained["hash"])
        if self._head_dirty is not None:
            self._head_dirty.set()
        return chained

    # -- health -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The audit pipeline as the broker sees it: the store and each sink."""
        sinks = [sink.health().to_json() for sink in self._sinks]
        if self._role == "worker":
            shared = self._shared_health()
            sinks = list(shared.get("sinks", [])) if shared else []
        return {
            "strict": self.strict,
            "store": {
                "state": "failing" if self._store_error else OK,
                "message": self._store_error or "",
            },
            "head": {"seq": self._head[0], "hash": self._head[1]} if self._head else None,
            "sinks": sinks,
            "refusing": self.refusal_reason(),
        }

    def _shared_health(self) -> dict[str, Any] | None:
        """The supervisor's view of the sinks (its health file), None if unknown or stale."""
        if self._data_dir is None:
            return None
        path = self._data_dir / HEALTH_FILE
        try:
            mtime = path.stat().st_mtime
            if self._health_cache[0] != mtime:
                self._health_cache = (mtime, json.loads(path.read_text()))
        except (OSError, ValueError):
            return None
        health = self._health_cache[1]
        if not isinstance(health, dict) or time.time() - float(health.get("time", 0)) > (
            HEALTH_STALE
        ):
            return None
        return health

    def _write_health(self) -> None:
        if self._role != "supervisor" or self._data_dir is None:
            return
        health = {
            "time": time.time(),
            "sinks": [sink.health().to_json() for sink in self._sinks],
            "refusing": self._sink_refusal(),
        }
        path = self._data_dir / HEALTH_FILE
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(health))
            temporary.replace(path)
        except OSError as exc:
            log.error("audit: cannot write %s: %s", path, exc)

    def refusal_reason(self) -> str | None:
        """Why new sessions must be refused now (strict mode only), or None.

        Strict mode refuses while the store cannot be written or a lossless sink (file,
        webhook spool) is not ok: failing (cannot take events) or degraded (the webhook
        spool cannot reserve space ahead, or a queue overflowed).
        """
        if not self.strict:
            return None
        if self._store_error is not None:
            return f"the audit trail cannot be written (store: {self._store_error})"
        if self._role == "worker":
            shared = self._shared_health()
            if shared is None:
                return "the audit trail's sinks cannot be checked (no word from the supervisor)"
            refusing = shared.get("refusing")
            return str(refusing) if refusing else None
        return self._sink_refusal()

    def _sink_refusal(self) -> str | None:
        for sink in self._sinks:
            health = sink.health()
            if sink.lossless and health.state != OK:
                return (
                    f"the audit trail cannot be written safely (audit sink {sink.name}: "
                    f"{health.message})"
                )
        return None

    def _sink_changed(self, sink: Sink, old: str, new: str, message: str) -> None:
        """A sink changed state: record it in the chain as an `audit.sink` event."""
        if self._closed:
            return
        self._write_health()
        if self.strict and sink.lossless:
            if new != OK:
                log.error(
                    "audit: strict mode: new sessions are refused until %s recovers", sink.name
                )
            elif self.refusal_reason() is None:
                log.warning("audit: strict mode: new sessions are accepted again")
        event = AuditEvent(
            type="audit.sink",
            outcome="success" if new == OK else "failure",
            reason=message,
            details={"sink": sink.name, "sink_type": sink.type, "state": new, "previous": old},
        )
        try:
            task = asyncio.get_running_loop().create_task(self._emit_quietly(event))
        except RuntimeError:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _emit_quietly(self, event: AuditEvent) -> None:
        with contextlib.suppress(StoreError):
            await self.emit(event)

    # -- the signed head --------------------------------------------------------------------

    async def _write_head(self) -> None:
        if self._head is None or self._data_dir is None or self._signer is None:
            return
        seq, digest = self._head
        try:
            await asyncio.to_thread(write_head, self._data_dir, self._signer, seq, digest)
        except OSError as exc:
            if not self._head_failed:
                log.error("audit: cannot write the signed chain head: %s", exc)
            self._head_failed = True
        else:
            if self._head_failed:
                log.warning("audit: the signed chain head is written again")
            self._head_failed = False

    async def _head_loop(self) -> None:
        assert self._head_dirty is not None
        while True:
            await self._head_dirty.wait()
            self._head_dirty.clear()
            await self._write_head()
            await asyncio.sleep(HEAD_INTERVAL)

    async def close(self) -> None:
        """Let the sinks drain (a few seconds at most) and sign the final head."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
            with contextlib.suppress(Exception):  # the last events, written as workers ended
                await self._catch_up(self._followed)
        await asyncio.gather(
            *(sink.close(CLOSE_TIMEOUT) for sink in self._sinks), return_exceptions=True
        )
        if self._head_task is not None:
            self._head_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._head_task
            await self._write_head()


async def open_audit_log(store: Store, config: BrokerConfig, role: str = "single") -> AuditLog:
    """The broker's audit log as configured (store, stdout and the configured sinks), started.

    ROLE "worker" (a worker of `serve --workers N`): the store only; its supervisor runs the
    sinks and signs the head."""
    data_dir = config.broker.data_dir
    worker = role == "worker"
    sinks = [] if worker else [build_sink(sink, data_dir=data_dir) for sink in config.audit.sinks]
    explicit_stdout = any(sink.type == "stdout" for sink in config.audit.sinks)
    audit = AuditLog(
        store,
        stdout=config.broker.audit_stdout and not explicit_stdout and not worker,
        sinks=sinks,
        strict=config.audit.strict,
        data_dir=data_dir,
        signer=None if worker else Signer.load(data_dir, create=True),
        role=role,
    )
    await audit.start()
    return audit
