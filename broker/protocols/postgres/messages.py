"""PostgreSQL's protocol v3 messages: framing, and the fields the broker reads and writes.

Both sides use it: the broker speaks the server's side to a native client (broker.sessions
.wire_postgres) and the client's side to the target (broker.protocols.postgres.upstream).
A message is one type byte, a 32-bit length that counts itself, and the body; the startup
packet, SSLRequest and CancelRequest have no type byte."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass

PROTOCOL_3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP = 10_000  # bytes; the server's own limit is the same order
MAX_MESSAGE = 1 << 30  # the server refuses larger messages too

TEXT_OID = 25
_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_HEADER = struct.Struct("!ci")


class ProtocolError(Exception):
    """The peer broke the protocol; the message says how (safe to show)."""


@dataclass(frozen=True)
class Message:
    type: bytes  # one byte: b"Q", b"P", b"D" …
    body: bytes


@dataclass
class Column:
    """One field of a RowDescription."""

    name: str
    table_oid: int = 0
    column_number: int = 0
    type_oid: int = TEXT_OID
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0  # 0 text, 1 binary


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    values: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def param_format(self, index: int) -> int:
        """The format of parameter INDEX (none given: text; one: all alike)."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[index]


# -- reading ---------------------------------------------------------------------------------


async def read_message(reader: asyncio.StreamReader, *, limit: int = MAX_MESSAGE) -> Message:
    """The next typed message. EOFError at a clean end between messages."""
    try:
        header = await reader.readexactly(5)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EOFError from None
        raise ProtocolError("the connection ended inside a message") from None
    kind, length = _HEADER.unpack(header)
    if length < 4 or length - 4 > limit:
        raise ProtocolError(f"a message of {length} bytes is out of bounds")
    try:
        body = await reader.readexactly(length - 4)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the connection ended inside a message") from None
    return Message(kind, body)


async def read_startup(reader: asyncio.StreamReader, *, limit: int = MAX_STARTUP) -> bytes:
    """A startup-phase packet (no type byte): its body, which starts with the request code."""
    try:
        (length,) = _I32.unpack(await reader.readexactly(4))
    except asyncio.IncompleteReadError:
        raise EOFError from None
    if length < 8 or length > limit:
        raise ProtocolError(f"a startup packet of {length} bytes is out of bounds")
    try:
        return await reader.readexactly(length - 4)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the connection ended inside the startup packet") from None


