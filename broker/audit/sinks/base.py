"""What every audit sink shares: a bounded queue, a task of its own, a health state.

A sink never blocks the session that emits an event: :meth:`Sink.offer` puts the event in a
bounded queue and returns; the sink's task does the writing or sending. When the queue is
full the event is dropped from that sink (counted, logged once, shown in its health);
lossless sinks (file, webhook) fetch what they missed from the store by `seq` as soon as they
can write again, so a drop there delays events but does not lose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from broker.audit.config import SinkConfig

log = logging.getLogger("hoop.audit")

Fetch = Callable[[int, int | None, int], Awaitable[list[dict[str, Any]]]]
"""store.audit_events_between(after, before, limit): chained events by seq."""

OK, DEGRADED, FAILING = "ok", "degraded", "failing"
RETRY_WRITE = 1.0  # seconds between attempts to write again after a local write failed
BACKFILL_CHUNK = 1000


@dataclass
class SinkHealth:
    """What `AuditLog.health()` shows for one sink."""

    name: str
    type: str
    lossless: bool
    state: str = OK  # ok | degraded (working, at risk) | failing (events not taken)
    message: str = ""
    since: float | None = None
    delivered: int = 0
    dropped: int = 0
    queued: int = 0
    backlog: int = 0  # events written locally but not yet accepted by the endpoint
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


StateListener = Callable[["Sink", str, str, str], None]


class Sink:
    """Base class. Subclasses implement :meth:`offer` or, through QueueSink, :meth:`_handle`."""

    type = "sink"
    lossless = False  # `[audit] strict` refuses new sessions while such a sink is not ok

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.name = config.label
        self._health = SinkHealth(self.name, config.type, self.lossless)
        self._listener: StateListener | None = None
        self._fetch: Fetch | None = None
        self._head_seq = 0

    def bind(
        self, *, fetch: Fetch | None, listener: StateListener | None, head_seq: int = 0
    ) -> None:
        """FETCH reads events from the store by seq; LISTENER hears of state changes;
        HEAD_SEQ is the newest event stored when the broker started."""
        self._fetch = fetch
        self._listener = listener
        self._head_seq = head_seq

    def offer(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        pass

    async def close(self, drain_seconds: float = 5.0) -> None:
        pass

    def health(self) -> SinkHealth:
        return self._health

    def _set_state(self, state: str, message: str) -> None:
        """Move to STATE; log a change loudly once (not once per event)."""
        old = self._health.state
        self._health.message = message
        if state == old:
            return
        self._health.state = state
        self._health.since = time.time()
        if state == OK:
            log.warning("audit sink %s (%s): recovered: %s", self.name, self.type, message)
        else:
            log.error("audit sink %s (%s): %s: %s", self.name, self.type, state.upper(), message)
        if self._listener is not None:
            self._listener(self, old, state, message)


class QueueSink(Sink):
    """Events pass through a bounded queue to the sink's own task, in order."""

    batch_max = 500

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(config)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=config.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._overflow = False
        self._closing = False

    def offer(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._health.dropped += 1
            if not self._overflow:
                self._overflow = True
                what = (
                    "they will be fetched from the store once it catches up"
                    if self.lossless
                    else "they are lost for this sink"
                )
                self._set_state(
                    FAILING if self.lossless else DEGRADED,
                    f"queue full ({self.config.queue_size} events): events are dropped; {what}",
                )
        self._health.queued = self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"audit-sink-{self.name}")

    async def _run(self) -> None:
        try:
            await self._prepare()
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self.batch_max and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                self._health.queued = self._queue.qsize()
                await self._handle(batch)
                for _ in batch:
                    self._queue.task_done()
                if self._overflow and self._queue.qsize() < self.config.queue_size // 2:
                    self._overflow = False
                    if self._queue_recovered():
                        state, message = self._healthy_state()
                        self._set_state(state, message or "the queue has room again")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("audit sink %s stopped by an internal error", self.name)
            self._set_state(FAILING, "stopped by an internal error (see the broker log)")

    def _queue_recovered(self) -> bool:
        """Whether draining the queue is all it takes to be ok again."""
        return True

    def _healthy_state(self) -> tuple[str, str]:
        return OK, "the queue has room again"

    async def _prepare(self) -> None:
        """Runs first in the sink's task (connect, backfill)."""

    async def _handle(self, batch: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def close(self, drain_seconds: float = 5.0) -> None:
        """Give the queue up to DRAIN_SECONDS to drain, then stop the task."""
        self._closing = True
        if self._task is None:
            return
        if not self._task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._queue.join()), drain_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self._shutdown()

    async def _shutdown(self) -> None:
        pass


class DurableSink(QueueSink):
    """A sink that writes events locally and must not lose any (file, webhook spool).

    It remembers the last `seq` it wrote. A batch that starts after a gap (events dropped
    from a full queue, or written by `hoop-broker prune` in another process) is completed
    from the store first; events it already has are skipped. A write that fails is retried
    every second, holding the batch, until it succeeds.
    """

    lossless = True

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(config)
        self._last_seq: int | None = None
        self._write_failed = False

    async def _write(self, records: list[dict[str, Any]]) -> None:
        """Write RECORDS, all or nothing as far as the sink is concerned; raise OSError."""
        raise NotImplementedError

    def _queue_recovered(self) -> bool:
        return not self._write_failed

    async def _prepare(self) -> None:
        if self._last_seq is not None and self._head_seq > self._last_seq:
            # Stored while this sink was not running (or not written before a crash).
            await self._backfill(self._head_seq + 1)

    async def _handle(self, batch: list[dict[str, Any]]) -> None:
        pending: list[dict[str, Any]] = []
        last = self._last_seq  # the newest seq written or about to be
        for record in batch:
            seq = record.get("seq")
            if isinstance(seq, int) and last is not None:
                if seq <= last:
                    continue  # already written (fetched from the store during a backfill)
                if seq > last + 1:
                    await self._write_durably(pending)
                    pending = []
                    await self._backfill(seq)
                    last = self._last_seq
                    if last is not None and seq <= last:
                        continue
            pending.append(record)
            if isinstance(seq, int):
                last = seq
        await self._write_durably(pending)

    async def _backfill(self, before: int | None) -> None:
        """Write the stored events after the last one written (and before BEFORE)."""
        if self._fetch is None or self._last_seq is None:
            return
        first = self._last_seq + 1
        count = 0
        while True:
            records = await self._fetch(self._last_seq, before, BACKFILL_CHUNK)
            if not records:
                break
            await self._write_durably(records)
            count += len(records)
        if count:
            log.warning(
                "audit sink %s: wrote %d events (seq %d-%s) from the store that it had not "
                "received directly",
                self.name,
                count,
                first,
                self._last_seq,
            )

    async def _write_durably(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        while True:
            try:
                await self._write(records)
            except OSError as exc:
                self._write_failed = True
                self._set_state(FAILING, self._write_error(exc))
                if self._closing:
                    return
                await asyncio.sleep(RETRY_WRITE)
                continue
            self._write_failed = False
            last = records[-1].get("seq")
            if isinstance(last, int):
                self._last_seq = last
            self._written(records)
            if not self._overflow:
                state, message = self._healthy_state()
                if state != self._health.state:
                    self._set_state(state, message)
            return

    def _written(self, records: list[dict[str, Any]]) -> None:
        self._health.delivered += len(records)

    def _healthy_state(self) -> tuple[str, str]:
        """The state after a write succeeded (a subclass may still be at risk)."""
        return OK, "writing again"

    def _write_error(self, exc: OSError) -> str:
        return f"cannot write: {exc.strerror or exc}"
