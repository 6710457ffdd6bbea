"""One-shot SQL (`hoopctl exec NAME -c SQL`): judge every statement first, then run them with the
broker's own connection, streaming formatted rows back. Exit: 0 ok, 1 target error, 3 denied,
4 approval required."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import asyncssh

from broker.config import Policy
from broker.credentials import CredentialError, resolve_credential
from broker.keys import load_or_create_secret
from broker.masking import (
    ColumnSource,
    Masker,
    column_sources_postgres,
    column_sources_sqlglot,
    mask_text,
)
from broker.policy.decision import Decision
from broker.policy.sql import ParsedSql, decide_sql
from broker.recording import RecordingError
from broker.session_context import ConnectionContext
from broker.sessions.approvals import ApprovalGate, ReviewRequest
from broker.sessions.base import EXIT_APPROVAL, EXIT_DENIED, SessionBase
from broker.sessions.formats import ResultWriter
from broker.targets.base import TargetError
from broker.targets.database import DatabaseTarget, StatementError, open_database

if TYPE_CHECKING:
    from broker.app import Broker

MAX_SQL_BYTES = 4 * 1024 * 1024
ROW_BATCH = 500
QUERY_KINDS = ("SELECT", "EXPLAIN", "SHOW", "DESCRIBE", "VALUES", "TABLE", "PRAGMA")


class SqlExec(SessionBase):
    def __init__(
        self,
        broker: Broker,
        ctx: ConnectionContext,
        process: asyncssh.SSHServerProcess[bytes],
        target: DatabaseTarget,
        policy: Policy,
        gate: ApprovalGate,
        *,
        output: str,
        reason: str | None,
    ) -> None:
        super().__init__(broker, ctx, target, reason=reason)
        self._target: DatabaseTarget = target
        self._process = process
        self._policy = policy
        self._gate = gate
        self._output = output
        self._masker: Masker | None = None

    def _masking(self) -> Masker:
        if self._masker is None:
            config = self._target.masking
            if config.hash_key:
                key = resolve_credential(config.hash_key, target=self._target.name).encode()
            else:
                key = load_or_create_secret(self._broker.data_dir, "masking_key")
            self._masker = Masker(config, hash_key=key)
        return self._masker

    def _sources(self, text: str, columns: list[str]) -> list[ColumnSource]:
        if self.dialect == "postgres":
            return column_sources_postgres(text, columns)
        return column_sources_sqlglot(text, self.dialect, columns)

    @property
    def dialect(self) -> str:
        return {"postgres": "postgres", "mysql": "mysql", "sqlite": "sqlite"}[self._target.type]

    def _error(self, text: str) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self._process.stderr.write(f"hoop: {text}\n".encode())

    async def _write(self, text: str) -> None:
        if not text:
            return
        data = text.encode()
        if self._recorder is not None:
            self._recorder.output(data.replace(b"\n", b"\r\n"))
        self._process.stdout.write(data)
        await self._process.stdout.drain()

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
        sql = await self._read_sql()
        if sql is None:
            self._error(f"SQL input larger than {MAX_SQL_BYTES // (1024 * 1024)} MiB")
            return 2
        decision, parsed = await asyncio.to_thread(
            decide_sql,
            self._policy,
            sql,
            self.dialect,  # type: ignore[arg-type]
        )
        if decision.action != "allow":
            refused = await self._refused(sql, decision)
            if refused != -1:
                return refused
        if not parsed.statements:
            return 0
        return await self._execute(sql, parsed, decision)

    async def _refused(self, sql: str, decision: Decision) -> int:
        if decision.action == "review":
            await self._audit(
                "approval.requested",
                outcome="failure",
                reason=decision.reason,
                details={"query": sql, "rule": decision.rule},
            )
            outcome = await self._gate.review(
                ReviewRequest(
                    session_id=self.session_id,
                    user=self._ctx.user,
                    groups=self._ctx.groups,
                    target=self._target.name,
                    command=sql,
                    decision=decision,
                )
            )
            if not outcome.approved:
                self._error(f"not run: {outcome.message}")
                await self._audit_blocked(sql, decision, outcome.message)
                return EXIT_APPROVAL
            return -1
        rule = f"rule {decision.rule}" if decision.rule else "policy"
        self._error(f"denied by {rule}: {decision.reason}; nothing in this input was run")
        await self._audit_blocked(sql, decision, decision.reason)
        return EXIT_DENIED

    async def _audit_blocked(self, sql: str, decision: Decision, note: str) -> None:
        await self._audit(
            "query.blocked",
            outcome="failure",
            reason=note,
            details={
                "query": sql,
                "decision": decision.action,
                "rule": decision.rule,
                "unknown": decision.unknown,
            },
        )

    async def _execute(self, sql: str, parsed: ParsedSql, decision: Decision) -> int:
        started = time.time()
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
            try:
                for statement in parsed.statements:
                    status = await self._run_statement(
                        conn, statement.text, statement.kind, list(statement.tables), decision
                    )
                    if status:
                        break
            finally:
                await conn.close()
            return status
        except RecordingError as exc:
            self._error(f"the recording cannot be written; stopped ({exc})")
            return (status := 1)
        finally:
            await self._end(state="closed", status=status)

    async def _run_statement(
        self, conn, text: str, kind: str, tables: list[str], decision: Decision
    ) -> int:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        self._recorder.mark(f"query: {text}")  # type: ignore[union-attr]
        writer = ResultWriter(self._output)
        rows = 0
        error: str | None = None
        masked: dict[str, int] = {}
        try:
            result = await conn.execute(text, query=kind.split()[0] in QUERY_KINDS)
            if result.columns:
                # Masking happens here, before rendering, sending or recording anything.
                plan = self._masking().plan(self._sources(text, result.columns))
                await self._write(writer.begin(result.columns))
                batch: list[tuple[object, ...]] = []
                async for row in result.rows:
                    batch.append(plan.apply(row) if plan.active else row)
                    if len(batch) >= ROW_BATCH:
                        await self._write(writer.rows(batch))
                        rows += len(batch)
                        batch = []
                if batch:
                    await self._write(writer.rows(batch))
                    rows += len(batch)
                await self._write(writer.end())
                masked = {column: n for column, n in plan.counts.items() if n}
            elif result.status:
                if self._output == "table":
                    await self._write(result.status + "\n")
                else:
                    self._error(result.status)
        except StatementError as exc:
            detectors = self._target.masking.detectors
            error = mask_text(str(exc), detectors) if detectors else str(exc)
            self._error(error)
        await self._audit(
            "query",
            outcome="failure" if error else "success",
            reason=error,
            details={
                "query": text,
                "kind": kind,
                "tables": tables,
                "decision": decision.action,
                "rule": decision.rule,
                "rows": rows,
                "masked": masked,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
        )
        return 1 if error else 0
