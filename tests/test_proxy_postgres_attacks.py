"""Attacks on `hoopctl proxy` at the protocol level (found in review): each proves its outcome
on the target (rows that survive, a value that never shows), with a raw protocol-v3 client."""

from __future__ import annotations

import json
import secrets
import socket
import struct
import time
from collections.abc import Iterator

import pexpect
import psycopg
import pytest

from tests.fixtures import approvals
from tests.fixtures.approvals import PG_ADMIN, AccountsDb, World, approvals_world
from tests.test_proxy_postgres import EMAILS, MASKING, POLICY, Proxy, restore

accounts_db = approvals.accounts_db


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, accounts_db: AccountsDb) -> Iterator[World]:
    root = tmp_path_factory.mktemp("attacks")
    targets = accounts_db.target("pgx", root, policy="proxied") + MASKING + POLICY
    with approvals_world(root, targets=targets, people=("alice",)) as made:
        yield made


@pytest.fixture(scope="module")
def proxy(world: World) -> Iterator[Proxy]:
    child = world.alice.user.spawn("proxy", "pgx", "--output", "json", timeout=60)
    child.expect(r'\{"target": "pgx".*\}')
    info = json.loads(child.match.group(0))
    yield Proxy(child, int(info["port"]), str(info["password"]), str(info["user"]))
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()


