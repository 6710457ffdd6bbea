"""The broker's own connection to a PostgreSQL target, in protocol v3.

It connects as the target says (TLS mode, the held password: cleartext, MD5 or SCRAM-SHA-256),
then carries a native client's messages as they are (send, read: broker.protocols.postgres
.proxy) and, between the client's statements, the broker's own catalog queries (execute: the
DatabaseConnection of broker.protocols.sql)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import socket
import ssl
import stringprep
import unicodedata
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import psycopg.errors

from broker.protocols.base import TargetError
from broker.protocols.postgres import messages as m
from broker.protocols.postgres.values import (
    BOOL,
    BPCHAR,
    CHAR,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    NAME,
    OID,
    TEXT,
    VARCHAR,
)
from broker.protocols.sql import CONNECT_TIMEOUT, Result, StatementError
from broker.protocols.sql_connect import ca_file, held_password, split_address, tls_unavailable

if TYPE_CHECKING:
    from broker.config import PostgresTarget


class Upstream:
    """One connection to TARGET, authenticated and ready (``status``: its last ReadyForQuery)."""

    dialect = "postgres"

    def __init__(
        self, target: PostgresTarget, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer
        self.server_params: dict[str, str] = {}
        self.pid = 0
        self.key = 0
        self.status = b"I"
        self.abandoned = False  # the client has left (abandon): nothing more is sent
        self._held: deque[m.Message] = deque()  # came during execute(), for read() to hand on

    @classmethod
    async def open(cls, target: PostgresTarget) -> Upstream:
        host, port = split_address(target.address)
        context = _tls_context(target)
        secret = held_password(target)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await _connect(target, host, port, context)
                up = cls(target, reader, writer)
                try:
                    await up._startup(secret)
                except BaseException:
                    writer.transport.abort()
                    raise
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(_connect_error(target, exc)) from None
        return up

    # -- raw messages (the native proxy) ----------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.abandoned:
            raise ConnectionError("the client has left: nothing more is sent to the target")
        self.writer.write(data)

    async def abandon(self) -> None:
        """The client has left: send nothing more, and cancel what runs now."""
        self.abandoned = True
        await self.cancel()

    async def drain(self) -> None:
        await self.writer.drain()

    async def read(self) -> m.Message:
        """The server's next message (messages.ProtocolError, or EOFError at its end)."""
        if self._held:
            return self._held.popleft()
        return await self._receive()

    async def _receive(self) -> m.Message:
        message = await m.read_message(self.reader)
        if message.type == b"S":
            name, value = m.parse_parameter_status(message.body)
            self.server_params[name] = value
        elif message.type == b"Z":
            self.status = message.body[:1]
        return message

    # -- DatabaseConnection (the broker's own queries) ---------------------------------------

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        """Run SQL as a simple Query on the idle connection. The rows are read in full (the
        broker's catalog queries are small), so the connection is idle again on return and
        QUERY changes nothing. Of several statements, the first one's result is returned."""
        try:
            self.send(m.query(sql))
            await self.drain()
            columns, rows, status, error = await self._collect()
        except (OSError, EOFError, m.ProtocolError):
            raise StatementError(
                "FATAL: the connection to the database was lost",
                sqlstate="08006",
                condition=_condition("08006"),
            ) from None
        if error is not None:
            raise _statement_error(error)

        async def each() -> AsyncIterator[tuple[Any, ...]]:
            for row in rows:
                yield row

        return Result(columns=columns, rows=each(), status=status)

    async def _collect(
        self,
    ) -> tuple[list[str], list[tuple[Any, ...]], str, dict[str, str] | None]:
        columns: list[str] = []
        oids: list[int] = []
        rows: list[tuple[Any, ...]] = []
        status: str | None = None
        error: dict[str, str] | None = None
        while True:
            message = await self._receive()
            kind = message.type
            if kind == b"Z":
                return columns, rows, status or "", error
            if kind in (b"A", b"S"):
                self._held.append(message)  # the client's: a notification, a setting's change
            elif kind == b"E":
                error = error or m.parse_fields(message.body)
            elif kind in (b"G", b"W"):
                self.send(m.copy_fail("the broker's own queries copy nothing"))
                await self.drain()
            elif status is not None:
                continue  # a later statement's result
            elif kind == b"T":
                described = m.parse_row_description(message.body)
                columns = [c.name for c in described]
                oids = [c.type_oid for c in described]
            elif kind == b"D":
                values = m.parse_data_row(message.body)
                if len(values) != len(oids):
                    raise m.ProtocolError("a DataRow does not match its RowDescription")
                rows.append(tuple(_value(o, v) for o, v in zip(oids, values, strict=True)))
            elif kind == b"C":
                status = m.parse_command_complete(message.body)
            elif kind == b"I":
                status = ""

    async def cancel(self) -> None:
        """Ask the server to stop what runs on this connection: a CancelRequest on a connection
        of its own, in plain text (the server reads it before any TLS or authentication). It is
        sent whatever runs: the server ignores it on an idle connection."""
        host, port = split_address(self.target.address)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                sock = await _tcp(host, port)
                try:
                    await loop.sock_sendall(sock, m.cancel_request(self.pid, self.key))
                    await loop.sock_recv(sock, 1)  # the server hangs up once it has passed it on
                finally:
                    sock.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.writer.is_closing():
                self.writer.write(m.terminate())
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self.writer.wait_closed()

    # -- the start ------------------------------------------------------------------------

    async def _startup(self, secret: str | None) -> None:
        target = self.target
        options = ["-c standard_conforming_strings=on"]
        if target.statement_timeout:
            options.append(f"-c statement_timeout={target.statement_timeout * 1000}")
        # Connection options outrank ALTER ROLE/DATABASE/SYSTEM: the session reads text as the
        # broker's parser does (broker.policy.sql_session).
        params = {
            "user": target.user,
            "database": target.database,
            "application_name": "hoop-broker",
            "client_encoding": "UTF8",
            "options": " ".join(options),
        }
        self.send(m.startup(params))
        await self.drain()
        await self._authenticate(secret)
        while True:
            message = await self._starting()
            if message.type == b"K":
                self.pid, self.key = m.parse_backend_key_data(message.body)
            elif message.type == b"Z":
                return
            elif message.type != b"S":
                raise m.ProtocolError(f"unexpected message {message.type!r} at the start")

    async def _starting(self) -> m.Message:
        while True:
            message = await self._receive()
            if message.type == b"E":
                raise _Refused(m.parse_fields(message.body))
            if message.type not in (b"N", b"v"):  # notices; NegotiateProtocolVersion
                return message

    async def _authenticate(self, secret: str | None) -> None:
        scram: _Scram | None = None
        while True:
            message = await self._starting()
            if message.type != b"R":
                raise m.ProtocolError("the server did not authenticate the broker")
            code, data = m.parse_authentication(message.body)
            if code == 0:
                if scram is not None and not scram.verified:
                    raise _Handshake("the server did not prove that it knows the password")
                return
            if secret is None:
                raise _NoPassword
            if code == 3:
                self.send(m.password(secret.encode() + b"\0"))
            elif code == 5:
                self.send(m.password(_md5(secret, self.target.user, data[:4]) + b"\0"))
            elif code == 10 and scram is None:
                if b"SCRAM-SHA-256" not in data.split(b"\0"):
                    raise _Handshake("the server offers no SASL mechanism the broker speaks")
                scram = _Scram(secret)
                self.send(m.sasl_initial_response("SCRAM-SHA-256", scram.first()))
            elif code == 11 and scram is not None:
                self.send(m.sasl_response(await scram.final(data)))
            elif code == 12 and scram is not None:
                scram.verify(data)
                continue
            else:
                raise _Handshake(f"authentication request {code} is not supported")
            await self.drain()


