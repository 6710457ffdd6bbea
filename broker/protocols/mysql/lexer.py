"""MySQL's lexical rules, as far as the native proxy needs them: where a statement's code is
(outside strings, quoted names and comments), so that it can find the `?` placeholders of a
prepared statement, count the statements of a query, and see a KILL.

The broker fixes the session's sql_mode without ANSI_QUOTES and NO_BACKSLASH_ESCAPES, so
'…' and "…" are strings with backslash escapes, and `…` is a name. The content of an
executable comment (/*! … */, /*M! … */) is code, as the server reads it."""

from __future__ import annotations

import re

_VERSION = re.compile(r"\d{5,6}")
_KILL_QUERY = re.compile(r"\s*KILL\s+(?:(?:HARD|SOFT)\s+)?QUERY\s+(\d{1,10})\s*;?\s*", re.I)
# KILL is a reserved word: bare, it can only be the statement (t.kill and @kill are names).
_KILL = re.compile(r"(?<![\w$@.])KILL(?![\w$])", re.I)
_FIRST_WORD = re.compile(r"\s*(\(|[A-Za-z_]+)(\s+NOT\s+ATOMIC(?![\w$]))?", re.I)
# Statements the server answers with exactly one result (an OK, an error, or one result set).
_ONE_RESULT = frozenset(
    """
    ( SELECT WITH VALUES TABLE INSERT UPDATE DELETE REPLACE SET SHOW DESCRIBE DESC EXPLAIN
    USE CREATE DROP ALTER TRUNCATE RENAME GRANT REVOKE START BEGIN COMMIT ROLLBACK SAVEPOINT
    RELEASE LOCK UNLOCK DO ANALYZE OPTIMIZE CHECK CHECKSUM REPAIR FLUSH LOAD PREPARE
    DEALLOCATE HANDLER XA
    """.split()
)
_UTF8MB4 = r"""(?:utf8mb4|'utf8mb4'|"utf8mb4")"""
_COLLATION = r"""(?:utf8mb4_\w+|'utf8mb4_\w+'|"utf8mb4_\w+")"""
_NAMES_UTF8MB4 = re.compile(
    rf"\s*SET\s+NAMES\s+{_UTF8MB4}(?:\s+COLLATE\s+{_COLLATION})?\s*;?\s*", re.I
)


def code(sql: str) -> str:
    """SQL with the same length, where string literals and quoted names are "_" and comments
    (and the markers of executable comments) are blanks."""
    out = list(sql)
    n = len(sql)
    i = 0
    executable = False  # inside /*! … */

    def blank(start: int, end: int, fill: str) -> None:
        for k in range(start, min(end, n)):
            out[k] = fill if sql[k] not in "\r\n" else sql[k]

    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            end = _quoted_end(sql, i)
            blank(i, end, "_")
            i = end
        elif ch == "#" or (
            sql.startswith("--", i) and (i + 2 >= n or sql[i + 2].isspace() or sql[i + 2] < " ")
        ):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            blank(i, end, " ")
            i = end
        elif sql.startswith("/*", i):
            marker = 3 if sql.startswith("/*!", i) else 4 if sql.startswith("/*M!", i) else 0
            if marker and not executable:
                version = _VERSION.match(sql, i + marker)
                end = version.end() if version else i + marker
                blank(i, end, " ")
                executable = True
                i = end
            else:
                end = sql.find("*/", i + 2)
                end = n if end < 0 else end + 2
                blank(i, end, " ")
                i = end
        elif executable and sql.startswith("*/", i):
            blank(i, i + 2, " ")
            executable = False
            i += 2
        else:
            i += 1
    return "".join(out)


def _quoted_end(sql: str, start: int) -> int:
    """Where the string or quoted name that opens at START ends (the end of SQL if open)."""
    quote = sql[start]
    i = start + 1
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "\\" and quote != "`":
            i += 2
        elif ch == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def placeholders(sql: str) -> list[int]:
    """The positions of the `?` placeholders of a prepared statement's text."""
    return [i for i, ch in enumerate(code(sql)) if ch == "?"]


def statement_count(sql: str) -> int:
    """How many statements the server runs of SQL (empty ones between `;` do not count)."""
    return sum(1 for part in code(sql).split(";") if part.strip())


def kill_query(sql: str) -> int | None:
    """The thread id of `KILL [HARD|SOFT] QUERY <id>`, alone in SQL; None otherwise."""
    match = _KILL_QUERY.fullmatch(code(sql))
    return int(match.group(1)) if match else None


def has_kill(sql: str) -> bool:
    """Whether a statement of SQL is a KILL (in any form)."""
    return _KILL.search(code(sql)) is not None


# Statements after which what masking looked up before the command still holds (a write's
# taint is recorded when it is looked up); after any other (USE, DDL, CALL …) it may not.
_KEEPS_CATALOG = frozenset(
    """
    ( SELECT WITH VALUES TABLE INSERT UPDATE DELETE REPLACE SET SHOW DESCRIBE DESC EXPLAIN DO
    START BEGIN COMMIT ROLLBACK SAVEPOINT RELEASE LOCK UNLOCK HANDLER XA
    """.split()
)


def keeps_catalog(sql: str) -> bool:
    """Whether the relations and views named after statement SQL are those named before it."""
    return first_word(sql) in _KEEPS_CATALOG


def first_word(sql: str) -> str:
    """The statement's first keyword, upper case ("" when it starts otherwise)."""
    match = _FIRST_WORD.match(code(sql))
    return match.group(1).upper() if match else ""


def results_of(sql: str) -> str | None:
    """How the server answers statement SQL: "one" result, or "call": a procedure's result
    sets and then an OK; None when that cannot be told (EXECUTE of a prepared statement, a
    compound statement: BEGIN NOT ATOMIC, IF, a label …)."""
    match = _FIRST_WORD.match(code(sql))
    if match is None or match.group(2):
        return None
    word = match.group(1).upper()
    if word == "CALL":
        return "call"
    return "one" if word in _ONE_RESULT else None


def names_utf8mb4(sql: str) -> bool:
    """Whether SQL is only `SET NAMES utf8mb4 [COLLATE utf8mb4_…]` (drivers send it at
    connect), which the broker's session already is."""
    return _NAMES_UTF8MB4.fullmatch(sql) is not None
