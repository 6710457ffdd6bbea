"""The store on PostgreSQL (`[store] url`): two broker nodes, each with two workers, sharing
one database on the machine's PostgreSQL and one bucket for recordings (moto's S3 server).

Each node is a real `hoop-broker serve --workers 2` with a data dir of its own; the nodes
share the keys an operator would copy to every node (host key, user CA, audit key) and
nothing else. People log in to one node and work on either. Bounded: a few sessions, every
wait with a time limit, loopback only. The database is created for the module and dropped
after it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import psycopg
import pytest

from tests.helpers import HOOP_BROKER, BrokerProcess, free_port, start_broker
from tests.test_approvals_helpers import Person, approvals_config, printf_review_target

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BUCKET = "hoop-nodes"
KEYS = {"HOOP_S3_KEY": "testing-key", "HOOP_S3_SECRET": "testing-secret"}
NODE_TIMEOUT = 3
SHARED_KEYS = ("host_key", "host_key.pub", "user_ca", "user_ca.pub", "audit_key", "audit_key.pub")


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    name = f"hoop_store_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def store_rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def node_config(root: Path, node: str, url: str, endpoint: str) -> str:
    config = approvals_config(
        root / node, port=free_port(), dev_port=free_port(), targets=printf_review_target("box")
    )
    config = config.replace("[broker]\n", f'[broker]\nnode = "{node}"\n', 1)
    return (
        config
        + f"""
[store]
url = "{url}"
node_timeout = "{NODE_TIMEOUT}s"

