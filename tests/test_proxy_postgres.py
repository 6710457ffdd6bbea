"""`hoopctl proxy` with real PostgreSQL clients: psql, psycopg (text and binary results) and
asyncpg (binary, prepared statements) reach a real PostgreSQL target through the broker.

Each client: a select whose masked column never shows its values, a DROP the policy denies
(the table is still there), and a DELETE that waits in the protocol for another user's
approval and then runs once. Bad input ends one connection and leaves the proxy serving."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pexpect
import psycopg
import pytest

from tests.fixtures import approvals
from tests.fixtures.approvals import AccountsDb, World, approvals_world
from tests.scratch_databases import PG_ADMIN

accounts_db = approvals.accounts_db

POLICY = """
[policies.proxied]
default = "allow"
on_unknown = "review"

[[policies.proxied.rules]]
name = "no-drop"
action = "deny"
statement = ["DROP", "TRUNCATE"]

[[policies.proxied.rules]]
name = "unbounded-writes"
action = "review"
statement = ["UPDATE", "DELETE"]
without_where = true
approvers = ["dba-leads"]
"""

MASKING = """
[targets.masking]

[[targets.masking.columns]]
match = ["email"]
strategy = "redact"
"""

EMAILS = ("ann@example.com", "bo@example.com")
PSQL = shutil.which("psql")


@dataclass
class Proxy:
    """A running `hoopctl proxy pgx` of alice's: where clients connect."""

    child: pexpect.spawn
    port: int
    password: str
    user: str

    def dsn(self, **extra: str) -> str:
        words = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": "pgx",
            "user": self.user,
            "password": self.password,
            "sslmode": "disable",
            **extra,
        }
        return " ".join(f"{k}={v}" for k, v in words.items())

    def request_id(self, timeout: float = 30) -> str:
        """The id of the approval request the proxy's terminal shows next."""
        self.child.expect(r"waiting for approval ([0-9a-f]{10})", timeout=timeout)
        return str(self.child.match.group(1))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, accounts_db: AccountsDb) -> Iterator[World]:
    root = tmp_path_factory.mktemp("proxy")
    targets = accounts_db.target("pgx", root, policy="proxied") + MASKING + POLICY
    with approvals_world(root, targets=targets) as made:
        yield made


@pytest.fixture(scope="module")
def proxy(world: World) -> Iterator[Proxy]:
    child = world.alice.user.spawn("proxy", "pgx", "--output", "json", timeout=60)
    child.expect(r'\{"target": "pgx".*\}')
    info = json.loads(child.match.group(0))
    assert info["host"] == "127.0.0.1" and info["password"]
    yield Proxy(child, int(info["port"]), str(info["password"]), str(info["user"]))
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()


def restore(db: AccountsDb) -> None:
    with psycopg.connect(**PG_ADMIN, dbname=db.name) as conn:
        conn.execute("DELETE FROM accounts")
        conn.execute("INSERT INTO accounts VALUES (1, %s), (2, %s)", EMAILS)


