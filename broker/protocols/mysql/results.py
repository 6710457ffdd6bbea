"""The target's answers to one judged command, relayed to a native client: OK and ERR packets,
and result sets (text or binary rows), masked on the way.

A command may answer with several results (several statements in one COM_QUERY, a procedure's
result sets): each is matched to the statement it belongs to, for its masking plan and its
audit. A column that a rule masks is described to the client as a string; a value that cannot
be masked in the client's format is sent as NULL and named in the audit (fail closed)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from broker.protocols.mysql import lexer
from broker.protocols.mysql import packets as p
from broker.protocols.mysql import values as v
from broker.protocols.mysql.upstream import Upstream
from broker.protocols.sql import Judgement, ProxyHost, RowMask

MASK_BATCH = 500


class Lost(Exception):
    """The connection to the target ended (or broke the protocol) while it answered."""


@dataclass
class Run:
    """One statement whose answers are being relayed (a procedure may give several)."""

    sql: str
    index: int
    plan_as: str  # the text its result sets are planned by ("": opaque)
    mapped: bool = True  # one statement's results (else: every result left, not told apart)
    rows: int = 0
    masked: dict[str, int] = field(default_factory=dict)
    notes: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    # The actor's result budget: rows and bytes let through, and the budget that cut it.
    kept: int = 0
    kept_bytes: int = 0
    cut: tuple[str, int] | None = None
    rule: str | None = None  # the rows_over rule that cut it
    bulk_reported: int = 0  # rows already counted against a rows_over rule

    @property
    def truncated(self) -> dict[str, object] | None:
        if self.cut is None:
            return None
        found: dict[str, object] = {"budget": self.cut[0], "limit": self.cut[1], "rows": self.kept}
        if self.rule is not None:
            found["rule"] = self.rule
        return found


@dataclass
class _ResultSet:
    columns: list[v.Column]
    binary: bool
    text_columns: frozenset[int]  # described to the client as strings
    mask: RowMask | None


class Relay:
    """Relays the answers of one command of JUDGEMENT (SQL, as judged)."""

    def __init__(
        self,
        host: ProxyHost,
        up: Upstream,
        send: Callable[[bytes], None],
        flush: Callable[[], Awaitable[None]],
        sql: str,
        judgement: Judgement,
        *,
        binary: bool = False,
        described: frozenset[int] = frozenset(),
    ) -> None:
        self.host = host
        self.up = up
        self.send = send
        self.flush = flush
        self.sql = sql
        self.judgement = judgement
        self.binary = binary
        self.described = described  # the prepared statement's columns told as strings
        texts = judgement.texts
        kinds = [lexer.results_of(text) for text in texts]
        if None in kinds or lexer.statement_count(sql) != len(texts):
            # Which result is whose cannot be told (EXECUTE of a prepared statement, a
            # compound statement, statements split otherwise than the server splits them):
            # every result is planned as opaque, masked by any rule.
            texts, kinds = (), []
        self.texts = texts
        self.kinds = kinds

    async def read(self) -> bytes:
        try:
            return await self.up.read()
        except (EOFError, OSError, p.ProtocolError) as exc:
            raise Lost(str(exc) or "the connection ended") from None

    async def run(self) -> None:
        """Relay every result, up to the last one (or an error, which ends the command)."""
        position = 0
        run: Run | None = None
        # Masking looked every statement up before the command ran: after a USE or DDL in it,
        # what it found may be of other relations (results are then planned as opaque).
        moved = False
        while True:
            if run is None:
                if position < len(self.texts):
                    text = self.texts[position]
                    run = Run(text, position, plan_as="" if moved else text)
                    moved = moved or not lexer.keeps_catalog(text)
                else:  # none told apart (or more results than statements): one opaque run
                    run = Run(self.sql, len(self.texts), plan_as="", mapped=False)
            payload = await self.read()
            if p.is_err(payload):
                await self.error(run, payload)
                return
            if p.is_ok(payload):
                result = p.parse_ok(payload)
                self.send(payload)
                run.rows += result.affected
                status = result.status
                ends_run = run.mapped
            elif payload[:1] == b"\xfb":
                raise Lost("the target asked for a local file, which the broker never offers")
            else:
                status = await self.result_set(run, payload)
                if status is None:
                    return  # an error came instead of the rows' end
                # A procedure's result sets are its own up to the OK that ends its call.
                ends_run = run.mapped and self.kinds[position] != "call"
            more = status & p.SERVER_MORE_RESULTS_EXISTS
            if ends_run or not more:
                await self.finish(run)
                run = None
                position += 1
            if not more:
                return

    async def result_set(self, run: Run, first: bytes) -> int | None:
        """Relay one result set; the status of its end, or None when an error ended it."""
        count = p.Cursor(first).lenenc() or 0
        columns = [v.parse_column(await self.read()) for _ in range(count)]
        end = await self.read()
        if not p.is_eof(end):
            raise Lost("the columns of a result set do not end with EOF")
        result = await self.describe(run, columns)
        self.send(first)
        for i, column in enumerate(columns):
            self.send(column.as_text() if i in result.text_columns else column.payload)
        self.send(end)
        plain = result.mask is None and not result.text_columns
        pending: list[bytes] = []
        while True:
            payload = await self.read()
            if p.is_eof(payload) or p.is_err(payload):
                self.rows(run, result, pending)
                for name, n in (result.mask.counts if result.mask is not None else {}).items():
                    run.masked[name] = run.masked.get(name, 0) + n
                if p.is_err(payload):
                    await self.error(run, payload)
                    return None
                if result.mask is not None and result.mask.rule_columns:
                    self.host.bulk_sent(run.sql, run.kept - run.bulk_reported)
                    run.bulk_reported = run.kept
                # A cut result says so the only way MySQL's protocol has: one warning more.
                self.send(_one_more_warning(payload) if run.cut else payload)
                return p.eof_status(payload)
            masked = result.mask is not None and bool(result.mask.rule_columns)
            if not self.within_budget(run, len(payload), masked):
                continue  # read and dropped: memory stays bounded
            if plain:
                run.rows += 1
                self.send(payload)
                if run.rows % MASK_BATCH == 0:
                    await self.flush()
                continue
            pending.append(payload)
            if len(pending) >= MASK_BATCH:
                self.rows(run, result, pending)
                await self.flush()

    def within_budget(self, run: Run, size: int, masked: bool = False) -> bool:
        """Whether one more row (SIZE bytes) may go to the client under the actor's budget
        and, for a result with MASKED columns, under a rows_over rule."""
        if run.cut is None:
            limits = self.host.limits
            # A rows_over rule stops the result at its limit; a review one too: the MySQL
            # relay cannot hold a result for an approver (fail closed).
            bulk = self.host.bulk_limit(run.sql) if masked else None
            if bulk is not None and run.kept - run.bulk_reported >= bulk[1]:
                run.cut = ("rows_over", bulk[1])
                run.rule = bulk[0]
            elif limits.max_rows is not None and run.kept >= limits.max_rows:
                run.cut = ("max_rows", limits.max_rows)
            elif limits.max_bytes is not None and run.kept_bytes + size > limits.max_bytes:
                run.cut = ("max_bytes", limits.max_bytes)
        if run.cut is not None:
            return False
        run.kept += 1
        run.kept_bytes += size
        return True

    async def describe(self, run: Run, columns: list[v.Column]) -> _ResultSet:
        if not self.host.masks:
            return _ResultSet(columns, self.binary, frozenset(), None)
        mask = await self.host.plan(self.up, run.plan_as, [c.name for c in columns])
        text_columns = frozenset(mask.rule_columns)
        if self.binary:
            text_columns |= frozenset(i for i in self.described if i < len(columns))
        return _ResultSet(columns, self.binary, text_columns, mask if mask.active else None)

    def rows(self, run: Run, result: _ResultSet, pending: list[bytes]) -> None:
        """Mask a batch of rows, send them, and empty the batch."""
        if not pending:
            return
        run.rows += len(pending)
        columns = result.columns
        width = len(columns)
        readable: list[list[object]] = []
        cells_of: list[list[bytes | None]] = []
        unreadable: set[int] = set()
        for payload in pending:
            try:
                cells = (
                    v.parse_binary_row(payload, columns)
                    if result.binary
                    else v.parse_text_row(payload)
                )
                if len(cells) != width:
                    raise v.Unreadable("a row does not match its columns")
            except (v.Unreadable, p.ProtocolError):
                cells = [None] * width  # nothing of the row can be told apart: all NULL
                run.notes.update(c.name for c in columns)
            values: list[object] = []
            for i, cell in enumerate(cells):
                try:
                    values.append(None if cell is None else _read(cell, columns[i], result.binary))
                except v.Unreadable:
                    values.append(None)
                    unreadable.add(i)
            cells_of.append(cells)
            readable.append(values)
        mask = result.mask
        after = mask.apply_batch(readable) if mask is not None else [tuple(r) for r in readable]
        rule = frozenset(mask.rule_columns) if mask is not None else frozenset()
        scanned = frozenset(mask.detector_columns) if mask is not None else frozenset()
        for cells, before, masked in zip(cells_of, readable, after, strict=True):
            out: list[bytes | None] = []
            for i, cell in enumerate(cells):
                kind = columns[i].type
                shown: bytes | None = cell
                if cell is None:
                    shown = None
                elif i in result.text_columns:  # described as a string: any value as text
                    shown = None if i in unreadable else _string(masked[i], result.binary)
                elif i in rule:  # masked, but described as its own type
                    shown = None
                elif i in scanned and i in unreadable:
                    shown = cell if kind in v.NO_TEXT_INSIDE else None
                elif i in scanned and masked[i] != before[i]:
                    # a detector matched a number or a date: its type cannot carry the mask
                    shown = _string(masked[i], result.binary) if kind in v.TEXT_LIKE else None
                if shown is None and cell is not None:
                    run.notes.add(columns[i].name)
                out.append(shown)
            self.send(v.binary_row(out) if result.binary else v.text_row(out))
        pending.clear()

    async def error(self, run: Run, payload: bytes) -> None:
        error = p.parse_err(payload)
        shown = await self.host.error_fields(
            self.up, run.sql, {"M": error.message, "C": error.sqlstate or "HY000"}
        )
        message = shown.get("M", "")
        self.send(p.err(error.code, error.sqlstate, message))
        await self.finish(run, error=f"ERROR {error.code} ({error.sqlstate}): {message}")

    async def finish(self, run: Run, *, error: str | None = None) -> None:
        if run.mapped or self.texts:
            indexes = [min(run.index, len(self.judgement.texts) - 1)]
        else:
            # Results not told apart: each statement is reported, its first with them all.
            indexes = list(range(len(self.judgement.texts)))
        for n, index in enumerate(indexes):
            await self.host.done(
                self.judgement,
                index,
                rows=run.rows if not n else 0,
                masked=run.masked if not n else {},
                notes=sorted(run.notes) if not n else (),
                error=error if not n else None,
                truncated=run.truncated if not n else None,
            )


def _one_more_warning(eof: bytes) -> bytes:
    """An EOF packet (0xFE, warnings, status) with its warning count one higher."""
    if len(eof) < 5:
        return eof
    warnings = min(int.from_bytes(eof[1:3], "little") + 1, 0xFFFF)
    return eof[:1] + warnings.to_bytes(2, "little") + eof[3:]


def _read(cell: bytes, column: v.Column, binary: bool) -> object:
    if not binary:
        return v.read_text(cell, column)
    return v.read_binary(cell, column.type, unsigned=column.unsigned, charset=column.charset)


def _string(value: object, binary: bool) -> bytes:
    return v.as_string_cell(value) if binary else v.as_text(value)
