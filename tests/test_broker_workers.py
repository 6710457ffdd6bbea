"""`hoop-broker serve --workers 2`: a supervisor and two worker processes sharing one port.

Real broker processes, real SSH connections made as hoopctl makes them, real users logged in
with `hoopctl login`. The kernel (SO_REUSEPORT) picks the worker of each connection, so the
tests open connections until they hold one on each worker (whoami says which process serves
it) and then cross them on purpose: a request made on one worker is decided on the other.
Bounded: a few dozen connections, every wait with a time limit, loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hoopctl.transport import ApiClient
from tests.helpers import HOOP_BROKER, BrokerProcess, free_port, start_broker
from tests.test_approvals_helpers import Person, approvals_config, printf_review_target

WORKERS = 2

TARGETS = printf_review_target("box")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


RATE = 4  # statements a minute on the ledger target


def ledger_target(path: Path) -> str:
    """A SQLite target whose rate budget lets a person run RATE statements a minute."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE entries (n int)")
    return f"""
[[targets]]
name = "ledger"
type = "sqlite"
path = "{path}"
allowed_groups = ["dba"]
policy = "sql"

[targets.budget.person]
max_statements_per_minute = {RATE}
"""


@pytest.fixture(scope="module")
def broker(root: Path) -> Iterator[BrokerProcess]:
    config = approvals_config(
        root / "data",
        port=free_port(),
        dev_port=free_port(),
        targets=TARGETS + ledger_target(root / "ledger.db"),
    )
    process = start_broker(root, config, workers=WORKERS)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def alice(broker: BrokerProcess, root: Path) -> Person:
    return Person.login(broker, root, "alice")


@pytest.fixture(scope="module")
def bob(broker: BrokerProcess, root: Path) -> Person:
    return Person.login(broker, root, "bob")


def worker_pids(broker: BrokerProcess) -> set[int]:
    assert broker.process is not None
    children = Path(f"/proc/{broker.process.pid}/task/{broker.process.pid}/children")
    return {int(pid) for pid in children.read_text().split()}


def pid_of(served_by: str) -> int:
    return int(served_by.rsplit("/", 1)[1])


async def one_per_worker(person: Person, count: int = WORKERS) -> dict[int, Any]:
    """An open hoop-api connection of PERSON on each worker, by worker pid."""
    found: dict[int, Any] = {}
    spare = []
    for _ in range(200):  # a worker that was just started may not listen yet
        if len(spare) > 20:
            await asyncio.sleep(0.1)
        api = await person.api()
        pid = pid_of((await api.call("whoami", {}))["served_by"])
        if pid in found:
            spare.append(api)
        else:
            found[pid] = api
        if len(found) == count:
            break
    for api in spare:
        await api.close()
    assert len(found) == count, f"200 connections all landed on {sorted(found)}"
    return found


