"""After a statement that may change session settings, ask the server how it now reads text.

The policy refuses every statement it can see changing the character set or the quoting modes
(broker.policy.sql_session). A statement whose effect the broker cannot see (an approved
`EXECUTE` of a prepared `SET NAMES gbk`, a procedure, a `SET` inside code) could still change
them; from then on the broker would judge text the server reads differently. So after any
statement that changes session state, runs code, or is unknown, the broker reads the settings
back, and a session whose settings moved is ended before anything else runs in it."""

from __future__ import annotations

from broker.policy.sql import Statement
from broker.protocols import sql_unit
from broker.protocols.sql import DatabaseConnection, StatementError

# Statements that only open, mark or end a transaction: they change no setting of their own,
# and a check after BEGIN would be the transaction's first query (SET TRANSACTION ISOLATION
# LEVEL must come before any).
_TRANSACTION_ONLY = frozenset(
    {
        "BEGIN", "START TRANSACTION", "COMMIT", "END", "ROLLBACK", "SAVEPOINT",
        "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT", "SET TRANSACTION",
    }
)  # fmt: skip


def needs_check(statement: Statement) -> bool:
    if statement.unknown is not None:
        return True
    effects = set(statement.effects)
    for inner in statement.inner:
        effects |= inner.effects
    if statement.kind in _TRANSACTION_ONLY and not statement.inner and effects <= {"session"}:
        return False
    return bool(effects & {"session", "code"})


async def reading_drift(conn: DatabaseConnection, dialect: str) -> str | None:
    """Why the server no longer reads statements as the broker does; None if it still does."""
    unit = sql_unit(dialect)
    if unit.drift_query is None:
        return None  # the dialect has no such settings
    try:
        result = await conn.execute(unit.drift_query)
        rows = [row async for row in result.rows]
    except StatementError:
        # An aborted transaction refuses every statement until ROLLBACK, which undoes SET
        # LOCAL and any SET made in it: nothing can run under a changed setting meanwhile.
        return None
    if not rows:
        return "the server did not report its settings"
    return unit.drift(rows[0])
