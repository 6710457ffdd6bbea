"""What the SQL shell and one-shot SQL share: the dialect, masking of every result row before
anything else sees it, and the per-statement `query` audit event."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from broker.config import BudgetLimits, DatabaseTarget
from broker.credentials import resolve_credential
from broker.keys import load_or_create_secret
from broker.masking.masker import Masker
from broker.masking.plans import MaskPlan
from broker.masking_views import (
    SharedTaint,
    column_sources,
    prepare_column_sources,
    read_sources,
    shared_taint,
)
from broker.policy.decision import Decision
from broker.policy.sql import ParsedSql, decide_sql
from broker.policy.sql_session import SessionState
from broker.protocols import sql_unit
from broker.protocols.sql import (
    Batched,
    DatabaseConnection,
    SqlUnit,
    StatementError,
    batches_of,
)
from broker.sessions.base import SessionBase
from broker.sessions.rows_over import BulkCounter

MASK_BATCH = 500
# Errors whose message is fixed text, never data: shown even when a statement reads masked
# data (cancelled, timed out, deadlocked, serialisation failures, aborted transactions).
FIXED_MESSAGES = frozenset({"57014", "40001", "40P01", "25P02", "25006", "55P03", "70100"})
# Statement kinds whose rows are streamed from a server-side cursor.
QUERY_KINDS = ("SELECT", "EXPLAIN", "SHOW", "DESCRIBE", "VALUES", "TABLE", "PRAGMA")


@dataclass
class MaskedResult:
    """One statement's result with masking applied row by row as it streams."""

    columns: list[str]
    rows: AsyncIterator[tuple[Any, ...]]
    status: str
    plan: MaskPlan | None = None
    started: float = field(default_factory=time.monotonic)

    def masked_counts(self) -> dict[str, int]:
        if self.plan is None:
            return {}
        return {column: n for column, n in self.plan.counts.items() if n}


# Statements that compile SQL text at run time (that text may be made of data).
_DYNAMIC = re.compile(r"\b(PREPARE|EXECUTE|CALL)\b|/\*[!+M]", re.I)


def refused_before_running(unit: SqlUnit, text: str, exc: StatementError) -> bool:
    """An error raised while compiling ``text``, which runs no SQL made at run time: its
    message can only quote the statement. (PostgreSQL's equivalents, 42601 and 42P01, also
    come from casts at run time: ::regclass; its unit names none.)"""
    if _DYNAMIC.search(text):
        return False
    return unit.compile_error(exc)


def withheld_message(exc: StatementError) -> str:
    """An error told without the server's message: only what its class says."""
    what = exc.condition or "error"
    codes = []
    if exc.code is not None:
        codes.append(f"error {exc.code}")
    if exc.sqlstate:
        codes.append(f"SQLSTATE {exc.sqlstate}")
    code = f" ({', '.join(codes)})" if codes else ""
    return (
        f"ERROR: {what}{code}; the database's message is withheld: the statement reads masked data"
    )


INLINE_DECIDE_BYTES = 4096  # inputs up to this size are judged without a thread


SUMMARY_STATEMENTS = 100  # statements kept for `exec --summary` (the last ones)