class Cursor:
    """Reads the fields of one message body in order (ProtocolError when it is too short)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.at = 0

    def _need(self, n: int) -> None:
        if self.at + n > len(self.body):
            raise ProtocolError("a message is shorter than its fields")

    def int32(self) -> int:
        self._need(4)
        value: int = _I32.unpack_from(self.body, self.at)[0]
        self.at += 4
        return value

    def int16(self) -> int:
        self._need(2)
        value: int = _I16.unpack_from(self.body, self.at)[0]
        self.at += 2
        return value

    def uint16(self) -> int:
        self._need(2)
        value: int = struct.unpack_from("!H", self.body, self.at)[0]
        self.at += 2
        return value

    def uint32(self) -> int:
        self._need(4)
        value: int = struct.unpack_from("!I", self.body, self.at)[0]
        self.at += 4
        return value

    def byte(self) -> bytes:
        value = self.body[self.at : self.at + 1]
        if not value:
            raise ProtocolError("a message is shorter than its fields")
        self.at += 1
        return value

    def cstring(self) -> str:
        end = self.body.find(b"\0", self.at)
        if end < 0:
            raise ProtocolError("a string in a message is not terminated")
        value = self.body[self.at : end].decode("utf-8", "replace")
        self.at = end + 1
        return value

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.body):
            raise ProtocolError("a message is shorter than its fields")
        value = self.body[self.at : self.at + n]
        self.at += n
        return value

    def rest(self) -> bytes:
        value = self.body[self.at :]
        self.at = len(self.body)
        return value


def _checked(read: Cursor, what: str) -> None:
    if read.at != len(read.body):
        raise ProtocolError(f"{what} has bytes after its fields")


def parse_startup(body: bytes) -> tuple[int, dict[str, str]]:
    """(request code, parameters): parameters only for a protocol-3 startup message."""
    read = Cursor(body)
    code = read.int32()
    params: dict[str, str] = {}
    if code == PROTOCOL_3:
        while True:
            key = read.cstring()
            if not key:
                break
            params[key] = read.cstring()
        _checked(read, "the startup packet")
    return code, params


def parse_cancel(body: bytes) -> tuple[int, int]:
    read = Cursor(body)
    read.int32()
    pid, key = read.int32(), read.int32()
    return pid, key


def parse_query(body: bytes) -> str:
    read = Cursor(body)
    text = read.cstring()
    _checked(read, "a Query")
    return text


def parse_parse(body: bytes) -> tuple[str, str, tuple[int, ...]]:
    """Parse: (statement name, SQL text, parameter type OIDs)."""
    read = Cursor(body)
    name, text = read.cstring(), read.cstring()
    oids = tuple(read.uint32() for _ in range(read.uint16()))
    _checked(read, "a Parse")
    return name, text, oids


def parse_bind(body: bytes) -> Bind:
    read = Cursor(body)
    portal, statement = read.cstring(), read.cstring()
    formats = tuple(read.int16() for _ in range(read.uint16()))
    values: list[bytes | None] = []
    for _ in range(read.uint16()):
        length = read.int32()
        values.append(None if length == -1 else read.take(length))
    results = tuple(read.int16() for _ in range(read.uint16()))
    _checked(read, "a Bind")
    if any(f not in (0, 1) for f in (*formats, *results)):
        raise ProtocolError("a Bind with a format that is neither text nor binary")
    if len(formats) > 1 and len(formats) != len(values):
        raise ProtocolError("a Bind whose format codes do not match its parameters")
    return Bind(portal, statement, formats, tuple(values), results)


def parse_target(body: bytes) -> tuple[bytes, str]:
    """Describe or Close: (b"S" statement or b"P" portal, name)."""
    read = Cursor(body)
    kind = read.byte()
    name = read.cstring()
    _checked(read, "a Describe or Close")
    if kind not in (b"S", b"P"):
        raise ProtocolError("a Describe or Close of neither a statement nor a portal")
    return kind, name


def parse_execute(body: bytes) -> tuple[str, int]:
    read = Cursor(body)
    portal = read.cstring()
    rows = read.int32()
    _checked(read, "an Execute")
    return portal, rows


def parse_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse or NoticeResponse: field code -> value (S, V, C, M, D, H, P …)."""
    read = Cursor(body)
    fields: dict[str, str] = {}
    while True:
        code = read.byte()
        if code == b"\0":
            return fields
        fields[code.decode("ascii", "replace")] = read.cstring()


def parse_row_description(body: bytes) -> list[Column]:
    read = Cursor(body)
    columns = []
    for _ in range(read.int16()):
        columns.append(
            Column(
                read.cstring(),
                read.uint32(),
                read.int16(),
                read.uint32(),
                read.int16(),
                read.int32(),
                read.int16(),
            )
        )
    return columns


def parse_data_row(body: bytes) -> list[bytes | None]:
    read = Cursor(body)
    values: list[bytes | None] = []
    for _ in range(read.int16()):
        length = read.int32()
        values.append(None if length == -1 else read.take(length))
    return values


def parse_parameter_description(body: bytes) -> tuple[int, ...]:
    read = Cursor(body)
    return tuple(read.uint32() for _ in range(read.int16()))


# -- writing ---------------------------------------------------------------------------------


def frame(kind: bytes, body: bytes = b"") -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def startup(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items())
    body += b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST)


def cancel_request(pid: int, key: int) -> bytes:
    return _I32.pack(16) + _I32.pack(CANCEL_REQUEST) + _I32.pack(pid) + _I32.pack(key)


