"""The broker's own connection to a MySQL or MariaDB target, in raw packets.

It connects in two steps: ``greet`` opens the socket and reads the server's greeting (its
version and capabilities, which the native proxy shows its client), and ``login`` goes on as
the target says (TLS mode, the held password: mysql_native_password or caching_sha2_password)
with the capabilities the client asked for. It then fixes what the broker's parser relies on
(utf8mb4, an sql_mode without the modes that change how text is read), as the unit's own
connection does. It carries a native client's commands as they are (send, read:
broker.protocols.mysql.proxy) and, between them, the broker's own catalog queries (execute: the
DatabaseConnection of broker.protocols.sql)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from broker.protocols.base import TargetError
from broker.protocols.mysql import error_condition, safe_sql_mode, tls_context
from broker.protocols.mysql import handshake as h
from broker.protocols.mysql import packets as p
from broker.protocols.mysql import values as v
from broker.protocols.sql import CONNECT_TIMEOUT, Result, StatementError
from broker.protocols.sql_connect import held_password, split_address, tls_unavailable

if TYPE_CHECKING:
    from broker.config import MysqlTarget

# What the broker asks of every target, besides what its client asked for.
REQUIRED = p.CLIENT_PROTOCOL_41 | p.CLIENT_SECURE_CONNECTION | p.CLIENT_PLUGIN_AUTH
BASE = (
    REQUIRED
    | p.CLIENT_LONG_PASSWORD
    | p.CLIENT_LONG_FLAG
    | p.CLIENT_CONNECT_WITH_DB
    | p.CLIENT_PLUGIN_AUTH_LENENC
    | p.CLIENT_TRANSACTIONS
    | p.CLIENT_MULTI_RESULTS
    | p.CLIENT_PS_MULTI_RESULTS
)
_LOST = "ERROR: the connection to the database was lost"


class Gone(TargetError):
    """The server hung up before the broker logged in (it waits only connect_timeout)."""


class _Refused(Exception):
    def __init__(self, error: p.Err) -> None:
        super().__init__(error.message)
        self.error = error


class Upstream:
    """One connection to TARGET: after ``greet``, its greeting; after ``login``, ready."""

    dialect = "mysql"

    def __init__(
        self,
        target: MysqlTarget,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        greeting: h.Greeting,
    ) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer
        self.greeting = greeting
        self.capabilities = 0
        self.status = greeting.status
        self.tls = False
        self.abandoned = False  # the client has left (abandon): nothing more is sent
        self._seq = 0

    @property
    def thread_id(self) -> int:
        return self.greeting.thread_id

    @classmethod
    async def greet(cls, target: MysqlTarget) -> Upstream:
        host, port = split_address(target.address)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    _, payload = await p.read_packet(reader, limit=1 << 16)
                    greeting = h.parse_greeting(payload)
                except BaseException:
                    writer.transport.abort()
                    raise
        except Exception as exc:
            raise TargetError(_connect_error(target, exc)) from None
        if greeting.capabilities & REQUIRED != REQUIRED:
            writer.transport.abort()
            raise TargetError(
                f"target {target.name}: the server does not speak protocol 4.1 with plugins"
            )
        return cls(target, reader, writer, greeting)

    @classmethod
    async def open(
        cls, target: MysqlTarget, *, capabilities: int = BASE, charset: int = h.UTF8MB4_GENERAL_CI
    ) -> Upstream:
        up = await cls.greet(target)
        await up.login(capabilities, charset)
        return up

    async def login(self, capabilities: int, charset: int) -> None:
        """Authenticate with the held credential and fix the session (TargetError)."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._authenticate(capabilities, charset)
                await self._fix_session()
        except TargetError:
            self.writer.transport.abort()
            raise
        except (EOFError, ConnectionError) as exc:
            self.writer.transport.abort()
            raise Gone(_connect_error(self.target, exc)) from None
        except BaseException as exc:
            self.writer.transport.abort()
            if not isinstance(exc, Exception):
                raise
            raise TargetError(_connect_error(self.target, exc)) from None

    # -- raw packets (the native proxy) ------------------------------------------------------

    def command(self, payload: bytes) -> None:
        """Send a command (a packet that starts a new sequence)."""
        if self.abandoned:
            raise ConnectionError("the client has left: nothing more is sent to the target")
        data, self._seq = p.frame(payload, 0)
        self.writer.write(data)

    def send(self, payload: bytes) -> None:
        """Send the next packet of the sequence."""
        if self.abandoned:
            raise ConnectionError("the client has left: nothing more is sent to the target")
        data, self._seq = p.frame(payload, self._seq)
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def abandon(self) -> None:
        """The client has left: send nothing more, and cancel what runs now."""
        self.abandoned = True
        await self.cancel()

    async def read(self) -> bytes:
        """The server's next packet (ProtocolError, or EOFError at its end)."""
        seq, payload = await p.read_packet(self.reader)
        self._seq = (seq + 1) & 0xFF
        return payload

    # -- DatabaseConnection (the broker's own queries) ---------------------------------------

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        """Run SQL (COM_QUERY) on the idle connection. The rows are read in full (the broker's
        catalog queries are small), so the connection is idle again on return and QUERY
        changes nothing. Of several statements, the first one's result is returned."""
        try:
            self.command(bytes((p.COM_QUERY,)) + sql.encode("utf-8"))
            await self.drain()
            columns, rows, status, error = await self._collect()
        except (OSError, EOFError, p.ProtocolError):
            raise StatementError(_LOST, sqlstate="08S01", condition="connection lost") from None
        if error is not None:
            raise statement_error(error)

        async def each() -> AsyncIterator[tuple[Any, ...]]:
            for row in rows:
                yield row

        return Result(columns=columns, rows=each(), status=status)

    async def _collect(
        self,
    ) -> tuple[list[str], list[tuple[Any, ...]], str, p.Err | None]:
        columns: list[v.Column] = []
        rows: list[tuple[Any, ...]] = []
        status: str | None = None
        while True:
            payload = await self.read()
            if p.is_err(payload):
                return [c.name for c in columns], rows, status or "", p.parse_err(payload)
            if p.is_ok(payload):
                result = p.parse_ok(payload)
                self.status = result.status
                status = status if status is not None else f"{result.affected} row(s) affected"
            else:
                try:
                    described = await self._result_set()
                except _Refused as exc:  # an error while the rows came: the end of it all
                    return [c.name for c in columns], rows, status or "", exc.error
                if status is None:
                    columns, rows = described
                    status = ""
            if not self.status & p.SERVER_MORE_RESULTS_EXISTS:
                return [c.name for c in columns], rows, status, None

    async def _result_set(self) -> tuple[list[v.Column], list[tuple[Any, ...]]]:
        """The rest of a result set whose column count came; its columns and rows."""
        columns = []
        while not p.is_eof(payload := await self.read()):
            columns.append(v.parse_column(payload))
        rows = []
        while True:
            payload = await self.read()
            if p.is_eof(payload):
                self.status = p.eof_status(payload)
                return columns, rows
            if p.is_err(payload):
                raise _Refused(p.parse_err(payload))
            cells = v.parse_text_row(payload)
            if len(cells) != len(columns):
                raise p.ProtocolError("a row does not match its columns")
            rows.append(tuple(_value(c, cell) for c, cell in zip(columns, cells, strict=True)))

    async def cancel(self) -> None:
        """Stop what runs on this connection: KILL QUERY from a connection of its own (the
        protocol has no cancel in band). Never raises."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                killer = await Upstream.open(self.target)
                try:
                    await killer.execute(f"KILL QUERY {int(self.thread_id)}")
                finally:
                    await killer.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.writer.is_closing():
                self.command(bytes((p.COM_QUIT,)))
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self.writer.wait_closed()

    # -- the start ------------------------------------------------------------------------

    async def _authenticate(self, asked: int, charset: int) -> None:
        target = self.target
        greeting = self.greeting
        self._seq = 1
        # The response always names the database and gives the auth data length-encoded; it
        # sends no connection attributes.
        framing = p.CLIENT_CONNECT_WITH_DB | p.CLIENT_PLUGIN_AUTH_LENENC
        capabilities = (asked | REQUIRED | framing) & ~p.CLIENT_CONNECT_ATTRS
        capabilities &= greeting.capabilities
        if target.tls != "disable" and greeting.capabilities & p.CLIENT_SSL:
            capabilities |= p.CLIENT_SSL
            self.send(h.ssl_request(capabilities=capabilities, charset=charset))
            await self.drain()
            await self._start_tls()
        elif target.tls in ("require", "verify-full"):
            raise tls_unavailable(target)
        self.capabilities = capabilities
        secret = (held_password(target) or "").encode("utf-8")
        plugin = greeting.plugin if greeting.plugin in (h.NATIVE, h.CACHING_SHA2) else h.NATIVE
        data = greeting.scramble
        self.send(
            h.response(
                capabilities=capabilities,
                charset=charset,
                user=target.user,
                auth=h.scramble(plugin, secret, data),
                database=target.database,
                plugin=plugin,
            )
        )
        await self.drain()
        while True:
            payload = await self.read()
            if p.is_ok(payload):
                self.status = p.parse_ok(payload).status
                return
            if p.is_err(payload):
                raise _Refused(p.parse_err(payload))
            if payload[:1] == b"\xfe":  # AuthSwitchRequest
                cur = p.Cursor(payload, 1)
                plugin = cur.cstring()
                data = cur.rest().rstrip(b"\0")
                if plugin in (h.CLEAR, h.SHA256):
                    self._clear(secret, plugin)
                else:
                    self.send(h.scramble(plugin, secret, data))
            elif payload[:1] == b"\x01" and plugin == h.CACHING_SHA2:  # AuthMoreData
                if payload[1:2] == b"\x03":
                    continue  # fast authentication succeeded: an OK follows
                if payload[1:2] != b"\x04":
                    raise p.ProtocolError("an unexpected caching_sha2_password answer")
                if self.tls:
                    self._clear(secret, plugin)
                else:
                    self.send(b"\x02")  # the server's RSA key, to encrypt the password with
                    await self.drain()
                    key = await self.read()
                    if key[:1] != b"\x01":
                        raise p.ProtocolError("the server did not send its public key")
                    self.send(h.rsa_password(secret, data, key[1:]))
            else:
                raise p.ProtocolError("an unexpected packet while authenticating")
            await self.drain()

    def _clear(self, secret: bytes, plugin: bytes) -> None:
        """The password itself: only inside TLS."""
        if not self.tls:
            raise TargetError(
                f"target {self.target.name}: the server asks for the password in clear "
                f"({plugin.decode(errors='replace')}) on a connection without TLS; refused"
            )
        self.send(secret + b"\0")

    async def _start_tls(self) -> None:
        if getattr(self.reader, "_buffer", b""):
            # Bytes that came before TLS must not pass for what comes inside it.
            raise p.ProtocolError("the server sent data before TLS began")
        host, _ = split_address(self.target.address)
        context = tls_context(self.target)
        assert context is not None
        await self.writer.start_tls(context, server_hostname=host)
        self.tls = True

    async def _fix_session(self) -> None:
        """utf8mb4, a safe sql_mode and the statement timeout, as the unit's connection has."""
        result = await self.execute(
            "SELECT @@SESSION.sql_mode, @@character_set_client, @@character_set_connection, "
            "@@character_set_results"
        )
        rows = [r async for r in result.rows]
        if len(rows) != 1:
            raise p.ProtocolError("the session's settings did not come back")
        row = rows[0]
        modes = str(row[0] or "")
        wanted = safe_sql_mode(modes)
        if wanted != modes:
            # safe_sql_mode keeps only names of SAFE_SQL_MODES: nothing to quote.
            await self.execute(f"SET SESSION sql_mode = '{wanted}'")
        if any(str(value or "").lower() != "utf8mb4" for value in row[1:]):
            await self.execute("SET NAMES utf8mb4")
        if self.target.statement_timeout:
            await self.execute(
                f"SET SESSION max_statement_time = {int(self.target.statement_timeout)}"
            )


