"""The `syslog` sink: RFC 5424 messages over UDP (RFC 5426) or TCP (RFC 6587 octet counting).

One message per event::

    <PRI>1 TIMESTAMP HOSTNAME hoop-broker PROCID TYPE [hoop@32473 seq="…" outcome="…" …] BOM{json}

PRI is facility * 8 + severity (6 informational; 4 warning for outcome failure). MSGID is the
event type. The structured data repeats the fields a receiver filters on; the message is the
event as JSON (`format`), cut to `max_message_size` by shortening its longest strings. 32473
is the private enterprise number RFC 5612 reserves for documentation: hoop has none of its own.

UDP is fire-and-forget: a datagram to a host where nothing listens is lost. The broker learns
of it only from the ICMP "port unreachable" that comes back, counts those, and logs once per
outage. TCP keeps the events in the sink's bounded queue while the server is away, reconnects
with exponential backoff (0.5 s doubling up to `retry_max`) and sends them in order when it
is back; once the queue is full, further events are dropped for this sink, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from broker.audit.config import SinkConfig
from broker.audit.sinks.base import DEGRADED, OK, QueueSink, log
from broker.audit.sinks.formats import render, shrink

SD_ID = "hoop@32473"
APP_NAME = "hoop-broker"
BOM = b"\xef\xbb\xbf"
SEVERITY_INFO = 6
SEVERITY_WARNING = 4
CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
UDP_QUIET_RECOVERY = 5.0  # seconds without a refusal before UDP counts as delivering again


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields: printable US-ASCII without spaces, or "-"."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return cleaned or "-"


def _sd_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


HOSTNAME = _printable(socket.gethostname(), 255)


def format_message(
    record: dict[str, Any],
    *,
    facility: int,
    fmt: str = "native",
    max_size: int = 8192,
    hostname: str = HOSTNAME,
    procid: int | None = None,
) -> bytes:
    """The RFC 5424 message for one audit event (without transport framing)."""
    severity = SEVERITY_WARNING if record.get("outcome") == "failure" else SEVERITY_INFO
    stamp = datetime.fromtimestamp(float(record.get("time", time.time())), UTC)
    timestamp = stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")
    params = []
    for key in ("seq", "outcome", "actor", "target", "session"):
        if record.get(key) not in (None, ""):
            params.append(f'{key}="{_sd_value(record[key])}"')
    structured = f"[{SD_ID} {' '.join(params)}]" if params else "-"
    header = (
        f"<{facility * 8 + severity}>1 {timestamp} {hostname} {APP_NAME} "
        f"{procid if procid is not None else os.getpid()} "
        f"{_printable(str(record.get('type', '-')), 32)} {structured} "
    ).encode()
    budget = max(64, max_size - len(header) - len(BOM))
    body = shrink(render(record, fmt), budget).encode()
    return header + BOM + body


class SyslogSink(QueueSink):
    type = "syslog"

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(config)
        assert config.address is not None
        host, _, port = config.address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._udp: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._refused_at = 0.0
        self._outage_since: float | None = None
        self._lost = 0

    def _message(self, record: dict[str, Any]) -> bytes:
        return format_message(
            record,
            facility=self.config.facility_code,
            fmt=self.config.format,
            max_size=self.config.max_message_size,
        )

    async def _handle(self, batch: list[dict[str, Any]]) -> None:
        messages = [self._message(record) for record in batch]
        if self.config.transport == "udp":
            await self._send_udp(messages)
        else:
            await self._send_tcp(messages)

    # -- UDP ------------------------------------------------------------------------------

    async def _udp_socket(self) -> socket.socket:
        if self._udp is None:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            sock.connect(address)  # connected: ICMP port unreachable comes back as an error
            self._udp = sock
        return self._udp

    async def _send_udp(self, messages: list[bytes]) -> None:
        try:
            sock = await self._udp_socket()
        except OSError as exc:
            self._health.dropped += len(messages)
            self._set_state(DEGRADED, f"cannot resolve {self.config.address}: {exc}; events lost")
            return
        for message in messages:
            for attempt in (1, 2):
                try:
                    sock.send(message)
                except ConnectionRefusedError:
                    # The refusal belongs to an earlier datagram: that one was lost.
                    self._lost += 1
                    self._health.dropped += 1
                    self._refused_at = time.monotonic()
                    self._set_state(
                        DEGRADED,
                        f"nothing listens at udp {self.config.address} (ICMP port unreachable): "
                        f"datagrams are being lost ({self._lost} so far)",
                    )
                    if attempt == 1:
                        continue
                except BlockingIOError:
                    self._health.dropped += 1
                    self._set_state(DEGRADED, "the socket buffer is full: datagrams dropped")
                except OSError as exc:
                    self._health.dropped += 1
                    self._set_state(DEGRADED, f"udp send to {self.config.address} failed: {exc}")
                else:
                    self._health.delivered += 1
                break
        if (
            self._health.state == DEGRADED
            and time.monotonic() - self._refused_at > UDP_QUIET_RECOVERY
            and not self._overflow
        ):
            self._set_state(OK, f"no refusals from udp {self.config.address} for a while")
        await asyncio.sleep(0)

    # -- TCP ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self._host, self._port), CONNECT_TIMEOUT
        )

    def _drop_connection(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._reader = None

    async def _send_tcp(self, messages: list[bytes]) -> None:
        delay = 0.5
        sent = 0
        while sent < len(messages):
            try:
                if self._writer is None or (self._reader is not None and self._reader.at_eof()):
                    self._drop_connection()
                    await self._connect()
                assert self._writer is not None
                for message in messages[sent:]:
                    self._writer.write(f"{len(message)} ".encode() + message)
                await asyncio.wait_for(self._writer.drain(), SEND_TIMEOUT)
                sent = len(messages)
            except (TimeoutError, OSError, ConnectionError) as exc:
                self._drop_connection()
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    self._set_state(
                        DEGRADED,
                        f"tcp {self.config.address} unreachable ({exc or type(exc).__name__}); "
                        f"events wait in memory (up to {self.config.queue_size}) and the "
                        "broker reconnects with backoff",
                    )
                if self._closing:
                    self._health.dropped += len(messages) - sent
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max)
        self._health.delivered += len(messages)
        if self._outage_since is not None:
            outage = time.monotonic() - self._outage_since
            self._outage_since = None
            log.info("audit sink %s: connected to tcp %s", self.name, self.config.address)
            self._set_state(
                OK,
                f"tcp {self.config.address} reachable again after {outage:.1f} s "
                f"({self._health.dropped} events dropped in all)",
            )

    async def _shutdown(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
