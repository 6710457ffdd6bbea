"""Database connections against real PostgreSQL, MariaDB and SQLite: server-side cancel, the
SQLite statement timeout, and TLS settings."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from broker.config import DatabaseTarget, MysqlTarget, PostgresTarget, SqliteTarget, parse_config
from broker.errors import ConfigError
from broker.protocols import open_database
from broker.protocols.base import TargetError
from broker.protocols.sql import DatabaseConnection, StatementError
from tests.fixtures.postgres_cluster import tls_dir, tls_files, tls_postgres
from tests.helpers import free_port
from tests.test_sql_exec import MY_PASSWORD, PG_PASSWORD, mariadb_db, postgres_db

# Fixtures shared with test_sql_exec (each creates and drops its own database) and with
# test_pg_upstream (the private TLS cluster).
__all__ = ["mariadb_db", "postgres_db", "tls_dir", "tls_files", "tls_postgres"]

# A statement that keeps SQLite busy for far longer than any test waits.
SQLITE_LONG = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000) "
    "SELECT count(*) FROM c"
)
# Many rows at once, then a long stall: the stall is hit while the rows are being read.
SQLITE_STALL_AFTER_ROWS = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000) "
    "SELECT x FROM c WHERE x <= 2000 OR x = 299999999"
)
PG_STALL_AFTER_ROWS = (
    "SELECT g, pg_sleep(CASE WHEN g = 1800 THEN 30 ELSE 0 END) FROM generate_series(1, 2000) g"
)
MY_STALL_AFTER_ROWS = (
    "SELECT seq, REPEAT('x', 100), SLEEP(IF(seq = 9000, 30, 0)) FROM seq_1_to_10000"
)
LONG = {"postgres": "SELECT pg_sleep(30)", "mysql": "SELECT SLEEP(30)", "sqlite": SQLITE_LONG}
STALL = {
    "postgres": PG_STALL_AFTER_ROWS,
    "mysql": MY_STALL_AFTER_ROWS,
    "sqlite": SQLITE_STALL_AFTER_ROWS,
}
CANCELLED = {
    "postgres": "ERROR: canceling statement due to user request",
    "mysql": "ERROR: Query execution was interrupted",
    "sqlite": "ERROR: canceling statement due to user request",
}


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-conn") / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id int)")
    return path


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOP_TEST_PG_PASSWORD", PG_PASSWORD)
    monkeypatch.setenv("HOOP_TEST_MY_PASSWORD", MY_PASSWORD)
    monkeypatch.setenv("HOOP_TEST_WRONG_PASSWORD", "wrong-" + MY_PASSWORD)


def pg_target(database: str, **settings: Any) -> PostgresTarget:
    values: dict[str, Any] = {
        "name": "pg-conn",
        "type": "postgres",
        "address": "127.0.0.1:5432",
        "database": database,
        "user": f"{database}_app",
        "credential": "env:HOOP_TEST_PG_PASSWORD",
        "tls": "disable",
    }
    return PostgresTarget.model_validate(values | settings)


def my_target(database: str, **settings: Any) -> MysqlTarget:
    values: dict[str, Any] = {
        "name": "maria-conn",
        "type": "mysql",
        "address": "127.0.0.1:3306",
        "database": database,
        "user": database,
        "credential": "env:HOOP_TEST_MY_PASSWORD",
        "tls": "disable",
    }
    return MysqlTarget.model_validate(values | settings)


def lite_target(path: Path, **settings: Any) -> SqliteTarget:
    return SqliteTarget.model_validate(
        {"name": "lite-conn", "type": "sqlite", "path": path} | settings
    )


@pytest.fixture
def targets(
    secrets_env: None, postgres_db: str, mariadb_db: str, sqlite_path: Path
) -> dict[str, DatabaseTarget]:
    return {
        "postgres": pg_target(postgres_db),
        "mysql": my_target(mariadb_db),
        "sqlite": lite_target(sqlite_path),
    }


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
async def conn(
    request: pytest.FixtureRequest, targets: dict[str, DatabaseTarget]
) -> AsyncIterator[DatabaseConnection]:
    connection = await open_database(targets[request.param])
    yield connection
    await connection.close()


async def fetch(connection: DatabaseConnection, sql: str) -> list[tuple[Any, ...]]:
    result = await connection.execute(sql)
    return [row async for row in result.rows]


async def cancel_soon(connection: DatabaseConnection, delay: float = 0.5) -> None:
    await asyncio.sleep(delay)
    await connection.cancel()


async def test_cancel_stops_a_running_statement(conn: DatabaseConnection) -> None:
    canceller = asyncio.create_task(cancel_soon(conn))
    started = time.monotonic()
    with pytest.raises(StatementError) as caught:
        await fetch(conn, LONG[conn.dialect])
    assert time.monotonic() - started < 10
    assert str(caught.value) == CANCELLED[conn.dialect]
    await canceller
    assert await fetch(conn, "SELECT 1") == [(1,)]


async def test_cancel_while_rows_are_read(conn: DatabaseConnection) -> None:
    result = await conn.execute(STALL[conn.dialect])
    received = 0
    canceller = asyncio.create_task(cancel_soon(conn))
    started = time.monotonic()
    with pytest.raises(StatementError) as caught:
        async for _ in result.rows:
            received += 1
    assert time.monotonic() - started < 10
    assert received > 0
    assert str(caught.value) == CANCELLED[conn.dialect]
    await canceller
    assert await fetch(conn, "SELECT 1") == [(1,)]


async def test_cancel_when_idle_is_a_no_op(conn: DatabaseConnection) -> None:
    await conn.cancel()
    assert await fetch(conn, "SELECT 1") == [(1,)]
    await conn.cancel()
    # A cancel between statements must not hit the next one.
    assert await fetch(conn, "SELECT 2") == [(2,)]


async def test_cancel_after_close_does_not_raise(targets: dict[str, DatabaseTarget]) -> None:
    for target in targets.values():
        connection = await open_database(target)
        await connection.close()
        await connection.cancel()


async def test_postgres_cancel_inside_a_transaction_aborts_it(
    targets: dict[str, DatabaseTarget],
) -> None:
    # As PostgreSQL defines it: the failed statement aborts the transaction until ROLLBACK.
    connection = await open_database(targets["postgres"])
    try:
        await connection.execute("BEGIN", query=False)
        canceller = asyncio.create_task(cancel_soon(connection))
        with pytest.raises(StatementError, match="user request"):
            await fetch(connection, "SELECT pg_sleep(30)")
        await canceller
        with pytest.raises(StatementError, match="current transaction is aborted"):
            await fetch(connection, "SELECT 1")
        await connection.execute("ROLLBACK", query=False)
        assert await fetch(connection, "SELECT 1") == [(1,)]
    finally:
        await connection.close()


async def test_mysql_cancel_inside_a_transaction_keeps_it_open(
    targets: dict[str, DatabaseTarget],
) -> None:
    # As MariaDB defines it: only the killed statement fails; the transaction goes on.
    connection = await open_database(targets["mysql"])
    try:
        await connection.execute("CREATE TEMPORARY TABLE tx (id int) ENGINE=InnoDB", query=False)
        await connection.execute("BEGIN", query=False)
        await connection.execute("INSERT INTO tx VALUES (1)", query=False)
        canceller = asyncio.create_task(cancel_soon(connection))
        with pytest.raises(StatementError, match="interrupted"):
            await fetch(connection, "SELECT SLEEP(30)")
        await canceller
        assert await fetch(connection, "SELECT count(*) FROM tx") == [(1,)]
        await connection.execute("COMMIT", query=False)
    finally:
        await connection.close()


async def test_sqlite_statement_timeout(sqlite_path: Path) -> None:
    connection = await open_database(lite_target(sqlite_path, statement_timeout=1))
    try:
        started = time.monotonic()
        with pytest.raises(StatementError) as caught:
            await fetch(connection, SQLITE_LONG)
        assert 0.9 < time.monotonic() - started < 20  # the 1 s timeout, not the long query
        assert str(caught.value) == "ERROR: canceling statement due to statement timeout (1s)"
        # The deadline is per statement: an idle connection does not run out of time.
        await asyncio.sleep(1.2)
        assert await fetch(connection, "SELECT 1") == [(1,)]
        # A cancel is still told apart from a timeout.
        canceller = asyncio.create_task(cancel_soon(connection, 0.3))
        with pytest.raises(StatementError, match="user request"):
            await fetch(connection, SQLITE_LONG)
        await canceller
    finally:
        await connection.close()


async def test_sqlite_statement_timeout_while_rows_are_read(sqlite_path: Path) -> None:
    connection = await open_database(lite_target(sqlite_path, statement_timeout=1))
    try:
        result = await connection.execute(SQLITE_STALL_AFTER_ROWS)
        with pytest.raises(StatementError, match="statement timeout"):
            async for _ in result.rows:
                pass
        assert await fetch(connection, "SELECT 1") == [(1,)]
    finally:
        await connection.close()


async def test_sqlite_without_timeout_runs_to_the_end(sqlite_path: Path) -> None:
    connection = await open_database(lite_target(sqlite_path))
    try:
        sql = SQLITE_LONG.replace("300000000", "2000000")
        assert await fetch(connection, sql) == [(2000000,)]
    finally:
        await connection.close()


# TLS. The shared servers may run without TLS; the tests at the end start their own with TLS.


def _mariadb_has_tls() -> bool:
    admin = pymysql.connect(host="127.0.0.1", user="root", password="")
    try:
        with admin.cursor() as cur:
            cur.execute("SHOW VARIABLES LIKE 'have_ssl'")
            row = cur.fetchone()
    finally:
        admin.close()
    return row is not None and row[1] == "YES"


def _postgres_has_tls() -> bool:
    import psycopg

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres") as admin:
        row = admin.execute("SHOW ssl").fetchone()
    return row is not None and row[0] == "on"


def _assert_tls_unavailable(exc: TargetError, name: str, mode: str) -> None:
    message = str(exc)
    assert message == (
        f'target {name}: TLS is unavailable: the server does not offer TLS and tls = "{mode}" '
        "requires it"
    )
    assert "\n" not in message and MY_PASSWORD not in message and PG_PASSWORD not in message


@pytest.mark.parametrize("mode", ["require", "verify-full"])
async def test_mysql_tls_required_but_unavailable(
    secrets_env: None, mariadb_db: str, mode: str
) -> None:
    if _mariadb_has_tls():
        pytest.skip("the local MariaDB offers TLS")
    with pytest.raises(TargetError) as caught:
        await open_database(my_target(mariadb_db, tls=mode))
    _assert_tls_unavailable(caught.value, "maria-conn", mode)


@pytest.mark.parametrize("mode", ["require", "verify-full"])
async def test_postgres_tls_required_but_unavailable(
    secrets_env: None, postgres_db: str, mode: str
) -> None:
    if _postgres_has_tls():
        pytest.skip("the local PostgreSQL offers TLS")
    with pytest.raises(TargetError) as caught:
        await open_database(pg_target(postgres_db, tls=mode))
    _assert_tls_unavailable(caught.value, "pg-conn", mode)


@pytest.mark.parametrize("mode", ["disable", "prefer"])
async def test_mysql_disable_and_prefer_connect(
    secrets_env: None, mariadb_db: str, mode: str
) -> None:
    connection = await open_database(my_target(mariadb_db, tls=mode))
    try:
        rows = await fetch(connection, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        encrypted = bool(rows[0][1])
        assert encrypted == (mode == "prefer" and _mariadb_has_tls())
    finally:
        await connection.close()


@pytest.mark.parametrize("mode", ["disable", "prefer"])
async def test_postgres_disable_and_prefer_connect(
    secrets_env: None, postgres_db: str, mode: str
) -> None:
    connection = await open_database(pg_target(postgres_db, tls=mode))
    try:
        assert await fetch(connection, "SELECT 1") == [(1,)]
    finally:
        await connection.close()


class _RecordingProxy:
    """A TCP proxy in front of MariaDB that keeps every byte the client sent."""

    def __init__(self) -> None:
        self.from_client = bytearray()
        self.port = free_port()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    self.from_client += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", 3306)
        await asyncio.gather(
            self._pipe(reader, server_writer, True), self._pipe(server_reader, writer, False)
        )

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", self.port)


async def test_mysql_tls_required_sends_nothing_over_plain_text(
    secrets_env: None, mariadb_db: str
) -> None:
    if _mariadb_has_tls():
        pytest.skip("the local MariaDB offers TLS")
    proxy = _RecordingProxy()
    server = await proxy.start()
    try:
        target = my_target(mariadb_db, tls="require", address=f"127.0.0.1:{proxy.port}")
        with pytest.raises(TargetError, match="TLS is unavailable"):
            await open_database(target)
        await asyncio.sleep(0.1)
    finally:
        server.close()
    # Not even the user name: the broker hung up before its handshake response.
    assert mariadb_db.encode() not in proxy.from_client
    assert proxy.from_client == b""


async def test_wrong_password_error_does_not_contain_it(secrets_env: None, mariadb_db: str) -> None:
    target = my_target(mariadb_db, credential="env:HOOP_TEST_WRONG_PASSWORD", tls="prefer")
    with pytest.raises(TargetError) as caught:
        await open_database(target)
    assert "refused the broker's credentials" in str(caught.value)
    assert MY_PASSWORD not in str(caught.value)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_unreadable_tls_ca_is_a_clear_error(
    secrets_env: None, postgres_db: str, mariadb_db: str, tmp_path: Path, kind: str
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    target: DatabaseTarget = (
        pg_target(postgres_db, tls="verify-full", tls_ca=missing)
        if kind == "postgres"
        else my_target(mariadb_db, tls="verify-full", tls_ca=missing)
    )
    with pytest.raises(TargetError) as caught:
        await open_database(target)
    assert str(caught.value) == f"target {target.name}: cannot read the CA bundle {missing}"


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_tls_ca_needs_verify_full(kind: str) -> None:
    text = f"""
