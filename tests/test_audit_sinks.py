"""Audit sinks against real endpoints on loopback: an HTTP server that goes away and comes back,
syslog listeners (UDP and TCP) and their absence, a full disk under the webhook spool, the
rotated JSON-lines file, and the config that sets them up."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.audit.config import SinkConfig
from broker.audit.events import AuditEvent, AuditLog
from broker.audit.sinks import FileSink, WebhookSink
from broker.audit.sinks.formats import to_ecs
from broker.audit.sinks.spool import SEGMENT_SIZE, Spool
from broker.audit.sinks.syslog import format_message
from broker.store import Store
from tests.helpers import (
    HOOP_BROKER,
    REPO,
    BrokerProcess,
    User,
    dev_config,
    free_port,
    start_broker,
)

# The issue asks for a webhook endpoint that is down for a minute; the other outage tests are
# short. HOOP_TEST_WEBHOOK_OUTAGE (seconds) changes the long one, e.g. to 5 while developing.
LONG_OUTAGE = float(os.environ.get("HOOP_TEST_WEBHOOK_OUTAGE", "60"))
STRICT_WIRED = "refusal_reason" in (REPO / "broker" / "server.py").read_text()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stored_seqs(broker: BrokerProcess) -> list[int]:
    with sqlite3.connect(broker.data_dir / "hoop.db") as conn:
        return [row[0] for row in conn.execute("SELECT seq FROM audit_events ORDER BY seq")]


def broker_log(broker: BrokerProcess) -> str:
    return broker.stderr_path.read_text()


# -- endpoints -----------------------------------------------------------------------------


class WebhookReceiver:
    """A real HTTP endpoint (aiohttp, in a thread of its own) that can go away and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.answers: list[int] = []  # statuses to answer with before accepting again
        self.refused = 0
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for request in list(self.requests) for event in request["events"]]

    @property
    def seqs(self) -> list[int]:
        return [event["seq"] for event in self.events]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.answers:
            self.refused += 1
            return web.Response(status=self.answers.pop(0), text="not now")
        events = json.loads(body)
        assert isinstance(events, list)
        self.requests.append({"headers": dict(request.headers), "events": events})
        return web.Response(text="ok")

    async def _up(self) -> None:
        app = web.Application()
        app.router.add_post("/ingest", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._up(), self._loop).result(10)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self._down(), self._loop).result(10)

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class SyslogListener:
    """A syslog server on loopback: UDP datagrams, or TCP with RFC 6587 octet counting."""

    def __init__(self, transport: str, port: int | None = None) -> None:
        self.transport = transport
        self.port = port or free_port()
        self.messages: list[bytes] = []
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        if transport == "tcp":
            self._sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                if self.transport == "udp":
                    data, _ = self._sock.recvfrom(65536)
                    self.messages.append(data)
                    continue
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read_frames, args=(conn,), daemon=True).start()

    def _read_frames(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while True:
                    length, space, rest = buffer.partition(b" ")
                    if not space or not length.isdigit() or len(rest) < int(length):
                        break
                    self.messages.append(rest[: int(length)])
                    buffer = rest[int(length) :]

    def close(self) -> None:
        self._sock.close()


RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) "
    rb"(?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb'(?P<sd>-|(?:\[[!-~]+(?: [!-~]+="(?:[^"\\\]]|\\.)*")*\])+)'
    rb"(?: (?P<msg>.*))?$",
    re.DOTALL,
)
SD_PARAM = re.compile(r'([!-~]+?)="((?:[^"\\\]]|\\.)*)"')


def parse_rfc5424(message: bytes) -> dict[str, Any]:
    """Parse one message by the RFC 5424 ABNF; its MSG must be a BOM and a JSON event."""
    match = RFC5424.match(message)
    assert match, message[:200]
    timestamp = datetime.fromisoformat(match["timestamp"].decode())
    assert timestamp.tzinfo is not None
    msg = match["msg"]
    assert msg is not None and msg.startswith(b"\xef\xbb\xbf")
    sd = dict(SD_PARAM.findall(match["sd"].decode()))
    return {
        "pri": int(match["pri"]),
        "app": match["app"].decode(),
        "msgid": match["msgid"].decode(),
        "sd": sd,
        "sd_id": match["sd"].decode()[1:].split(" ", 1)[0],
        "event": json.loads(msg[3:].decode()),
    }


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    endpoint = WebhookReceiver()
    yield endpoint
    endpoint.close()


