"""Attacks on `hoopctl proxy` for MySQL at the packet level (found in review): a prepared
DELETE must never be judged with other parameters than the server runs it with. Proved on the
target: the rows survive."""

from __future__ import annotations

import json
import secrets
import socket
import struct
import time
from typing import Any

import pymysql
import pymysql.protocol

from tests import test_proxy_mysql as base
from tests.fixtures import approvals

TARGET = base.TARGET
db, world, proxy = base.db, base.world, base.proxy

LONG, INT24, BLOB = 3, 9, 252
SQL = "DELETE FROM accounts WHERE id = ? OR ? = ?"
INSERT = "INSERT INTO accounts VALUES (?, ?)"


class _RawPacket(pymysql.protocol.MysqlPacket):  # type: ignore[misc]
    def raise_for_error(self) -> None:
        pass

    def check_error(self) -> None:
        pass


def _connect(proxy: Any) -> pymysql.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host="127.0.0.1", port=proxy.port, user=proxy.user, password=proxy.password,
        database=TARGET, autocommit=True, read_timeout=20,
    )  # fmt: skip


def _send(conn: Any, payload: bytes) -> None:
    conn._write_bytes(struct.pack("<I", len(payload))[:3] + b"\x00" + payload)
    conn._next_seq_id = 1


def _read(conn: Any) -> bytes:
    return bytes(conn._read_packet(packet_type=_RawPacket).get_all_data())


def _prepare(conn: Any, sql: str) -> int | None:
    _send(conn, b"\x16" + sql.encode())
    first = _read(conn)
    if first[0] == 0xFF:
        return None
    statement, columns, params = struct.unpack("<IHH", first[1:9])
    for _ in range(params + 1 if params else 0):
        _read(conn)
    for _ in range(columns + 1 if columns else 0):
        _read(conn)
    return int(statement)


def _execute(conn: Any, statement: int, types: list[int], values: bytes) -> None:
    body = b"\x17" + struct.pack("<IBI", statement, 0, 1) + b"\x00" + b"\x01"
    body += b"".join(struct.pack("<BB", t, 0) for t in types) + values
    _send(conn, body)


def _held_then_denied(conn: Any, proxy: Any, world: Any) -> tuple[bytes, str]:
    """The execute waits for approval (it is judged as what may run): bob denies it. The
    client's answer, and the request as bob saw it."""
    request_id = proxy.request_id()
    record = json.dumps(approvals.record_of(world.bob.user, request_id))
    denied = world.bob.user.run("approve", "--deny", request_id)
    assert denied.returncode == 0, denied.stderr
    return _read(conn), record


def test_a_parameter_type_the_server_reads_otherwise_is_not_judged_as_read(
    proxy: Any, db: Any, world: Any
) -> None:
    db.restore()
    conn = _connect(proxy)
    statement = _prepare(conn, SQL)
    assert statement is not None
    # INT24 takes no bytes in MariaDB (NULL) but 4 if read as an int: the values after it
    # would be judged from other bytes than run.
    _execute(conn, statement, [INT24, LONG, LONG], struct.pack("<iii", 1, 1, 2))
    answer, record = _held_then_denied(conn, proxy, world)
    conn.close()
    assert answer[0] == 0xFF
    # Never judged as the bounded `id = 1 OR 1 = 2` the misread bytes would give.
    assert "OR 1 = 2" not in record and "unbounded-writes" in record
    assert db.count() == 2


def test_the_last_statement_id_is_not_taken(proxy: Any, db: Any, world: Any) -> None:
    db.restore()
    conn = _connect(proxy)
    statement = _prepare(conn, SQL)
    assert statement is not None
    assert _prepare(conn, "SELEC broken") is None
    # Long data for "the statement prepared last": the server has none after the failed
    # prepare; the proxy must not bind it to the DELETE either.
    _send(conn, b"\x18" + struct.pack("<IH", 0xFFFFFFFF, 2) + b"2")
    _execute(conn, statement, [LONG, LONG, LONG], struct.pack("<iii", 999, 1, 1))
    answer, record = _held_then_denied(conn, proxy, world)
    conn.close()
    assert answer[0] == 0xFF
    assert "999 OR 1 = 1" in record  # judged as what runs: unbounded
    assert db.count() == 2


def test_a_statement_whose_client_left_is_cancelled(proxy: Any, db: Any) -> None:
    """The client sends a slow INSERT and hangs up while it runs: the target kills it, so the
    row never appears (it would once the sleep ended)."""
    row = 700_000 + secrets.randbelow(100_000)
    conn = _connect(proxy)
    _send(
        conn,
        b"\x03" + f"INSERT INTO accounts SELECT {row}, 'late' FROM (SELECT SLEEP(4)) s".encode(),
    )
    time.sleep(1.0)  # judged and running on the target by now
    conn._sock.shutdown(socket.SHUT_RDWR)  # (close() alone leaves pymysql's file open)
    conn._sock.close()
    time.sleep(5.0)  # past the end of the sleep
    assert not db.query("SELECT 1 FROM accounts WHERE id = %s", (row,))


def test_long_data_is_capped_per_connection_not_per_statement(proxy: Any, db: Any) -> None:
    """Two statements each take 9 MiB in pieces (each under the 16 MiB cap, together over
    it): the broker holds no more than the cap per connection, so the second INSERT cannot be
    judged by its value: unknown input, which this policy sends to a review nobody can give
    (no approvers for it). It never runs."""
    row = 600_000 + secrets.randbelow(100_000)
    conn = _connect(proxy)
    first, second = _prepare(conn, INSERT), _prepare(conn, INSERT)
    assert first is not None and second is not None
    piece = b"x" * (1 << 20)
    for statement in (first, second):
        for _ in range(9):
            _send(conn, b"\x18" + struct.pack("<IH", statement, 1) + piece)
    _execute(conn, second, [LONG, BLOB], struct.pack("<i", row))
    answer = _read(conn)
    conn.close()
    assert answer[0] == 0xFF and b"too long to be judged" in answer, answer[:300]
    assert not db.query("SELECT 1 FROM accounts WHERE id = %s", (row,))