def authentication(code: int, data: bytes = b"") -> bytes:
    """R: 0 ok, 3 cleartext password, 5 MD5 (data: salt), 10 SASL …"""
    return frame(b"R", _I32.pack(code) + data)


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return frame(b"K", _I32.pack(pid) + _I32.pack(key))


def ready_for_query(status: bytes) -> bytes:
    return frame(b"Z", status)


def fields(kind: bytes, values: dict[str, str]) -> bytes:
    """ErrorResponse (b"E") or NoticeResponse (b"N")."""
    body = b"".join(code.encode() + _cstr(value) for code, value in values.items())
    return frame(kind, body + b"\0")


def error(message: str, sqlstate: str, *, severity: str = "ERROR", detail: str = "") -> bytes:
    values = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail:
        values["D"] = detail
    return fields(b"E", values)


def row_description(columns: Sequence[Column]) -> bytes:
    parts = [_I16.pack(len(columns))]
    for c in columns:
        parts.append(
            _cstr(c.name)
            + struct.pack(
                "!IhIhih",
                c.table_oid,
                c.column_number,
                c.type_oid,
                c.type_size,
                c.type_modifier,
                c.format,
            )
        )
    return frame(b"T", b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [_I16.pack(len(values))]
    for value in values:
        parts.append(_I32.pack(-1) if value is None else _I32.pack(len(value)) + value)
    return frame(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return frame(b"C", _cstr(tag))


def query(text: str) -> bytes:
    return frame(b"Q", _cstr(text))


def password(secret: bytes) -> bytes:
    return frame(b"p", secret)


def terminate() -> bytes:
    return frame(b"X")


def sync() -> bytes:
    return frame(b"S")


# -- the client's side (broker.protocols.postgres.upstream) ----------------------------------


def parse_authentication(body: bytes) -> tuple[int, bytes]:
    """Authentication (R): (code, the rest: MD5 salt, SASL mechanisms or data …)."""
    read = Cursor(body)
    return read.int32(), read.rest()


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    read = Cursor(body)
    name, value = read.cstring(), read.cstring()
    _checked(read, "a ParameterStatus")
    return name, value


def parse_backend_key_data(body: bytes) -> tuple[int, int]:
    read = Cursor(body)
    pid, key = read.int32(), read.int32()
    _checked(read, "a BackendKeyData")
    return pid, key


def parse_command_complete(body: bytes) -> str:
    read = Cursor(body)
    tag = read.cstring()
    _checked(read, "a CommandComplete")
    return tag


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", _cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame(b"p", data)


def parse(name: str, text: str, oids: Sequence[int] = ()) -> bytes:
    """Parse (P): prepare TEXT as statement NAME ("" the unnamed one)."""
    types = b"".join(struct.pack("!I", oid) for oid in oids)
    return frame(b"P", _cstr(name) + _cstr(text) + _I16.pack(len(oids)) + types)


def bind(message: Bind) -> bytes:
    parts = [_cstr(message.portal), _cstr(message.statement)]
    parts.append(_I16.pack(len(message.param_formats)))
    parts += [_I16.pack(f) for f in message.param_formats]
    parts.append(_I16.pack(len(message.values)))
    for value in message.values:
        parts.append(_I32.pack(-1) if value is None else _I32.pack(len(value)) + value)
    parts.append(_I16.pack(len(message.result_formats)))
    parts += [_I16.pack(f) for f in message.result_formats]
    return frame(b"B", b"".join(parts))


def describe(kind: bytes, name: str) -> bytes:
    """Describe (D) of a statement (KIND b"S") or a portal (b"P")."""
    return frame(b"D", kind + _cstr(name))


def close(kind: bytes, name: str) -> bytes:
    """Close (C) of a statement (KIND b"S") or a portal (b"P")."""
    return frame(b"C", kind + _cstr(name))


def execute(portal: str, rows: int = 0) -> bytes:
    """Execute (E): at most ROWS rows of PORTAL (0: all)."""
    return frame(b"E", _cstr(portal) + _I32.pack(rows))


def flush() -> bytes:
    return frame(b"H")


def copy_fail(message: str) -> bytes:
    return frame(b"f", _cstr(message))