def psql(proxy: Proxy, sql: str) -> subprocess.CompletedProcess[str]:
    assert PSQL, "psql is not installed"
    return subprocess.run(
        [PSQL, proxy.dsn(), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- masked selects -----------------------------------------------------------------------


def test_psql_select_is_masked(proxy: Proxy, accounts_db: AccountsDb) -> None:
    restore(accounts_db)
    result = psql(proxy, "SELECT id, email FROM accounts ORDER BY id")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert [line.split("|")[0] for line in lines] == ["1", "2"]
    for email in EMAILS:
        assert email not in result.stdout
    assert all(line.split("|")[1] for line in lines)  # masked, not empty


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_select_with_parameters_is_masked(
    proxy: Proxy, accounts_db: AccountsDb, binary: bool
) -> None:
    restore(accounts_db)
    with psycopg.connect(proxy.dsn()) as conn:
        rows = conn.execute(
            "SELECT id, email, length(email) FROM accounts WHERE id = %s",
            (1,),
            binary=binary,
        ).fetchall()
    assert len(rows) == 1
    account_id, email, length = rows[0]
    assert account_id == 1  # unmasked columns keep their type, in either format
    assert isinstance(email, str) and email != EMAILS[0] and "ann" not in email
    # length(email) is derived from a masked column: masked too (sent as text).
    assert length != len(EMAILS[0])


def test_asyncpg_prepared_binary_select_is_masked(proxy: Proxy, accounts_db: AccountsDb) -> None:
    restore(accounts_db)

    async def work() -> list[Any]:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=proxy.port,
            user=proxy.user,
            password=proxy.password,
            database="pgx",
            ssl=False,
        )
        try:
            statement = await conn.prepare("SELECT id, email FROM accounts WHERE id = $1")
            first = await statement.fetch(1)
            second = await statement.fetch(2)
            return [*first, *second]
        finally:
            await conn.close()

    rows = asyncio.run(work())
    assert [row["id"] for row in rows] == [1, 2]
    for row, email in zip(rows, EMAILS, strict=True):
        assert row["email"] != email and "@example.com" not in row["email"]


# -- denied -----------------------------------------------------------------------------------


def test_psql_drop_is_denied_and_the_table_survives(proxy: Proxy, accounts_db: AccountsDb) -> None:
    restore(accounts_db)
    result = psql(proxy, "DROP TABLE accounts")
    assert result.returncode != 0
    assert "denied by rule no-drop" in result.stderr
    assert accounts_db.count() == 2


def test_psycopg_drop_is_denied_with_sqlstate_42501(proxy: Proxy, accounts_db: AccountsDb) -> None:
    restore(accounts_db)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-drop"):
            conn.execute("DROP TABLE accounts")
        # The connection goes on: the next statement runs.
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (2,)
    assert accounts_db.count() == 2


def test_asyncpg_drop_in_a_prepared_statement_is_denied(
    proxy: Proxy, accounts_db: AccountsDb
) -> None:
    restore(accounts_db)

    async def work() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password,
            database="pgx", ssl=False,
        )  # fmt: skip
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.execute("DROP TABLE accounts")
        finally:
            await conn.close()

    asyncio.run(work())
    assert accounts_db.count() == 2


# -- approval inside the protocol ----------------------------------------------------------


def test_psycopg_delete_waits_for_approval_then_runs_once(
    proxy: Proxy, world: World, accounts_db: AccountsDb
) -> None:
    restore(accounts_db)
    outcome: dict[str, Any] = {}

    def delete() -> None:
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                outcome["rowcount"] = conn.execute("DELETE FROM accounts").rowcount
        except Exception as exc:  # reported below
            outcome["error"] = exc

    client = threading.Thread(target=delete)
    client.start()
    request_id = proxy.request_id()
    assert accounts_db.count() == 2  # nothing ran while it waits
    approved = world.bob.user.run("approve", request_id, "--comment", "checked")
    assert approved.returncode == 0, approved.stderr
    client.join(60)
    assert not client.is_alive()
    assert outcome.get("rowcount") == 2, outcome
    assert accounts_db.count() == 0
    queries = [
        e
        for e in world.broker.audit_events("query")
        if e["details"]["query"] == "DELETE FROM accounts" and e["details"]["approver"] == "bob"
    ]
    assert len(queries) == 1 and queries[0]["actor"] == "alice"


def test_a_client_that_leaves_while_waiting_cancels_the_request(
    proxy: Proxy, world: World, accounts_db: AccountsDb
) -> None:
    restore(accounts_db)
    client = subprocess.Popen(
        [PSQL or "psql", proxy.dsn(), "-X", "-c", "DELETE FROM accounts"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    request_id = proxy.request_id()
    client.kill()
    client.wait(30)
    for _ in range(100):
        state = approvals.record_of(world.bob.user, request_id)["state"]
        if state != "pending":
            break
        threading.Event().wait(0.2)
    assert state == "cancelled"
    late = world.bob.user.run("approve", request_id)
    assert late.returncode != 0
    assert accounts_db.count() == 2


# -- the one-time password and bad input -------------------------------------------------------


def test_a_wrong_password_is_refused(proxy: Proxy) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proxy.dsn(password="not-it"))


def _raw(proxy: Proxy, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_client_speaking_another_protocol_gets_an_error_and_the_proxy_goes_on(
    proxy: Proxy, accounts_db: AccountsDb
) -> None:
    answer = _raw(proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"E") and b"out of bounds" in answer
    assert psql(proxy, "SELECT 1").stdout.strip() == "1"


def test_a_startup_packet_over_10_kb_is_refused(proxy: Proxy) -> None:
    body = struct.pack("!i", 196608) + b"user\0" + b"x" * 20_000 + b"\0\0"
    answer = _raw(proxy, struct.pack("!i", len(body) + 4) + body)
    assert answer.startswith(b"E")
    assert re.search(rb"startup packet of \d+ bytes", answer)
    assert psql(proxy, "SELECT 2").stdout.strip() == "2"