def webhook_sink(url: str, **extra: str) -> str:
    keys = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return f"""
[[audit.sinks]]
type = "webhook"
name = "siem"
url = "{url}"
retry_initial = "100ms"
retry_max = "1s"
{keys}"""


def broker_with(
    tmp_path: Path, audit: str, *, name: str = "broker", workers: int = 1
) -> BrokerProcess:
    config = dev_config(tmp_path / f"{name}-data", port=free_port(), dev_port=free_port())
    return start_broker(tmp_path, config + "\n[audit]\n" + audit, name=name, workers=workers)


@pytest.fixture
def cleanup() -> Iterator[list[BrokerProcess]]:
    brokers: list[BrokerProcess] = []
    yield brokers
    for broker in brokers:
        broker.stop()


# -- webhook -------------------------------------------------------------------------------


def check_webhook_outage(
    tmp_path: Path, alice: User, receiver: WebhookReceiver, outage: float, brokers: list[Any]
) -> None:
    receiver.up()
    broker = broker_with(tmp_path, "strict = true\n" + webhook_sink(receiver.url))
    brokers.append(broker)
    assert alice.login(broker).returncode == 0
    assert alice.run("exec", "dev-shell", "--", "echo", "before").returncode == 0
    wait_until(lambda: receiver.seqs == stored_seqs(broker), 15, "delivery before the outage")
    receiver.down()
    started = time.monotonic()
    sessions = 0
    while time.monotonic() - started < outage:
        # Sessions go on as usual while the endpoint is away.
        result = alice.run("exec", "dev-shell", "--", "echo", f"during-{sessions}")
        assert result.returncode == 0, result.stderr
        sessions += 1
        time.sleep(min(3.0, max(0.0, outage - (time.monotonic() - started))))
    stored = stored_seqs(broker)
    assert receiver.seqs[-1] < stored[-1]  # some events waited in the spool
    receiver.up()
    wait_until(lambda: receiver.seqs == stored_seqs(broker), 30, "delivery of the spooled events")
    events = receiver.events
    assert len({e["hash"] for e in events}) == len(events)  # nothing twice
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # in order, no gap
    commands = [e["details"]["command"] for e in events if e["type"] == "command"]
    assert commands == ["echo before", *(f"echo during-{n}" for n in range(sessions))]
    # The broker logs the recovery after the receiver has the batch: wait for the line.
    wait_until(
        lambda: "accepts events again after" in broker_log(broker), 10, "the recovery log line"
    )
    text = broker_log(broker)
    assert text.count("does not accept events") == 1, text  # once per outage, not per retry
    for request in receiver.requests:
        batch = request["events"]
        assert request["headers"]["X-Hoop-Seq-First"] == str(batch[0]["seq"])
        assert request["headers"]["X-Hoop-Seq-Last"] == str(batch[-1]["seq"])


@pytest.mark.timeout(LONG_OUTAGE * 2 + 120)
def test_webhook_down_for_a_minute_then_back_gets_every_event_once_in_order(
    tmp_path: Path, alice: User, receiver: WebhookReceiver, cleanup: list[BrokerProcess]
) -> None:
    check_webhook_outage(tmp_path, alice, receiver, LONG_OUTAGE, cleanup)


def test_webhook_short_outage_then_back_gets_every_event_once_in_order(
    tmp_path: Path, alice: User, receiver: WebhookReceiver, cleanup: list[BrokerProcess]
) -> None:
    check_webhook_outage(tmp_path, alice, receiver, 3.0, cleanup)


