"""Tamper evidence: the audit hash chain, signed recordings and `hoop-broker verify`.

Records come from a real broker process and real sessions; tampering is done the way an
intruder with access to the data dir would do it: with sqlite3 on hoop.db and by editing files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.audit.chain import GENESIS, chain_hash
from broker.audit.events import AuditEvent, AuditLog
from broker.audit.integrity import (
    Signer,
    seal_recording,
    sign_recording,
    signature_path,
    verify_chain_db,
    verify_data_dir,
    verify_recording,
    verify_session,
)
from broker.store import Store, append_chained, connect_sync
from tests.helpers import (
    HOOP_BROKER,
    REPO,
    BrokerProcess,
    User,
    dev_config,
    free_port,
    start_broker,
)


def sign_unsigned(data_dir: Path) -> None:
    """Sign every recording that has no signature yet (what the broker does when a session ends).

    Once broker/sessions signs recordings itself this finds nothing to do.
    """
    with sqlite3.connect(data_dir / "hoop.db") as conn:
        still_open = {
            row[0] for row in conn.execute("SELECT id FROM sessions WHERE state = 'open'")
        }
    for cast in sorted((data_dir / "recordings").glob("*.cast")):
        if not signature_path(cast).exists() and cast.stem not in still_open:
            sign_recording(data_dir, cast, cast.stem)


def run_verify(broker: BrokerProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HOOP_BROKER, "verify", "--config", str(broker.config_path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def db(broker: BrokerProcess) -> sqlite3.Connection:
    return sqlite3.connect(broker.data_dir / "hoop.db", isolation_level=None)


def events_in_store(broker: BrokerProcess) -> list[dict[str, Any]]:
    with db(broker) as conn:
        rows = conn.execute("SELECT seq, prev_hash, hash, event FROM audit_events ORDER BY seq")
        return [
            {**json.loads(event), "seq": seq, "prev_hash": prev, "hash": digest}
            for seq, prev, digest, event in rows
        ]


def problem_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if not line.startswith("hoop-broker")]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = start_broker(
        tmp_path, dev_config(tmp_path / "data", port=free_port(), dev_port=free_port())
    )
    yield process
    process.stop()


@pytest.fixture
def busy_broker(broker: BrokerProcess, alice: User) -> BrokerProcess:
    """A broker that has seen a login and three sessions, then stopped; recordings signed."""
    assert alice.login(broker).returncode == 0
    for word in ("one", "two", "three"):
        result = alice.run("exec", "dev-shell", "--", "echo", word)
        assert result.returncode == 0, result.stderr
    broker.stop()
    sign_unsigned(broker.data_dir)
    return broker


def test_every_event_is_chained_in_order_and_verify_says_intact(busy_broker: BrokerProcess) -> None:
    events = events_in_store(busy_broker)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    prev = GENESIS
    for event in events:
        assert event["prev_hash"] == prev
        assert chain_hash(event, event["seq"], prev) == event["hash"]
        prev = event["hash"]
    # The chain fields reach stdout (and every other sink) too.
    printed = busy_broker.audit_events()
    assert [e["seq"] for e in printed] == [e["seq"] for e in events]
    result = run_verify(busy_broker)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"intact: {len(events)} audit events (seq 1-{len(events)})" in result.stdout
    assert "3 recordings" in result.stdout


def test_verify_runs_while_the_broker_is_running(broker: BrokerProcess, alice: User) -> None:
    assert alice.login(broker).returncode == 0
    assert alice.run("exec", "dev-shell", "--", "true").returncode == 0
    sign_unsigned(broker.data_dir)
    result = run_verify(broker)
    assert result.returncode == 0, result.stdout
    # And the broker keeps chaining after it.
    assert alice.run("exec", "dev-shell", "--", "true").returncode == 0
    sign_unsigned(broker.data_dir)
    assert run_verify(broker).returncode == 0


def test_a_tampered_event_is_reported_with_its_seq(busy_broker: BrokerProcess) -> None:
    victim = next(e for e in events_in_store(busy_broker) if e["type"] == "command")
    with db(busy_broker) as conn:
        (text,) = conn.execute(
            "SELECT event FROM audit_events WHERE seq = ?", (victim["seq"],)
        ).fetchone()
        event = json.loads(text)
        event["details"]["command"] = "echo nothing-to-see-here"
        conn.execute(
            "UPDATE audit_events SET event = ? WHERE seq = ?", (json.dumps(event), victim["seq"])
        )
    result = run_verify(busy_broker)
    assert result.returncode == 1
    problems = problem_lines(result)
    assert len(problems) == 1, result.stdout
    assert problems[0].startswith(f"audit seq {victim['seq']}: changed: ")
    assert "command by alice on dev-shell" in problems[0]
    assert "1 problem in" in result.stdout


def test_an_event_rewritten_with_a_fresh_hash_is_still_caught(busy_broker: BrokerProcess) -> None:
    events = events_in_store(busy_broker)
    victim = next(e for e in events if e["type"] == "command")
    forged = {k: v for k, v in victim.items() if k not in ("seq", "prev_hash", "hash")}
    forged["details"]["command"] = "echo forged"
    digest = chain_hash(forged, victim["seq"], victim["prev_hash"])
    with db(busy_broker) as conn:
        conn.execute(
            "UPDATE audit_events SET event = ?, hash = ? WHERE seq = ?",
            (json.dumps(forged), digest, victim["seq"]),
        )
    result = run_verify(busy_broker)
    assert result.returncode == 1
    assert problem_lines(result) == [
        f"audit seq {victim['seq']}: changed: rewritten with a new hash: "
        f"seq {victim['seq'] + 1} links to the original"
    ]


def test_a_deleted_event_is_reported_with_its_seq(busy_broker: BrokerProcess) -> None:
    victim = next(e for e in events_in_store(busy_broker) if e["type"] == "session.end")
    with db(busy_broker) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (victim["seq"],))
    result = run_verify(busy_broker)
    assert result.returncode == 1
    assert problem_lines(result) == [
        f"audit seq {victim['seq']}: missing: 1 event deleted between seq {victim['seq'] - 1} "
        f"and {victim['seq'] + 1}"
    ]


def test_reordered_events_are_reported_with_their_places(busy_broker: BrokerProcess) -> None:
    events = events_in_store(busy_broker)
    a, b = events[3], events[4]
    with db(busy_broker) as conn:
        # Swap the two rows' places in the chain (their seq numbers).
        conn.execute("UPDATE audit_events SET seq = -1 WHERE seq = ?", (a["seq"],))
        conn.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", (a["seq"], b["seq"]))
        conn.execute("UPDATE audit_events SET seq = ? WHERE seq = -1", (b["seq"],))
    result = run_verify(busy_broker)
    assert result.returncode == 1
    problems = problem_lines(result)
    assert problems[0].startswith(
        f"audit seq {a['seq']}: reordered: this event was written as seq {b['seq']} ("
    )
    assert problems[1].startswith(
        f"audit seq {b['seq']}: reordered: this event was written as seq {a['seq']} ("
    )
    assert len(problems) == 2, result.stdout


def test_a_deleted_head_file_is_reported(busy_broker: BrokerProcess) -> None:
    (busy_broker.data_dir / "audit_head").unlink()
    result = run_verify(busy_broker)
    assert result.returncode == 1
    (problem,) = problem_lines(result)
    assert problem.startswith("audit head: missing: ")


def test_a_changed_column_is_reported(busy_broker: BrokerProcess) -> None:
    victim = next(e for e in events_in_store(busy_broker) if e["type"] == "command")
    with db(busy_broker) as conn:
        conn.execute("UPDATE audit_events SET actor = 'bob' WHERE seq = ?", (victim["seq"],))
    result = run_verify(busy_broker)
    assert problem_lines(result) == [
        f"audit seq {victim['seq']}: changed: column actor is 'bob' but the hashed event says "
        "'alice'"
    ]


def wait_for_signed_head(broker: BrokerProcess) -> int:
    """The broker signs its newest seq into audit_head within about a second: wait for it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        last = events_in_store(broker)[-1]["seq"]
        with contextlib.suppress(OSError, ValueError):
            if json.loads((broker.data_dir / "audit_head").read_text())["seq"] == last:
                return int(last)
        time.sleep(0.1)
    raise AssertionError("the broker did not sign its chain head")


