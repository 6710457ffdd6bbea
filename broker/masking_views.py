"""Where each result column of a statement comes from, looked up against the live database so
that column rules also hold through views and `SELECT *` (the catalog the masking resolver needs)."""

from __future__ import annotations

from broker.masking import ColumnSource, column_sources_postgres, column_sources_sqlglot
from broker.targets.database import DatabaseConnection


async def column_sources(
    conn: DatabaseConnection, dialect: str, sql: str, columns: list[str]
) -> list[ColumnSource]:
    if dialect == "postgres":
        return column_sources_postgres(sql, columns)
    return column_sources_sqlglot(sql, dialect, columns)
