"""The server side of MySQL's protocol for a native client (`hoopctl proxy`).

The client (the mariadb client, a driver) talks to the broker as to a MySQL server. Every
command that runs something is judged before any of it reaches the target: the whole text of a
COM_QUERY, each COM_STMT_EXECUTE with its parameters bound into the prepared text, and a
COM_INIT_DB as the `USE` it is. A refusal answers with error 1142 (SQLSTATE 42000) and nothing
runs. The target's answers pass back through (results.py), masked on the way. What the session
decides (policy, approvals, masking plans, audit, recording) is asked of the host
(broker.protocols.sql.ProxyHost).

The client authenticates with the one-time password hoopctl printed (its SHA-256 is all the
broker knows), asked for with mysql_clear_password: the leg is loopback, then SSH. No TLS is
offered. The broker connects to the target with its own credential and the client's
capabilities, less those that change how the server reads text or that the broker does not
relay (compression, local files, CLIENT_DEPRECATE_EOF, session tracking, query attributes)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from broker.protocols.base import TargetError
from broker.protocols.mysql import handshake as h
from broker.protocols.mysql import lexer
from broker.protocols.mysql import packets as p
from broker.protocols.mysql import values as v
from broker.protocols.mysql.results import Lost, Relay
from broker.protocols.mysql.upstream import Gone, Upstream
from broker.protocols.sql import ProxyHost, abandoned_when_gone

# What a client may ask for (and the target then gets).
OFFERED = (
    p.CLIENT_LONG_PASSWORD
    | p.CLIENT_FOUND_ROWS
    | p.CLIENT_LONG_FLAG
    | p.CLIENT_CONNECT_WITH_DB
    | p.CLIENT_PROTOCOL_41
    | p.CLIENT_INTERACTIVE
    | p.CLIENT_TRANSACTIONS
    | p.CLIENT_SECURE_CONNECTION
    | p.CLIENT_MULTI_STATEMENTS
    | p.CLIENT_MULTI_RESULTS
    | p.CLIENT_PS_MULTI_RESULTS
    | p.CLIENT_PLUGIN_AUTH
    | p.CLIENT_CONNECT_ATTRS
    | p.CLIENT_PLUGIN_AUTH_LENENC
)
MAX_LONG_DATA = 1 << 24  # bytes of COM_STMT_SEND_LONG_DATA held per connection, to judge by

# Errors the proxy itself answers with.
ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED = 1045
ER_UNKNOWN_COM = 1047
ER_NO_SUCH_THREAD = 1094
ER_UNKNOWN_ERROR = 1105
ER_TABLEACCESS_DENIED = 1142  # how a refusal is reported (SQLSTATE 42000)
ER_NOT_SUPPORTED_YET = 1235
ER_UNKNOWN_STMT_HANDLER = 1243
ER_NOT_SUPPORTED_AUTH_MODE = 1251
ER_HANDSHAKE = 1043
CR_SERVER_LOST = 2013

_KILL_REFUSED = (
    "hoop: KILL is answered by the proxy itself: it takes `KILL QUERY <id>` of one of your "
    "own connections through it, alone in a query, and nothing else"
)
_LAST_STATEMENT = 0xFFFFFFFF  # MariaDB: the statement prepared last on the connection

# Live client connections by the thread id they were given, for a KILL QUERY on another one.
_LIVE: dict[int, _Connection] = {}
_next_id = secrets.randbelow(1 << 24) + (1 << 20)


def _new_id() -> int:
    global _next_id
    _next_id = _next_id + 1 if _next_id < 0x7FFFFFFF else 1 << 20
    return _next_id


@dataclass
class _Prepared:
    """A statement prepared on the target, as the proxy judges its executions."""

    sql: str
    problem: str | None  # why its text cannot be read
    params: int
    placeholders: list[int]
    text_columns: frozenset[int]  # its columns described as strings (masked)
    types: list[tuple[int, bool]] = field(default_factory=list)
    long_data: dict[int, bytes] = field(default_factory=dict)
    long_problem: str | None = None


class _Refusal(Exception):
    """The client's handshake is answered with an error and the connection ends."""

    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.sqlstate = sqlstate