def test_events_deleted_from_the_end_are_reported_and_never_reused(
    broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(broker).returncode == 0
    for word in ("one", "two"):
        assert alice.run("exec", "dev-shell", "--", "echo", word).returncode == 0
    last = wait_for_signed_head(broker)
    broker.stop()
    sign_unsigned(broker.data_dir)
    busy_broker = broker
    with db(busy_broker) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq >= ?", (last - 1,))
    result = run_verify(busy_broker)
    assert result.returncode == 1
    assert problem_lines(result) == [
        f"audit seq {last - 1}-{last}: missing: deleted from the end: the broker signed seq "
        f"{last} as its newest event at " + problem_lines(result)[0].rsplit(" at ", 1)[1]
    ]
    # A restarted broker goes on after the signed head: the gap stays visible.
    busy_broker.start()
    assert "events seq" in busy_broker.stderr_path.read_text()
    assert alice.run("exec", "dev-shell", "--", "true").returncode == 0
    busy_broker.stop()
    sign_unsigned(busy_broker.data_dir)
    seqs = [e["seq"] for e in events_in_store(busy_broker)]
    # session.start, command and session.end of the new session come after the signed head.
    assert seqs == [*range(1, last - 1), last + 1, last + 2, last + 3]
    result = run_verify(busy_broker)
    assert problem_lines(result) == [
        f"audit seq {last - 1}-{last}: missing: 2 events deleted between seq {last - 2} and "
        f"{last + 1}"
    ]


def _recording(broker: BrokerProcess, user: User, command: list[str]) -> Path:
    before = set((broker.data_dir / "recordings").glob("*.cast"))
    result = user.run("exec", "dev-shell", "--", *command, timeout=120)
    assert result.returncode == 0, result.stderr
    (cast,) = set((broker.data_dir / "recordings").glob("*.cast")) - before
    return cast


def test_a_changed_recording_byte_is_reported_with_its_block_and_lines(
    broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(broker).returncode == 0
    cast = _recording(broker, alice, ["seq", "1", "40000"])  # about 300 kB of recording
    broker.stop()
    sign_unsigned(broker.data_dir)
    assert run_verify(broker).returncode == 0
    data = bytearray(cast.read_bytes())
    offset = 100_000  # in the second 64 KiB block
    digit = next(i for i in range(offset, offset + 200) if chr(data[i]).isdigit())
    data[digit] = ord("7") if data[digit] != ord("7") else ord("8")
    cast.write_bytes(bytes(data))
    line = data[:digit].count(b"\n") + 1
    result = run_verify(broker, "--session", cast.stem)
    assert result.returncode == 1
    (problem,) = problem_lines(result)
    assert problem.startswith(
        f"recording {cast.stem}: changed: bytes 65536-131071 changed (block 2 of"
    )
    first, last = (int(n) for n in problem.split("lines ", 1)[1].split(",", 1)[0].split("-"))
    assert first <= line <= last


def test_a_changed_byte_that_breaks_json_names_the_line(broker: BrokerProcess, alice: User) -> None:
    assert alice.login(broker).returncode == 0
    cast = _recording(broker, alice, ["echo", "hello"])
    broker.stop()
    sign_unsigned(broker.data_dir)
    data = bytearray(cast.read_bytes())
    second_line = data.index(b"\n") + 1
    data[second_line] = ord("{")  # the first event's "[" becomes "{"
    cast.write_bytes(bytes(data))
    (problem,) = problem_lines(run_verify(broker))
    assert problem.startswith(f"recording {cast.stem}: changed: bytes 0-")
    assert problem.endswith("line 2 no longer parse")


def test_truncated_missing_and_unsigned_recordings_are_reported(
    broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(broker).returncode == 0
    casts = [_recording(broker, alice, ["echo", word]) for word in ("a", "b", "c", "d")]
    broker.stop()
    sign_unsigned(broker.data_dir)
    truncated, missing, unsigned, resigned = casts
    size = truncated.stat().st_size
    with truncated.open("r+b") as file:
        file.truncate(size - 10)
    missing.unlink()
    signature_path(unsigned).unlink()
    sig = json.loads(signature_path(resigned).read_text())
    sig["sha256"] = hashlib.sha256(b"something else").hexdigest()
    signature_path(resigned).write_text(json.dumps(sig))
    result = run_verify(broker)
    assert result.returncode == 1
    problems = problem_lines(result)
    lines_of = truncated.read_bytes().count(b"\n")
    assert (
        f"recording {truncated.stem}: truncated: {size - 10} of {size} bytes remain: cut at byte "
        f"{size - 10} (line {lines_of + 1} of {lines_of + 1})"
    ) in problems
    assert any(p.startswith(f"recording {missing.stem}: missing: ") for p in problems)
    assert f"recording {unsigned.stem}: not signed: {unsigned.name}.sig is missing" in problems
    assert (
        f"recording {resigned.stem}: bad signature: {resigned.name}.sig was changed after it "
        "was signed"
    ) in problems
    # The broker sealed each recording at session end, so the chain holds its digest too.
    assert any(
        p.startswith(f"recording {resigned.stem}: bad signature: the signed sha256 differs")
        for p in problems
    )
    assert len(problems) == 5, result.stdout


def test_verify_session_for_the_api_reports_this_sessions_problems(
    busy_broker: BrokerProcess,
) -> None:
    sessions = {e["session"] for e in events_in_store(busy_broker) if e.get("session")}
    mine, other, *_ = sorted(sessions)
    assert asyncio.run(verify_session(busy_broker.data_dir, mine)) == []  # type: ignore[arg-type]
    with db(busy_broker) as conn:
        conn.execute(
            "UPDATE audit_events SET event = replace(event, 'echo', 'ECHO') WHERE session = ? "
            "AND type = 'command'",
            (other,),
        )
    lines = asyncio.run(verify_session(busy_broker.data_dir, mine))
    assert lines == [
        "audit: 1 problem in other sessions' events (run hoop-broker verify on the broker host)"
    ]
    lines = asyncio.run(verify_session(busy_broker.data_dir, other))
    assert len(lines) == 1 and lines[0].startswith("audit seq ") and ": changed: " in lines[0]
    (busy_broker.data_dir / "recordings" / f"{mine}.cast").unlink()
    lines = asyncio.run(verify_session(busy_broker.data_dir, mine))
    assert lines[0].startswith(f"recording {mine}: missing: ")


def test_verify_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[broker]\nlisen = 1\n")
    result = subprocess.run(
        [HOOP_BROKER, "verify", "--config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "broker.lisen: unknown key" in result.stderr


# -- in-process: the store and the signing functions -----------------------------------------


async def test_concurrent_writers_in_two_processes_never_fork_the_chain(tmp_path: Path) -> None:
    """The broker's AuditLog and another process (as `hoop-broker prune` is) append at once."""
    store = await Store.open(tmp_path)
    audit = AuditLog(store, stdout=False)
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from broker.store import connect_sync, append_chained\n"
            "conn = connect_sync(Path(sys.argv[1]) / 'hoop.db')\n"
            "for n in range(200):\n"
            "    append_chained(conn, {'type': 'other', 'time': time.time(), 'groups': [],"
            " 'outcome': 'success', 'details': {'n': n}})\n",
            str(tmp_path),
        ],
        cwd=REPO,
    )
    await asyncio.gather(
        *(audit.emit(AuditEvent(type="mine", details={"n": n})) for n in range(200))
    )
    assert await asyncio.to_thread(other.wait, 60) == 0
    await store.close()
    conn = sqlite3.connect(tmp_path / "hoop.db")
    report = verify_chain_db(conn, None)
    assert report.problems == []
    assert report.events == 400 and report.last_seq == 400
    kinds = [row[0] for row in conn.execute("SELECT type FROM audit_events ORDER BY seq")]
    assert kinds.count("mine") == 200 and kinds.count("other") == 200


async def test_events_that_arrive_together_are_written_in_order_and_none_is_lost(
    tmp_path: Path,
) -> None:
    """Appends that come while a write is under way go in batches (one commit each): every
    event is stored in the order it was handed in; an event that cannot be stored fails alone;
    a caller that stops waiting still has its event written."""
    store = await Store.open(tmp_path)

    def event(n: int) -> dict[str, Any]:
        return {"type": "mine", "time": time.time(), "groups": [], "details": {"n": n}}

    bad = {"type": "bad", "time": time.time(), "groups": [], "details": {"x": object()}}
    calls = [store.append_audit(event(n)) for n in range(300)]
    calls.insert(150, store.append_audit(bad))
    tasks = [asyncio.ensure_future(call) for call in calls]
    impatient = asyncio.ensure_future(store.append_audit(event(300)))
    await asyncio.sleep(0)  # every event handed in
    impatient.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await store.close()
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1
    conn = sqlite3.connect(tmp_path / "hoop.db")
    report = verify_chain_db(conn, None)
    assert report.problems == [] and report.events == 301
    numbers = [
        json.loads(row[0])["details"]["n"]
        for row in conn.execute("SELECT event FROM audit_events ORDER BY seq")
    ]
    assert numbers == list(range(301))
    # The seqs returned are the stored ones.
    stored = [r["seq"] for r in results if not isinstance(r, BaseException)]
    assert stored == list(range(1, 301))


_OLD_SCHEMA = """
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    actor TEXT,
    session TEXT,
    target TEXT,
    event TEXT NOT NULL
);
CREATE INDEX audit_events_type ON audit_events(type);
"""


async def test_a_store_from_an_older_broker_is_migrated_and_chained(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "hoop.db")
    conn.executescript(_OLD_SCHEMA)
    for n in range(5):
        event = {"type": "auth.login", "actor": "alice", "groups": ["eng"], "time": 1000.0 + n}
        conn.execute(
            "INSERT INTO audit_events(time, type, actor, event) VALUES (?, ?, ?, ?)",
            (event["time"], "auth.login", "alice", json.dumps(event, sort_keys=True)),
        )
    conn.commit()
    conn.close()
    store = await Store.open(tmp_path)
    audit = AuditLog(store, stdout=False)
    new = await audit.emit(AuditEvent(type="session.start", actor="alice"))
    assert new["seq"] == 6
    old = await store.audit_events("auth.login")
    assert [e["seq"] for e in old] == [1, 2, 3, 4, 5]
    await store.close()
    with sqlite3.connect(tmp_path / "hoop.db") as conn:
        assert verify_chain_db(conn, None).problems == []
    # Opening it again changes nothing.
    store = await Store.open(tmp_path)
    assert [e["seq"] for e in await store.audit_events()] == [1, 2, 3, 4, 5, 6]
    await store.close()


def test_sign_and_verify_a_recording_in_place(tmp_path: Path) -> None:
    signer = Signer.load(tmp_path, create=True)
    cast = tmp_path / "20260101-0123456789ab.cast"
    lines = ['{"version": 2, "width": 80, "height": 24}']
    lines += [json.dumps([n / 10, "o", f"line {n}\r\n"]) for n in range(20000)]
    cast.write_text("\n".join(lines) + "\n")
    document = sign_recording(signer, cast, cast.stem)
    assert document["size"] == cast.stat().st_size
    assert document["sha256"] == hashlib.sha256(cast.read_bytes()).hexdigest()
    assert signature_path(cast).stat().st_mode & 0o777 == 0o600
    assert verify_recording(signer.verifier, cast, cast.stem) == []
    assert [p.kind for p in verify_recording(signer.verifier, cast, "20260101-ffffffffffff")] == [
        "wrong recording"
    ]
    other = Signer.load(tmp_path / "elsewhere", create=True).verifier
    (problem,) = verify_recording(other, cast, cast.stem)
    assert problem.kind == "bad signature" and "not this broker's" in problem.detail
    with cast.open("ab") as file:
        file.write(b'[9999.0, "o", "appended"]\n')
    (problem,) = verify_recording(signer.verifier, cast, cast.stem)
    assert problem.kind == "grown" and f"from byte {document['size']}" in problem.detail


def test_the_chain_hash_covers_the_seq_and_the_link() -> None:
    event = {"type": "command", "time": 1.5, "groups": [], "details": {"command": "ls"}}
    digest = chain_hash(event, 7, GENESIS)
    assert digest == chain_hash(dict(reversed(list(event.items()))), 7, GENESIS)
    assert digest != chain_hash(event, 8, GENESIS)
    assert digest != chain_hash(event, 7, "1" * 64)
    assert digest != chain_hash({**event, "time": 1.50001}, 7, GENESIS)


def test_append_chained_goes_on_from_the_floor_when_the_end_was_deleted(tmp_path: Path) -> None:
    conn = connect_sync(tmp_path / "hoop.db")
    from broker.store import migrate_audit_chain

    migrate_audit_chain(conn)
    first = append_chained(conn, {"type": "a", "time": 1.0, "groups": []})
    second = append_chained(conn, {"type": "b", "time": 2.0, "groups": []})
    conn.execute("DELETE FROM audit_events WHERE seq = 2")
    third = append_chained(conn, {"type": "c", "time": 3.0, "groups": []}, (2, second["hash"]))
    assert (first["seq"], third["seq"], third["prev_hash"]) == (1, 3, second["hash"])
    report = verify_chain_db(conn, None)
    assert [str(p) for p in report.problems] == [
        "audit seq 2: missing: 1 event deleted between seq 1 and 3"
    ]


async def test_the_chain_vouches_for_a_recording_even_against_a_stolen_key(tmp_path: Path) -> None:
    """What the session end does (seal, then session.end with the digest), then a forger who
    holds the audit key re-signs a changed recording: the chain still tells."""
    store = await Store.open(tmp_path)
    signer = Signer.load(tmp_path, create=True)
    audit = AuditLog(store, stdout=False, data_dir=tmp_path, signer=signer)
    await audit.start()
    sid = "20260101-0123456789ab"
    cast = tmp_path / "recordings" / f"{sid}.cast"
    cast.parent.mkdir()
    cast.write_text('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "rm -rf /\\r\\n"]\n')
    await store.create_session(
        session_id=sid,
        user="alice",
        target="dev-shell",
        kind="terminal",
        started_at=time.time(),
        recording=str(cast),
        reason=None,
        command=None,
    )
    document = await seal_recording(signer, cast, sid)
    assert document is not None
    await store.end_session(sid, state="closed", ended_at=time.time(), exit_status=0)
    await audit.emit(
        AuditEvent(
            type="session.end",
            session=sid,
            details={"exit_status": 0, "state": "closed", "recording_sha256": document["sha256"]},
        )
    )
    await audit.close()
    await store.close()
    assert verify_data_dir(tmp_path).problems == []
    cast.write_text('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "ls\\r\\n"]\n')
    sign_recording(signer, cast, sid)  # re-signed with the real key
    (problem,) = verify_data_dir(tmp_path).problems
    assert str(problem) == (
        f"recording {sid}: bad signature: the signed sha256 differs from the one in the audit "
        "chain (session.end, audit seq 1)"
    )
    assert await seal_recording(signer, tmp_path / "recordings" / "gone.cast", "gone") is None


def test_a_deletion_next_to_a_change_reports_both(tmp_path: Path) -> None:
    from broker.store import migrate_audit_chain

    conn = connect_sync(tmp_path / "hoop.db")
    migrate_audit_chain(conn)
    for n in range(5):
        append_chained(conn, {"type": "command", "time": float(n), "groups": [], "details": {}})
    conn.execute("DELETE FROM audit_events WHERE seq = 2")
    conn.execute(
        'UPDATE audit_events SET event = replace(event, \'"details": {}\', \'"details": {"x": 1}\')'
        " WHERE seq = 3"
    )
    assert [str(p) for p in verify_chain_db(conn, None).problems] == [
        "audit seq 2: missing: 1 event deleted between seq 1 and 3",
        "audit seq 3: changed: the event no longer matches its hash (command, 1970-01-01T00:00:02Z)",
    ]


def test_a_refused_exec_has_no_recording_and_clearing_one_does_not_hide_it(
    broker: BrokerProcess, alice: User
) -> None:
    """A one-off exec refused before it ran is a session with no recording: verify checks no
    recording for it. A recorded session whose column is cleared (to pass it off as such a
    refusal) is still checked, by the digest its session.end sealed in the chain."""
    assert alice.login(broker).returncode == 0
    refused = alice.run("exec", "dev-shell", "--", "rm", "-f", "/tmp/nothing")
    assert refused.returncode == 3, refused.stderr
    cast = _recording(broker, alice, ["echo", "kept"])
    broker.stop()
    sign_unsigned(broker.data_dir)
    with db(broker) as conn:
        (blocked,) = conn.execute(
            "SELECT id FROM sessions WHERE state = 'blocked' AND recording IS NULL"
        ).fetchone()
    result = run_verify(broker)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 recording" in result.stdout and blocked not in result.stdout
    assert run_verify(broker, "--session", blocked).returncode == 0
    cast.unlink()
    signature_path(cast).unlink()
    with db(broker) as conn:
        conn.execute(
            "UPDATE sessions SET recording = NULL, state = 'blocked' WHERE id = ?", (cast.stem,)
        )
    result = run_verify(broker)
    assert result.returncode == 1
    assert any(p.startswith(f"recording {cast.stem}: missing: ") for p in problem_lines(result))


def test_a_recording_of_several_read_pieces_is_signed_block_by_block(tmp_path: Path) -> None:
    # Sealing reads a recording some MiB at a time and hashes the whole file in a second
    # thread; the document must be what one plain pass over the bytes gives, also where lines
    # and blocks cross the pieces' edges and the last line has no line end.
    signer = Signer.load(tmp_path, create=True)
    cast = tmp_path / "20260101-0123456789ab.cast"
    lines = ['{"version": 2, "width": 80, "height": 24}']
    lines += [json.dumps([n / 10, "o", "x" * (n % 997) + "\r\n"]) for n in range(20000)]
    data = ("\n".join(lines) + '\n[2000.0, "o", "no line end"]').encode()
    cast.write_bytes(data)
    document = sign_recording(signer, cast, cast.stem)
    size = document["block_size"]
    assert len(data) > 2 * 64 * size + size  # more than two pieces and a part of a third
    assert document["sha256"] == hashlib.sha256(data).hexdigest()
    assert document["size"] == len(data)
    assert document["lines"] == data.count(b"\n") + 1
    starts = range(0, len(data), size)
    assert document["blocks"] == [hashlib.sha256(data[s : s + size]).hexdigest() for s in starts]
    assert document["block_lines"] == [data.count(b"\n", 0, s) + 1 for s in starts]
    assert verify_recording(signer.verifier, cast, cast.stem) == []
