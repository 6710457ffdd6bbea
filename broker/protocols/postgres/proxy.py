"""The server side of PostgreSQL's protocol v3 for a native client (`hoopctl proxy`).

The client (psql, a driver) talks to the broker as to a PostgreSQL server. Every statement is
judged before anything of it reaches the target: the whole text of a simple Query, and each
Execute of the extended protocol with its parameters bound into the text. Extended messages
are grouped up to each Sync (or Flush), and a group is sent on only when every Execute in it
is allowed (or approved): a refusal answers the group with one error, and nothing of it runs.
The target's answers pass back through; rows are masked on the way, and a column that a rule
masks is described to the client as text. What the session decides (policy, approvals,
masking plans, audit, recording) is asked of the host (broker.protocols.sql.ProxyHost)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from broker.pglast_guard import parse_sql
from broker.protocols.base import TargetError
from broker.protocols.postgres import messages as m
from broker.protocols.postgres import values as v
from broker.protocols.postgres.copy_out import CopyNotMasked, CopyOut, copy_out
from broker.protocols.postgres.upstream import Upstream
from broker.protocols.sql import (
    Cut,
    Judgement,
    ProxyHost,
    RowMask,
    StatementError,
    abandoned_when_gone,
)

MASK_BATCH = 500
MAX_CLIENT_MESSAGE = 64 << 20  # one message from the client (COPY rows, a Bind's values)
MAX_GROUP_BYTES = 64 << 20  # messages held up to a Sync
MAX_GROUP_MESSAGES = 100_000
REFUSED = "42501"  # insufficient_privilege: how a refusal is reported
NOT_MASKED_YET = "0A000"  # feature_not_supported

# Live client connections by their BackendKeyData, for a CancelRequest on another connection.
_LIVE: dict[tuple[int, int], _Connection] = {}


@dataclass
class _Statement:
    sql: str
    oids: tuple[int, ...]
    columns: list[m.Column] | None = None  # as the server described them
    text_columns: frozenset[int] = frozenset()  # described to the client as text (masked)


@dataclass
class _Portal:
    statement: _Statement
    bind: m.Bind
    sql: str  # the statement with its parameters bound: what was judged
    problem: str | None  # why the parameters could not all be bound
    columns: list[m.Column] | None = None
    text_columns: frozenset[int] = frozenset()
    judgement: Judgement | None = None  # once allowed: a suspended portal runs on
    spent: tuple[int, int] = (0, 0)  # rows and bytes sent so far (its Executes add up)

    def description(self) -> tuple[list[m.Column] | None, frozenset[int]]:
        if self.columns is not None:
            return self.columns, self.text_columns
        return self.statement.columns, self.statement.text_columns


@dataclass
class _Run:
    """One statement whose answers are being relayed."""

    sql: str
    judgement: Judgement
    index: int = 0  # into the judgement's statements (a simple Query may hold several)
    columns: list[m.Column] | None = None
    text_columns: frozenset[int] = frozenset()
    formats: tuple[int, ...] = ()
    mask: RowMask | None = None
    rows: int = 0
    notes: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    copy: CopyOut | None = None  # a COPY TO STDOUT whose rows are masked
    copy_header: bool = False  # its CSV header line is still to come
    # The actor's result budget: rows and bytes let through, and the budget that cut it.
    kept: int = 0
    kept_bytes: int = 0
    dropped: int = 0
    cut: tuple[str, int] | None = None
    rule: str | None = None  # the rows_over rule that cut it
    # A rows_over rule with action review: rows read ahead, not yet sent; then whether the
    # hold was decided, and why the result was withheld when it was not approved.
    held: list[m.Message] = field(default_factory=list)
    bulk_decided: bool = False
    withheld: str | None = None
    bulk_from: int = 0  # `kept` when this run began (a portal's earlier Executes counted)

    @property
    def truncated(self) -> dict[str, object] | None:
        if self.cut is None:
            return None
        found: dict[str, object] = {"budget": self.cut[0], "limit": self.cut[1], "rows": self.kept}
        if self.rule is not None:
            found["rule"] = self.rule
        return found


def bind_parameters(sql: str, oids: tuple[int, ...], bind: m.Bind) -> tuple[str, str | None]:
    """SQL with its $n parameters replaced by their values as literals, for judging; and why
    that could not be done (a value the broker cannot read), or None."""
    if not bind.values:
        return sql, None
    try:
        trees = parse_sql(sql)
    except Exception:
        return sql, None  # unparsable or too complex: judged unknown anyway
    refs = sorted(
        {(n.location, n.number) for t in trees for n in _nodes(t) if type(n).__name__ == "ParamRef"}
    )
    text = sql.encode()  # locations count bytes
    pieces: list[bytes] = []
    at = 0
    for location, number in refs:
        if location is None or not 1 <= number <= len(bind.values):
            return sql, f"parameter ${number} has no value"
        raw = bind.values[number - 1]
        oid = oids[number - 1] if number - 1 < len(oids) else 0
        try:
            value = None if raw is None else v.read_value(raw, oid, bind.param_format(number - 1))
        except v.Unreadable as exc:
            return sql, f"parameter ${number} cannot be read ({exc})"
        token = f"${number}".encode()
        if location < at or text[location : location + len(token)] != token:
            return sql, "a parameter is not where the parser says"
        pieces += [text[at:location], v.literal(value).encode()]
        at = location + len(token)
    pieces.append(text[at:])
    return b"".join(pieces).decode(), None


def _nodes(node: Any) -> Iterator[Any]:
    from pglast import ast

    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            yield item
            stack.extend(getattr(item, name) for name in item)
        elif isinstance(item, tuple | list):
            stack.extend(item)


def copies_out(sql: str) -> bool:
    """Whether SQL holds a COPY … TO STDOUT (its rows are not masked through the proxy yet)."""
    try:
        trees = parse_sql(sql)
    except Exception:
        return "copy" in sql.lower()
    return any(type(n).__name__ == "CopyStmt" and not n.is_from for t in trees for n in _nodes(t))


class _Failed(Exception):
    """The server refused a message of the group: it skips the rest up to the Sync."""


class _Connection:
    """One client connection, from its startup to its end."""

    def __init__(
        self, host: ProxyHost, reader: Any, writer: Any, password_sha256: str | None
    ) -> None:
        self.host = host
        self.reader = reader
        self.writer = writer
        self.password_sha256 = password_sha256
        self.up: Upstream | None = None
        self.statements: dict[str, _Statement] = {}
        self.portals: dict[str, _Portal] = {}
        self.status = b"I"
        self.at_sync = True  # the target has answered a Sync: it may run our own queries
        self.skipping = False  # the target skips messages until the client's next Sync
        self.key = (secrets.randbits(31), secrets.randbits(31))
        # What masking looked up before this input ran may no longer hold: an earlier
        # statement of it (or of the sequence since the last Sync) changed the catalog or the
        # session.
        self.stale = False
        self.out: list[bytes] = []  # answers not yet written (see send)
        self.held = 0

    # -- the start ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        # Held until the next flush: one write (one SSH packet) per answer, not per message.
        self.out.append(data)
        self.held += len(data)
        if self.held >= 1 << 16:
            self.writer.write(b"".join(self.out))
            self.out.clear()
            self.held = 0

    async def flush(self) -> None:
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
            self.held = 0
        await self.writer.drain()

    async def fatal(self, message: str, sqlstate: str) -> None:
        self.send(m.error(message, sqlstate, severity="FATAL"))
        with contextlib.suppress(Exception):
            await self.flush()

    async def startup(self) -> dict[str, str] | None:
        """The client's startup parameters, after SSL/GSS requests are declined; None for a
        CancelRequest (done) or a startup the proxy does not take (told)."""
        for _ in range(3):
            body = await m.read_startup(self.reader)
            code, params = m.parse_startup(body)
            if code in (m.SSL_REQUEST, m.GSSENC_REQUEST):
                # Loopback to hoopctl, then SSH to the broker: no TLS on this leg.
                self.send(b"N")
                await self.flush()
                continue
            if code == m.CANCEL_REQUEST:
                live = _LIVE.get(m.parse_cancel(body))
                if live is not None and live.host.user == self.host.user:
                    await live.cancel()
                return None
            if code != m.PROTOCOL_3:
                await self.fatal(
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: the proxy "
                    "speaks PostgreSQL protocol 3.0",
                    "0A000",
                )
                return None
            return params
        await self.fatal("too many SSL or GSS requests", "08P01")
        return None

    async def authenticate(self) -> bool:
        if self.password_sha256 is None:
            return True
        self.send(m.authentication(3))  # cleartext: the leg is loopback, then SSH
        await self.flush()
        reply = await m.read_message(self.reader, limit=1024)
        given = reply.body[:-1] if reply.body.endswith(b"\0") else reply.body
        digest = hashlib.sha256(given).hexdigest()
        if reply.type != b"p" or not hmac.compare_digest(digest, self.password_sha256):
            await self.fatal(
                "password authentication failed: give the one-time password hoopctl proxy printed",
                "28P01",
            )
            return False
        return True

    async def cancel(self) -> None:
        if self.up is not None:
            await self.up.cancel()

    async def abandon(self) -> None:
        if self.up is not None:
            await self.up.abandon()

    # -- the session -------------------------------------------------------------------

    async def serve(self) -> None:
        params = await self.startup()
        if params is None or not await self.authenticate():
            return
        try:
            self.up = await Upstream.open(self.host.target)
        except TargetError as exc:
            await self.fatal(str(exc), "08006")
            return
        _LIVE[self.key] = self
        try:
            self.send(m.authentication(0))
            for name, value in self.up.server_params.items():
                self.send(m.parameter_status(name, value))
            self.send(m.backend_key_data(*self.key))
            self.status = self.up.status
            self.send(m.ready_for_query(self.status))
            await self.flush()
            await self.loop()
        finally:
            _LIVE.pop(self.key, None)
            await self.up.close()

    async def loop(self) -> None:
        group: list[m.Message] = []
        held = 0
        while True:
            try:
                message = await m.read_message(self.reader, limit=MAX_CLIENT_MESSAGE)
            except EOFError:
                return
            kind = message.type
            if kind == b"X":
                return
            held += len(message.body)
            if len(group) >= MAX_GROUP_MESSAGES or held > MAX_GROUP_BYTES:
                await self.fatal("hoop: too many messages before a Sync", "54000")
                return
            if kind == b"Q" and (self.skipping or not self.at_sync):
                # The target is inside an extended-protocol sequence (or skipping to its Sync
                # after an error): a simple Query now would be lost or run out of step.
                await self.fatal("hoop: a simple Query inside an unfinished extended-protocol "
                                 "sequence: send Sync first", "08P01")  # fmt: skip
                return
            if kind == b"Q":
                await self.simple(m.parse_query(message.body))
                if await self.drifted():
                    return
            elif kind in (b"P", b"B", b"D", b"E", b"C"):
                group.append(message)
            elif kind in (b"S", b"H"):
                group.append(message)
                await self.extended(group, synced=kind == b"S")
                group, held = [], 0
                if self.at_sync and await self.drifted():
                    return
            elif kind in (b"d", b"c", b"f"):
                continue  # copy messages outside a copy: the server ignores them too
            else:
                await self.fatal(f"unexpected message type {kind!r}", "08P01")
                return

    async def drifted(self) -> bool:
        """After statements that may change how the server reads text: whether it now reads
        it otherwise than the broker (the connection is then ended: nothing more runs)."""
        drift = await self.host.settled(self.upstream())
        if drift is None:
            return False
        await self.fatal(f"hoop: stopped: {drift}; the broker cannot judge what follows", "08006")
        return True

    def refuse(self, message: str, sqlstate: str, *, synced: bool) -> None:
        self.send(m.error(message, sqlstate))
        if synced:
            self.send(m.ready_for_query(self.status))

    async def prepare(self, sql: str) -> None:
        if self.at_sync:  # mid-sequence the target would take our query as the client's
            await self.host.prepare(self.up, sql)  # type: ignore[arg-type]

    # -- simple query ------------------------------------------------------------------

    async def simple(self, sql: str) -> None:
        if self.at_sync:  # lookups are made afresh; mid-sequence what was stale stays so
            self.stale = False
        copy = None
        if self.host.masks:
            try:
                copy = copy_out(sql)
            except CopyNotMasked as exc:
                self.refuse(f"hoop: {exc}; nothing was run", NOT_MASKED_YET, synced=True)
                await self.flush()
                return
        judgement = await self.host.judge(sql)
        if not judgement.allowed:
            self.refuse(judgement.refusal, REFUSED, synced=True)
            await self.flush()
            return
        for text in judgement.texts:
            await self.prepare(text)
        runs = [_Run(text, judgement, i) for i, text in enumerate(judgement.texts)]
        if copy is not None:
            described = await self.copy_mask(copy)
            if described is None:
                self.refuse(_COPY_OUT, NOT_MASKED_YET, synced=True)
                await self.flush()
                return
            run = runs[0]
            run.mask, names = described
            run.copy, run.copy_header = copy, copy.header
            run.columns = [m.Column(name) for name in names]
        up = self.upstream()
        up.send(m.query(sql))
        await up.drain()
        try:
            for i in range(1 << 30):
                # More results than statements split: the rest is the whole text (opaque).
                run = runs[i] if i < len(runs) else _Run(sql, judgement, len(runs) - 1)
                if await self.answer_statement(run):
                    return
        except _Failed:
            await self.until_ready()

    async def answer_statement(self, run: _Run) -> bool:
        """Relay one statement's answers of a simple Query; True at ReadyForQuery."""
        pending: list[list[bytes | None]] = []
        while True:
            message = await self.next_answer(run, pending)
            kind = message.type
            if kind == b"Z":
                self.ready(message)
                await self.flush()
                return True
            if kind == b"T":
                columns = m.parse_row_description(message.body)
                shown, run.text_columns, run.mask = await self.describe(run.sql, columns)
                run.columns = columns
                self.send(m.row_description(shown))
            elif kind == b"D":
                await self.take_row(run, message, pending)
            elif kind in (b"C", b"I"):
                self.release_held(run, pending)
                self.send_rows(run, pending)
                self.end_statement(run, message)
                await self.finish(run)
                return False
            elif kind == b"G":
                self.pass_on(message)
                await self.copy_in()
            elif kind == b"H" and self.host.masks and run.copy is None:
                raise EOFError  # refused before it ran (copy_out); never pass rows unmasked
            elif kind == b"d" and run.copy is not None:
                self.copy_row(run, message, pending)
            else:
                self.send_rows(run, pending)
                self.pass_on(message)

    # -- extended query ----------------------------------------------------------------

    async def extended(self, group: list[m.Message], *, synced: bool) -> None:
        if self.skipping:
            # The target skips everything up to the Sync after its error: nothing here runs.
            await self.forward(group, synced=synced)
            if synced:
                self.skipping = False
                await self.until_ready()
            return
        statements = dict(self.statements)
        portals = dict(self.portals)
        steps: list[tuple[str, Any]] = []
        to_prepare: list[str] = []
        # What the group would make of the statements and portals, if the target takes every
        # message of it: used to judge it. The proxy's own state changes only as the target
        # confirms each Parse, Bind and Close (answer_step): a message the target refuses (a
        # Parse of a name that exists) must not change what the proxy believes will run.
        unknown: str | None = None
        for message in group:
            kind = message.type
            if kind == b"P":
                name, sql, oids = m.parse_parse(message.body)
                statement = _Statement(sql, oids)
                statements[name] = statement
                steps.append(("parse", (name, statement)))
            elif kind == b"B":
                bind = m.parse_bind(message.body)
                found = statements.get(bind.statement)
                if found is None:
                    unknown = unknown or f"prepared statement {bind.statement!r}"
                    break
                sql, problem = bind_parameters(found.sql, found.oids, bind)
                portal = _Portal(found, bind, sql, problem)
                portals[bind.portal] = portal
                steps.append(("bind", (bind.portal, portal)))
            elif kind == b"D":
                what, name = m.parse_target(message.body)
                item = statements.get(name) if what == b"S" else portals.get(name)
                if item is None:
                    unknown = unknown or f"{'statement' if what == b'S' else 'portal'} {name!r}"
                    break
                to_prepare.append(item.sql)
                steps.append(("describe " + what.decode(), item))
            elif kind == b"E":
                name, _ = m.parse_execute(message.body)
                found_portal = portals.get(name)
                if found_portal is None:
                    unknown = unknown or f"portal {name!r}"
                    break
                steps.append(("execute", found_portal))
            elif kind == b"C":
                what, name = m.parse_target(message.body)
                (statements if what == b"S" else portals).pop(name, None)
                steps.append(("close", (what, name)))
        if unknown is not None:
            # A cursor opened with SQL DECLARE, a statement of SQL PREPARE, or one the target
            # refused: the proxy runs through the protocol only what it has judged.
            self.refuse(
                f"hoop: unknown {unknown}: through the proxy, the protocol runs only "
                "statements and portals made with Parse and Bind",
                "26000",
                synced=synced,
            )
            await self.flush()
            return
        # Every Execute is judged before anything of the group goes to the target.
        for what, portal in steps:
            if what != "execute" or portal is None or portal.judgement is not None:
                continue
            if self.host.masks and copies_out(portal.sql):
                self.refuse(_COPY_EXTENDED, NOT_MASKED_YET, synced=synced)
                await self.flush()
                return
            judgement = await self.host.judge(portal.sql, unknown=portal.problem)
            if not judgement.allowed:
                self.refuse(judgement.refusal, REFUSED, synced=synced)
                await self.flush()
                return
            portal.judgement = judgement
            to_prepare.append(portal.sql)
        if self.at_sync:  # lookups are made afresh; mid-sequence what was stale stays so
            self.stale = False
        for sql in dict.fromkeys(to_prepare):
            await self.prepare(sql)
        await self.forward(group, synced=synced)
        try:
            for what, item in steps:
                await self.answer_step(what, item)
        except _Failed:
            if not synced:
                self.skipping = True
        if synced:
            await self.until_ready()
        else:
            await self.flush()

    async def forward(self, group: list[m.Message], *, synced: bool) -> None:
        up = self.upstream()
        up.send(b"".join(m.frame(message.type, message.body) for message in group))
        await up.drain()
        if not synced:
            self.at_sync = False

    async def answer_step(self, what: str, item: Any) -> None:
        """Relay the target's answer to one message of a group."""
        if what == "execute":
            await self.answer_execute(item)
            return
        message = await self.next_answer(None, [])
        if what == "parse" and message.type == b"1":
            name, statement = item
            self.statements[name] = statement
        elif what == "bind" and message.type == b"2":
            name, portal = item
            self.portals[name] = portal
        elif what == "close" and message.type == b"3":
            kind, name = item
            (self.statements if kind == b"S" else self.portals).pop(name, None)
        if what == "describe S" and message.type == b"t":
            if item is not None:
                # The server's parameter types, where Parse left them to it: a Bind's binary
                # values are read by these.
                described = m.parse_parameter_description(message.body)
                given = item.oids
                item.oids = tuple(
                    given[i] if i < len(given) and given[i] else oid
                    for i, oid in enumerate(described)
                )
            self.pass_on(message)
            message = await self.next_answer(None, [])
        if what.startswith("describe") and message.type == b"T" and item is not None:
            columns = m.parse_row_description(message.body)
            shown, item.text_columns, _ = await self.describe(item.sql, columns)
            item.columns = columns
            self.send(m.row_description(shown))
        else:
            self.pass_on(message)

    async def answer_execute(self, portal: _Portal | None) -> None:
        if portal is None or portal.judgement is None:
            self.pass_on(await self.next_answer(None, []))  # the target's own error
            return
        run = _Run(portal.sql, portal.judgement)
        run.kept, run.kept_bytes = portal.spent
        run.bulk_from = run.kept
        run.columns, run.text_columns = portal.description()
        run.formats = portal.bind.result_formats
        if run.columns is not None:
            mask = await self.plan(run.sql, [c.name for c in run.columns])
            run.mask = mask if mask.active else None
        undescribed = run.columns is None and self.host.masks
        pending: list[list[bytes | None]] = []
        while True:
            message = await self.next_answer(run, pending)
            kind = message.type
            if kind == b"D":
                if undescribed:
                    # Rows of a statement the client never had described: every column is
                    # opaque (any rule masks it), and a masked value is sent as NULL.
                    width = len(m.parse_data_row(message.body))
                    run.mask = await self.plan("", [f"?column{i}?" for i in range(width)])
                    undescribed = False
                await self.take_row(run, message, pending)
            elif kind in (b"C", b"I", b"s"):
                self.release_held(run, pending)
                self.send_rows(run, pending)
                self.end_statement(run, message)
                portal.spent = (run.kept, run.kept_bytes)
                await self.finish(run)
                if kind != b"s":  # a suspended portal runs on without a new judgement
                    portal.judgement = None
                return
            elif kind == b"G":
                self.pass_on(message)
                await self.copy_in()
            elif kind == b"H" and self.host.masks:
                raise EOFError
            else:
                self.pass_on(message)

    # -- answers -----------------------------------------------------------------------

    async def copy_mask(self, copy: CopyOut) -> tuple[RowMask, list[str]] | None:
        """How the rows of COPY are masked: its query's columns, asked of the target (which is
        at a Sync: nothing of the client's is in flight); None when they cannot be known."""
        if not self.at_sync:
            return None
        await self.prepare(copy.select)
        try:
            result = await self.upstream().execute(
                f"SELECT * FROM ({copy.select}) AS hoop_copy LIMIT 0"  # noqa: S608 (judged)
            )
            async for _ in result.rows:
                pass
        except StatementError:
            return None
        return await self.plan(copy.select, result.columns), result.columns

    def copy_row(self, run: _Run, message: m.Message, pending: list[list[bytes | None]]) -> None:
        """One CopyData row of a masked COPY TO STDOUT (a CSV header passes as it is)."""
        assert run.copy is not None
        if run.copy_header:
            run.copy_header = False
            self.pass_on(message)
            return
        pending.append([message.body])
        if len(pending) >= MASK_BATCH:
            self.send_copy_rows(run, pending)

    def send_copy_rows(self, run: _Run, pending: list[list[bytes | None]]) -> None:
        copy, mask = run.copy, run.mask
        assert copy is not None and mask is not None
        rows: list[list[object]] = []
        for (data,) in pending:
            assert data is not None
            rows.append(list(copy.read_row(data) or []))
        run.rows += len(rows)
        width = len(run.columns or ())
        if any(len(row) != width for row in rows):
            # Not the shape the COPY's query was described with: nothing of it is shown.
            raise m.ProtocolError("a COPY row does not have the columns of its query")
        for row in mask.apply_batch(rows):
            self.send(m.frame(b"d", copy.write_row(list(row))))
        pending.clear()

    async def plan(self, sql: str, columns: list[str]) -> RowMask:
        return await self.host.plan(self.upstream(), sql, columns, opaque=self.stale)

    def upstream(self) -> Upstream:
        assert self.up is not None
        return self.up

    def pass_on(self, message: m.Message) -> None:
        self.send(m.frame(message.type, message.body))

    def ready(self, message: m.Message) -> None:
        self.status = message.body[:1]
        if self.status == b"I":
            self.portals.clear()  # portals end with their transaction
        self.at_sync = True
        self.pass_on(message)

    async def next_answer(self, run: _Run | None, pending: list[list[bytes | None]]) -> m.Message:
        """The target's next answer; notices pass on at once; an error is masked, sent, and
        ends the statement (raises _Failed)."""
        up = self.upstream()
        while True:
            message = await up.read()
            if message.type in (b"N", b"A", b"S"):
                if message.type == b"N":
                    fields = m.parse_fields(message.body)
                    shown = await self.host.error_fields(up, run.sql if run else "", fields)
                    self.send(m.fields(b"N", shown))
                else:
                    self.pass_on(message)
                continue
            if message.type != b"E":
                return message
            if run is not None:
                self.send_rows(run, pending)
            fields = m.parse_fields(message.body)
            shown = await self.host.error_fields(up, run.sql if run else "", fields)
            self.send(m.fields(b"E", shown))
            if run is not None:
                await self.finish(run, error=f"{fields.get('S', 'ERROR')}: {shown.get('M', '')}")
            await self.flush()
            raise _Failed

    async def until_ready(self) -> None:
        while True:
            try:
                message = await self.next_answer(None, [])
            except _Failed:
                continue
            if message.type == b"Z":
                self.ready(message)
                await self.flush()
                return
            if message.type in (b"T", b"D", b"d"):
                raise m.ProtocolError("the target sent rows nothing asked for")
            self.pass_on(message)

    async def describe(
        self, sql: str, columns: list[m.Column]
    ) -> tuple[list[m.Column], frozenset[int], RowMask | None]:
        """The columns as the client is told them (those a rule masks become text), and the
        mask for their rows (None when nothing in them is masked)."""
        mask = await self.plan(sql, [c.name for c in columns])
        masked = frozenset(mask.rule_columns)
        shown = [
            m.Column(c.name, c.table_oid, c.column_number, v.TEXT, -1, -1, c.format)
            if i in masked
            else c
            for i, c in enumerate(columns)
        ]
        return shown, masked, mask if mask.active else None

    def within_budget(self, run: _Run, size: int) -> bool:
        """Whether one more row (SIZE bytes) may go to the client under the actor's budget.
        Rows past it are read from the target and dropped (memory stays bounded; a cancel
        would abort an open transaction), and the statement's end says so."""
        if run.cut is None:
            limits = self.host.limits
            bulk = self.host.bulk_limit(run.sql) if run.mask and run.mask.rule_columns else None
            if bulk is not None and bulk[2] == "deny" and run.kept - run.bulk_from >= bulk[1]:
                run.cut = ("rows_over", bulk[1])
                run.rule = bulk[0]
            elif limits.max_rows is not None and run.kept >= limits.max_rows:
                run.cut = ("max_rows", limits.max_rows)
            elif limits.max_bytes is not None and run.kept_bytes + size > limits.max_bytes:
                run.cut = ("max_bytes", limits.max_bytes)
        if run.cut is not None:
            run.dropped += 1
            return False
        run.kept += 1
        run.kept_bytes += size
        return True

    def end_statement(self, run: _Run, message: m.Message) -> None:
        """The statement's CommandComplete (or PortalSuspended), after a warning when rows
        were held back, and then with the count of rows the client got."""
        if run.withheld is not None:
            self.warn_and_complete(message, f"{run.withheld}; no rows sent", 0)
            return
        if run.cut is None or run.dropped == 0:
            self.pass_on(message)
            return
        budget, limit = run.cut
        cut = Cut(budget, limit, run.kept, run.rule)
        self.warn_and_complete(message, f"hoop: {cut.text}", run.kept)

    def warn_and_complete(self, message: m.Message, notice: str, sent: int) -> None:
        """A WARNING notice, then MESSAGE, its row count made SENT for a SELECT or FETCH."""
        self.send(m.fields(b"N", {"S": "WARNING", "V": "WARNING", "C": "01000", "M": notice}))
        tag = m.parse_command_complete(message.body) if message.type == b"C" else ""
        verb = tag.split(" ", 1)[0]
        if verb in ("SELECT", "FETCH"):
            self.send(m.command_complete(f"{verb} {sent}"))
        else:
            self.pass_on(message)

    async def take_row(
        self, run: _Run, message: m.Message, pending: list[list[bytes | None]]
    ) -> None:
        """One DataRow: sent (masked), or, under a rows_over rule with action review, read
        ahead until it is clear whether the result goes past the limit; past it, nothing is
        sent until an approver approves (the client waits in the protocol)."""
        if run.withheld is not None:
            run.dropped += 1
            return
        bulk = None
        if not run.bulk_decided and run.mask is not None and run.mask.rule_columns:
            bulk = self.host.bulk_limit(run.sql)
        if bulk is None or bulk[2] != "review":
            self.row(run, message, pending)
            return
        run.held.append(message)
        if len(run.held) <= bulk[1]:
            return
        run.bulk_decided = True
        columns = [run.columns[i].name for i in run.mask.rule_columns] if run.columns else []
        run.withheld = await self.host.hold_bulk(run.sql, columns)
        held, run.held = run.held, []
        if run.withheld is None:
            for one in held:
                self.row(run, one, pending)

    def release_held(self, run: _Run, pending: list[list[bytes | None]]) -> None:
        """At the statement's end: rows read ahead that never reached the limit go out, and
        the rows of masked columns sent count against the session's rows_over rule (those
        of a result an approver approved do not)."""
        held, run.held = run.held, []
        for one in held:
            self.row(run, one, pending)
        approved = run.bulk_decided and run.withheld is None
        if run.mask is not None and run.mask.rule_columns and not approved:
            self.host.bulk_sent(run.sql, run.kept - run.bulk_from)

    def row(self, run: _Run, message: m.Message, pending: list[list[bytes | None]]) -> None:
        if not self.within_budget(run, len(message.body)):
            return
        if run.mask is None and not run.text_columns:
            run.rows += 1
            self.pass_on(message)
            return
        pending.append(m.parse_data_row(message.body))
        if len(pending) >= MASK_BATCH:
            self.send_rows(run, pending)

    def send_rows(self, run: _Run, rows: list[list[bytes | None]]) -> None:
        """Mask a batch of rows, send them, and empty the batch."""
        if not rows:
            return
        if run.copy is not None:
            self.send_copy_rows(run, rows)
            return
        run.rows += len(rows)
        columns = run.columns or []
        width = len(rows[0])
        formats = run.formats
        fmt = [
            formats[i] if len(formats) > 1 else (formats[0] if formats else 0) for i in range(width)
        ]
        oids = [columns[i].type_oid if i < len(columns) else 0 for i in range(width)]
        readable: list[list[object]] = []
        unreadable: set[int] = set()
        for row in rows:
            values: list[object] = []
            for i, cell in enumerate(row):
                try:
                    values.append(None if cell is None else v.read_value(cell, oids[i], fmt[i]))
                except v.Unreadable:
                    values.append(None)
                    unreadable.add(i)
            readable.append(values)
        mask = run.mask
        after = mask.apply_batch(readable) if mask is not None else [tuple(r) for r in readable]
        rule = frozenset(mask.rule_columns) if mask is not None else frozenset()
        scanned = frozenset(mask.detector_columns) if mask is not None else frozenset()

        def null(i: int) -> None:
            run.notes.add(columns[i].name if i < len(columns) else f"column {i + 1}")

        for row, before, masked in zip(rows, readable, after, strict=True):
            out: list[bytes | None] = []
            for i, cell in enumerate(row):
                if cell is None:
                    out.append(None)
                elif i in run.text_columns:  # described as text: any value is sent as text
                    if i in unreadable:
                        null(i)
                        out.append(None)
                    else:
                        out.append(v.text_bytes(masked[i], v.TEXT))
                elif i in rule:  # masked, but described to the client as its own type
                    null(i)
                    out.append(None)
                elif i in scanned and i in unreadable:
                    if oids[i] in v.NO_TEXT_INSIDE:
                        out.append(cell)
                    else:
                        null(i)
                        out.append(None)
                elif i in scanned and masked[i] != before[i]:
                    if oids[i] in v.TEXT_LIKE or oids[i] == v.JSONB:
                        out.append(v.text_bytes(masked[i], oids[i]))
                    else:  # a detector matched a number: its type cannot carry the mask
                        null(i)
                        out.append(None)
                else:
                    out.append(cell)
            self.send(m.data_row(out))
        rows.clear()

    async def finish(self, run: _Run, *, error: str | None = None) -> None:
        reads_only = run.judgement.reads_only
        if run.index >= len(reads_only) or not reads_only[run.index]:
            self.stale = True
        await self.host.done(
            run.judgement,
            run.index,
            rows=run.rows,
            masked=run.mask.counts if run.mask is not None else {},
            notes=sorted(run.notes),
            error=error,
            truncated=run.truncated,
        )

    async def copy_in(self) -> None:
        """COPY FROM STDIN (judged as a write): the client's data goes on to the target. Only
        copy messages pass: once the target has ended the copy (a bad row), anything else
        would run unjudged, so another message ends the connection."""
        await self.flush()
        up = self.upstream()
        while True:
            message = await m.read_message(self.reader, limit=MAX_CLIENT_MESSAGE)
            if message.type not in (b"d", b"c", b"f", b"H", b"S"):
                raise m.ProtocolError(
                    f"message type {message.type!r} inside COPY FROM STDIN (end it first)"
                )
            up.send(m.frame(message.type, message.body))
            await up.drain()
            if message.type in (b"c", b"f"):
                return


_COPY_EXTENDED = (
    "hoop: COPY … TO STDOUT is masked only as a simple query (psql, pg_dump), and this "
    "target masks results: nothing was run"
)
_COPY_OUT = (
    "hoop: the columns of this COPY … TO STDOUT could not be read, and this target masks "
    "results: nothing was run"
)


async def serve_client(
    host: ProxyHost, reader: Any, writer: Any, *, password_sha256: str | None
) -> None:
    """Serve one native client on READER/WRITER until it leaves. A client that breaks the
    protocol is told why and the connection ends."""
    conn = _Connection(host, reader, writer, password_sha256)
    try:
        async with abandoned_when_gone(host, conn.abandon):
            await conn.serve()
    except m.ProtocolError as exc:
        await conn.fatal(f"protocol violation: {exc}", "08P01")
    except (EOFError, ConnectionError, asyncio.IncompleteReadError):
        pass