def test_webhook_errors_are_retried_and_batches_are_json_arrays_in_ecs(
    tmp_path: Path, alice: User, receiver: WebhookReceiver, cleanup: list[BrokerProcess]
) -> None:
    receiver.up()
    receiver.answers = [503, 500, 429, 400]
    broker = broker_with(tmp_path, webhook_sink(receiver.url, format='"ecs"'))
    cleanup.append(broker)
    assert alice.login(broker).returncode == 0
    assert alice.run("exec", "dev-shell", "--", "echo", "hi").returncode == 0
    wait_until(lambda: len(receiver.events) == len(stored_seqs(broker)), 20, "delivery")
    assert receiver.refused == 4
    events = receiver.events
    assert [e["event"]["sequence"] for e in events] == stored_seqs(broker)
    login, start, command, end = events
    assert login["event"]["action"] == "auth.login"
    assert login["event"]["category"] == ["authentication"]
    assert login["user"]["name"] == "alice" and login["source"]["ip"] == "127.0.0.1"
    assert command["process"]["command_line"] == "echo hi"
    assert command["hoop"]["session"] == start["hoop"]["session"] == end["hoop"]["session"]
    assert command["service"]["target"]["name"] == "dev-shell"
    assert end["event"]["type"] == ["end"] and end["process"]["exit_code"] == 0
    assert all(e["ecs"]["version"].startswith("8.") for e in events)
    assert events[1]["hoop"]["chain"]["prev_hash"] == events[0]["event"]["id"]


def test_webhook_spool_survives_a_broker_restart(
    tmp_path: Path, alice: User, receiver: WebhookReceiver, cleanup: list[BrokerProcess]
) -> None:
    broker = broker_with(tmp_path, webhook_sink(receiver.url))
    cleanup.append(broker)
    assert alice.login(broker).returncode == 0
    assert alice.run("exec", "dev-shell", "--", "echo", "first-life").returncode == 0
    broker.stop()
    spool = broker.data_dir / "audit-spool" / "siem"
    assert any(spool.glob("*.spool"))
    broker.start()
    assert alice.run("exec", "dev-shell", "--", "echo", "second-life").returncode == 0
    receiver.up()
    wait_until(lambda: receiver.seqs == stored_seqs(broker), 20, "delivery after restart")
    commands = [e["details"]["command"] for e in receiver.events if e["type"] == "command"]
    assert commands == ["echo first-life", "echo second-life"]


def test_a_slow_webhook_never_holds_up_a_session(
    tmp_path: Path, alice: User, receiver: WebhookReceiver, cleanup: list[BrokerProcess]
) -> None:
    receiver.up()
    receiver.delay = 20.0
    broker = broker_with(tmp_path, webhook_sink(receiver.url, timeout='"60s"'))
    cleanup.append(broker)
    assert alice.login(broker).returncode == 0
    started = time.monotonic()
    for n in range(3):
        assert alice.run("exec", "dev-shell", "--", "echo", str(n)).returncode == 0
    assert time.monotonic() - started < 15  # three sessions while one POST hangs for 20 s
    receiver.delay = 0
    wait_until(lambda: receiver.seqs == stored_seqs(broker), 40, "delivery")


# -- syslog ------------------------------------------------------------------------------


def syslog_sink(name: str, transport: str, port: int, fmt: str = "native") -> str:
    return f"""
[[audit.sinks]]
type = "syslog"
name = "{name}"
transport = "{transport}"
address = "127.0.0.1:{port}"
facility = "local3"
format = "{fmt}"
retry_max = "1s"
"""


def test_syslog_over_udp_and_tcp_delivers_rfc5424_messages_that_parse(
    tmp_path: Path, alice: User, cleanup: list[BrokerProcess]
) -> None:
    udp, tcp = SyslogListener("udp"), SyslogListener("tcp")
    try:
        broker = broker_with(
            tmp_path,
            syslog_sink("udp-siem", "udp", udp.port)
            + syslog_sink("tcp-siem", "tcp", tcp.port, "ecs"),
        )
        cleanup.append(broker)
        assert alice.login(broker).returncode == 0
        assert alice.run("exec", "dev-shell", "--", "rm", "-rf", "/nowhere").returncode == 3
        stored = stored_seqs(broker)
        for listener in (udp, tcp):
            wait_until(lambda got=listener: len(got.messages) >= len(stored), 15, "syslog messages")
        for listener in (udp, tcp):
            parsed = [parse_rfc5424(m) for m in listener.messages]
            assert [int(p["sd"]["seq"]) for p in parsed] == stored
            assert {p["app"] for p in parsed} == {"hoop-broker"}
            assert {p["sd_id"] for p in parsed} == {"hoop@32473"}
            types = [p["msgid"] for p in parsed]
            # A refused one-off exec is a session of its own, in state blocked.
            assert types == ["auth.login", "session.start", "command.blocked", "session.end"]
            blocked = parsed[2]
            assert blocked["pri"] == 19 * 8 + 4  # local3, warning: outcome failure
            assert parsed[0]["pri"] == 19 * 8 + 6  # local3, informational
            assert blocked["sd"]["actor"] == "alice" and blocked["sd"]["outcome"] == "failure"
        native = parse_rfc5424(udp.messages[2])["event"]
        assert native["details"]["command"] == "rm -rf /nowhere" and native["seq"] == stored[2]
        ecs = parse_rfc5424(tcp.messages[2])["event"]
        assert ecs["event"]["action"] == "command.blocked" and ecs["rule"]["name"] == "no-rm"
    finally:
        udp.close()
        tcp.close()


