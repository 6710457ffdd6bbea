"""The broker's own protocol-v3 connection to PostgreSQL (broker.protocols.postgres.upstream),
against real servers: the machine's (trust), a private cluster that takes passwords (SCRAM,
MD5, clear text) and a private cluster with TLS. Where it fails to connect, its message is
the one the psycopg connection (PostgresConnection) gives for the same failure.

A few loopback servers play a PostgreSQL that misbehaves, which no real one does: one that
cannot prove it knows the password, one that hides plain text behind its answer to the
SSLRequest."""

from __future__ import annotations

import asyncio
import base64
import secrets
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker.config import PostgresTarget
from broker.protocols.base import TargetError
from broker.protocols.postgres import PostgresConnection
from broker.protocols.postgres import messages as m
from broker.protocols.postgres.upstream import Upstream
from broker.protocols.sql import StatementError
from tests.fixtures.postgres_cluster import (
    PasswordCluster,
    password_postgres,
    tls_dir,
    tls_files,
    tls_postgres,
)
from tests.helpers import free_port
from tests.scratch_databases import PG_ADMIN, scratch_postgres

__all__ = ["password_postgres", "tls_dir", "tls_files", "tls_postgres"]

PASSWORD_ENV = "HOOP_TEST_UPSTREAM_PASSWORD"


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with scratch_postgres() as name:
        yield name


def pg_target(database: str = "postgres", **settings: Any) -> PostgresTarget:
    values: dict[str, Any] = {
        "name": "pg-up",
        "type": "postgres",
        "address": "127.0.0.1:5432",
        "database": database,
        "user": f"{database}_app",
        "tls": "disable",
    }
    return PostgresTarget.model_validate(values | settings)


@pytest.fixture
async def up(db: str) -> AsyncIterator[Upstream]:
    connection = await Upstream.open(pg_target(db))
    yield connection
    await connection.close()


async def rows_of(conn: Upstream | PostgresConnection, sql: str) -> list[tuple[Any, ...]]:
    result = await conn.execute(sql)
    return [row async for row in result.rows]


async def open_failures(target: PostgresTarget) -> tuple[str, str]:
    """The messages of Upstream and of PostgresConnection failing to connect to TARGET."""
    with pytest.raises(TargetError) as ours:
        await Upstream.open(target)
    with pytest.raises(TargetError) as psycopgs:
        await PostgresConnection.open(target)
    return str(ours.value), str(psycopgs.value)


def full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


# -- values -------------------------------------------------------------------------------

# Elements array_out must quote or escape: the delimiter, quotes, backslashes, braces, spaces,
# the empty string and the word NULL; then a real NULL.
TRICKY_NAMES = "ARRAY['a,b', 'c\"d', 'e\\f', '{x}', ' sp ', '', 'NULL', NULL, 'ü']::name[]"
TRICKY_VALUES = ["a,b", 'c"d', "e\\f", "{x}", " sp ", "", "NULL", None, "ü"]

TYPED = (
    "SELECT 1::int2, 2::int4, 3000000000::int8, 26::oid, true, false, 1.5::float4, "
    "-2.25::float8, 'x'::text, 'y'::varchar, 'z'::bpchar, 'n'::name, NULL::int4, NULL::text, "
    f"ARRAY['a', 'b']::text[], {TRICKY_NAMES}, ARRAY[1, NULL, 3]::int4[], ARRAY[]::text[], "
    "ARRAY['v', NULL]::varchar[], ARRAY[5000000000]::int8[], ARRAY[true, false]::bool[]"
)


async def test_select_returns_typed_values(up: Upstream, db: str) -> None:
    result = await up.execute(TYPED)
    assert result.status == "SELECT 1"
    assert len(result.columns) == 21 and result.columns[0] == "int2"
    rows = [row async for row in result.rows]
    assert rows == [
        (
            *(1, 2, 3000000000, 26, True, False, 1.5, -2.25, "x", "y", "z", "n", None, None),
            ["a", "b"],
            TRICKY_VALUES,
            [1, None, 3],
            [],
            ["v", None],
            [5000000000],
            [True, False],
        )
    ]
    # The same Python values as the psycopg connection reads.
    other = await PostgresConnection.open(pg_target(db))
    try:
        assert await rows_of(other, TYPED) == rows
    finally:
        await other.close()