class SqlSessionBase(SessionBase):
    _target: DatabaseTarget
    # What each statement gave (exec --summary): rows, masked counts, truncation, error.
    statements_run: list[dict[str, object]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statements_run = []
        self.bulk = BulkCounter()  # rows of masked columns sent under rows_over rules

    _masker: Masker | None = None

    @property
    def dialect(self) -> str:
        return self.unit.name

    @property
    def unit(self) -> SqlUnit:
        return sql_unit(self._target.type)

    async def _decide_sql(
        self, text: str, state: SessionState | None = None
    ) -> tuple[Decision, ParsedSql]:
        """The policy's decision on TEXT. A short input that PostgreSQL's own parser reads
        (pglast: C, bounded) is judged on the event loop: a hop to a thread and back costs more
        than parsing it, and waits for the GIL behind the other sessions. Anything else (a
        long input, sqlglot's pure-Python parsing) in a thread, so that the other sessions go
        on meanwhile."""
        if len(text) <= INLINE_DECIDE_BYTES and self.unit.parser == "pglast":
            decided = decide_sql(self._policy, text, self.dialect, state)  # type: ignore[arg-type]
        else:
            decided = await asyncio.to_thread(
                decide_sql,
                self._policy,
                text,
                self.dialect,  # type: ignore[arg-type]
                state,
            )
        return await self._within_rate(*decided)

    @property
    def _limits(self) -> BudgetLimits:
        """This actor's budget on the target (rows, bytes, time, rate)."""
        return self._target.budget.for_actor(self._ctx.kind)

    async def _within_rate(
        self, decision: Decision, parsed: ParsedSql
    ) -> tuple[Decision, ParsedSql]:
        """DECISION, unless running PARSED would take the user past the target's
        max_statements_per_minute: then a deny saying so (nothing of the input runs)."""
        per_minute = self._limits.max_statements_per_minute
        if per_minute is None or decision.action == "deny":
            return decision, parsed
        for _ in parsed.statements or (None,):
            if not await self._broker.rates.take(self._ctx.user, self._target.name, per_minute):
                reason = (
                    f"rate budget: at most {per_minute} statements a minute on target "
                    f"{self._target.name} for {self._ctx.kind}s; try again in a minute"
                )
                return Decision("deny", "budget", reason), parsed
        return decision, parsed

    def _masking(self) -> Masker:
        if self._masker is None:
            config = self._target.masking
            if config.hash_key:
                key = resolve_credential(config.hash_key, target=self._target.name).encode()
            else:
                key = load_or_create_secret(self._broker.data_dir, "masking_key")
            self._masker = Masker(config, hash_key=key)
        return self._masker

    def _shared_taint(self) -> SharedTaint | None:
        """Where what sessions wrote into lasting tables of this target is kept (see
        broker.masking_views.SharedTaint): data_dir/masking/<target>.taint.json."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", self._target.name)
        return shared_taint(self._broker.data_dir / "masking" / f"{name}.taint.json")

    def _masked_error(self, exc: StatementError) -> str:
        """The database's error message, with any values it echoes masked."""
        return self._masking().mask_error(str(exc))

    def _statement_error(
        self, conn: DatabaseConnection, text: str, exc: StatementError
    ) -> StatementError:
        """What the user is told when statement ``text`` failed. When the statement reads a
        masked column (or anything whose origin is unknown) the server's message is
        replaced by its SQLSTATE (error number) and the error's fixed name: a message may
        echo a value in any form (reverse(card)::int, translate(email, …)::regclass) that
        no pattern or detector recognises. Otherwise the message is masked as any error is
        (Masker.mask_error: echoed fragments, then the detectors)."""
        masker = self._masking()
        withheld = (
            bool(masker.config.columns)
            and exc.sqlstate not in FIXED_MESSAGES
            and exc.code not in self.unit.fixed_error_codes
            and not refused_before_running(self.unit, text, exc)
            and any(
                masker.strategy_for(column) is not None
                for column in read_sources(conn, self.dialect, text)
            )
        )
        if not withheld:
            return exc.with_message(self._masked_error(exc))
        return exc.with_message(withheld_message(exc))

    async def _query(self, conn: DatabaseConnection, text: str, kind: str) -> MaskedResult:
        """Run one statement; its rows come back masked (raises StatementError, masked)."""
        started = time.monotonic()
        # The view catalog is read (and what the statement writes recorded in the session's
        # taint) before the statement: once rows stream, the connection is busy.
        await prepare_column_sources(conn, self.dialect, text, self._shared_taint())
        try:
            result = await conn.execute(text, query=kind.split()[0] in QUERY_KINDS)
        except StatementError as exc:
            raise self._statement_error(conn, text, exc) from None
        if not result.columns:
            return MaskedResult(result.columns, result.rows, result.status, started=started)
        # Masking happens here, before rendering, sending or recording anything.
        sources = await column_sources(conn, self.dialect, text, result.columns)
        plan = self._masking().plan(sources)

        async def masked_batches() -> AsyncIterator[list[tuple[Any, ...]]]:
            # Rows are masked a batch at a time (one detector pass per column over the batch).
            try:
                async for batch in batches_of(result.rows, MASK_BATCH):
                    yield plan.apply_batch(batch) if plan.active else batch
            except StatementError as exc:
                raise self._statement_error(conn, text, exc) from None
            finally:
                # Closed early (a budget, a pager's q): the driver's stream is closed here and
                # now, not later by the garbage collector while the next statement reads.
                await result.rows.aclose()  # type: ignore[attr-defined]

        return MaskedResult(result.columns, Batched(masked_batches()), result.status, plan, started)

    async def _audit_query(
        self,
        text: str,
        kind: str,
        tables: list[str],
        decision: Decision,
        *,
        rows: int,
        masked: dict[str, int],
        error: str | None,
        started: float,
        approver: str | None = None,
        standing: str | None = None,
        unmaskable: list[str] | None = None,
        truncated: dict[str, object] | None = None,
        withheld: str | None = None,
    ) -> None:
        """WITHHELD: why none of the result was sent (a bulk read not approved)."""
        self.statements_run.append(
            {
                "statement": text,
                "kind": kind,
                "rows": rows,
                "masked": masked,
                **({"error": error} if error else {}),
                **({"truncated": truncated} if truncated else {}),
                **({"withheld": withheld} if withheld else {}),
            }
        )
        del self.statements_run[:-SUMMARY_STATEMENTS]
        await self._audit_decision(
            "query",
            "query",
            text,
            decision,
            approver=approver,
            standing=standing,
            note=error or withheld,
            failed=error is not None or withheld is not None,
            extra={
                "kind": kind,
                "tables": tables,
                "rows": rows,
                "masked": masked,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
                **({"unmaskable": unmaskable} if unmaskable else {}),
                **({"truncated": truncated} if truncated else {}),
                **({"withheld": withheld} if withheld else {}),
            },
        )