def test_syslog_server_absent_breaks_nothing_and_tcp_catches_up_when_it_comes(
    tmp_path: Path, alice: User, cleanup: list[BrokerProcess]
) -> None:
    udp_port, tcp_port = free_port(), free_port()
    broker = broker_with(
        tmp_path,
        syslog_sink("udp-siem", "udp", udp_port) + syslog_sink("tcp-siem", "tcp", tcp_port),
    )
    cleanup.append(broker)
    assert alice.login(broker).returncode == 0
    for n in range(3):
        result = alice.run("exec", "dev-shell", "--", "echo", f"nobody-listens-{n}")
        assert result.returncode == 0, result.stderr
    wait_until(lambda: "nothing listens at udp" in broker_log(broker), 10, "the udp warning")
    wait_until(lambda: "unreachable" in broker_log(broker), 10, "the tcp warning")
    text = broker_log(broker)
    assert text.count("nothing listens at udp") == 1, text  # once per outage
    assert text.count(f"tcp 127.0.0.1:{tcp_port} unreachable") == 1, text
    assert "Traceback" not in text
    listener = SyslogListener("tcp", tcp_port)
    try:
        stored = stored_seqs(broker)
        wait_until(lambda: len(listener.messages) >= len(stored), 15, "the buffered events")
        seqs = [int(parse_rfc5424(m)["sd"]["seq"]) for m in listener.messages]
        assert seqs[: len(stored)] == stored
        wait_until(lambda: "reachable again" in broker_log(broker), 5, "the recovery line")
    finally:
        listener.close()


# -- disk full while spooling ------------------------------------------------------------


FILE_SIZE_LIMIT = 900_000  # below one spool segment (1 MiB): the spool cannot take space