async def test_other_types_are_text(up: Upstream) -> None:
    rows = await rows_of(
        up,
        "SELECT 12.50::numeric, '2024-01-02'::date, '{{1,2},{3,4}}'::int4[], "
        "'[0:1]={5,6}'::int4[], '{\"k\": 1}'::jsonb, 'ab'::bytea",
    )
    assert rows == [("12.50", "2024-01-02", "{{1,2},{3,4}}", [5, 6], '{"k": 1}', "\\x6162")]


async def test_statement_status_and_empty_results(up: Upstream) -> None:
    result = await up.execute("CREATE TEMP TABLE t (id int)", query=False)
    assert (result.columns, [r async for r in result.rows], result.status) == (
        [],
        [],
        "CREATE TABLE",
    )
    result = await up.execute("INSERT INTO t VALUES (1), (2) RETURNING id", query=False)
    assert ([r async for r in result.rows], result.status) == ([(1,), (2,)], "INSERT 0 2")
    result = await up.execute("")
    assert (result.columns, result.status) == ([], "")
    # Of several statements, the first one's result.
    assert await rows_of(up, "SELECT 1 AS a; SELECT 2 AS b") == [(1,)]


async def test_start_state(up: Upstream) -> None:
    assert up.status == b"I"
    assert await rows_of(up, "SELECT pg_backend_pid()") == [(up.pid,)]
    params = up.server_params
    assert params["client_encoding"] == "UTF8"
    assert params["standard_conforming_strings"] == "on"
    assert params["application_name"] == "hoop-broker"
    assert params["server_version"].startswith(("15", "16", "17", "18"))


async def test_statement_timeout_from_the_target(db: str) -> None:
    conn = await Upstream.open(pg_target(db, statement_timeout="1s"))
    try:
        assert await rows_of(conn, "SHOW statement_timeout") == [("1s",)]
        with pytest.raises(StatementError) as caught:
            await conn.execute("SELECT pg_sleep(5)")
        assert caught.value.sqlstate == "57014"
        assert str(caught.value) == "ERROR: canceling statement due to statement timeout"
        assert await rows_of(conn, "SELECT 1") == [(1,)]
    finally:
        await conn.close()
    conn = await Upstream.open(pg_target(db))
    try:
        assert await rows_of(conn, "SHOW statement_timeout") == [("0",)]
    finally:
        await conn.close()


# -- errors --------------------------------------------------------------------------------


async def test_an_error_keeps_the_connection_usable(up: Upstream, db: str) -> None:
    with pytest.raises(StatementError) as caught:
        await up.execute("SELECT 1/0")
    ours = caught.value
    assert str(ours) == "ERROR: division by zero"
    assert (ours.sqlstate, ours.condition) == ("22012", "division by zero")
    assert up.status == b"I"
    assert await rows_of(up, "SELECT 1") == [(1,)]

    other = await PostgresConnection.open(pg_target(db))
    try:
        for bad in ("SELECT 1/0", "SELECT 'x'::int", "SELECT * FROM no_such_table"):
            with pytest.raises(StatementError) as theirs:
                await rows_of(other, bad)
            with pytest.raises(StatementError) as caught:
                await up.execute(bad)
            assert str(caught.value) == str(theirs.value)
            assert caught.value.sqlstate == theirs.value.sqlstate
            assert caught.value.condition == theirs.value.condition
    finally:
        await other.close()

    # Inside a transaction: failed until it ends.
    await up.execute("BEGIN", query=False)
    with pytest.raises(StatementError):
        await up.execute("SELECT 'x'::int")
    assert up.status == b"E"
    with pytest.raises(StatementError) as caught:
        await up.execute("SELECT 1")
    assert caught.value.condition == "in failed sql transaction"
    await up.execute("ROLLBACK", query=False)
    assert up.status == b"I"
    assert await rows_of(up, "SELECT 2") == [(2,)]


# -- passthrough -------------------------------------------------------------------------