# -- connecting -------------------------------------------------------------------------------


class _Refused(Exception):
    """The server's ErrorResponse at the start."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", ""))
        self.fields = fields


class _NoPassword(Exception):
    """The server asks for a password and the target has no credential."""


class _Handshake(Exception):
    """The server's authentication cannot be gone through safely."""


def _tls_context(target: PostgresTarget) -> ssl.SSLContext | None:
    if target.tls == "disable":
        return None
    if target.tls == "verify-full":
        return ssl.create_default_context(cafile=ca_file(target))
    # prefer and require encrypt without checking who answers, as libpq's do.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _tcp(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    failure: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
        except BaseException:
            sock.close()
            raise
    raise failure


async def _connect(
    target: PostgresTarget, host: str, port: int, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = await _tcp(host, port)
    try:
        if context is None:
            return await asyncio.open_connection(sock=sock)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, m.ssl_request())
        # One byte from the socket itself, not from a stream's buffer: nothing a man in the
        # middle sends after it can pass for what came inside TLS (CVE-2021-23222).
        answer = await loop.sock_recv(sock, 1)
        if answer == b"S":
            return await asyncio.open_connection(sock=sock, ssl=context, server_hostname=host)
        if answer == b"N" and target.tls == "prefer":
            return await asyncio.open_connection(sock=sock)
        if answer == b"N":
            raise tls_unavailable(target)
        raise m.ProtocolError("the server answered the SSLRequest with neither S nor N")
    except BaseException:
        sock.close()
        raise


