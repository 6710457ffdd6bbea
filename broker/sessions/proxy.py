"""A native client's connection (`hoopctl proxy`): one session per connection, carried on one
SSH channel. The target's unit speaks the database's own protocol (SqlUnit.serve_native); this
session is its host: it judges each statement (waiting in the protocol for an approval where a
rule says review), plans the masking of each result, and audits and records each statement as
`hoopctl exec` does."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from broker.config import Rule
from broker.masking.lineage import ColumnSource
from broker.masking_views import column_sources, prepare_column_sources
from broker.policy.decision import Decision, combine
from broker.policy.sql import Statement, rows_rule
from broker.policy.sql_session import SessionState
from broker.protocols.sql import DatabaseConnection, RowMask, StatementError
from broker.recording import RecordingError
from broker.sessions.client_input import ClientInput
from broker.sessions.rows_over import rows_decision
from broker.sessions.sql_base import SqlSessionBase
from broker.sessions.sql_state import needs_check, reading_drift


@dataclass
class _Judgement:
    allowed: bool
    refusal: str
    texts: tuple[str, ...]
    statements: tuple[Statement, ...] = ()
    decision: Decision | None = None
    approver: str | None = None
    standing: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def reads_only(self) -> tuple[bool, ...]:
        if not self.statements:
            return tuple(False for _ in self.texts)
        return tuple(s.unknown is None and s.effects <= {"reads"} for s in self.statements)


class NativeProxy(SqlSessionBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sql_state = SessionState()
        self._check_reading = False  # a statement ran that may change how text is read
        self._input: ClientInput | None = None  # while the client is served
        # The rows_over rules over the statements last judged: text -> (rule, limit).
        self._bulk: dict[str, Rule] = {}

    # -- ProxyHost ---------------------------------------------------------------------

    @property
    def user(self) -> str:
        return self._ctx.user

    @property
    def target(self) -> Any:
        return self._target

    @property
    def masks(self) -> bool:
        config = self._target.masking
        return bool(config.columns or config.detectors)

    def _notify(self, text: str) -> None:
        """A line on the terminal that runs `hoopctl proxy` (the channel's stderr)."""
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stderr.write(f"hoop: {text}\n".encode())

    async def _closed(self) -> bool:
        """While a statement waits for approval: True once the client has gone."""
        await self.gone()
        return True

    @property
    def limits(self) -> Any:
        return self._limits

    async def gone(self) -> None:
        if self._input is None:
            await self._process.wait_closed()
        else:
            await self._input.left.wait()

    async def judge(self, sql: str, *, unknown: str | None = None) -> _Judgement:
        decision, parsed = await self._decide_sql(sql, self._sql_state)
        if unknown is not None:
            doubt = Decision(
                self._policy.on_unknown, None, f"cannot tell what this SQL does: {unknown}"
            )
            decision = combine([decision, doubt])
        texts = tuple(s.text for s in parsed.statements) or (sql,)
        self._bulk = {}
        for statement in parsed.statements:
            rule = rows_rule(self._policy, statement, self.dialect)
            if rule is not None and rule.rows_over:
                self._bulk[statement.text] = rule
        if decision.action == "allow":
            return _Judgement(True, "", texts, parsed.statements, decision)
        outcome = await self._hold(
            sql,
            decision,
            say=self._notify,
            subject="query",
            watch_cancel=self._closed,
            wait=None,
            in_session=True,
        )
        if outcome.approved:
            return _Judgement(
                True,
                "",
                texts,
                parsed.statements,
                decision,
                outcome.approver,
                outcome.standing,
            )
        return _Judgement(False, f"hoop: {outcome.message}", texts, parsed.statements, decision)

    def bulk_limit(self, sql: str) -> tuple[str, int, str] | None:
        rule = self._bulk.get(sql)
        if rule is None or not rule.rows_over:
            return None
        left = max(0, rule.rows_over - self.bulk.before(rule))
        return (rule.name or "rows_over", left, rule.action)

    def bulk_sent(self, sql: str, rows: int) -> None:
        self.bulk.sent(self._bulk.get(sql), rows)

    async def hold_bulk(self, sql: str, columns: list[str]) -> str | None:
        rule = self._bulk.get(sql)
        if rule is None:
            return "hoop: the result's rows_over rule is gone"  # fail closed
        outcome = await self._hold(
            sql,
            rows_decision(rule, columns, self.bulk.before(rule)),
            say=self._notify,
            subject="query",
            watch_cancel=self._closed,
            wait=None,
            in_session=True,
        )
        if outcome.approved:
            self.bulk.sent(rule, 0, approved=True)  # the approval starts the count again
            return None
        return f"hoop: {outcome.message}"

    async def prepare(self, conn: DatabaseConnection, sql: str) -> None:
        # Where nothing is masked, nothing is looked up: no lineage, no taint to keep (a
        # catalog query per statement would be a round trip to the database each time).
        if self.masks:
            await prepare_column_sources(conn, self.dialect, sql, self._shared_taint())

    async def plan(
        self, conn: DatabaseConnection, sql: str, columns: list[str], *, opaque: bool = False
    ) -> RowMask:
        if not self.masks:
            return self._masking().plan([ColumnSource(name, ()) for name in columns])
        if opaque:
            return self._masking().plan([ColumnSource(name, (), True) for name in columns])
        sources = await column_sources(conn, self.dialect, sql, columns)
        return self._masking().plan(sources)

    async def error_fields(
        self, conn: DatabaseConnection, sql: str, fields: dict[str, str]
    ) -> dict[str, str]:
        exc = StatementError(fields.get("M", ""), sqlstate=fields.get("C"))
        shown = self._statement_error(conn, sql, exc)
        out = dict(fields)
        out["M"] = str(shown)
        withheld = str(shown) != self._masked_error(exc)
        masker = self._masking()
        for code in ("D", "H", "W", "q", "P", "p"):  # detail, hint, context, internal query
            if code in out:
                if withheld:
                    del out[code]
                else:
                    out[code] = masker.mask_error(out[code])
        return out

    async def done(
        self,
        judgement: Any,
        index: int,
        *,
        rows: int,
        masked: dict[str, int],
        notes: Sequence[str],
        error: str | None,
        truncated: dict[str, object] | None = None,
    ) -> None:
        statements: tuple[Statement, ...] = judgement.statements
        statement = statements[index] if index < len(statements) else None
        if statement is None or needs_check(statement):
            self._check_reading = True
        text = (
            statement.text if statement else judgement.texts[min(index, len(judgement.texts) - 1)]
        )
        kind = statement.kind if statement else "UNKNOWN"
        summary = f"{kind}: {rows} row{'s' if rows != 1 else ''}"
        if masked:
            summary += ", masked " + ", ".join(f"{c}={n}" for c, n in sorted(masked.items()) if n)
        if notes:
            summary += ", sent as NULL (cannot be masked in the client's format): " + ", ".join(
                notes
            )
        if truncated:
            summary += f", truncated at {truncated['budget']} {truncated['limit']}"
        if error:
            summary += f"; {error}"
        self._mark(f"query: {text}")
        self._record_output(f"{text}\n-- {summary}\n".encode())
        await self._audit_query(
            text,
            kind,
            list(statement.tables) if statement else [],
            judgement.decision or Decision("allow", None, "approved"),
            rows=rows,
            masked={c: n for c, n in masked.items() if n},
            error=error,
            started=judgement.started,
            approver=judgement.approver,
            standing=judgement.standing,
            unmaskable=list(notes),
            truncated=truncated,
        )

    async def answered(self, sql: str, kind: str, *, refused: str | None = None) -> None:
        if refused is None:
            decision = Decision("allow", None, "answered by the proxy")
        else:
            decision = Decision("deny", None, refused)
        self._mark(f"query: {sql}")
        summary = f"{kind}: answered by the proxy" + (f"; refused: {refused}" if refused else "")
        self._record_output(f"{sql}\n-- {summary}\n".encode())
        if refused is not None:
            await self._audit_decision("query.blocked", "query", sql, decision)
            return
        await self._audit_query(
            sql, kind, [], decision, rows=0, masked={}, error=None, started=time.monotonic()
        )

    async def settled(self, conn: DatabaseConnection) -> str | None:
        if not self._check_reading:
            return None
        self._check_reading = False
        return await reading_drift(conn, self.dialect)

    # -- the session -------------------------------------------------------------------

    async def run(self) -> int:
        unit = self.unit
        if not unit.native_clients:
            self._notify(f"target {self._target.name} does not take native clients yet")
            return 2
        started = time.time()
        try:
            self._open_recording(
                width=120,
                height=40,
                started=started,
                command=f"proxy {self._target.name}",
                title=f"{self._ctx.user}@{self._target.name} proxy",
            )
        except RecordingError as exc:
            self._notify(f"session refused: the recording cannot be written ({exc})")
            return 1
        await self._begin(kind="proxy", started=started, command=None, details={"kind": "proxy"})
        status = 0
        self._input = ClientInput(self._process.stdin)
        try:
            await unit.serve_native(
                self,
                self._input,
                self._process.stdout,
                password_sha256=self._request.password_sha256,
            )
        except RecordingError as exc:
            self._notify(f"the recording cannot be written; stopped ({exc})")
            status = 1
        finally:
            await self._input.close()
            await self._end(state="closed", status=status)
        return status