async def test_passthrough_round_trip(up: Upstream) -> None:
    up.send(
        m.parse("", "SELECT $1::int4 + 1 AS n, 'x'::text AS t", (23,))
        + m.bind(m.Bind("", "", (0,), (b"41",), (0,)))
        + m.describe(b"P", "")
        + m.execute("", 0)
        + m.sync()
    )
    await up.drain()
    answers = [await up.read() for _ in range(6)]
    assert [a.type for a in answers] == [b"1", b"2", b"T", b"D", b"C", b"Z"]
    columns = m.parse_row_description(answers[2].body)
    assert [(c.name, c.type_oid, c.format) for c in columns] == [("n", 23, 0), ("t", 25, 0)]
    assert answers[3].body == b"\x00\x02" + b"\x00\x00\x00\x02" + b"42" + b"\x00\x00\x00\x01x"
    assert m.parse_command_complete(answers[4].body) == "SELECT 1"
    assert answers[5].body == b"I" and up.status == b"I"
    # The connection is idle again: the broker's own query runs between.
    assert await rows_of(up, "SELECT 3") == [(3,)]


async def test_notifications_during_the_brokers_query_are_handed_on(up: Upstream, db: str) -> None:
    await up.execute("LISTEN hoop_channel", query=False)
    async with await psycopg.AsyncConnection.connect(**PG_ADMIN, dbname=db) as other:
        await other.execute("NOTIFY hoop_channel, 'hello'")
    assert await rows_of(up, "SELECT 1") == [(1,)]
    held = await up.read()
    assert held.type == b"A"
    assert held.body[4:] == b"hoop_channel\0hello\0"


# -- cancel --------------------------------------------------------------------------------


async def wait_until_running(pid: int, address: str = "127.0.0.1:5432") -> None:
    """Until backend PID of the server at ADDRESS runs pg_sleep (20 s at most: not a measure,
    a guard against hanging)."""
    host, port = address.split(":")
    admin = PG_ADMIN | {"host": host, "port": int(port), "dbname": "postgres"}
    async with asyncio.timeout(20), await psycopg.AsyncConnection.connect(**admin) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                "AND query LIKE '%%pg_sleep%%'",
                (pid,),
            )
            if await cursor.fetchone():
                return
            await asyncio.sleep(0.05)


async def test_cancel_stops_a_running_query(up: Upstream) -> None:
    running = asyncio.create_task(up.execute("SELECT pg_sleep(60)"))
    await wait_until_running(up.pid)
    await up.cancel()
    with pytest.raises(StatementError) as caught:
        await running
    assert caught.value.sqlstate == "57014"
    assert caught.value.condition == "query canceled"
    assert str(caught.value) == "ERROR: canceling statement due to user request"
    assert await rows_of(up, "SELECT 1") == [(1,)]


async def test_cancel_in_passthrough(up: Upstream) -> None:
    up.send(m.query("SELECT pg_sleep(60)"))
    await up.drain()
    await wait_until_running(up.pid)
    await up.cancel()
    answers = []
    while not answers or answers[-1].type != b"Z":
        answers.append(await up.read())
    errors = [m.parse_fields(a.body) for a in answers if a.type == b"E"]
    assert [e["C"] for e in errors] == ["57014"]
    assert await rows_of(up, "SELECT 1") == [(1,)]


async def test_cancel_never_raises(db: str) -> None:
    conn = await Upstream.open(pg_target(db))
    await conn.close()
    await conn.cancel()  # the backend is gone
    await conn.close()
    conn.target = pg_target(db, address=f"127.0.0.1:{free_port()}")
    await conn.cancel()  # nothing listens


# -- connecting and authenticating -------------------------------------------------------


def cluster_target(cluster: PasswordCluster, role: str, **settings: Any) -> PostgresTarget:
    values: dict[str, Any] = {
        "address": cluster.address,
        "database": "postgres",
        "user": role,
        "credential": f"env:{PASSWORD_ENV}",
    }
    return pg_target(**(values | settings))