def store_rows(broker: BrokerProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(broker.data_dir / "hoop.db", timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


async def read_until(stream: asyncssh.SSHReader[bytes], marker: bytes, seconds: float) -> bytes:
    seen = b""

    async def read() -> None:
        nonlocal seen
        while marker not in seen:
            data = await stream.read(65536)
            if not data:
                raise AssertionError(f"the session ended before {marker!r}: {seen!r}")
            seen += data

    await asyncio.wait_for(read(), seconds)
    return seen


async def watch_for(stream: Any, markers: list[str], seen: dict[str, dict[str, Any]]) -> None:
    """Read an approvals.watch stream until a request for each of MARKERS was in it."""
    while len(seen) < len(markers):
        event = await anext(stream)
        command = (event.get("request") or {}).get("command") or ""
        for marker in markers:
            if marker in command:
                seen.setdefault(marker, event["request"])


# -- tests ------------------------------------------------------------------------------------


async def test_connections_are_spread_over_the_workers(
    broker: BrokerProcess, alice: Person
) -> None:
    pids = worker_pids(broker)
    assert len(pids) == WORKERS
    apis = await one_per_worker(alice)
    assert set(apis) == pids  # each worker serves, and nothing but the workers does
    for api in apis.values():
        await api.close()


async def test_a_request_on_one_worker_is_approved_on_the_other_and_runs_once(
    broker: BrokerProcess, alice: Person, bob: Person, target_dir: Path
) -> None:
    """Bob watches and decides from each worker; alice's requests wait on whichever worker
    accepted them: each is decided from the worker it is not on."""
    log = target_dir / "ran.log"
    bobs = await one_per_worker(bob)
    watches = {pid: api.stream("approvals.watch") for pid, api in bobs.items()}
    for stream in watches.values():
        assert (await asyncio.wait_for(anext(stream), 20))["type"] == "snapshot"
    conns, processes, crossed = [], [], 0
    served: dict[str, int] = {}
    seen: dict[int, dict[str, dict[str, Any]]] = {pid: {} for pid in watches}
    try:
        for index in range(8):
            marker = f"crossed-{index}"
            conn = await alice.connect()
            conns.append(conn)
            api = ApiClient(conn)
            served[marker] = pid_of((await api.call("whoami", {}))["served_by"])
            api.close_channel()
            command = f"printf '%s\\n' {marker} | tee -a {shlex.quote(str(log))}"
            process = await conn.create_process(
                shlex.join(["exec", "--wait", "120", "box", "--", "bash", "-c", command]),
                encoding=None,
            )
            process.stdin.write_eof()
            processes.append((marker, process))
        markers = [marker for marker, _ in processes]
        await asyncio.wait_for(
            asyncio.gather(
                *(watch_for(stream, markers, seen[pid]) for pid, stream in watches.items())
            ),
            30,
        )
        for marker, process in processes:
            # Every watcher, on either worker, was told of the request.
            records = [seen[pid][marker] for pid in watches]
            assert len({record["id"] for record in records}) == 1
            request = records[0]
            other = next(pid for pid in bobs if pid != served[marker])
            crossed += 1
            await bobs[other].call("approvals.decide", {"id": request["id"], "decision": "approve"})
            output = await read_until(process.stdout, marker.encode(), 30)
            assert marker.encode() in output
            done = await asyncio.wait_for(process.wait(check=False), 30)
            assert done.exit_status == 0, done.stderr
    finally:
        for conn in conns:
            conn.close()
        for api in bobs.values():
            await api.close()
    assert crossed == 8
    assert sorted(log.read_text().split()) == sorted(m for m, _ in processes)


async def test_a_live_session_is_followed_from_the_other_worker(
    broker: BrokerProcess, alice: Person
) -> None:
    """The recording is followed (replay --follow) over a connection on the worker that does
    not serve the session: what it prints later still arrives, live."""
    conn = await alice.connect()
    probe = ApiClient(conn)
    served = pid_of((await probe.call("whoami", {}))["served_by"])
    probe.close_channel()
    script = "echo first-line; sleep 2; echo second-line; sleep 60"
    process = await conn.create_process(
        shlex.join(["exec", "box", "--", "bash", "-c", script]), encoding=None
    )
    apis: dict[int, Any] = {}
    try:
        await read_until(process.stdout, b"first-line", 20)
        (session,) = store_rows(
            broker,
            "SELECT id FROM sessions WHERE state = 'open' AND command LIKE '%second-line%'",
        )[0]
        apis = await one_per_worker(alice)
        other = next(api for pid, api in apis.items() if pid != served)
        stream = other.stream("sessions.recording", {"id": session, "follow": True})
        start = await asyncio.wait_for(anext(stream), 20)
        assert start["type"] == "start" and start["state"] == "open"
        seen = b""
        while b"second-line" not in seen:
            event = await asyncio.wait_for(anext(stream), 20)
            assert event["type"] == "chunk", event
            seen += base64.b64decode(event["data"])
        assert b"first-line" in seen
        await stream.aclose()
    finally:
        process.close()
        conn.close()
        for api in apis.values():
            await api.close()


async def test_a_rate_budget_holds_across_workers(
    broker: BrokerProcess, alice: Person, root: Path
) -> None:
    """Statements spread over both workers (one connection each, as `hoopctl exec` makes
    them) count against one budget: the target holds exactly RATE rows, not RATE per worker."""
    attempts = 3 * RATE
    ran = [
        await alice.run("exec ledger", stdin=f"INSERT INTO entries VALUES ({n})")
        for n in range(attempts)
    ]
    statuses = [r.status for r in ran]
    assert statuses.count(0) == RATE and statuses.count(3) == attempts - RATE, ran
    assert all("rate budget" in r.stderr for r in ran if r.status == 3)
    with sqlite3.connect(root / "ledger.db") as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
    assert rows == RATE
    owners = store_rows(broker, "SELECT DISTINCT owner FROM sessions WHERE target = 'ledger'")
    assert len(owners) == WORKERS, "the statements did not reach both workers"


async def test_the_audit_chain_is_one_and_each_event_reaches_the_sink_once(
    broker: BrokerProcess, alice: Person
) -> None:
    apis = await one_per_worker(alice)
    for pid, api in apis.items():
        for _ in range(3):
            await api.call("whoami", {})
        await api.close()
        ran = await alice.run(shlex.join(["exec", "box", "--", "echo", f"from-{pid}"]))
        assert ran.status == 0 and ran.stdout == f"from-{pid}\n", ran
    (count,) = store_rows(broker, "SELECT COUNT(*) FROM audit_events")[0]
    (newest,) = store_rows(broker, "SELECT MAX(seq) FROM audit_events")[0]
    deadline = time.monotonic() + 20
    while True:  # the supervisor's sinks follow the store
        seqs = [event["seq"] for event in broker.audit_events()]
        if (seqs and seqs[-1] >= newest) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert seqs[: len(seqs)] == list(range(1, len(seqs) + 1)), "a gap or a repeat in the sink"
    assert len(seqs) >= count
    # Whichever worker wrote it, an event with an actor says what kind of actor it was.
    unkinded = [
        e["type"] for e in broker.audit_events() if e.get("actor") and not e.get("actor_kind")
    ]
    assert not unkinded, unkinded
    result = subprocess.run(
        [HOOP_BROKER, "verify", "--config", str(broker.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_killed_worker_is_replaced_and_its_sessions_end_interrupted(
    broker: BrokerProcess, alice: Person
) -> None:
    before = worker_pids(broker)
    conn = await alice.connect()
    process = await conn.create_process(
        shlex.join(["exec", "box", "--", "bash", "-c", "echo started; sleep 60"]), encoding=None
    )
    await read_until(process.stdout, b"started", 20)
    (session, owner) = store_rows(
        broker,
        "SELECT id, owner FROM sessions WHERE state = 'open' AND command LIKE '%sleep 60%'",
    )[0]
    victim = pid_of(owner)
    assert victim in before
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while store_rows(broker, "SELECT state FROM sessions WHERE id = ?", session)[0][0] == "open":
        assert time.monotonic() < deadline, "the dead worker's session is still open"
        await asyncio.sleep(0.1)
    assert store_rows(broker, "SELECT state FROM sessions WHERE id = ?", session)[0][0] == (
        "interrupted"
    )
    while len(worker_pids(broker)) < WORKERS:
        assert time.monotonic() < deadline, "no new worker"
        await asyncio.sleep(0.1)
    assert victim not in worker_pids(broker)
    conn.close()
    while not [e for e in broker.audit_events("session.end") if e.get("session") == session]:
        assert time.monotonic() < deadline, "no session.end for the dead worker's session"
        await asyncio.sleep(0.1)
    (end,) = [e for e in broker.audit_events("session.end") if e.get("session") == session]
    assert end["details"]["state"] == "interrupted"
    # The broker still serves on both workers.
    apis = await one_per_worker(alice)
    for api in apis.values():
        await api.close()


async def test_sigterm_drains_every_worker_and_loses_no_session_end(
    tmp_path: Path,
) -> None:
    config = approvals_config(
        tmp_path / "data", port=free_port(), dev_port=free_port(), targets=TARGETS
    )
    broker = start_broker(tmp_path, config, workers=WORKERS)
    try:
        alice = Person.login(broker, tmp_path, "alice")
        conns, sessions = [], 12
        for index in range(sessions):
            conn = await alice.connect()
            conns.append(conn)
            process = await conn.create_process(
                shlex.join(["exec", "box", "--", "bash", "-c", f"echo up-{index}; sleep 60"]),
                encoding=None,
            )
            await read_until(process.stdout, f"up-{index}".encode(), 20)
        owners = {row[0] for row in store_rows(broker, "SELECT owner FROM sessions")}
        assert len(owners) == WORKERS, "the sessions did not spread over both workers"
        assert broker.process is not None
        broker.process.send_signal(signal.SIGTERM)
        assert broker.process.wait(60) == 0
        for conn in conns:
            conn.close()
    finally:
        broker.stop()
    ids = {row[0] for row in store_rows(broker, "SELECT id FROM sessions")}
    ended = {event["session"] for event in broker.audit_events("session.end")}
    assert len(ids) == sessions and ids <= ended
    states = {row[0] for row in store_rows(broker, "SELECT state FROM sessions")}
    assert states == {"interrupted"}


def test_workers_must_be_a_positive_number(tmp_path: Path) -> None:
    for bad in ("0", "-1", "two"):
        result = subprocess.run(
            [HOOP_BROKER, "serve", "--dev", "--workers", bad],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert result.returncode == 2, result
        assert "--workers" in result.stderr and "Traceback" not in result.stderr
