"""After a statement that may change session settings, ask the server how it now reads text.

The policy refuses every statement it can see changing the character set or the quoting modes
(broker.policy.sql_session). A statement whose effect the broker cannot see (an approved
`EXECUTE` of a prepared `SET NAMES gbk`, a procedure, a `SET` inside code) could still change
them; from then on the broker would judge text the server reads differently. So after any
statement that changes session state, runs code, or is unknown, the broker reads the settings
back, and a session whose settings moved is ended before anything else runs in it."""

from __future__ import annotations

from broker.policy.sql import Statement
from broker.policy.sql_session import SAFE_SQL_MODES
from broker.targets.database import DatabaseConnection, StatementError

_CHECKS = {
    "postgres": (
        "SELECT current_setting('client_encoding'), current_setting('standard_conforming_strings')"
    ),
    "mysql": "SELECT @@character_set_client, @@character_set_connection, @@sql_mode",
}


def needs_check(statement: Statement) -> bool:
    effects = set(statement.effects)
    for inner in statement.inner:
        effects |= inner.effects
    return statement.unknown is not None or bool(effects & {"session", "code"})


async def reading_drift(conn: DatabaseConnection, dialect: str) -> str | None:
    """Why the server no longer reads statements as the broker does; None if it still does."""
    sql = _CHECKS.get(dialect)
    if sql is None:
        return None  # SQLite has no such settings
    try:
        result = await conn.execute(sql)
        rows = [row async for row in result.rows]
    except StatementError:
        # An aborted transaction refuses every statement until ROLLBACK, which undoes SET
        # LOCAL and any SET made in it: nothing can run under a changed setting meanwhile.
        return None
    if not rows:
        return "the server did not report its settings"
    row = rows[0]
    if dialect == "postgres":
        encoding, conforming = str(row[0]).upper(), str(row[1]).lower()
        if encoding not in ("UTF8", "UTF-8"):
            return f"the session's client encoding changed to {encoding}"
        if conforming != "on":
            return "the session turned standard_conforming_strings off"
        return None
    client, connection, modes = (str(v or "") for v in row)
    for name, value in (("client", client), ("connection", connection)):
        if value.lower() != "utf8mb4":
            return f"the session's {name} character set changed to {value}"
    unsafe = [m for m in modes.split(",") if m.strip().upper() not in SAFE_SQL_MODES]
    if unsafe:
        return f"the session's sql_mode now holds {', '.join(unsafe)}"
    return None
