"""What the SQL shell and one-shot SQL share: the dialect, masking of every result row before
anything else sees it, and the per-statement `query` audit event."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from broker.credentials import resolve_credential
from broker.keys import load_or_create_secret
from broker.masking import Masker, MaskPlan
from broker.masking_views import column_sources, prepare_column_sources
from broker.policy.decision import Decision
from broker.sessions.base import SessionBase
from broker.targets.database import DatabaseConnection, DatabaseTarget, StatementError

MASK_BATCH = 500
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


class SqlSessionBase(SessionBase):
    _target: DatabaseTarget

    _masker: Masker | None = None

    @property
    def dialect(self) -> str:
        return {"postgres": "postgres", "mysql": "mysql", "sqlite": "sqlite"}[self._target.type]

    def _masking(self) -> Masker:
        if self._masker is None:
            config = self._target.masking
            if config.hash_key:
                key = resolve_credential(config.hash_key, target=self._target.name).encode()
            else:
                key = load_or_create_secret(self._broker.data_dir, "masking_key")
            self._masker = Masker(config, hash_key=key)
        return self._masker

    def _masked_error(self, exc: StatementError) -> str:
        """The database's error message, with any values it echoes masked."""
        return self._masking().mask_error(str(exc))

    async def _query(self, conn: DatabaseConnection, text: str, kind: str) -> MaskedResult:
        """Run one statement; its rows come back masked (raises StatementError, masked)."""
        started = time.monotonic()
        # The view catalog is read before the statement: once rows stream, the connection is busy.
        await prepare_column_sources(conn, self.dialect, text)
        try:
            result = await conn.execute(text, query=kind.split()[0] in QUERY_KINDS)
        except StatementError as exc:
            raise StatementError(self._masked_error(exc)) from None
        if not result.columns:
            return MaskedResult(result.columns, result.rows, result.status, started=started)
        # Masking happens here, before rendering, sending or recording anything.
        sources = await column_sources(conn, self.dialect, text, result.columns)
        plan = self._masking().plan(sources)

        async def masked_rows() -> AsyncIterator[tuple[Any, ...]]:
            # Rows are masked a batch at a time (one detector pass per column over the batch);
            # a batch goes out when it is full or the result ends.
            batch: list[tuple[Any, ...]] = []
            try:
                async for row in result.rows:
                    if not plan.active:
                        yield row
                        continue
                    batch.append(row)
                    if len(batch) >= MASK_BATCH:
                        for masked in plan.apply_batch(batch):
                            yield masked
                        batch = []
            except StatementError as exc:
                raise StatementError(self._masked_error(exc)) from None
            for masked in plan.apply_batch(batch) if batch else ():
                yield masked

        return MaskedResult(result.columns, masked_rows(), result.status, plan, started)

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
    ) -> None:
        await self._audit_decision(
            "query",
            "query",
            text,
            decision,
            approver=approver,
            note=error,
            failed=error is not None,
            extra={
                "kind": kind,
                "tables": tables,
                "rows": rows,
                "masked": masked,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
        )