_NAME_MISMATCH = (62, 63, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_, _IP_ADDRESS_


def _connect_error(target: PostgresTarget, exc: Exception) -> str:
    """The message PostgresConnection gives for the same failure (its _connect_error)."""
    if isinstance(exc, _Refused):
        code, text = exc.fields.get("C", ""), exc.fields.get("M", "")
        if code == "3D000" or (code == "28000" and "does not exist" in text):
            return f"target {target.name}: database or role does not exist"
        if code in ("28P01", "28000"):
            return f"target {target.name}: the database refused the broker's credentials"
    if isinstance(exc, _NoPassword):
        return f"target {target.name}: the database refused the broker's credentials"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            host = split_address(target.address)[0]
            return (
                f"target {target.name}: TLS certificate verification failed: "
                f"the certificate is not valid for {host}"
            )
        return f"target {target.name}: TLS certificate verification failed"
    return f"target {target.name} unreachable: the database did not accept a connection"


# -- passwords ---------------------------------------------------------------------------------


def _md5(secret: str, user: str, salt: bytes) -> bytes:
    inner = hashlib.md5(secret.encode() + user.encode(), usedforsecurity=False).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest().encode()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def _attributes(data: bytes) -> dict[str, str]:
    """A SCRAM message's attributes: r=…,s=…,i=…"""
    return dict(part.split("=", 1) for part in data.decode("ascii").split(",") if "=" in part)


class _Scram:
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL runs it: no channel binding, an empty
    user name (the server takes the startup's)."""

    def __init__(self, secret: str) -> None:
        self._password = _saslprep(secret)
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature: bytes | None = None
        self.verified = False

    def first(self) -> bytes:
        return f"n,,{self._first_bare}".encode()

    async def final(self, server_first: bytes) -> bytes:
        if self._server_signature is not None:
            raise _Handshake("a second server-first-message")
        attrs = _attributes(server_first)
        nonce, iterations = attrs["r"], int(attrs["i"])
        salt = base64.b64decode(attrs["s"], validate=True)
        if not nonce.startswith(self._nonce) or nonce == self._nonce or iterations < 1:
            raise _Handshake("the server's nonce or iteration count is not valid")
        # PBKDF2 releases the GIL: a server's high iteration count does not stall the loop.
        salted = await asyncio.to_thread(
            hashlib.pbkdf2_hmac, "sha256", self._password, salt, iterations
        )
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={nonce}"  # biws: base64 of the gs2 header "n,,"
        message = f"{self._first_bare},{server_first.decode('ascii')},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        given = base64.b64decode(_attributes(server_final).get("v", ""), validate=True)
        expected = self._server_signature
        if expected is None or not hmac.compare_digest(given, expected):
            raise _Handshake("the server's signature does not match: it does not know the password")
        self.verified = True


_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,  # unassigned code points
)


def _saslprep(secret: str) -> bytes:
    """The password as PostgreSQL hashes it (pg_saslprep): ASCII as it is; other text
    SASLprep'd (RFC 4013); as given when SASLprep refuses it."""
    raw = secret.encode()
    if secret.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in secret
        if not stringprep.in_table_b1(ch)
    )
    if not mapped:
        return raw
    text = unicodedata.normalize("NFKC", mapped)
    if any(check(ch) for ch in text for check in _PROHIBITED):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in text) and (
        any(stringprep.in_table_d2(ch) for ch in text)
        or not stringprep.in_table_d1(text[0])
        or not stringprep.in_table_d1(text[-1])
    ):
        return raw
    return text.encode()


