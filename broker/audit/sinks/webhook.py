"""The `webhook` sink: events POSTed as JSON arrays, spooled on disk, delivered in order.

Every event goes to the sink's spool first (``DATA_DIR/audit-spool/NAME``, see spool.py);
one delivery task reads the spool from its cursor, POSTs up to `batch_size` events as one
JSON array and moves the cursor only after a 2xx answer. Anything else (a refused
connection, a timeout, a 5xx or 4xx status) is retried with the same batch after
`retry_initial` seconds, doubling up to `retry_max`, for as long as it takes: events arrive
in order, and none is skipped. The broker logs the outage once when it begins and once when
it ends.

Nothing twice: a batch is sent again only if its 2xx was not received (or the broker died
between the 2xx and the cursor's fsync). Each event carries `seq` and its `hash` (ECS:
`event.sequence`, `event.id`), and each request the headers ``X-Hoop-Seq-First`` and
``X-Hoop-Seq-Last``, so a receiver can drop what it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from broker.audit.config import SinkConfig
from broker.audit.sinks.base import DEGRADED, FAILING, OK, RETRY_WRITE, DurableSink, log
from broker.audit.sinks.formats import dumps, render
from broker.audit.sinks.spool import Position, Spool, SpoolFull
from broker.credentials import resolve_credential

T = TypeVar("T")
SPOOL_DIR = "audit-spool"
IDLE_CHECK = 1.0  # seconds between looks at the spool (and at low space) when idle


class WebhookSink(DurableSink):
    type = "webhook"

    def __init__(self, config: SinkConfig, *, data_dir: Path) -> None:
        super().__init__(config)
        self.spool = Spool(data_dir / SPOOL_DIR / self.name, config.spool_max_size)
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"hoop-spool-{self.name}")
        self._wake = asyncio.Event()
        self._deliver_task: asyncio.Task[None] | None = None
        self._headers: dict[str, str] = {"Content-Type": "application/json", **config.headers}
        self._outage_since: float | None = None
        self._health.extra.update(spooled=0, endpoint="ok", attempts=0)

    async def _io_call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def start(self) -> None:
        if self.config.authorization:
            self._headers["Authorization"] = resolve_credential(
                self.config.authorization, target=f"audit sink {self.name}"
            )
        await super().start()

    async def _prepare(self) -> None:
        """Open the spool (retrying every second while it cannot be), then start delivering."""
        while True:
            try:
                await self._io_call(self.spool.open)
                if self.spool.last_seq is None:
                    # A new sink starts with the events after it; history stays in the store.
                    await self._io_call(self.spool.commit, Position(1, 0), self._head_seq)
                    self.spool.last_seq = self._head_seq
                break
            except OSError as exc:
                self._set_state(FAILING, self._write_error(exc))
                await asyncio.sleep(RETRY_WRITE)
        self._last_seq = self.spool.last_seq
        self._health.backlog = self.spool.backlog
        if self._health.state != OK:
            self._set_state(*self._healthy_state())
        self._deliver_task = asyncio.create_task(self._deliver(), name=f"audit-webhook-{self.name}")
        await super()._prepare()

    # -- spooling (the queue task) ----------------------------------------------------------

    async def _write(self, records: list[dict[str, Any]]) -> None:
        lines = [(dumps(record) + "\n").encode() for record in records]
        last = records[-1].get("seq")
        await self._io_call(self.spool.append, lines, last if isinstance(last, int) else None)
        self._wake.set()

    def _written(self, records: list[dict[str, Any]]) -> None:
        self._health.extra["spooled"] += len(records)
        self._health.backlog = self.spool.backlog

    def _healthy_state(self) -> tuple[str, str]:
        if self.spool.low_space:
            return (
                DEGRADED,
                f"spool space is low ({self.spool.low_space}); events are still spooled",
            )
        return OK, f"the spool {self.spool.directory} can be written"

    def _write_error(self, exc: OSError) -> str:
        if isinstance(exc, SpoolFull):
            why = str(exc.strerror)
        else:
            why = f"{exc.strerror or exc}"
        return (
            f"the spool {self.spool.directory} cannot be written ({why}): events wait in memory "
            f"(up to {self.config.queue_size}) and are taken from the store once it can"
        )

    # -- delivery ---------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        context: ssl.SSLContext | bool = True
        if self.config.tls_ca is not None:
            context = ssl.create_default_context(cafile=str(self.config.tls_ca))
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            connector=aiohttp.TCPConnector(ssl=context),
        )

    async def _post(
        self, client: aiohttp.ClientSession, body: bytes, first: Any, last: Any
    ) -> str | None:
        """POST one batch; None when the endpoint took it (2xx), else why not."""
        headers = {**self._headers, "X-Hoop-Seq-First": str(first), "X-Hoop-Seq-Last": str(last)}
        assert self.config.url is not None
        self._health.extra["attempts"] += 1
        try:
            async with client.post(self.config.url, data=body, headers=headers) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status} {response.reason or ''}".strip()
        except TimeoutError:
            return f"no answer within {self.config.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return str(exc) or type(exc).__name__

    async def _idle(self) -> None:
        """Wait for the spool to grow (the flag was cleared before the read that found it empty,
        so an append in between is not missed)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), IDLE_CHECK)
        await self._recheck_space()

    async def _recheck_space(self) -> None:
        if self.spool.low_space and not self._write_failed:
            await self._io_call(self.spool.check_space)
            state, message = self._healthy_state()
            if state != self._health.state:
                self._set_state(state, message)

    async def _deliver(self) -> None:
        delay = self.config.retry_initial
        async with self._client() as client:
            while True:
                self._wake.clear()
                try:
                    lines, position = await self._io_call(self.spool.read, self.config.batch_size)
                except OSError as exc:
                    log.error("audit sink %s: cannot read the spool: %s", self.name, exc)
                    await asyncio.sleep(IDLE_CHECK)
                    continue
                if not lines:
                    await self._idle()
                    continue
                records = []
                raws = []
                for raw in lines:
                    try:
                        records.append(json.loads(raw))
                        raws.append(raw.rstrip(b"\n"))
                    except ValueError:
                        log.error(
                            "audit sink %s: skipped a damaged spool line: %r", self.name, raw[:80]
                        )
                if not records:
                    await self._io_call(self.spool.commit, position, None)
                    continue
                if self.config.format == "native":  # the spool holds native JSON already
                    body = b"[" + b",".join(raws) + b"]"
                else:
                    body = ("[" + ",".join(dumps(render(r, "ecs")) for r in records) + "]").encode()
                first, last = records[0].get("seq"), records[-1].get("seq")
                failure = await self._post(client, body, first, last)
                if failure is None:
                    try:
                        await self._io_call(
                            self.spool.commit, position, last if isinstance(last, int) else None
                        )
                    except OSError as exc:
                        log.error(
                            "audit sink %s: delivered seq %s-%s but cannot record it in the "
                            "spool cursor (%s): after a restart they would be sent again",
                            self.name,
                            first,
                            last,
                            exc,
                        )
                    self._health.delivered += len(records)
                    self._health.backlog = self.spool.backlog
                    delay = self.config.retry_initial
                    if self._outage_since is not None:
                        log.warning(
                            "audit sink %s: %s accepts events again after %.1f s; delivering "
                            "%d spooled events in order",
                            self.name,
                            self.config.url,
                            time.monotonic() - self._outage_since,
                            self._health.backlog + len(records),
                        )
                        self._outage_since = None
                        self._health.extra["endpoint"] = "ok"
                        self._health.extra.pop("endpoint_failing_since", None)
                    continue
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    self._health.extra["endpoint_failing_since"] = time.time()
                    log.error(
                        "audit sink %s: %s does not accept events (%s); they are spooled in %s "
                        "and retried with backoff up to %g s",
                        self.name,
                        self.config.url,
                        failure,
                        self.spool.directory,
                        self.config.retry_max,
                    )
                self._health.extra["endpoint"] = failure
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max)
                await self._recheck_space()

    async def close(self, drain_seconds: float = 5.0) -> None:
        await super().close(drain_seconds)
        if self._deliver_task is not None:
            self._deliver_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._deliver_task
        with contextlib.suppress(Exception):
            await self._io_call(self.spool.close)  # safe when it never opened
        self._io.shutdown(wait=False)