# -- values and errors -------------------------------------------------------------------------

_INTEGER_TYPES = frozenset({v.TINY, v.SHORT, v.LONG, v.LONGLONG, v.INT24, v.YEAR})


def _value(column: v.Column, cell: bytes | None) -> Any:
    """A text-protocol cell as Python reads it (the catalog queries' columns)."""
    if cell is None:
        return None
    if column.type in _INTEGER_TYPES:
        return int(cell)
    if column.type in (v.FLOAT, v.DOUBLE):
        return float(cell)
    if column.type in (v.DECIMAL, v.NEWDECIMAL):
        return Decimal(cell.decode("ascii"))
    if column.charset == v.BINARY_CHARSET and column.type in v.TEXT_LIKE:
        return cell
    return cell.decode("utf-8", "replace")


def statement_error(error: p.Err) -> StatementError:
    return StatementError(
        f"ERROR: {error.message}",
        sqlstate=error.sqlstate or None,
        code=error.code,
        condition=error_condition(error.code),
    )


def _connect_error(target: MysqlTarget, exc: BaseException) -> str:
    """The message the unit's own connection gives for the same failure."""
    if isinstance(exc, TargetError):
        return str(exc)
    if isinstance(exc, _Refused):
        code = exc.error.code
        if code in (1045, 1698):
            return f"target {target.name}: the database refused the broker's credentials"
        if code == 1049:
            return f"target {target.name}: database does not exist"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"target {target.name}: TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"target {target.name}: TLS handshake failed"
    return f"target {target.name} unreachable: the database did not accept a connection"