def _limit_file_size(broker: BrokerProcess, limit: int) -> None:
    """RLIMIT_FSIZE of the running broker: its writes beyond LIMIT bytes fail with EFBIG."""
    assert broker.process is not None
    resource.prlimit(broker.process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def _unlimit_file_size(broker: BrokerProcess) -> None:
    assert broker.process is not None
    infinity = resource.RLIM_INFINITY
    resource.prlimit(broker.process.pid, resource.RLIMIT_FSIZE, (infinity, infinity))


def check_disk_full(
    tmp_path: Path,
    alice: User,
    receiver: WebhookReceiver,
    brokers: list[Any],
    *,
    strict: bool,
    workers: int = 1,
) -> BrokerProcess:
    broker = broker_with(
        tmp_path,
        f"strict = {str(strict).lower()}\n" + webhook_sink(receiver.url),
        workers=workers,
    )
    brokers.append(broker)
    _limit_file_size(broker, FILE_SIZE_LIMIT)
    assert alice.login(broker).returncode == 0
    wait_until(lambda: "FAILING" in broker_log(broker), 10, "the spool failure in the log")
    text = broker_log(broker)
    assert re.search(
        r"ERROR hoop.audit: audit sink siem \(webhook\): FAILING: the spool \S+/audit-spool/siem "
        r"cannot be written \(File too large\)",
        text,
    ), text
    assert ("new sessions are refused" in text) is strict
    return broker


def check_recovery(broker: BrokerProcess, alice: User, receiver: WebhookReceiver) -> None:
    _unlimit_file_size(broker)
    wait_until(lambda: "recovered" in broker_log(broker), 10, "the recovery line")
    receiver.up()
    wait_until(lambda: receiver.seqs == stored_seqs(broker), 20, "delivery after the disk full")
    kinds = [e["type"] for e in receiver.events]
    assert kinds[0] == "auth.login" and "audit.sink" in kinds  # the outage itself is audited
    states = [e["details"]["state"] for e in receiver.events if e["type"] == "audit.sink"]
    assert states == ["failing", "ok"]


def test_disk_full_while_spooling_in_strict_mode_is_loud_and_refusing(
    tmp_path: Path, alice: User, receiver: WebhookReceiver, cleanup: list[BrokerProcess]
) -> None:
    broker = check_disk_full(tmp_path, alice, receiver, cleanup, strict=True)
    assert "audit: strict mode: new sessions are refused until siem recovers" in broker_log(broker)
    check_recovery(broker, alice, receiver)
    assert "strict mode: new sessions are accepted again" in broker_log(broker)


@pytest.mark.skipif(
    not STRICT_WIRED, reason="broker/server.py does not check audit.refusal_reason() yet"
)
@pytest.mark.parametrize("workers", [1, 2])
def test_disk_full_while_spooling_in_strict_mode_refuses_new_sessions(
    tmp_path: Path,
    target_dir: Path,
    alice: User,
    receiver: WebhookReceiver,
    cleanup: list[BrokerProcess],
    workers: int,
) -> None:
    """With `serve --workers 2` the sinks run in the supervisor (its file size is limited
    here): the workers learn of the failure from it and refuse new sessions, then accept
    again. Either way the webhook gets every event once, in order, whichever process wrote it."""
    broker = check_disk_full(tmp_path, alice, receiver, cleanup, strict=True, workers=workers)
    markers = [target_dir / f"ran-{n}" for n in range(6)]  # connections land on either worker
    for marker in markers:
        result = alice.run("exec", "dev-shell", "--", "touch", str(marker))
        assert result.returncode != 0
        assert "audit trail" in result.stderr and not marker.exists()
    check_recovery(broker, alice, receiver)
    for marker in markers:
        assert alice.run("exec", "dev-shell", "--", "touch", str(marker)).returncode == 0
        assert marker.exists()
    wait_until(lambda: receiver.seqs == stored_seqs(broker), 20, "delivery of every event")
    assert receiver.seqs == list(range(1, len(receiver.seqs) + 1))


def test_disk_full_while_spooling_without_strict_mode_goes_on_loudly(
    tmp_path: Path, alice: User, receiver: WebhookReceiver, cleanup: list[BrokerProcess]
) -> None:
    broker = check_disk_full(tmp_path, alice, receiver, cleanup, strict=False)
    result = alice.run("exec", "dev-shell", "--", "echo", "still-working")
    assert result.returncode == 0 and "still-working" in result.stdout
    check_recovery(broker, alice, receiver)
    commands = [e["details"]["command"] for e in receiver.events if e["type"] == "command"]
    assert commands == ["echo still-working"]


# -- JSON-lines file ---------------------------------------------------------------------


def test_jsonl_file_is_rotated_by_size_keeping_n_files(
    tmp_path: Path, alice: User, cleanup: list[BrokerProcess]
) -> None:
    sink = (
        '\n[[audit.sinks]]\ntype = "file"\npath = "log/audit.jsonl"\nmax_size = "4KiB"\nkeep = 2\n'
    )
    broker = broker_with(tmp_path, sink)
    cleanup.append(broker)
    assert alice.login(broker).returncode == 0
    for n in range(10):  # about 15 KiB of events: more than three files of 4 KiB
        assert alice.run("exec", "dev-shell", "--", "echo", f"rotate-{n}").returncode == 0
    path = broker.data_dir / "log" / "audit.jsonl"
    stored = stored_seqs(broker)

    def written() -> list[int]:
        seqs = []
        for name in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"):
            with (path.parent / name).open() as file:
                seqs += [json.loads(line)["seq"] for line in file]
        return seqs

    wait_until(lambda: path.exists() and written()[-1:] == stored[-1:], 10, "the file sink")
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.1",
        "audit.jsonl.2",
    ]
    seqs = written()
    assert seqs == list(range(seqs[0], stored[-1] + 1))  # oldest files gone, the rest in order
    assert seqs[0] > 1
    for name in ("audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"):
        assert (path.parent / name).stat().st_mode & 0o777 == 0o600
        assert (path.parent / name).stat().st_size <= 4096 + 2048