def frame(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def parse(name: str, sql: str, oids: tuple[int, ...] = ()) -> bytes:
    types = struct.pack("!h", len(oids)) + b"".join(struct.pack("!I", o) for o in oids)
    return frame(b"P", cstr(name) + cstr(sql) + types)


def bind(
    portal: str, statement: str, values: tuple[bytes, ...] = (), binary: bool = False
) -> bytes:
    body = cstr(portal) + cstr(statement)
    body += struct.pack("!hh", 1, 1) if binary else struct.pack("!h", 0)
    body += struct.pack("!h", len(values))
    body += b"".join(struct.pack("!i", len(v)) + v for v in values)
    return frame(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "", rows: int = 0) -> bytes:
    return frame(b"E", cstr(portal) + struct.pack("!i", rows))


def describe(kind: bytes, name: str) -> bytes:
    return frame(b"D", kind + cstr(name))


SYNC = frame(b"S")


def query(sql: str) -> bytes:
    return frame(b"Q", cstr(sql))


class Raw:
    """A protocol-v3 client that logs in with the proxy's one-time password."""

    def __init__(self, proxy: Proxy) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        params = cstr("user") + cstr(proxy.user) + cstr("database") + cstr("pgx") + b"\0"
        body = struct.pack("!i", 196608) + params
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        kind, data = self.read()
        assert kind == b"R" and struct.unpack("!i", data[:4])[0] == 3
        self.sock.sendall(frame(b"p", cstr(proxy.password)))
        self.until_ready()

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def read(self) -> tuple[bytes, bytes]:
        head = self._exactly(5)
        return head[:1], self._exactly(struct.unpack("!i", head[1:])[0] - 4)

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            kind, data = self.read()
            out.append((kind, data))
            if kind == b"Z":
                return out

    def until_closed(self) -> list[tuple[bytes, bytes]]:
        out = []
        try:
            while True:
                out.append(self.read())
        except (EOFError, ConnectionError):
            return out

    def close(self) -> None:
        self.sock.close()


def shown(answers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(data for _, data in answers)


def test_a_refused_reparse_cannot_swap_the_judged_text(
    proxy: Proxy, accounts_db: AccountsDb
) -> None:
    restore(accounts_db)
    raw = Raw(proxy)
    raw.send(parse("s2", "TRUNCATE accounts"), SYNC)
    raw.until_ready()
    raw.send(parse("s2", "SELECT 1"), SYNC)  # the target refuses: s2 exists
    assert any(kind == b"E" for kind, _ in raw.until_ready())
    raw.send(bind("", "s2"), execute(), SYNC)
    answers = raw.until_ready()
    raw.close()
    assert any(kind == b"E" and b"no-drop" in data for kind, data in answers)
    assert accounts_db.count() == 2


def test_a_decoy_reparse_does_not_unmask(proxy: Proxy, accounts_db: AccountsDb) -> None:
    restore(accounts_db)
    raw = Raw(proxy)
    raw.send(parse("s1", "SELECT id, email AS e FROM accounts"), SYNC)
    raw.until_ready()
    raw.send(parse("s1", "SELECT 1 AS id, 'x'::text AS e"), SYNC)
    raw.until_ready()
    raw.send(bind("", "s1"), describe(b"P", ""), execute(), SYNC)
    answers = raw.until_ready()
    raw.close()
    for email in EMAILS:
        assert email.encode() not in shown(answers)


def test_copy_from_stdin_cannot_smuggle_statements(proxy: Proxy, accounts_db: AccountsDb) -> None:
    restore(accounts_db)
    raw = Raw(proxy)
    raw.send(query("COPY accounts FROM STDIN"))
    assert raw.read()[0] == b"G"
    raw.send(
        frame(b"d", b"notanint\tx\n"),
        query("SELECT id, email AS e FROM accounts"),
        query("TRUNCATE accounts"),
        frame(b"c"),
    )
    answers = raw.until_closed()
    for email in EMAILS:
        assert email.encode() not in shown(answers)
    assert accounts_db.count() == 2


def test_a_cursor_declared_in_sql_cannot_be_read_through_execute(
    proxy: Proxy, accounts_db: AccountsDb
) -> None:
    restore(accounts_db)
    raw = Raw(proxy)
    raw.send(query("DECLARE cur2 CURSOR WITH HOLD FOR SELECT id, email FROM accounts"))
    raw.until_ready()
    raw.send(execute("cur2", 1), SYNC)
    answers = raw.until_ready()
    raw.close()
    assert any(kind == b"E" and b"unknown portal" in data for kind, data in answers)
    for email in EMAILS:
        assert email.encode() not in shown(answers)


def test_a_negative_parameter_cannot_comment_out_the_judged_text(
    proxy: Proxy, accounts_db: AccountsDb
) -> None:
    restore(accounts_db)
    sql = (
        "WITH a AS (SELECT 0-$1 AS v), d AS (DELETE FROM accounts RETURNING 1) "
        "SELECT count(*) FROM d /*\n) SELECT 1 -- */"
    )
    raw = Raw(proxy)
    raw.send(parse("", sql, (23,)), bind("", "", (struct.pack("!i", -5),), binary=True))
    raw.send(execute(), SYNC)
    answers = raw.until_ready()
    raw.close()
    # Judged as the DELETE without WHERE it is (review, and no approver is logged in).
    assert any(kind == b"E" and b"42501" in data for kind, data in answers)
    assert accounts_db.count() == 2


def test_the_copy_null_option_cannot_confirm_a_guess(proxy: Proxy, accounts_db: AccountsDb) -> None:
    restore(accounts_db)
    raw = Raw(proxy)
    raw.send(query(f"COPY (SELECT id, email FROM accounts) TO STDOUT (NULL '{EMAILS[0]}')"))
    answers = raw.until_ready()
    raw.close()
    assert EMAILS[0].encode() not in shown(answers)
    assert any(kind == b"E" and b"null cannot be masked" in data for kind, data in answers)


def test_a_query_inside_an_unfinished_sequence_ends_the_connection(proxy: Proxy) -> None:
    raw = Raw(proxy)
    raw.send(parse("", "SELECT 1/0"), bind("", ""), execute(), frame(b"H"), query("SELECT 1"))
    answers = raw.until_closed()
    assert any(kind == b"E" and b"send Sync first" in data for kind, data in answers)


@pytest.mark.parametrize(
    "message",
    [frame(b"E", b"\0"), frame(b"P", b"s\0SELECT 1\0" + struct.pack("!h", 5)), frame(b"B", b"")],
    ids=["execute", "parse", "bind"],
)
def test_a_truncated_message_is_a_protocol_violation(proxy: Proxy, message: bytes) -> None:
    raw = Raw(proxy)
    raw.send(message, SYNC)
    answers = raw.until_closed()
    assert any(kind == b"E" and b"protocol violation" in data for kind, data in answers)


def test_a_view_replaced_by_another_connection_is_looked_up_again(
    proxy: Proxy, accounts_db: AccountsDb
) -> None:
    """One connection reads a harmless view; a second replaces it with one over the emails;
    the first reads it again at once: masked (nothing looked up earlier is trusted)."""
    reader, writer = Raw(proxy), Raw(proxy)
    try:
        writer.send(query("CREATE OR REPLACE VIEW v_swap AS SELECT 'harmless'::text AS e"))
        writer.until_ready()
        reader.send(query("SELECT e FROM v_swap"))
        assert b"harmless" in shown(reader.until_ready())
        writer.send(query("CREATE OR REPLACE VIEW v_swap AS SELECT email AS e FROM accounts"))
        assert not any(kind == b"E" for kind, _ in writer.until_ready())
        reader.send(query("SELECT e FROM v_swap"))
        answers = reader.until_ready()
        assert sum(kind == b"D" for kind, _ in answers) == accounts_db.count()  # rows came
        assert not any(email.encode() in shown(answers) for email in EMAILS)
    finally:
        reader.close()
        writer.close()
        with psycopg.connect(**PG_ADMIN, dbname=accounts_db.name) as admin:
            admin.execute("DROP VIEW IF EXISTS v_swap")


def test_a_statement_whose_client_left_is_cancelled(proxy: Proxy, accounts_db: AccountsDb) -> None:
    """The client sends a slow INSERT and hangs up while it runs: the target cancels it, so
    the row never appears (it would once the sleep ended)."""
    row = 700_000 + secrets.randbelow(100_000)
    client = Raw(proxy)
    client.send(query(f"INSERT INTO accounts (id, email) SELECT {row}, 'late' FROM pg_sleep(4)"))
    time.sleep(1.0)  # judged and running on the target by now
    client.close()
    time.sleep(5.0)  # past the end of the sleep
    assert not accounts_db.has(row)