class _Connection:
    """One client connection, from its handshake to its end."""

    def __init__(
        self, host: ProxyHost, reader: Any, writer: Any, password_sha256: str | None
    ) -> None:
        self.host = host
        self.reader = reader
        self.writer = writer
        self.password_sha256 = password_sha256
        self.up: Upstream | None = None
        self.id = _new_id()
        self.seq = 0
        self.out: list[bytes] = []
        self.statements: dict[int, _Prepared] = {}
        self.long_held = 0  # bytes of long data held for all statements (MAX_LONG_DATA)

    # -- packets to the client -------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Queue a packet for the client (sent by flush: one write per batch of rows)."""
        data, self.seq = p.frame(payload, self.seq)
        self.out.append(data)

    async def flush(self) -> None:
        if self.out:
            data, self.out = b"".join(self.out), []
            self.writer.write(data)
        await self.writer.drain()

    def error(self, code: int, sqlstate: str, message: str) -> None:
        self.send(p.err(code, sqlstate, message))

    async def fatal(self, code: int, sqlstate: str, message: str) -> None:
        self.error(code, sqlstate, message)
        with contextlib.suppress(Exception):
            await self.flush()

    async def receive(self, *, limit: int = p.MAX_PACKET) -> bytes:
        seq, payload = await p.read_packet(self.reader, limit=limit)
        self.seq = (seq + 1) & 0xFF
        return payload

    def upstream(self) -> Upstream:
        assert self.up is not None
        return self.up

    # -- the handshake ---------------------------------------------------------------------

    async def serve(self) -> None:
        target = self.host.target
        try:
            up = self.up = await Upstream.greet(target)
        except TargetError as exc:
            await self.fatal(ER_UNKNOWN_ERROR, "HY000", str(exc))
            return
        try:
            try:
                await self.handshake(up)
            except _Refusal as exc:
                await self.fatal(exc.code, exc.sqlstate, str(exc))
                return
            _LIVE[self.id] = self
            await self.loop()
        finally:
            _LIVE.pop(self.id, None)
            await self.upstream().close()

    async def handshake(self, up: Upstream) -> None:
        scramble = h.new_scramble()
        offered = OFFERED & up.greeting.capabilities
        self.send(
            h.greeting(
                version=up.greeting.version,
                thread_id=self.id,
                capabilities=offered,
                status=up.greeting.status,
                scramble=scramble,
            )
        )
        await self.flush()
        response = h.parse_response(await self.receive(limit=1 << 16))
        if response.ssl_request:
            raise _Refusal(
                ER_HANDSHAKE,
                "08S01",
                "hoop: the proxy offers no TLS (the client's leg is loopback, then SSH): "
                "connect without it (ssl-mode=DISABLED)",
            )
        if not response.capabilities & p.CLIENT_SECURE_CONNECTION:
            raise _Refusal(ER_HANDSHAKE, "08S01", "hoop: the client's authentication is too old")
        await self.authenticate(response, scramble)
        capabilities = response.capabilities & offered
        charset = (
            response.charset if response.charset in h.UTF8MB4_COLLATIONS else h.UTF8MB4_GENERAL_CI
        )
        try:
            try:
                await up.login(capabilities, charset)
            except Gone:  # it waited too long for the client (connect_timeout): once more
                up = self.up = await Upstream.open(
                    self.host.target, capabilities=capabilities, charset=charset
                )
        except TargetError as exc:
            raise _Refusal(ER_UNKNOWN_ERROR, "HY000", str(exc)) from None
        await self.first_database(response.database)
        self.send(p.ok(status=up.status))
        await self.flush()

    async def authenticate(self, response: h.Response, scramble: bytes) -> None:
        if self.password_sha256 is None:
            return  # hoopctl proxy --no-password: any local client is let in
        if response.plugin == h.CLEAR:
            given = response.auth
        elif response.capabilities & p.CLIENT_PLUGIN_AUTH:
            self.send(h.auth_switch(h.CLEAR, scramble))
            await self.flush()
            given = await self.receive(limit=1024)
        else:
            raise _Refusal(
                ER_NOT_SUPPORTED_AUTH_MODE,
                "08004",
                "hoop: the client cannot switch authentication plugins "
                "(the proxy asks for mysql_clear_password)",
            )
        given = given[:-1] if given.endswith(b"\0") else given
        digest = hashlib.sha256(given).hexdigest()
        if not hmac.compare_digest(digest, self.password_sha256):
            raise _Refusal(
                ER_ACCESS_DENIED,
                "28000",
                "hoop: access denied: give the one-time password hoopctl proxy printed",
            )

    async def first_database(self, name: bytes) -> None:
        """The database the client named at connect: none, the target's name or its database
        is where the broker connects; another is judged and entered as COM_INIT_DB is."""
        target = self.host.target
        text = name.decode("utf-8", "replace")
        if not name or text in (target.name, target.database):
            return
        problem = self.init_db_problem(name)
        sql = _use(text)
        judgement = await self.host.judge(sql, unknown=problem)
        if not judgement.allowed:
            raise _Refusal(ER_DBACCESS_DENIED, "42000", judgement.refusal)
        await self.look_up(judgement.texts)
        up = self.upstream()
        up.command(bytes((p.COM_INIT_DB,)) + name)
        await up.drain()
        answer = await up.read()
        if p.is_err(answer):
            error = p.parse_err(answer)
            shown = await self.host.error_fields(
                up, sql, {"M": error.message, "C": error.sqlstate or "HY000"}
            )
            message = shown.get("M", "")
            await self.host.done(
                judgement, 0, rows=0, masked={}, notes=(), error=f"ERROR {error.code}: {message}"
            )
            raise _Refusal(error.code, error.sqlstate, message)
        await self.host.done(judgement, 0, rows=0, masked={}, notes=(), error=None)
        up.status = p.parse_ok(answer).status

    # -- commands --------------------------------------------------------------------------

    async def loop(self) -> None:
        handlers = {
            p.COM_QUERY: self.query,
            p.COM_INIT_DB: self.init_db,
            p.COM_PING: self.ping,
            p.COM_STMT_PREPARE: self.prepare,
            p.COM_STMT_EXECUTE: self.execute,
            p.COM_STMT_SEND_LONG_DATA: self.long_data,
            p.COM_STMT_CLOSE: self.close_statement,
            p.COM_STMT_RESET: self.reset_statement,
        }
        while True:
            try:
                payload = await self.receive()
            except EOFError:
                return
            command = payload[0] if payload else -1
            if command == p.COM_QUIT:
                return
            handler = handlers.get(command)
            try:
                if handler is None:
                    self.error(
                        ER_UNKNOWN_COM,
                        "08S01",
                        f"hoop: command 0x{max(command, 0):02x} is not taken through the proxy",
                    )
                else:
                    await handler(payload)
            except Lost as exc:
                await self.fatal(
                    CR_SERVER_LOST,
                    "HY000",
                    f"hoop: the connection to the database was lost ({exc})",
                )
                return
            await self.flush()
            if command in (p.COM_QUERY, p.COM_STMT_EXECUTE, p.COM_INIT_DB):
                # After statements that may change how the server reads text (character
                # set, sql_mode): read the settings back; if they moved, nothing more runs.
                drift = await self.host.settled(self.upstream())
                if drift is not None:
                    await self.fatal(
                        ER_TABLEACCESS_DENIED,
                        "42000",
                        f"hoop: stopped: {drift}; the broker cannot judge what follows",
                    )
                    return

    async def look_up(self, texts: tuple[str, ...]) -> None:
        """What masking must know of each statement, while the target is idle."""
        if self.host.masks:
            for text in texts:
                await self.host.prepare(self.upstream(), text)

    def refuse(self, message: str) -> None:
        self.error(ER_TABLEACCESS_DENIED, "42000", message)

    async def relay(self, sql: str, judgement: Any, **options: Any) -> None:
        await Relay(
            self.host, self.upstream(), self.send, self.flush, sql, judgement, **options
        ).run()

    async def forward(self, payload: bytes) -> None:
        up = self.upstream()
        up.command(payload)
        try:
            await up.drain()
        except OSError as exc:
            raise Lost(str(exc)) from None

    async def answer(self) -> bytes:
        try:
            return await self.upstream().read()
        except (EOFError, OSError, p.ProtocolError) as exc:
            raise Lost(str(exc) or "the connection ended") from None

    async def query(self, payload: bytes) -> None:
        sql, problem = _text(payload[1:], "the statement")
        if lexer.has_kill(sql):
            await self.kill(sql)
            return
        if lexer.names_utf8mb4(sql):
            # The session is utf8mb4 already (a collation asked for at connect is kept): run
            # nothing. The policy refuses any SET NAMES, which drivers send at connect.
            self.send(p.ok(status=self.upstream().status))
            return
        judgement = await self.host.judge(sql, unknown=problem)
        if not judgement.allowed:
            self.refuse(judgement.refusal)
            return
        await self.look_up(judgement.texts)
        await self.forward(payload)
        await self.relay(sql, judgement)

    async def kill(self, sql: str) -> None:
        """KILL QUERY of another of the user's connections through a proxy: its statement is
        stopped on the target (KILL QUERY of its own thread there). Any other KILL is refused:
        the broker's credential might stop other sessions of the target."""
        thread = lexer.kill_query(sql)
        if thread is None:
            await self.host.answered(sql, "KILL", refused=_KILL_REFUSED)
            self.refuse(_KILL_REFUSED)
            return
        live = _LIVE.get(thread)
        if live is None or live.host.user != self.host.user:
            unknown = f"Unknown thread id: {thread}"
            await self.host.answered(sql, "KILL", refused=unknown)
            self.error(ER_NO_SUCH_THREAD, "HY000", unknown)
            return
        if live is not self and live.up is not None:
            await live.up.cancel()
        await self.host.answered(sql, "KILL")
        self.send(p.ok(status=self.upstream().status))

    async def init_db(self, payload: bytes) -> None:
        name = payload[1:]
        sql = _use(name.decode("utf-8", "replace"))
        judgement = await self.host.judge(sql, unknown=self.init_db_problem(name))
        if not judgement.allowed:
            self.refuse(judgement.refusal)
            return
        await self.look_up(judgement.texts)  # masking forgets what it knew of the old one
        await self.forward(payload)
        await self.relay(sql, judgement)

    @staticmethod
    def init_db_problem(name: bytes) -> str | None:
        _, problem = _text(name, "the database name")
        if problem is None and (b"\0" in name or not name.strip()):
            problem = "the database name is empty or holds a NUL"
        return problem

    async def ping(self, payload: bytes) -> None:
        await self.forward(payload)
        self.send(await self.answer())

    # -- prepared statements -----------------------------------------------------------------

    async def prepare(self, payload: bytes) -> None:
        """Prepare on the target (nothing runs): the columns a rule masks are described as
        strings already, as they will be in each execution's result."""
        sql, problem = _text(payload[1:], "the statement")
        up = self.upstream()
        if self.host.masks:
            await self.host.prepare(up, sql)
        await self.forward(payload)
        first = await self.answer()
        if p.is_err(first):
            error = p.parse_err(first)
            shown = await self.host.error_fields(
                up, sql, {"M": error.message, "C": error.sqlstate or "HY000"}
            )
            self.error(error.code, error.sqlstate, shown.get("M", ""))
            return
        if not p.is_ok(first) or len(first) < 12:
            raise Lost("an unexpected answer to COM_STMT_PREPARE")
        cur = p.Cursor(first, 1)
        statement_id, columns, params = cur.int(4), cur.int(2), cur.int(2)
        self.send(first)
        for _ in range(params + 1 if params else 0):  # their definitions, then EOF
            self.send(await self.answer())
        described = [v.parse_column(await self.answer()) for _ in range(columns)]
        text_columns: frozenset[int] = frozenset()
        if described and self.host.masks:
            mask = await self.host.plan(up, sql, [c.name for c in described])
            text_columns = frozenset(mask.rule_columns)
        for i, column in enumerate(described):
            self.send(column.as_text() if i in text_columns else column.payload)
        if columns:
            self.send(await self.answer())  # EOF
        replaced = self.statements.get(statement_id)
        if replaced is not None:
            self.forget_long_data(replaced)
        self.statements[statement_id] = _Prepared(
            sql, problem, params, lexer.placeholders(sql), text_columns
        )

    def statement(self, payload: bytes) -> _Prepared | None:
        """The statement a COM_STMT_* names. The id "the statement prepared last" is not
        taken: what the server means by it (after a prepare it refused) may differ from what
        the proxy would."""
        statement_id = int.from_bytes(payload[1:5], "little")
        if statement_id == _LAST_STATEMENT:
            return None
        return self.statements.get(statement_id)

    async def execute(self, payload: bytes) -> None:
        prepared = self.statement(payload)
        if prepared is None or len(payload) < 10:
            self.error(
                ER_UNKNOWN_STMT_HANDLER,
                "HY000",
                "Unknown prepared statement handler given to mysqld_stmt_execute",
            )
            return
        execute = v.parse_execute(payload, prepared.params, prepared.types, prepared.long_data)
        if execute.flags & 0x07:
            self.error(
                ER_NOT_SUPPORTED_YET,
                "42000",
                "hoop: server-side cursors are not taken through the proxy (execute without one)",
            )
            return
        sql, problem = prepared.sql, prepared.problem or execute.problem or prepared.long_problem
        if problem is None:
            sql, problem = v.bind(prepared.sql, prepared.placeholders, execute.values)
        if lexer.has_kill(prepared.sql):
            self.refuse(_KILL_REFUSED)
            return
        judgement = await self.host.judge(sql, unknown=problem)
        if not judgement.allowed:
            self.refuse(judgement.refusal)  # the target keeps the long data: so does the proxy
            return
        await self.look_up(judgement.texts)
        await self.forward(payload)
        prepared.types = execute.types  # the target keeps them once it has them, not before
        # The target forgets the long data with each execution, whatever its outcome.
        self.forget_long_data(prepared)
        await self.relay(sql, judgement, binary=True, described=prepared.text_columns)

    async def long_data(self, payload: bytes) -> None:
        """A parameter's value in pieces (no answer): kept to bind it when it runs. For a
        statement the proxy does not know it is not sent on."""
        prepared = self.statement(payload)
        if prepared is None:
            return
        if len(payload) >= 7:
            param = int.from_bytes(payload[5:7], "little")
            piece = payload[7:]
            if prepared.long_problem or self.long_held + len(piece) > MAX_LONG_DATA:
                # Held per connection, not per statement: many statements must not add up.
                prepared.long_problem = "parameters sent in pieces are too long to be judged"
            else:
                prepared.long_data[param] = prepared.long_data.get(param, b"") + piece
                self.long_held += len(piece)
        await self.forward(payload)

    def forget_long_data(self, prepared: _Prepared) -> None:
        self.long_held -= sum(map(len, prepared.long_data.values()))
        prepared.long_data, prepared.long_problem = {}, None

    async def close_statement(self, payload: bytes) -> None:
        prepared_id = int.from_bytes(payload[1:5], "little")
        prepared = self.statements.pop(prepared_id, None)
        if prepared is not None:
            self.forget_long_data(prepared)
            await self.forward(payload)  # no answer

    async def reset_statement(self, payload: bytes) -> None:
        prepared = self.statement(payload)
        if prepared is None:
            self.error(
                ER_UNKNOWN_STMT_HANDLER,
                "HY000",
                "Unknown prepared statement handler given to mysqld_stmt_reset",
            )
            return
        self.forget_long_data(prepared)
        await self.forward(payload)
        self.send(await self.answer())

    async def cancel(self) -> None:
        if self.up is not None:
            await self.up.cancel()

    async def abandon(self) -> None:
        if self.up is not None:
            await self.up.abandon()


def _text(data: bytes, what: str) -> tuple[str, str | None]:
    """DATA as text, and why it cannot be read (not UTF-8: the server's utf8mb4)."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), f"{what} is not valid UTF-8"


def _use(name: str) -> str:
    return "USE `" + name.replace("`", "``") + "`"


async def serve_client(
    host: ProxyHost, reader: Any, writer: Any, *, password_sha256: str | None
) -> None:
    """Serve one native client on READER/WRITER until it leaves. A client that breaks the
    protocol is told why and the connection ends."""
    conn = _Connection(host, reader, writer, password_sha256)
    try:
        async with abandoned_when_gone(host, conn.abandon):
            await conn.serve()
    except p.ProtocolError as exc:
        await conn.fatal(ER_HANDSHAKE, "08S01", f"hoop: protocol violation: {exc}")
    except (EOFError, ConnectionError, asyncio.IncompleteReadError):
        pass