@pytest.mark.parametrize(
    "role", ["scram_user", "md5_user", "clear_user", "unicode_user", "odd_user"]
)
async def test_password_authentication(
    password_postgres: PasswordCluster, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    # The cluster's pg_hba.conf names each role's method; unicode_user's password only works
    # SASLprep'd as the server does it, odd_user's only as given.
    monkeypatch.setenv(PASSWORD_ENV, password_postgres.passwords[role])
    conn = await Upstream.open(cluster_target(password_postgres, role))
    try:
        assert await rows_of(conn, "SELECT current_user") == [(role,)]
    finally:
        await conn.close()


@pytest.mark.parametrize("role", ["scram_user", "md5_user", "clear_user"])
async def test_wrong_password(
    password_postgres: PasswordCluster, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    right = password_postgres.passwords[role]
    wrong = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    target = cluster_target(password_postgres, role)
    ours, psycopgs = await open_failures(target)
    assert ours == psycopgs == "target pg-up: the database refused the broker's credentials"
    with pytest.raises(TargetError) as caught:
        await Upstream.open(target)
    shown = full_text(caught.value)
    assert wrong not in shown and right not in shown


async def test_no_credential_for_a_password_server(password_postgres: PasswordCluster) -> None:
    target = cluster_target(password_postgres, "scram_user", credential=None)
    ours, psycopgs = await open_failures(target)
    assert ours == psycopgs == "target pg-up: the database refused the broker's credentials"


@pytest.mark.parametrize("what", ["database", "user"])
async def test_missing_database_or_role(db: str, what: str) -> None:
    target = pg_target(db).model_copy(update={what: "hoop_no_such_" + secrets.token_hex(4)})
    ours, psycopgs = await open_failures(target)
    assert ours == psycopgs == "target pg-up: database or role does not exist"


async def test_unreachable() -> None:
    ours, psycopgs = await open_failures(pg_target(address=f"127.0.0.1:{free_port()}"))
    assert (
        ours == psycopgs == ("target pg-up unreachable: the database did not accept a connection")
    )


# -- TLS ------------------------------------------------------------------------------------


def tls_target(address: str, **settings: Any) -> PostgresTarget:
    return pg_target(address=address, database="postgres", user="postgres", **settings)


async def encrypted(conn: Upstream) -> bool:
    rows = await rows_of(conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return bool(rows[0][0])


@pytest.mark.parametrize(
    ("mode", "expect_tls"), [("disable", False), ("prefer", True), ("require", True)]
)
async def test_tls_modes(tls_postgres: str, mode: str, expect_tls: bool) -> None:
    # require checks no certificate: here an unknown CA and a name that does not match.
    conn = await Upstream.open(tls_target(tls_postgres, tls=mode))
    try:
        assert await encrypted(conn) is expect_tls
    finally:
        await conn.close()


async def test_verify_full(tls_postgres: str, tls_files: dict[str, Path]) -> None:
    by_name = tls_postgres.replace("127.0.0.1", "localhost")
    conn = await Upstream.open(tls_target(by_name, tls="verify-full", tls_ca=tls_files["ca"]))
    try:
        assert await encrypted(conn)
        # A CancelRequest in plain text reaches a backend whose connection is TLS.
        running = asyncio.create_task(conn.execute("SELECT pg_sleep(60)"))
        await wait_until_running(conn.pid, tls_postgres)
        await conn.cancel()
        with pytest.raises(StatementError) as caught:
            await running
        assert caught.value.sqlstate == "57014"
    finally:
        await conn.close()


async def test_verify_full_checks_the_host_name(
    tls_postgres: str, tls_files: dict[str, Path]
) -> None:
    # The certificate names localhost, not 127.0.0.1.
    target = tls_target(tls_postgres, tls="verify-full", tls_ca=tls_files["ca"])
    ours, psycopgs = await open_failures(target)
    assert (
        ours
        == psycopgs
        == (
            "target pg-up: TLS certificate verification failed: "
            "the certificate is not valid for 127.0.0.1"
        )
    )


async def test_verify_full_checks_the_ca(
    tls_postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    target = tls_target(tls_postgres.replace("127.0.0.1", "localhost"), tls="verify-full")
    ours, psycopgs = await open_failures(target)
    assert ours == psycopgs == "target pg-up: TLS certificate verification failed"


@pytest.mark.parametrize("mode", ["require", "verify-full"])
async def test_tls_required_but_unavailable(db: str, mode: str) -> None:
    with psycopg.connect(**PG_ADMIN, dbname="postgres") as admin:
        row = admin.execute("SHOW ssl").fetchone()
    if row is not None and row[0] == "on":
        pytest.skip("the local PostgreSQL offers TLS")
    ours, psycopgs = await open_failures(pg_target(db, tls=mode))
    assert (
        ours
        == psycopgs
        == (
            f'target pg-up: TLS is unavailable: the server does not offer TLS and tls = "{mode}" '
            "requires it"
        )
    )


# -- servers that misbehave (loopback) -------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytearray], Awaitable[None]]


async def against(
    script: Script, host: str = "127.0.0.1", **settings: Any
) -> tuple[TargetError, bytes]:
    """Open an Upstream to a loopback server running SCRIPT (by the name HOST): the error,
    and what the broker sent."""
    received = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer, received)
            while data := await reader.read(65536):
                received.extend(data)
        except (OSError, EOFError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = pg_target(address=f"{host}:{port}", credential=f"env:{PASSWORD_ENV}")
        with pytest.raises(TargetError) as caught:
            await Upstream.open(target.model_copy(update=settings))
    finally:
        server.close()
        await server.wait_closed()
    return caught.value, bytes(received)


async def scram_until_proof(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: bytearray
) -> None:
    """The server's side of SCRAM up to the client's proof, with no verifier to check it."""
    received.extend(await m.read_startup(reader))
    writer.write(m.authentication(10, b"SCRAM-SHA-256\0\0"))
    initial = await m.read_message(reader)
    received.extend(initial.body)
    client_first = initial.body.split(b"\0", 1)[1][4:]
    assert client_first.startswith(b"n,,n=,r=")
    nonce = client_first.split(b"r=", 1)[1].decode()
    salt = base64.b64encode(secrets.token_bytes(16)).decode()
    writer.write(m.authentication(11, f"r={nonce}server,s={salt},i=4096".encode()))
    proof = await m.read_message(reader)
    received.extend(proof.body)


def welcome() -> bytes:
    return m.authentication(0) + m.backend_key_data(1, 2) + m.ready_for_query(b"I")


@pytest.mark.parametrize("how", ["wrong signature", "no signature"])
async def test_a_server_that_cannot_prove_it_knows_the_password(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    password = "secret-" + secrets.token_hex(8)
    monkeypatch.setenv(PASSWORD_ENV, password)

    async def impostor(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: bytearray
    ) -> None:
        await scram_until_proof(reader, writer, received)
        if how == "wrong signature":
            signature = base64.b64encode(secrets.token_bytes(32))
            writer.write(m.authentication(12, b"v=" + signature))
        writer.write(welcome())
        await writer.drain()

    error, sent = await against(impostor)
    assert b"c=biws,r=" in sent and b",p=" in sent  # the broker sent its proof, then refused
    assert str(error) == "target pg-up unreachable: the database did not accept a connection"
    assert password.encode() not in sent and password not in full_text(error)


async def test_tls_required_sends_nothing_in_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "secret")

    async def no_tls(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: bytearray
    ) -> None:
        received.extend(await reader.readexactly(8))
        writer.write(b"N")
        await writer.drain()

    error, sent = await against(no_tls, tls="require")
    assert "TLS is unavailable" in str(error)
    assert sent == m.ssl_request()  # not even the user name


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def test_plain_text_after_the_tls_answer_is_not_read(
    monkeypatch: pytest.MonkeyPatch, tls_postgres: str, tls_files: dict[str, Path]
) -> None:
    # CVE-2021-23222: a man in the middle answers "S" with a refusal in plain text in the same
    # packet, then relays TLS to the real server. Read through a stream's buffer, the refusal
    # would pass for the server's first answer inside TLS; the broker reads the one byte from
    # the socket, so the bytes after it break the handshake instead.
    monkeypatch.setenv(PASSWORD_ENV, "secret")
    injected = m.error('password authentication failed for user "x"', "28P01", severity="FATAL")

    async def injector(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: bytearray
    ) -> None:
        received.extend(await reader.readexactly(8))
        real_host, real_port = tls_postgres.split(":")
        real_reader, real_writer = await asyncio.open_connection(real_host, int(real_port))
        real_writer.write(m.ssl_request())
        await real_writer.drain()
        assert await real_reader.readexactly(1) == b"S"
        writer.write(b"S" + injected)
        await writer.drain()
        await asyncio.gather(relay(reader, real_writer), relay(real_reader, writer))

    error, _ = await against(injector, host="localhost", tls="verify-full", tls_ca=tls_files["ca"])
    assert str(error) == "target pg-up unreachable: the database did not accept a connection"