# -- in-process: failures, overflow, low spool space, formats ------------------------------


async def test_a_file_sink_that_cannot_write_is_loud_refuses_in_strict_mode_and_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log directory should be")
    store = await Store.open(tmp_path)
    sink = FileSink(
        SinkConfig(type="file", path=blocker / "audit.jsonl", queue_size=5), data_dir=tmp_path
    )
    audit = AuditLog(store, stdout=False, sinks=[sink], strict=True)
    await audit.start()
    assert audit.refusal_reason() is None
    for n in range(40):
        await audit.emit(AuditEvent(type="command", actor="alice", details={"command": f"c{n}"}))
        await asyncio.sleep(0)
    await asyncio.sleep(0.2)
    reason = audit.refusal_reason()
    assert reason is not None and "audit sink file" in reason
    health = audit.health()["sinks"][0]
    assert health["state"] == "failing" and health["dropped"] > 0
    assert "ERROR" in caplog.text and "FAILING" in caplog.text
    blocker.unlink()  # room again
    await asyncio.sleep(2.5)
    await audit.emit(AuditEvent(type="command", actor="alice", details={"command": "after"}))
    await asyncio.sleep(1.5)
    assert audit.refusal_reason() is None
    lines = [json.loads(line) for line in (blocker / "audit.jsonl").read_text().splitlines()]
    stored = [e["seq"] for e in await store.audit_events()]
    assert [e["seq"] for e in lines] == stored  # dropped ones were taken from the store
    await audit.close()
    await store.close()


async def test_low_spool_space_degrades_the_webhook_sink_and_strict_mode_refuses(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path)
    config = SinkConfig(
        type="webhook",
        url=f"http://127.0.0.1:{free_port()}/down",
        spool_max_size=2 * SEGMENT_SIZE,
        retry_initial=0.05,
        retry_max=0.2,
    )
    sink = WebhookSink(config, data_dir=tmp_path)
    audit = AuditLog(store, stdout=False, sinks=[sink], strict=True)
    await audit.start()
    big = "x" * 20_000
    for n in range(85):  # about 1.7 MiB: past half the second segment, no room for a third
        await audit.emit(AuditEvent(type="query", details={"query": big, "n": n}))
    await asyncio.sleep(0.5)
    health = audit.health()["sinks"][0]
    assert health["state"] == "degraded" and "spool space is low" in health["message"]
    assert audit.refusal_reason() is not None
    assert health["backlog"] == 85 + 1  # and the audit.sink event about it
    await audit.close()
    await store.close()


def test_the_spool_keeps_order_and_its_cursor_across_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 30)
    spool.open()
    for batch in range(30):
        lines = [
            (json.dumps({"seq": batch * 100 + n + 1, "pad": "y" * 1000}) + "\n").encode()
            for n in range(100)
        ]
        spool.append(lines, batch * 100 + 100)
    assert len(list(tmp_path.glob("*.spool"))) >= 3
    lines, position = spool.read(1500)
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 1501))
    spool.commit(position, 1500)
    spool.close()
    again = Spool(tmp_path, 1 << 30)
    again.open()
    assert (again.last_seq, again.delivered_seq, again.backlog) == (3000, 1500, 1500)
    lines, position = again.read(5000)
    assert [json.loads(line)["seq"] for line in lines] == list(range(1501, 3001))
    again.commit(position, 3000)
    assert len(list(tmp_path.glob("*.spool"))) <= 2  # delivered segments are gone
    again.append([b'{"seq": 3001}\n'], 3001)
    assert again.read(10)[0] == [b'{"seq": 3001}\n']
    again.close()


