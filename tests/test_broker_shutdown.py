"""A broker stopped (SIGTERM) under 250 live sessions loses nothing: it stops accepting, ends
every session (each with its session.end, marked interrupted, in the store's chain), then
closes the store; no "session failed" in its log."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from typing import Any

from tests.fixtures.approvals import approvals_world

SESSIONS = 250
CONNECTIONS = 25


async def _open_sessions(person: Any) -> list[Any]:
    """SESSIONS `exec shell -- sleep 120` channels, spread over CONNECTIONS connections."""
    conns = await asyncio.gather(*(person.connect() for _ in range(CONNECTIONS)))
    processes = []
    for n in range(SESSIONS):
        process = await conns[n % CONNECTIONS].create_process(
            "exec shell -- sleep 120", encoding=None
        )
        process.stdin.write_eof()
        processes.append(process)
    return [conns, processes]


def test_a_stopped_broker_ends_every_session_and_loses_no_event(tmp_path: Any) -> None:
    with approvals_world(tmp_path, people=("alice",)) as world:
        broker = world.broker
        assert broker.process is not None

        async def scenario() -> None:
            conns, processes = await _open_sessions(world.alice)
            deadline = time.monotonic() + 120
            while len(broker.audit_events("session.start")) < SESSIONS:
                assert time.monotonic() < deadline, "the sessions did not all start"
                await asyncio.sleep(0.2)
            broker.process.send_signal(signal.SIGTERM)
            ended = await asyncio.gather(
                *(asyncio.wait_for(p.wait_closed(), 90) for p in processes),
                return_exceptions=True,
            )
            assert not [e for e in ended if isinstance(e, BaseException)]
            for conn in conns:
                conn.close()

        asyncio.run(scenario())
        assert broker.process.wait(90) == 0
        with sqlite3.connect(broker.data_dir / "hoop.db") as db:
            started = {
                row[0]
                for row in db.execute(
                    "SELECT session FROM audit_events WHERE type = 'session.start'"
                )
            }
            ended = dict(
                db.execute(
                    "SELECT session, json_extract(event, '$.details.state') FROM audit_events "
                    "WHERE type = 'session.end'"
                ).fetchall()
            )
            states = {row[0] for row in db.execute("SELECT state FROM sessions")}
        assert len(started) == SESSIONS
        assert started <= set(ended), f"{len(started - set(ended))} sessions without session.end"
        assert {ended[s] for s in started} == {"interrupted"}
        assert states == {"interrupted"}
        log = broker.stderr_path.read_text()
        assert "session failed" not in log and "Traceback" not in log