[recordings]
url = "s3://{BUCKET}/"
endpoint_url = "{endpoint}"
access_key_id = "env:HOOP_S3_KEY"
secret_access_key = "env:HOOP_S3_SECRET"
"""
    )


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> Iterator[Any]:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["HOOP_S3_KEY"],
        aws_secret_access_key=KEYS["HOOP_S3_SECRET"],
    )
    s3.create_bucket(Bucket=BUCKET)
    yield s3
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    s3.delete_bucket(Bucket=BUCKET)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pgstore")


@pytest.fixture(scope="module")
def nodes(
    root: Path, store_url: str, s3_endpoint: str, bucket: Any
) -> Iterator[dict[str, BrokerProcess]]:
    first = start_broker(
        root,
        node_config(root, "node-a", store_url, s3_endpoint),
        name="a",
        workers=2,
        env=KEYS,
    )
    second_dir = root / "node-b"
    second_dir.mkdir()
    for name in SHARED_KEYS:
        shutil.copy2(first.data_dir / name, second_dir / name)
    second = start_broker(
        root,
        node_config(root, "node-b", store_url, s3_endpoint),
        name="b",
        workers=2,
        env=KEYS,
    )
    yield {"a": first, "b": second}
    second.stop()
    first.stop()


@pytest.fixture(scope="module")
def alice(nodes: dict[str, BrokerProcess], root: Path) -> Person:
    return Person.login(nodes["a"], root / "homes-a", "alice")


@pytest.fixture(scope="module")
def bob(nodes: dict[str, BrokerProcess], root: Path) -> Person:
    return Person.login(nodes["b"], root / "homes-b", "bob")


@pytest.fixture(scope="module")
def alice_on_b(nodes: dict[str, BrokerProcess], root: Path) -> Person:
    """Alice, logged in to node B as well."""
    return Person.login(nodes["b"], root / "homes-b", "alice")


def verify(broker: BrokerProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HOOP_BROKER, "verify", "--config", str(broker.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **KEYS},
    )


def wait_until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


async def start_ticking(person: Person, name: str, count: int) -> tuple[Any, Any]:
    """PERSON's exec printing NAME-1 … NAME-COUNT, ten a second: (conn, process), once the
    first tick is out."""
    conn = await person.connect()
    script = f"for i in $(seq 1 {count}); do echo {name}-$i; sleep 0.1; done"
    process = await conn.create_process(
        shlex.join(["exec", "box", "--", "bash", "-c", script]), encoding=None
    )
    first = await asyncio.wait_for(process.stdout.readline(), 30)
    assert first == f"{name}-1\n".encode()
    return conn, process


async def test_each_node_serves_from_the_one_store(
    nodes: dict[str, BrokerProcess], alice: Person, bob: Person, store_url: str
) -> None:
    assert (await alice.call("whoami"))["served_by"].startswith("node-a/")
    assert (await bob.call("whoami"))["served_by"].startswith("node-b/")
    # Nothing of the state is in the data dirs: no SQLite store there.
    assert not (nodes["a"].data_dir / "hoop.db").exists()
    assert not (nodes["b"].data_dir / "hoop.db").exists()
    # Both logins are in the shared registry: a certificate node A issued is known to B.
    users = {row[0] for row in store_rows(store_url, 'SELECT "user" FROM issued_certificates')}
    assert users == {"alice", "bob"}


async def test_a_request_on_one_node_is_approved_on_the_other_and_runs_once(
    nodes: dict[str, BrokerProcess], alice: Person, bob: Person, target_dir: Path
) -> None:
    log = target_dir / "ran-across-nodes.log"
    async with await bob.api() as api:
        watch = api.stream("approvals.watch")
        assert (await asyncio.wait_for(anext(watch), 20))["type"] == "snapshot"
        markers = [f"node-crossed-{n}" for n in range(3)]
        conns, processes = [], []
        try:
            for marker in markers:
                conn = await alice.connect()
                conns.append(conn)
                command = f"printf '%s\\n' {marker} | tee -a {shlex.quote(str(log))}"
                process = await conn.create_process(
                    shlex.join(["exec", "--wait", "120", "box", "--", "bash", "-c", command]),
                    encoding=None,
                )
                process.stdin.write_eof()
                processes.append((marker, process))
            seen: dict[str, dict[str, Any]] = {}
            started = time.monotonic()
            while len(seen) < len(markers):
                event = await asyncio.wait_for(anext(watch), 30)
                command = (event.get("request") or {}).get("command") or ""
                for marker in markers:
                    if marker in command:
                        seen.setdefault(marker, event["request"])
            # Each request reached node B's watcher through the store.
            assert time.monotonic() - started < 10
            for marker, process in processes:
                await api.call(
                    "approvals.decide", {"id": seen[marker]["id"], "decision": "approve"}
                )
                done = await asyncio.wait_for(process.wait(check=False), 30)
                assert done.exit_status == 0, done.stderr
                assert marker.encode() in (done.stdout or b"")
        finally:
            for conn in conns:
                conn.close()
    assert sorted(log.read_text().split()) == sorted(markers)


async def test_sessions_of_both_nodes_are_in_one_chain_that_verifies_on_either(
    nodes: dict[str, BrokerProcess],
    alice: Person,
    alice_on_b: Person,
    bob: Person,
    store_url: str,
) -> None:
    for person, word in ((alice, "from-node-a"), (bob, "from-node-b")):
        ran = await person.run(shlex.join(["exec", "box", "--", "echo", word]))
        assert ran.status == 0 and ran.stdout == f"{word}\n", ran
    owners = {row[0].split("/")[0] for row in store_rows(store_url, "SELECT owner FROM sessions")}
    assert owners == {"node-a", "node-b"}
    seqs = [row[0] for row in store_rows(store_url, "SELECT seq FROM audit_events ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1)), "the chain forked or has a gap"
    # Alice's session on node A is found, listed and replayed from node B (PostgreSQL's
    # full-text search; the recording is read where it was written, on this machine).
    found = await alice_on_b.call("sessions.search", {"text": "from-node-a"})
    assert any(match["line"] == "from-node-a" for match in found), found
    found = await alice_on_b.call("sessions.search", {"text": "from-no"})  # a prefix
    assert any(match["line"] == "from-node-a" for match in found), found
    listed = await alice_on_b.call("sessions.list", {})
    assert any(row["command"] and "from-node-a" in row["command"] for row in listed), listed
    for node in ("a", "b"):
        result = verify(nodes[node])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "intact:" in result.stdout

    # Each event reaches the SIEM once: the node that wrote it sends it (here: stdout).
    def sent() -> tuple[list[int], list[int]] | None:
        by_a = [event["seq"] for event in nodes["a"].audit_events()]
        by_b = [event["seq"] for event in nodes["b"].audit_events()]
        return (by_a, by_b) if set(by_a) | set(by_b) >= set(seqs) else None

    by_a, by_b = wait_until(sent, "every event at a sink")
    assert by_a and by_b and not set(by_a) & set(by_b)
    assert by_a == sorted(by_a) and by_b == sorted(by_b)
    # An event changed in the shared store is found from either node.
    victim = seqs[len(seqs) // 2]
    with psycopg.connect(store_url, autocommit=True) as conn:
        (event,) = conn.execute(
            "SELECT event FROM audit_events WHERE seq = %s", (victim,)
        ).fetchone()
        record = json.loads(event)
        record["actor"] = "mallory"
        conn.execute(
            "UPDATE audit_events SET event = %s WHERE seq = %s", (json.dumps(record), victim)
        )
    try:
        for node in ("a", "b"):
            result = verify(nodes[node])
            assert result.returncode == 1
            assert f"audit seq {victim}: changed" in result.stdout, result.stdout
    finally:
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("UPDATE audit_events SET event = %s WHERE seq = %s", (event, victim))


async def test_a_restarted_node_closes_its_own_sessions_and_no_one_elses(
    nodes: dict[str, BrokerProcess], alice: Person, bob: Person, store_url: str
) -> None:
    conn = await alice.connect()
    process = await conn.create_process(
        shlex.join(["exec", "box", "--", "bash", "-c", "echo waiting; sleep 60"]), encoding=None
    )
    try:
        assert (await asyncio.wait_for(process.stdout.readline(), 30)) == b"waiting\n"
        (session,) = store_rows(
            store_url,
            "SELECT id FROM sessions WHERE state = 'open' AND owner LIKE 'node-a/%%'",
        )
        # Node B restarts: node A's live session is not B's to close.
        nodes["b"].stop()
        nodes["b"].start()
        (state,) = store_rows(store_url, "SELECT state FROM sessions WHERE id = %s", session[0])
        assert state == ("open",)
        # Node A is killed and started again: it closes its own, sealed and audited.
        assert nodes["a"].process is not None
        nodes["a"].process.send_signal(signal.SIGKILL)
        nodes["a"].process.wait(10)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    nodes["a"].start()
    (state,) = store_rows(store_url, "SELECT state FROM sessions WHERE id = %s", session[0])
    assert state == ("interrupted",)
    ends = store_rows(
        store_url,
        "SELECT event FROM audit_events WHERE session = %s AND type = 'session.end'",
        session[0],
    )
    assert len(ends) == 1
    assert json.loads(ends[0][0])["details"].get("recording_sha256")
    result = verify(nodes["b"])
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_live_session_on_one_node_is_followed_from_the_other(
    nodes: dict[str, BrokerProcess], alice: Person, alice_on_b: Person, store_url: str
) -> None:
    """Node B has no copy of the recording: it follows what node A ships to the bucket."""
    conn, _process = await start_ticking(alice, "live", 40)
    try:
        (session,) = wait_until(
            lambda: store_rows(
                store_url,
                "SELECT id FROM sessions WHERE state = 'open' AND command LIKE '%%live-%%'",
            ),
            "the open session",
        )
        async with await alice_on_b.api() as api:
            seen = b""
            async for event in api.stream("sessions.recording", {"id": session[0], "follow": True}):
                if event["type"] == "chunk":
                    seen += base64.b64decode(event["data"])
                if event["type"] == "end":
                    break
        ticks = [int(n) for n in re.findall(rb"live-(\d+)", seen)]
        assert ticks == list(range(1, 41)), ticks
        assert not (nodes["b"].data_dir / "recordings" / f"{session[0]}.cast").exists()
    finally:
        conn.close()


async def test_a_dead_nodes_sessions_are_ended_by_another_from_the_bucket(
    nodes: dict[str, BrokerProcess], alice: Person, store_url: str, bucket: Any
) -> None:
    conn, process = await start_ticking(alice, "dying", 600)
    seen = 1
    try:
        while seen < 20:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            seen = int(line.split(b"-")[1])
        (session,) = store_rows(
            store_url, "SELECT id FROM sessions WHERE state = 'open' AND command LIKE '%%dying-%%'"
        )
        kill_node(nodes["a"])
    finally:
        conn.close()
    # Node B notices the silence and ends the session: interrupted, sealed, one session.end.
    wait_until(
        lambda: store_rows(
            store_url, "SELECT 1 FROM sessions WHERE id = %s AND state = 'interrupted'", session[0]
        ),
        "node B to take the session over",
        timeout=NODE_TIMEOUT * 5,
    )
    ends = wait_until(
        lambda: store_rows(
            store_url,
            "SELECT event FROM audit_events WHERE session = %s AND type = 'session.end'",
            session[0],
        ),
        "its session.end",
    )
    assert len(ends) == 1
    details = json.loads(ends[0][0])["details"]
    assert details.get("node") == "node-a" and details.get("recording_sha256"), ends
    # What node A shipped before it died is all there, sealed, up to about a second before.
    sealed = wait_until(
        lambda: _object(bucket, f"{session[0]}.cast"), "the sealed copy in the bucket"
    )
    ticks = [int(n) for n in re.findall(rb"dying-(\d+)", sealed)]
    assert ticks == list(range(1, len(ticks) + 1)) and ticks[-1] >= seen - 15, (ticks[-1:], seen)
    result = verify(nodes["b"])
    assert result.returncode == 0, result.stdout + result.stderr
    nodes["a"].start()  # for the tests after this one


def kill_node(node: BrokerProcess) -> None:
    """The machine dies: its workers and supervisor are killed at once, none ends anything
    (killed alone, the supervisor's workers would end their sessions themselves)."""
    assert node.process is not None
    pid = node.process.pid
    workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for worker in workers:
        os.kill(int(worker), signal.SIGKILL)
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(10)


def _object(bucket: Any, key: str) -> bytes | None:
    try:
        return bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except bucket.exceptions.NoSuchKey:
        return None


def test_bad_store_settings_are_config_errors(tmp_path: Path) -> None:
    for section, problem in (
        ('url = "mysql://db/hoop"', "store.url"),
        ('url = "postgresql://hoop:secret@db/hoop"', "holds a password"),
        ('password = "env:PW"', "password needs url"),
        ('url = "postgresql://db/hoop"\npassword = "hunter2"', "reference"),
    ):
        config = approvals_config(tmp_path / "data", port=free_port(), dev_port=free_port())
        (tmp_path / "broker.toml").write_text(config + f"\n[store]\n{section}\n")
        result = subprocess.run(
            [HOOP_BROKER, "check-config", str(tmp_path / "broker.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert problem in result.stdout + result.stderr, result.stdout + result.stderr
        assert "secret" not in result.stdout + result.stderr


def test_a_store_that_cannot_be_reached_stops_the_broker_with_one_line(tmp_path: Path) -> None:
    config = approvals_config(tmp_path / "data", port=free_port(), dev_port=free_port())
    dead = free_port()
    config += f'\n[store]\nurl = "postgresql://hoop@127.0.0.1:{dead}/hoop"\n'
    (tmp_path / "broker.toml").write_text(config)
    result = subprocess.run(
        [
            HOOP_BROKER,
            "serve",
            "--dev",
            "--workers",
            "1",
            "--config",
            str(tmp_path / "broker.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"cannot open store postgresql://hoop@127.0.0.1:{dead}/hoop" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_revocation_on_one_node_holds_on_every_node(
    nodes: dict[str, BrokerProcess], root: Path
) -> None:
    """`hoop-broker revoke` run on node B's machine: the certificate node A issued is refused
    by node A from the next connection on (the registry is the shared store's)."""
    carol = Person.login(nodes["a"], root / "homes-revoke", "carol")
    on_b = Person(carol.name, carol.user, nodes["b"], carol.key, carol.cert)
    assert (await carol.call("whoami"))["user"] == "carol"
    assert (await on_b.call("whoami"))["user"] == "carol"  # node A's certificate, on node B
    revoked = subprocess.run(
        [HOOP_BROKER, "revoke", "carol", "--config", str(nodes["b"].config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **KEYS},
    )
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert "revoked 1 certificate of carol" in revoked.stdout
    for node in ("a", "b"):
        refused = Person(carol.name, carol.user, nodes[node], carol.key, carol.cert)
        with pytest.raises(asyncssh.PermissionDenied):
            await refused.call("whoami")


async def test_the_index_on_postgres_takes_a_large_session_and_finds_its_last_line(
    tmp_path: Path, store_url: str
) -> None:
    from broker.audit.index import RecordingText, index_for
    from broker.store import Store

    store = await Store.open(tmp_path, url=store_url, node="indexer")
    try:
        session = "20261206-00000000cafe"
        await store.create_session(
            session_id=session,
            user="erin",
            target="box",
            kind="exec",
            started_at=time.time(),
            recording=None,
            reason=None,
            command="seq",
        )
        await store.end_session(session, state="closed", ended_at=time.time(), exit_status=0)
        lines = [(n / 100, f"row {n} of the export") for n in range(20_000)]
        lines.append((200.0, "the very-last line"))
        index = index_for(store)
        index.gathered(session, RecordingText(lines=lines, marks=[]))
        found = await index.search("very-last", user="erin")
        assert [(m.line, m.offset) for m in found] == [("the very-last line", 200.0)]
        found = await index.search("row 19999 of", user="erin")
        assert [m.line for m in found] == ["row 19999 of the export"]
        assert await index.search("very-last", user="someone-else") == []
        (count,) = store_rows(
            store_url,
            "SELECT count(*) FROM session_lines l JOIN session_index s ON s.no = l.session_no "
            "WHERE s.session = %s",
            session,
        )[0]
        assert count == len(lines)
    finally:
        await store.close()