def test_ecs_document_maps_each_field() -> None:
    record = {
        "type": "query",
        "time": 1795000000.25,
        "actor": "alice",
        "groups": ["dba"],
        "target": "prod-db",
        "session": "20261123-0123456789ab",
        "remote": "10.0.0.7:50022",
        "outcome": "failure",
        "reason": "relation does not exist",
        "details": {"query": "SELECT 1", "decision": "allow", "rule": "r1", "rows": 0},
        "seq": 12,
        "prev_hash": "a" * 64,
        "hash": "b" * 64,
    }
    doc = to_ecs(record)
    assert doc["@timestamp"] == "2026-11-18T11:06:40.250Z"
    assert doc["event"] == {
        "kind": "event",
        "category": ["database"],
        "type": ["access"],
        "action": "query",
        "outcome": "failure",
        "module": "hoop",
        "dataset": "hoop.audit",
        "provider": "hoop-broker",
        "sequence": 12,
        "id": "b" * 64,
        "reason": "relation does not exist",
    }
    assert doc["user"] == {"name": "alice", "roles": ["dba"]}
    assert doc["source"] == {"address": "10.0.0.7", "ip": "10.0.0.7", "port": 50022}
    assert doc["rule"] == {"name": "r1"}
    assert doc["hoop"]["details"] == record["details"]
    assert doc["hoop"]["chain"] == {"seq": 12, "prev_hash": "a" * 64, "hash": "b" * 64}
    assert doc["hoop"]["session"] == record["session"]
    assert doc["message"] == "query by alice on prod-db: SELECT 1 (relation does not exist)"


def test_a_huge_event_is_cut_to_the_syslog_size_and_still_parses() -> None:
    record = {
        "type": "query",
        "time": 1.0,
        "seq": 3,
        "outcome": "success",
        "actor": 'al"i]ce',
        "details": {"query": "SELECT '" + "é" * 50_000 + "'"},
    }
    message = format_message(record, facility=4, max_size=2048, hostname="bastion")
    assert len(message) <= 2048
    parsed = parse_rfc5424(message)
    assert parsed["event"]["truncated"] is True and parsed["event"]["seq"] == 3
    assert parsed["sd"]["actor"] == 'al\\"i\\]ce'


def test_sink_config_problems_are_reported_with_their_key_paths(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        dev_config(tmp_path / "data", port=free_port(), dev_port=free_port())
        + """
[audit]
strict = "maybe"

[[audit.sinks]]
type = "webhook"
path = "x.jsonl"

[[audit.sinks]]
type = "file"
path = "a.jsonl"
max_size = "lots"

[[audit.sinks]]
type = "syslog"
address = "nohost"

[[audit.sinks]]
type = "webhook"
url = "ftp://example.com"
authorization = "Bearer abc123"

[[audit.sinks]]
type = "pigeon"
"""
    )
    result = subprocess.run(
        [HOOP_BROKER, "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    problems = result.stderr
    assert "audit.strict: must be true or false" in problems
    assert (
        "audit.sinks[0]: a webhook sink needs `url`; not keys of a webhook sink: path" in problems
    )
    assert "audit.sinks[1].max_size: expected a size such as 512KiB, 100MiB or 1GiB" in problems
    assert "audit.sinks[2].address: expected HOST:PORT, got 'nohost'" in problems
    assert "audit.sinks[3].url: expected an http:// or https:// URL" in problems
    assert "audit.sinks[3].authorization: must be a reference" in problems
    assert "abc123" not in problems
    assert "audit.sinks[4].type: must be one of file, stdout, syslog or webhook" in problems
    config.write_text(
        dev_config(tmp_path / "data", port=free_port(), dev_port=free_port())
        + '\n[[audit.sinks]]\ntype = "stdout"\n\n[[audit.sinks]]\ntype = "stdout"\n'
    )
    result = subprocess.run(
        [HOOP_BROKER, "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert "audit: two sinks are named 'stdout'" in result.stderr


def test_a_stdout_sink_in_ecs_replaces_the_native_stdout_lines(
    tmp_path: Path, alice: User, cleanup: list[BrokerProcess]
) -> None:
    broker = broker_with(tmp_path, '\n[[audit.sinks]]\ntype = "stdout"\nformat = "ecs"\n')
    cleanup.append(broker)
    assert alice.login(broker).returncode == 0
    lines = [
        json.loads(x) for x in broker.stdout_path.read_text().splitlines() if x.startswith("{")
    ]
    assert len(lines) == 1 and lines[0]["event"]["action"] == "auth.login"
