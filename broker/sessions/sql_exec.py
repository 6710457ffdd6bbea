"""One-shot SQL (`hoopctl exec NAME -c SQL`): judge every statement first, then run them with the
broker's own connection, streaming formatted rows back. Exit: 0 ok, 1 target error, 3 denied,
4 approval required."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh

from broker.config import Rule
from broker.credentials import CredentialError
from broker.policy.decision import Decision
from broker.policy.sql import ParsedSql, rows_rule
from broker.protocols import open_database
from broker.protocols.base import TargetError
from broker.protocols.sql import Cut, DatabaseConnection, StatementError, batches_of
from broker.recording import RecordingError
from broker.sessions.approvals import ReviewOutcome
from broker.sessions.budgets import BudgetMeter
from broker.sessions.formats import ResultWriter
from broker.sessions.rows_over import RowsOver
from broker.sessions.sql_base import QUERY_KINDS, SqlSessionBase
from broker.sessions.sql_state import needs_check, reading_drift

MAX_SQL_BYTES = 4 * 1024 * 1024
ROW_BATCH = 500
# Rows' text goes out in writes of about this many characters (one SSH write and one recording
# event each, instead of one per batch of rows), none held back longer than ROWS_HELD seconds.
ROWS_WRITE = 64 * 1024
ROWS_HELD = 0.05


class SqlExec(SqlSessionBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._output = self._request.output
        self._approver: str | None = None
        self._standing: str | None = None
        # `exec --request ID`: the rule whose review that request passed (a rows_over rule's
        # hold of the same statement is then already approved).
        self._approved_rule: str | None = None
        self._input_sql: str | None = None
        self._document = False
        self._rows: list[str] = []
        self._rows_size = 0
        self._rows_timer: asyncio.TimerHandle | None = None
        self._rows_failed: RecordingError | None = None

    def _error(self, text: str) -> None:
        # Rows gathered before the error still come before it. (A recording failure is raised
        # again at the next write; a gone client is found there too.)
        with contextlib.suppress(RecordingError, OSError, asyncssh.Error):
            self._send_rows()
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stderr.write(f"hoop: {text}\n".encode())

    async def _write(self, text: str) -> None:
        """TEXT out now (rows gathered before it first), recorded, with flow control."""
        self._send_rows()
        if text:
            self._send(text)
        await self._process.stdout.drain()

    def _send(self, text: str) -> None:
        data = text.encode()
        self._record_output(data)
        self._process.stdout.write(data)

    async def _write_rows(self, text: str) -> None:
        """Rows' TEXT, gathered into writes of about ROWS_WRITE characters: a batch of rows
        is a few KiB, and each write costs an SSH packet and a recording event whatever its
        size. What is gathered goes out within ROWS_HELD seconds however slowly rows come."""
        self._rows.append(text)
        self._rows_size += len(text)
        if self._rows_size >= ROWS_WRITE:
            await self._write("")
        elif self._rows_timer is None:
            self._rows_timer = asyncio.get_running_loop().call_later(ROWS_HELD, self._rows_due)

    def _rows_due(self) -> None:
        self._rows_timer = None
        try:
            self._send_rows()
        except RecordingError as exc:  # what cannot be recorded is not sent; the session ends
            self._rows_failed = exc
        except (OSError, asyncssh.Error):
            pass

    def _send_rows(self) -> None:
        if self._rows_timer is not None:
            self._rows_timer.cancel()
            self._rows_timer = None
        if self._rows_failed is not None:
            raise self._rows_failed
        if self._rows:
            text = "".join(self._rows)
            self._rows.clear()
            self._rows_size = 0
            self._send(text)

    async def _read_sql(self) -> str | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                data = await self._process.stdin.read(65536)
            except (asyncssh.TerminalSizeChanged, asyncssh.BreakReceived, asyncssh.SignalReceived):
                continue
            if not data:
                break
            size += len(data)
            if size > MAX_SQL_BYTES:
                return None
            chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace")

    async def run(self) -> int:
        status = await self._run()
        if self._request.summary:
            self._summary(status)
        return status

    def _summary(self, status: int) -> None:
        summary = {
            "session": self.session_id,
            "exit_status": status,
            "statements": self.statements_run,
        }
        self._error("summary " + json.dumps(summary, ensure_ascii=False, default=str))

    async def _run(self) -> int:
        sql = await self._read_sql()
        if sql is None:
            self._error(f"SQL input larger than {MAX_SQL_BYTES // (1024 * 1024)} MiB")
            return 2
        if self._request.request_id:
            return await self._run_request(self._request.request_id, sql)
        decision, parsed = await self._decide(sql)
        if self._output == "csv" and len(parsed.statements) > 1:
            self._error(
                "CSV holds one result: give one statement per exec, or use --output json "
                "(one document for several statements)"
            )
            return 2
        if decision.action != "allow":
            refused = await self._refused(sql, decision)
            if refused != -1:
                return refused
        if not parsed.statements:
            return 0
        return await self._execute(sql, parsed, decision)

    async def _decide(self, sql: str) -> tuple[Decision, ParsedSql]:
        return await self._decide_sql(sql)

    async def _refused(self, sql: str, decision: Decision) -> int:
        def say(text: str) -> None:
            if decision.action == "deny":
                text += "; nothing in this input was run"
            self._error(text)

        outcome = await self._hold(
            sql,
            decision,
            say=say,
            subject="query",
            wait=self._request.wait,
            watch_cancel=self._client_cancelled,
            in_session=False,
        )
        if outcome.approved:
            self._approver = outcome.approver
            self._standing = outcome.standing
            return -1
        return outcome.exit_status

    async def _run_request(self, request_id: str, sql: str) -> int:
        """`exec --request ID`: the approved SQL, once; input given must be exactly that SQL."""
        checked = await self._run_approved_request(
            request_id, sql if sql.strip() else None, say=self._error
        )
        if isinstance(checked, int):
            return checked
        record, text = checked
        decision, parsed = await self._decide(text)
        if decision.action == "deny":  # the policy changed since: deny still wins
            return await self._refused(text, decision)
        claimed = await self._claim_request(record, text, say=self._error)
        if isinstance(claimed, int):
            return claimed
        self._approver = claimed
        self._approved_rule = record.rule
        if not parsed.statements:
            return 0
        return await self._execute(text, parsed, decision)

    async def _execute(self, sql: str, parsed: ParsedSql, decision: Decision) -> int:
        started = time.time()
        self._input_sql = sql
        try:
            self._open_recording(
                width=120,
                height=40,
                started=started,
                command=f"exec --output {self._output}",
                title=f"{self._ctx.user}@{self._target.name} exec",
            )
        except RecordingError as exc:
            self._error(f"session refused: the recording cannot be written ({exc})")
            return 1
        await self._begin(kind="exec", started=started, command=sql, details={"kind": "exec"})
        status = 0
        try:
            try:
                conn = await open_database(self._target)
            except (TargetError, CredentialError) as exc:
                self._error(str(exc))
                return (status := 1)
            # Several statements with --output json: one document, a list with an object per
            # statement that ran ({"statement", "kind", "columns"+"rows" | "status" | "error"}).
            self._document = self._output == "json" and len(parsed.statements) > 1
            if self._document:
                await self._write("[")
            try:
                for index, statement in enumerate(parsed.statements):
                    if self._document:
                        await self._write(",\n" if index else "\n")
                    status = await self._run_statement(
                        conn,
                        statement.text,
                        statement.kind,
                        list(statement.tables),
                        decision,
                        rows_rule(self._policy, statement, self.dialect),
                    )
                    if status:
                        break
                    if needs_check(statement):
                        drift = await reading_drift(conn, self.dialect)
                        if drift is not None:
                            self._error(f"stopped: {drift}; the broker cannot judge what follows")
                            status = 1
                            break
            finally:
                await conn.close()
                if self._document:
                    await self._write("\n]\n")
            return status
        except RecordingError as exc:
            self._error(f"the recording cannot be written; stopped ({exc})")
            return (status := 1)
        finally:
            if self._rows_timer is not None:  # rows not sent (the session failed) stay unsent
                self._rows_timer.cancel()
            await self._end(state="closed", status=status)

    async def _run_statement(
        self,
        conn: DatabaseConnection,
        text: str,
        kind: str,
        tables: list[str],
        decision: Decision,
        bulk: Rule | None = None,
    ) -> int:
        """Run one statement and write its result; BULK is the rows_over rule over it (an
        approved request it is run under, `--request`, has approved it already)."""
        if (
            bulk is not None
            and self._approved_rule is not None
            and bulk.name == self._approved_rule
        ):
            bulk = None
        started = time.monotonic()
        self._recorder.mark(f"query: {text}")  # type: ignore[union-attr]
        writer = ResultWriter(self._output)
        rows = 0
        error: str | None = None
        masked: dict[str, int] = {}
        cut: Cut | None = None
        head = json.dumps({"statement": text, "kind": kind}, ensure_ascii=False)[:-1]
        opened = in_rows = False
        gate = RowsOver(None, ())
        try:
            result = await self._query(conn, text, kind)
            if result.columns:
                gate = RowsOver(
                    bulk, result.plan.masked_columns if result.plan else (), self.bulk.before(bulk)
                )
                # Held as the whole input, which `exec --request ID` runs again once approved.
                source = await gate.admit(result.rows, self._hold_rows(self._input_sql or text))
                if gate.withheld is not None or gate.cut is not None:
                    await self._stop_reading(conn, result)
                result.rows = source
                cut = gate.cut
            if self._document:
                await self._write(head)
                opened = True
                if result.columns:
                    await self._write(', "columns": ' + json.dumps(result.columns) + ', "rows": ')
            if result.columns:
                await self._write(writer.begin(result.columns))
                in_rows = True
                meter = BudgetMeter(self._limits)
                async with contextlib.aclosing(batches_of(result.rows, ROW_BATCH)) as batches:
                    async for batch in batches:
                        admitted = meter.admit_batch(batch)
                        if admitted:
                            await self._write_rows(writer.rows(admitted))
                            rows += len(admitted)
                        if meter.cut is not None:
                            cut = meter.cut
                            if gate.cut is None:
                                await self._stop_reading(conn, result)
                            break
                end = writer.end(cut)
                in_rows = False
                await self._write(end.rstrip("\n") + "}" if self._document else end)
                masked = result.masked_counts()
                if cut is not None:
                    self._error(cut.text)
            elif self._document:
                await self._write(', "status": ' + json.dumps(result.status) + "}")
            elif result.status:
                if self._output == "table":
                    await self._write(result.status + "\n")
                else:
                    self._error(result.status)
            elif kind.split()[0] in QUERY_KINDS:
                # A query without rows whose columns the driver could not name (PostgreSQL's
                # chunked stream): still an empty result, so json readers get [].
                await self._write({"json": "[]\n", "table": "(0 rows)\n"}.get(self._output, ""))
        except StatementError as exc:
            error = str(exc)
            self._error(error)
            if self._document:  # the document stays whole: the statement's object says why
                close = ("\n]" if in_rows else "") if opened else head
                await self._write(
                    close + ', "error": ' + json.dumps(error, ensure_ascii=False) + "}"
                )
        if gate.rule is not None:
            approved = gate.outcome is not None and gate.outcome.approved
            self.bulk.sent(gate.rule, rows, approved=approved)
        await self._audit_query(
            text,
            kind,
            tables,
            decision,
            rows=rows,
            masked=masked,
            error=error,
            started=started,
            approver=gate.approver or self._approver,
            standing=self._standing,
            truncated=cut.as_dict() if cut is not None else None,
            withheld=gate.withheld,
        )
        if gate.withheld is not None and gate.outcome is not None:
            return gate.outcome.exit_status
        return 1 if error else 0

    def _hold_rows(self, text: str) -> Callable[[Decision], Awaitable[ReviewOutcome]]:
        """How a bulk read (rows_over, review) waits for approval: as the statement itself
        would (--wait, --no-wait, Ctrl-C); once approved later, `--request ID` runs it."""

        async def hold(held: Decision) -> ReviewOutcome:
            return await self._hold(
                text,
                held,
                say=self._error,
                subject="query",
                wait=self._request.wait,
                watch_cancel=self._client_cancelled,
                in_session=False,
            )

        return hold

    async def _stop_reading(self, conn: DatabaseConnection, result: Any) -> None:
        """A result cut at its budget: the database stops producing it (the rest is never
        fetched), and the connection stays usable for the next statement."""
        await conn.cancel()
        with contextlib.suppress(Exception):
            await result.rows.aclose()