[dev]
[[targets]]
name = "db"
type = "{kind}"
address = "127.0.0.1:5432"
database = "app"
user = "app"
tls = "require"
tls_ca = "/etc/ssl/ca.pem"
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=Path("/"))
    assert caught.value.problems == [
        'targets[db].tls_ca: tls_ca applies only with tls = "verify-full"'
    ]
    ok = parse_config(text.replace('"require"', '"verify-full"'), base_dir=Path("/"))
    assert ok.targets[0].tls_ca == Path("/etc/ssl/ca.pem")  # type: ignore[union-attr]


def test_sqlite_takes_statement_timeout() -> None:
    target = lite_target(Path("/tmp/x.db"), statement_timeout="2s")
    assert target.statement_timeout == 2


def _wait_for(check: Any, what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            check()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def tls_mariadb(tls_dir: Path, tls_files: dict[str, Path]) -> Iterator[str]:
    """A private MariaDB server with TLS on; root may log in without a password."""
    server_bin = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")
    install = shutil.which("mariadb-install-db")
    if not server_bin or not install:
        pytest.skip("the MariaDB server is not installed")
    root = tls_dir / "mariadb"
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={root / 'data'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *as_root,
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = root / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [
                server_bin,
                "--no-defaults",
                f"--datadir={root / 'data'}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--socket={root / 'server.sock'}",
                f"--pid-file={root / 'server.pid'}",
                f"--ssl-ca={tls_files['ca']}",
                f"--ssl-cert={tls_files['cert']}",
                f"--ssl-key={tls_files['key']}",
                "--skip-log-bin",
                *as_root,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(
            lambda: pymysql.connect(host="127.0.0.1", port=port, user="root", password="").close(),
            "MariaDB",
            log,
        )
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


def tls_target(kind: str, address: str, **settings: Any) -> DatabaseTarget:
    if kind == "mysql":
        values = {"name": "maria-tls", "database": "mysql", "user": "root"}
        return MysqlTarget.model_validate(
            {"type": "mysql", "address": address, "credential": None} | values | settings
        )
    values = {"name": "pg-tls", "database": "postgres", "user": "postgres"}
    return PostgresTarget.model_validate(
        {"type": "postgres", "address": address} | values | settings
    )


async def encrypted(connection: DatabaseConnection) -> bool:
    if connection.dialect == "mysql":
        rows = await fetch(connection, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return bool(rows[0][1])
    rows = await fetch(connection, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return bool(rows[0][0])


@pytest.fixture(params=["mysql", "postgres"])
def tls_server(request: pytest.FixtureRequest) -> tuple[str, str]:
    fixture = "tls_mariadb" if request.param == "mysql" else "tls_postgres"
    return request.param, request.getfixturevalue(fixture)


@pytest.mark.parametrize(
    ("mode", "expect_tls"), [("disable", False), ("prefer", True), ("require", True)]
)
async def test_tls_modes_with_a_tls_server(
    tls_server: tuple[str, str], mode: str, expect_tls: bool
) -> None:
    # require does not check the certificate: here an unknown CA and a name that does not match.
    kind, address = tls_server
    connection = await open_database(tls_target(kind, address, tls=mode))
    try:
        assert await encrypted(connection) is expect_tls
    finally:
        await connection.close()


async def test_verify_full_with_tls_ca(
    tls_server: tuple[str, str], tls_files: dict[str, Path]
) -> None:
    kind, address = tls_server
    by_name = address.replace("127.0.0.1", "localhost")
    target = tls_target(kind, by_name, tls="verify-full", tls_ca=tls_files["ca"])
    connection = await open_database(target)
    try:
        assert await encrypted(connection)
    finally:
        await connection.close()


async def test_verify_full_checks_the_host_name(
    tls_server: tuple[str, str], tls_files: dict[str, Path]
) -> None:
    kind, address = tls_server  # the certificate names localhost, not 127.0.0.1
    target = tls_target(kind, address, tls="verify-full", tls_ca=tls_files["ca"])
    with pytest.raises(TargetError) as caught:
        await open_database(target)
    message = str(caught.value)
    assert message.startswith(f"target {target.name}: TLS certificate verification failed: ")
    assert "not valid for '127.0.0.1'" in message or "not valid for 127.0.0.1" in message
    assert "\n" not in message


async def test_verify_full_uses_the_system_ca_store(
    tls_server: tuple[str, str], tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, address = tls_server
    target = tls_target(kind, address.replace("127.0.0.1", "localhost"), tls="verify-full")
    with pytest.raises(TargetError) as caught:
        await open_database(target)
    assert str(caught.value).startswith(f"target {target.name}: TLS certificate verification")
    # OpenSSL's own override of the system store: the test CA is now trusted.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files["ca"]))
    connection = await open_database(target)
    try:
        assert await encrypted(connection)
    finally:
        await connection.close()


async def test_cancel_over_tls(tls_mariadb: str, tls_files: dict[str, Path]) -> None:
    address = tls_mariadb.replace("127.0.0.1", "localhost")
    target = tls_target("mysql", address, tls="verify-full", tls_ca=tls_files["ca"])
    connection = await open_database(target)
    try:
        canceller = asyncio.create_task(cancel_soon(connection))
        with pytest.raises(StatementError, match="interrupted"):
            await fetch(connection, "SELECT SLEEP(30)")
        await canceller
        assert await fetch(connection, "SELECT 1") == [(1,)]
    finally:
        await connection.close()
