"""MySQL's client/server protocol: packets, their framing, and the few packets every command
phase shares (OK, ERR, EOF).

Both sides use it: the broker speaks the server's side to a native client (proxy.py) and the
client's side to the target (upstream.py). A packet is a 3-byte little-endian length, a
sequence number and the payload; a payload of 2^24-1 bytes or more goes on in the next frame.
The broker always speaks protocol 4.1 without CLIENT_DEPRECATE_EOF: a result set's columns and
rows each end with an EOF packet."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any

MAX_FRAME = 0xFFFFFF
MAX_PACKET = 1 << 26  # 64 MiB: a larger statement or row is refused (the server's default is 16)

# Capability flags.
CLIENT_LONG_PASSWORD = 1
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_INTERACTIVE = 1 << 10
CLIENT_SSL = 1 << 11
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC = 1 << 21

# Server status flags.
SERVER_STATUS_AUTOCOMMIT = 1 << 1
SERVER_MORE_RESULTS_EXISTS = 1 << 3

# Commands.
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_PING = 0x0E
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A

_HEADER = struct.Struct("<I")


class ProtocolError(Exception):
    """The peer broke the protocol; the message says how (safe to show)."""


# -- framing ----------------------------------------------------------------------------------


async def read_packet(reader: Any, *, limit: int = MAX_PACKET) -> tuple[int, bytes]:
    """The next packet: the sequence number of its last frame and its whole payload.
    EOFError at a clean end between packets."""
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            header = await reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and not parts:
                raise EOFError from None
            raise ProtocolError("the connection ended inside a packet") from None
        length = _HEADER.unpack(header[:3] + b"\0")[0]
        seq = header[3]
        size += length
        if size > limit:
            raise ProtocolError(f"a packet of {size} bytes or more is out of bounds")
        try:
            parts.append(await reader.readexactly(length) if length else b"")
        except asyncio.IncompleteReadError:
            raise ProtocolError("the connection ended inside a packet") from None
        if length < MAX_FRAME:
            return seq, parts[0] if len(parts) == 1 else b"".join(parts)


def frame(payload: bytes, seq: int) -> tuple[bytes, int]:
    """PAYLOAD in frames from sequence number SEQ on; and the next sequence number."""
    if len(payload) < MAX_FRAME:
        return _HEADER.pack(len(payload))[:3] + bytes((seq & 0xFF,)) + payload, (seq + 1) & 0xFF
    out = []
    at = 0
    while True:
        chunk = payload[at : at + MAX_FRAME]
        out.append(_HEADER.pack(len(chunk))[:3] + bytes((seq & 0xFF,)) + chunk)
        seq = (seq + 1) & 0xFF
        at += len(chunk)
        if len(chunk) < MAX_FRAME:
            return b"".join(out), seq


# -- fields -----------------------------------------------------------------------------------


def lenenc_int(value: int) -> bytes:
    if value < 251:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def lenenc_bytes(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


class Cursor:
    """Reads the fields of one payload in order (ProtocolError when it is too short)."""

    def __init__(self, body: bytes, at: int = 0) -> None:
        self.body = body
        self.at = at

    @property
    def left(self) -> int:
        return len(self.body) - self.at

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.body):
            raise ProtocolError("a packet is shorter than its fields")
        value = self.body[self.at : self.at + n]
        self.at += n
        return value

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def lenenc(self) -> int | None:
        """A length-encoded integer; None for 0xFB (NULL in a text row)."""
        first = self.int(1)
        if first < 251:
            return first
        if first == 0xFB:
            return None
        if first == 0xFC:
            return self.int(2)
        if first == 0xFD:
            return self.int(3)
        if first == 0xFE:
            return self.int(8)
        raise ProtocolError("a length-encoded integer starts with 0xFF")

    def lenenc_bytes(self) -> bytes | None:
        length = self.lenenc()
        return None if length is None else self.take(length)

    def cstring(self) -> bytes:
        end = self.body.find(b"\0", self.at)
        if end < 0:
            raise ProtocolError("a string in a packet is not terminated")
        value = self.body[self.at : end]
        self.at = end + 1
        return value

    def rest(self) -> bytes:
        value = self.body[self.at :]
        self.at = len(self.body)
        return value


# -- OK, ERR, EOF -----------------------------------------------------------------------------


def is_ok(payload: bytes) -> bool:
    return payload[:1] == b"\x00"


def is_err(payload: bytes) -> bool:
    return payload[:1] == b"\xff"


def is_eof(payload: bytes) -> bool:
    return payload[:1] == b"\xfe" and len(payload) < 9


@dataclass(frozen=True)
class Ok:
    affected: int
    insert_id: int
    status: int
    warnings: int


def parse_ok(payload: bytes) -> Ok:
    cur = Cursor(payload, 1)
    affected = cur.lenenc() or 0
    insert_id = cur.lenenc() or 0
    status = cur.int(2) if cur.left >= 2 else 0
    warnings = cur.int(2) if cur.left >= 2 else 0
    return Ok(affected, insert_id, status, warnings)


def eof_status(payload: bytes) -> int:
    """The server status of an EOF packet (0xFE, warnings, status)."""
    return int.from_bytes(payload[3:5], "little") if len(payload) >= 5 else 0


@dataclass(frozen=True)
class Err:
    code: int
    sqlstate: str
    message: str


def parse_err(payload: bytes) -> Err:
    cur = Cursor(payload, 1)
    code = cur.int(2)
    sqlstate = ""
    if payload[3:4] == b"#":
        cur.take(1)
        sqlstate = cur.take(5).decode("ascii", "replace")
    return Err(code, sqlstate, cur.rest().decode("utf-8", "replace"))


def ok(*, status: int, affected: int = 0, insert_id: int = 0, warnings: int = 0) -> bytes:
    return (
        b"\x00"
        + lenenc_int(affected)
        + lenenc_int(insert_id)
        + status.to_bytes(2, "little")
        + warnings.to_bytes(2, "little")
    )


def err(code: int, sqlstate: str, message: str) -> bytes:
    state = (sqlstate.encode("ascii", "replace") + b"HY000")[:5]
    return b"\xff" + code.to_bytes(2, "little") + b"#" + state + message.encode("utf-8")


def eof(*, status: int, warnings: int = 0) -> bytes:
    return b"\xfe" + warnings.to_bytes(2, "little") + status.to_bytes(2, "little")