# -- values and errors -------------------------------------------------------------------------

_INTEGERS = frozenset({INT2, INT4, INT8, OID})
_FLOATS = frozenset({FLOAT4, FLOAT8})
_ARRAYS = {  # array type OID -> element type OID
    1000: BOOL,
    1002: CHAR,
    1003: NAME,
    1005: INT2,
    1007: INT4,
    1009: TEXT,
    1014: BPCHAR,
    1015: VARCHAR,
    1016: INT8,
    1021: FLOAT4,
    1022: FLOAT8,
    1028: OID,
}
# An element as array_out writes it: quoted (with backslash escapes) or bare.
_ELEMENT = r'"(?:[^"\\]|\\.)*"|[^,{}"\\\s]+'
_ONE_DIMENSION = re.compile(
    rf"(?:\[-?\d+:-?\d+\]=)?\{{((?:{_ELEMENT})(?:,(?:{_ELEMENT}))*)?\}}", re.S
)
_ELEMENTS = re.compile(_ELEMENT, re.S)
_ESCAPE = re.compile(r"\\(.)", re.S)


def _value(oid: int, raw: bytes | None) -> Any:
    """A text-format value of type OID as Python reads it; what is not listed stays text."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    element = _ARRAYS.get(oid)
    if element is None:
        return _scalar(oid, text)
    items = _array(text)
    if items is None:
        return text  # more than one dimension
    return [None if item is None else _scalar(element, item) for item in items]


def _scalar(oid: int, text: str) -> Any:
    if oid in _INTEGERS:
        return int(text)
    if oid in _FLOATS:
        return float(text)  # NaN, Infinity and -Infinity included
    if oid == BOOL:
        return text == "t"
    return text


def _array(text: str) -> list[str | None] | None:
    """The elements of a one-dimensional array in text form ({a,"b,c",NULL}); None for an
    array of more dimensions."""
    match = _ONE_DIMENSION.fullmatch(text)
    if match is None:
        return None
    items: list[str | None] = []
    for element in _ELEMENTS.findall(match.group(1) or ""):
        if element.startswith('"'):
            items.append(_ESCAPE.sub(r"\1", element[1:-1]))
        else:
            items.append(None if element.upper() == "NULL" else element)
    return items


def _condition(sqlstate: str) -> str:
    """The error's fixed name as psycopg calls its class: 57014 -> "query canceled"."""
    try:
        name = psycopg.errors.lookup(sqlstate).__name__
    except KeyError:
        name = psycopg.errors.get_base_exception(sqlstate).__name__
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).lower()


def _statement_error(fields: dict[str, str]) -> StatementError:
    sqlstate = fields.get("C") or None
    return StatementError(
        f"{fields.get('S') or 'ERROR'}: {fields.get('M', '')}",
        sqlstate=sqlstate,
        condition=_condition(sqlstate) if sqlstate else "database error",
    )
