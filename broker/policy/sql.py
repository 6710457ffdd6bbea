"""Judging SQL text against a policy before any of it reaches the database.

The input is split into statements and every statement is classified: its kind
("SELECT", "DROP TABLE", "COPY TO PROGRAM", …), the tables it touches (inside CTEs,
subqueries, joins, INSERT … SELECT sources), whether an UPDATE or DELETE lacks a WHERE
clause, and the statements that run *inside* it (a data-modifying CTE, the statement of
EXPLAIN ANALYZE). PostgreSQL is parsed by the real PostgreSQL parser (pglast); MySQL and
SQLite are split by a lexer written after the servers' own rules for quotes and comments
and parsed, statement by statement, by sqlglot. Every statement is judged; the strongest
decision wins, and the caller runs nothing unless the whole input is allowed.

Anything that cannot be classified with certainty (a parse error, a DO block, a function
that runs SQL text, a MySQL executable comment, …) is "unknown" and gets the policy's
``on_unknown``. The module fails closed: an exception while judging yields ``deny``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import unicodedata
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import pglast
import pglast.keywords
import pglast.parser
import sqlglot.errors
from pglast import ast
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect as _GlotDialect
from sqlglot.errors import ErrorLevel
from sqlglot.tokens import TokenType

from broker.config import Policy, Rule
from broker.pglast_guard import TooComplex
from broker.pglast_guard import parse_sql as guarded_parse
from broker.policy.decision import Decision, combine, stronger
from broker.policy.sql_predicates import GlotPredicate, PgPredicate, Verdict
from broker.policy.sql_session import SessionState, effects_of_words, pg_state_problem
from broker.protocols import sql_unit
from broker.protocols.sql import SqlUnit

Dialect = str  # an SQL unit's name (broker.protocols)


class _QuietFallback(logging.Filter):
    """sqlglot logs a warning for every statement it parses as a generic Command; such a
    statement is unknown here and reported as such, so the warning is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


def _quiet_sqlglot() -> None:
    logger = logging.getLogger("sqlglot")
    if not any(isinstance(f, _QuietFallback) for f in logger.filters):
        logger.addFilter(_QuietFallback())


_quiet_sqlglot()

MAX_SQL = 1 << 20  # longer inputs are not inspected (unknown)

# Statement kinds that can lack a WHERE clause.
_WHERE_KINDS = ("UPDATE", "DELETE")


@dataclass(frozen=True)
class Statement:
    """One statement of the input, as the policy sees it."""

    kind: str  # upper-case kind, e.g. "SELECT", "DROP TABLE", "COPY TO PROGRAM"
    # Every table, view, sequence or index touched, lower-case, qualified as written
    # ("public.accounts" or "accounts"). A name part holding a dot is written in double
    # quotes: 'public."a.b"'. References to a CTE are not tables and are left out.
    tables: tuple[str, ...]
    text: str  # the statement's own source text
    # UPDATE/DELETE whose WHERE filters nothing (none, or one that folds to true); None when
    # the broker cannot show that it filters (broker.policy.sql_predicates).
    without_where: bool | None = False
    program: bool = False  # COPY … TO/FROM PROGRAM: the server runs a shell command
    unknown: str | None = None  # why this statement cannot be classified with certainty
    # What it can do, wherever it sits ("destroys", "writes", "reads", "session", "code");
    # an inner statement's effects are the enclosing statement's too.
    effects: frozenset[str] = frozenset()
    # Why the broker refuses this statement whatever the policy says: it would change how
    # the server reads the bytes of later statements (character set, quoting modes).
    refused: str | None = None
    # Statements that run as part of this one and are judged on their own: the DML of a
    # data-modifying CTE, the statement of EXPLAIN ANALYZE, the elements of CREATE SCHEMA.
    # Their ``text`` is the enclosing statement's text.
    inner: tuple[Statement, ...] = ()


@dataclass(frozen=True)
class ParsedSql:
    statements: tuple[Statement, ...]
    unknown: str | None  # whole-input problem (parse error); None if there is none


# --------------------------------------------------------------------------- decisions


def decide_sql(
    policy: Policy, text: str, dialect: Dialect, state: SessionState | None = None
) -> tuple[Decision, ParsedSql]:
    """Judge SQL text; never raises (an internal error is a deny).

    The decision covers the whole input: the caller runs none of it unless it is allow.
    STATE is what earlier input of the same session changed (an interactive shell passes the
    same object every time); it is updated with what this input may change.
    """
    try:
        parsed = parse_sql(text, dialect)
    except Exception as exc:
        message = _error_text(exc)
        return Decision("deny", None, f"policy error: {message}"), ParsedSql((), message)
    try:
        return _decide(policy, parsed, text, dialect, state), parsed
    except Exception as exc:
        return Decision("deny", None, f"policy error: {_error_text(exc)}"), parsed


def _error_text(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _decide(
    policy: Policy, parsed: ParsedSql, text: str, dialect: Dialect, state: SessionState | None
) -> Decision:
    if parsed.unknown is None and not parsed.statements:
        return Decision("allow", None, "nothing to run: the input holds no SQL statement")
    names = _Names(sql_unit(dialect), state)
    parts: list[Decision] = []
    for statement in parsed.statements:
        parts += _judge_all(policy, statement, names, inner=False)
        names.after(statement)
    if state is not None:
        # Whether or not this input runs: a changed search path only makes names less certain.
        state.names_unsure = state.names_unsure or names.unsure
    if parsed.unknown is None:
        return combine(parts)
    unknown = Decision(
        policy.on_unknown,
        None,
        f"cannot tell what this SQL does: {parsed.unknown}",
        unknown=True,
    )
    # What is known can only make the decision stricter, never more lenient.
    candidates = [*parts, _text_rule(policy, text)]
    stricter = [d for d in candidates if d and stronger(d.action, policy.on_unknown)]
    return combine([*stricter, unknown])


def _judge_all(policy: Policy, statement: Statement, names: _Names, inner: bool) -> list[Decision]:
    out = [_judge(policy, statement, names, inner)]
    for part in statement.inner:
        out += _judge_all(policy, part, names, inner=True)
    return out


def _label(rule: Rule, index: int) -> str:
    return rule.name or f"#{index + 1}"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _what(statement: Statement, inner: bool) -> str:
    if inner:
        return f"the {statement.kind} inside `{_short(statement.text)}`"
    return f"`{_short(statement.text)}`"


def _rule_decision(rule: Rule, index: int, statement: Statement, inner: bool) -> Decision:
    matched = statement.text
    if rule.regex is not None:
        found = re.search(rule.regex, statement.text)
        if found and found.group(0):
            matched = found.group(0)
    why = f"rule {_label(rule, index)} matched {_what(statement, inner)}"
    if rule.without_where is not None and statement.without_where is None:
        why += " (the broker cannot show that its WHERE clause filters rows)"
    return Decision(
        rule.action,
        rule.name or f"rule #{index + 1}",
        why,
        approvers=tuple(rule.approvers),
        approvals=rule.approvals,
        timeout=rule.timeout,
        reason_required=rule.reason_required,
        matched=matched,
    )


def _applies_to_sql(rule: Rule) -> bool:
    """Rules with SQL keys or a regex, or no match keys at all; never rules naming a program."""
    return rule.program is None and rule.args is None


def _judge(policy: Policy, statement: Statement, names: _Names, inner: bool) -> Decision:
    if statement.refused is not None:
        return Decision("deny", None, f"refused {_what(statement, inner)}: {statement.refused}")
    if statement.unknown is not None:
        # Allow rules cannot apply to what is not understood; a deny or review rule that
        # matches what is known of it may make it stricter than on_unknown.
        for index, rule in enumerate(policy.rules):
            if rule.action == "allow" or not _applies_to_sql(rule) or rule.rows_over:
                continue
            if _match(rule, statement, names):
                if stronger(rule.action, policy.on_unknown):
                    return _rule_decision(rule, index, statement, inner)
                break
        return Decision(
            policy.on_unknown,
            None,
            f"cannot tell what {_what(statement, inner)} does: {statement.unknown}",
            unknown=True,
        )
    for index, rule in enumerate(policy.rules):
        # A rows_over rule judges the result, not the statement (rows_rule).
        if _applies_to_sql(rule) and not rule.rows_over and _match(rule, statement, names):
            return _rule_decision(rule, index, statement, inner)
    return Decision(
        policy.default,
        None,
        f"no rule matched {_what(statement, inner)}; default {policy.default}",
    )


def rows_rule(policy: Policy, statement: Statement, dialect: Dialect) -> Rule | None:
    """The first `rows_over` rule that matches STATEMENT: it judges the statement's result
    (broker.sessions.rows_over). Names are matched as for a deny rule: loosely."""
    names = _Names(sql_unit(dialect))
    for rule in policy.rules:
        if rule.rows_over and _applies_to_sql(rule) and _match(rule, statement, names):
            return rule
    return None


def _match(rule: Rule, statement: Statement, names: _Names) -> bool:
    """All the SQL keys the rule gives must hold; a rule with none of them matches all."""
    if rule.statement is not None and not any(
        _kind_matches(entry, statement) for entry in rule.statement
    ):
        return False
    if rule.effect is not None and not statement.effects & set(rule.effect):
        return False
    if rule.without_where is not None and not _where_matches(rule, statement):
        return False
    if rule.tables is not None and not _tables_match(
        rule.tables, statement.tables, names, certain=rule.action == "allow"
    ):
        return False
    return rule.regex is None or re.search(rule.regex, statement.text) is not None


def _where_matches(rule: Rule, statement: Statement) -> bool:
    """A WHERE the broker cannot decide may be either: deny and review rules match it, allow
    rules do not."""
    if statement.kind not in _WHERE_KINDS:
        return False
    if statement.without_where is None:
        return rule.action != "allow"
    return statement.without_where == rule.without_where


def _words(kind: str) -> list[str]:
    return kind.upper().split()


def _kind_matches(entry: str, statement: Statement) -> bool:
    """``DROP`` matches the kinds DROP TABLE, DROP VIEW, …: whole words, from the start.

    The one alias: ``COPY PROGRAM`` matches COPY TO PROGRAM and COPY FROM PROGRAM."""
    want = _words(entry)
    if want == ["COPY", "PROGRAM"]:
        return statement.program
    have = _words(statement.kind)
    return bool(want) and have[: len(want)] == want


# ---------------------------------------------------------------------- table patterns


def _render_name(parts: tuple[str, ...]) -> str:
    out = []
    for part in parts:
        part = part.lower()
        if "." in part or '"' in part:
            part = '"' + part.replace('"', '""') + '"'
        out.append(part)
    return ".".join(out)


def _split_name(name: str) -> tuple[str, ...]:
    """The parts of a rendered name or a pattern: dots separate, double quotes protect."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == '"':
            j = i + 1
            while j < len(name):
                if name[j] == '"':
                    if name.startswith('""', j):
                        current.append('"')
                        j += 2
                        continue
                    break
                current.append(name[j])
                j += 1
            i = j + 1
        elif c == ".":
            parts.append("".join(current))
            current = []
            i += 1
        else:
            current.append(c)
            i += 1
    parts.append("".join(current))
    return tuple(parts)


class _Names:
    """Where an unqualified name may live, statement after statement of one input.

    PostgreSQL: the default search_path, ``public`` (and ``pg_catalog`` for ``pg_*``
    names). MySQL: the current database, which the policy does not know. SQLite: ``main``.
    After ``SET search_path``, an unknown statement (PostgreSQL) or ``ATTACH`` (SQLite),
    the schema of an unqualified name is unknown for the rest of the input.
    """

    def __init__(self, unit: SqlUnit, state: SessionState | None = None) -> None:
        self.unit = unit
        self.unsure = not unit.current_schema_known or (state is not None and state.names_unsure)

    def after(self, statement: Statement) -> None:
        kinds = [statement.kind, *(s.kind for s in statement.inner)]
        moved = statement.unknown is not None or "session" in statement.effects
        if self.unit.names_move_after_unknown and moved:
            self.unsure = True
        if any(k.startswith(self.unit.name_moving_kinds) for k in kinds):
            self.unsure = True

    def candidates(self, parts: tuple[str, ...]) -> list[tuple[str | None, ...]]:
        if len(parts) > 1:
            return [parts]
        schemas: list[str | None] = list(self.unit.default_schemas)
        catalog = self.unit.catalog_schema_prefix
        if catalog is not None and parts[0].startswith(catalog[0]):
            schemas.insert(0, catalog[1])
        if self.unsure:
            schemas.append(None)
        return [(schema, parts[0]) for schema in schemas]


def _parts_match(pattern: tuple[str, ...], name: tuple[str | None, ...], certain: bool) -> bool:
    """Match a pattern's parts against the last parts of a name. A part the name does not
    give (or an unknown schema) matches anything when ``certain`` is False, nothing when
    it is True."""
    for i in range(1, len(pattern) + 1):
        part = name[-i] if i <= len(name) else None
        if part is None:
            if certain:
                return False
            continue
        if not fnmatchcase(part, pattern[-i]):
            return False
    return True


def _tables_match(
    patterns: list[str], tables: tuple[str, ...], names: _Names, *, certain: bool
) -> bool:
    """deny/review rules (certain=False): some table could be one the patterns name.
    allow rules (certain=True): every table is certainly one the patterns name."""
    if not tables:
        return False
    compiled = [_split_name(p.lower()) for p in patterns]

    def matches(table: str) -> bool:
        candidates = names.candidates(_split_name(table.lower()))
        if certain:
            return bool(candidates) and all(
                any(_parts_match(p, c, True) for p in compiled) for c in candidates
            )
        if not candidates:  # an unqualified MySQL name: only its last part is known
            candidates = [(None, _split_name(table.lower())[-1])]
        return any(_parts_match(p, c, False) for p in compiled for c in candidates)

    if certain:
        return all(matches(t) for t in tables)
    return any(matches(t) for t in tables)


def _text_rule(policy: Policy, text: str) -> Decision | None:
    """The first regex-only rule that matches the whole input (used when it is unknown)."""
    for index, rule in enumerate(policy.rules):
        if (
            not _applies_to_sql(rule)
            or rule.regex is None
            or rule.statement is not None
            or rule.tables is not None
            or rule.without_where is not None
        ):
            continue
        if re.search(rule.regex, text):
            whole = Statement("UNKNOWN", (), text, unknown="")
            return _rule_decision(rule, index, whole, inner=False)
    return None


# ------------------------------------------------------------------------------ parsing


def parse_sql(text: str, dialect: Dialect) -> ParsedSql:
    """Split SQL text into classified statements; say why if it cannot be sure."""
    unit = sql_unit(dialect)
    if len(text) > MAX_SQL:
        return ParsedSql((), "the input is too long to inspect")
    if "\x00" in text:
        return ParsedSql((), "the input holds a NUL character")
    problem = _bad_char(text)
    try:
        if unit.parser == "pglast":
            parsed = _parse_pglast(text)
        else:
            parsed = _parse_glot(text, unit)
    except RecursionError:
        return ParsedSql((), "the SQL is nested too deeply to inspect")
    if problem is not None:
        unknown = f"{parsed.unknown}; {problem}" if parsed.unknown else problem
        parsed = ParsedSql(parsed.statements, unknown)
    return parsed


_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def _bad_char(text: str) -> str | None:
    """Control characters and bidirectional overrides can make text read differently to a
    reviewer than to the server."""
    for ch in text:
        if ch in "\t\n\r\f\v":
            continue
        if ch in _BIDI or unicodedata.category(ch) == "Cc":
            return f"the input holds the control character U+{ord(ch):04X}"
    return None


_KEYWORDS = {
    word.upper()
    for group in (
        pglast.keywords.RESERVED_KEYWORDS,
        pglast.keywords.UNRESERVED_KEYWORDS,
        pglast.keywords.COL_NAME_KEYWORDS,
        pglast.keywords.TYPE_FUNC_NAME_KEYWORDS,
    )
    for word in group
} | {
    "ATTACH", "DETACH", "PRAGMA", "VACUUM", "REINDEX", "REPLACE", "RENAME", "FLUSH",
    "INSTALL", "UNINSTALL", "PLUGIN", "SONAME", "INFILE", "OUTFILE", "DUMPFILE", "HANDLER",
    "TABLES", "PRIVILEGES", "KILL", "SHUTDOWN", "PURGE", "LOGS", "OPTIMIZE", "REPAIR",
    "CHECKSUM", "EVENT", "XA", "DELIMITER", "PASSWORD", "SLAVE", "REPLICA", "MASTER",
}  # fmt: skip
_WORD = re.compile(r"\s*([A-Za-z_]+)(?![A-Za-z0-9_$])")


def _guess_kind(code: str) -> str:
    """The kind of a statement that could not be parsed, guessed from its first keywords
    (only used to let deny and review rules make an unknown statement stricter)."""
    words: list[str] = []
    pos = 0
    while len(words) < 3:
        found = _WORD.match(code, pos)
        if not found or (words and found.group(1).upper() not in _KEYWORDS):
            break
        words.append(found.group(1).upper())
        pos = found.end()
    return " ".join(words) or "UNKNOWN"


def _dedupe(names: list[tuple[str, ...]]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for parts in names:
        if parts and all(parts):
            out[_render_name(parts)] = None
    return tuple(out)


# --------------------------------------------------------------------------- PostgreSQL

_PG_DML = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_PG_WITH = (ast.SelectStmt, *_PG_DML)

_PG_KINDS: dict[str, str] = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CreateStmt": "CREATE TABLE",
    "CreateForeignTableStmt": "CREATE FOREIGN TABLE",
    "ViewStmt": "CREATE VIEW",
    "IndexStmt": "CREATE INDEX",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "CreateSchemaStmt": "CREATE SCHEMA",
    "CreatedbStmt": "CREATE DATABASE",
    "CreateRoleStmt": "CREATE ROLE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CreateExtensionStmt": "CREATE EXTENSION",
    "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER",
    "CreateForeignServerStmt": "CREATE SERVER",
    "CreateUserMappingStmt": "CREATE USER MAPPING",
    "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
    "CreatePolicyStmt": "CREATE POLICY",
    "CreatePublicationStmt": "CREATE PUBLICATION",
    "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
    "CreateAmStmt": "CREATE ACCESS METHOD",
    "CreateCastStmt": "CREATE CAST",
    "CreateConversionStmt": "CREATE CONVERSION",
    "CreateDomainStmt": "CREATE DOMAIN",
    "CreateEnumStmt": "CREATE TYPE",
    "CreateRangeStmt": "CREATE TYPE",
    "CompositeTypeStmt": "CREATE TYPE",
    "CreateOpClassStmt": "CREATE OPERATOR CLASS",
    "CreateOpFamilyStmt": "CREATE OPERATOR FAMILY",
    "CreateStatsStmt": "CREATE STATISTICS",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "CreateTransformStmt": "CREATE TRANSFORM",
    "RuleStmt": "CREATE RULE",
    "DropdbStmt": "DROP DATABASE",
    "DropRoleStmt": "DROP ROLE",
    "DropOwnedStmt": "DROP OWNED",
    "ReassignOwnedStmt": "REASSIGN OWNED",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    "DropSubscriptionStmt": "DROP SUBSCRIPTION",
    "DropUserMappingStmt": "DROP USER MAPPING",
    "TruncateStmt": "TRUNCATE",
    "AlterRoleStmt": "ALTER ROLE",
    "AlterRoleSetStmt": "ALTER ROLE",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES",
    "AlterDatabaseStmt": "ALTER DATABASE",
    "AlterDatabaseSetStmt": "ALTER DATABASE",
    "AlterDatabaseRefreshCollStmt": "ALTER DATABASE",
    "AlterSystemStmt": "ALTER SYSTEM",
    "AlterDomainStmt": "ALTER DOMAIN",
    "AlterEnumStmt": "ALTER TYPE",
    "AlterTypeStmt": "ALTER TYPE",
    "AlterSeqStmt": "ALTER SEQUENCE",
    "AlterExtensionStmt": "ALTER EXTENSION",
    "AlterExtensionContentsStmt": "ALTER EXTENSION",
    "AlterFdwStmt": "ALTER FOREIGN DATA WRAPPER",
    "AlterForeignServerStmt": "ALTER SERVER",
    "AlterUserMappingStmt": "ALTER USER MAPPING",
    "AlterPolicyStmt": "ALTER POLICY",
    "AlterPublicationStmt": "ALTER PUBLICATION",
    "AlterSubscriptionStmt": "ALTER SUBSCRIPTION",
    "AlterEventTrigStmt": "ALTER EVENT TRIGGER",
    "AlterCollationStmt": "ALTER COLLATION",
    "AlterOpFamilyStmt": "ALTER OPERATOR FAMILY",
    "AlterOperatorStmt": "ALTER OPERATOR",
    "AlterStatsStmt": "ALTER STATISTICS",
    "AlterTSConfigurationStmt": "ALTER TEXT SEARCH CONFIGURATION",
    "AlterTSDictionaryStmt": "ALTER TEXT SEARCH DICTIONARY",
    "AlterTableSpaceOptionsStmt": "ALTER TABLESPACE",
    "CommentStmt": "COMMENT",
    "SecLabelStmt": "SECURITY LABEL",
    "CallStmt": "CALL",
    "DoStmt": "DO",
    "VariableShowStmt": "SHOW",
    "DiscardStmt": "DISCARD",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE",
    "DeclareCursorStmt": "DECLARE",
    "ClosePortalStmt": "CLOSE",
    "LockStmt": "LOCK",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "NotifyStmt": "NOTIFY",
    "LoadStmt": "LOAD",
    "CheckPointStmt": "CHECKPOINT",
    "ClusterStmt": "CLUSTER",
    "ReindexStmt": "REINDEX",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
    "ExplainStmt": "EXPLAIN",
}

# Statements whose effect is code the broker does not see.
_PG_OPAQUE: dict[str, str] = {
    "DoStmt": "the code of a DO block is not inspected",
    "CreateFunctionStmt": "the body of a function or procedure is not inspected",
    "ExecuteStmt": "EXECUTE runs a prepared statement the broker cannot see",
    "PrepareStmt": "PREPARE stores a statement that EXECUTE runs later",
    "LoadStmt": "LOAD runs the code of a shared library",
    "PLAssignStmt": "a PL/pgSQL assignment is not SQL the broker inspects",
}

_PG_FUNCTIONS: dict[str, str] = {
    "set_config": "changes a setting (such as the role) at run time",
    "pg_read_file": "reads a file on the server",
    "pg_read_binary_file": "reads a file on the server",
    "pg_stat_file": "reads a file on the server",
    "pg_ls_dir": "lists a directory on the server",
    "pg_file_write": "writes a file on the server",
    "pg_file_rename": "renames a file on the server",
    "pg_file_unlink": "deletes a file on the server",
    "lo_import": "reads a file on the server",
    "lo_export": "writes a file on the server",
    "ts_stat": "runs SQL given as text",
}
_PG_FUNCTION_PREFIXES: dict[str, str] = {
    "dblink": "runs SQL given as text",
    "query_to_xml": "runs SQL given as text",
    "cursor_to_xml": "reads a cursor the broker cannot see",
    "table_to_xml": "reads a table named by a string",
    "schema_to_xml": "reads a whole schema",
    "database_to_xml": "reads the whole database",
    "pg_ls_": "lists a directory on the server",
}

_OBJECT_WORDS = {
    "MATVIEW": "MATERIALIZED VIEW",
    "FDW": "FOREIGN DATA WRAPPER",
    "FOREIGN_SERVER": "SERVER",
    "STATISTIC_EXT": "STATISTICS",
    "TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "TSPARSER": "TEXT SEARCH PARSER",
    "TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "OPCLASS": "OPERATOR CLASS",
    "OPFAMILY": "OPERATOR FAMILY",
    "LARGEOBJECT": "LARGE OBJECT",
    "TABCONSTRAINT": "CONSTRAINT",
    "DOMCONSTRAINT": "DOMAIN CONSTRAINT",
    "DEFACL": "DEFAULT PRIVILEGES",
    "AMOP": "OPERATOR",
    "AMPROC": "FUNCTION",
    "PARAMETER_ACL": "PARAMETER",
    "PUBLICATION_NAMESPACE": "PUBLICATION",
    "PUBLICATION_REL": "PUBLICATION",
}
# Objects of DROP that are relations (their names are tables for `tables` rules), and
# objects named "x ON table" (the table is touched).
_PG_RELATIONS = {"TABLE", "VIEW", "MATVIEW", "FOREIGN_TABLE", "SEQUENCE", "INDEX"}
_PG_ON_TABLE = {"TRIGGER", "RULE", "POLICY"}

_PG_TRANSACTIONS = {
    "BEGIN": "BEGIN",
    "START": "BEGIN",
    "COMMIT": "COMMIT",
    "ROLLBACK": "ROLLBACK",
    "SAVEPOINT": "SAVEPOINT",
    "RELEASE": "RELEASE SAVEPOINT",
    "ROLLBACK_TO": "ROLLBACK TO SAVEPOINT",
    "PREPARE": "PREPARE TRANSACTION",
    "COMMIT_PREPARED": "COMMIT PREPARED",
    "ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}
_PG_SETTINGS = {
    "role": "SET ROLE",
    "session_authorization": "SET SESSION AUTHORIZATION",
    "search_path": "SET SEARCH_PATH",
    "transaction": "SET TRANSACTION",
    "session characteristics": "SET SESSION CHARACTERISTICS",
}


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value))


def _object_words(objtype: Any) -> str:
    name = _enum_name(objtype).removeprefix("OBJECT_")
    return _OBJECT_WORDS.get(name, name.replace("_", " "))


def _pg_kind(node: ast.Node) -> str | None:
    name = type(node).__name__
    if name in _PG_KINDS:
        return _PG_KINDS[name]
    if isinstance(node, ast.SelectStmt):
        return "CREATE TABLE AS" if node.intoClause is not None else "SELECT"
    if isinstance(node, ast.CreateTableAsStmt):
        words = _object_words(node.objtype)
        return "CREATE TABLE AS" if words == "TABLE" else f"CREATE {words}"
    if isinstance(node, ast.DropStmt):
        return f"DROP {_object_words(node.removeType)}"
    if isinstance(node, ast.AlterTableStmt | ast.AlterTableMoveAllStmt):
        return f"ALTER {_object_words(node.objtype)}"
    if isinstance(node, ast.RenameStmt):
        objtype = node.renameType
        if _enum_name(objtype) in ("OBJECT_COLUMN", "OBJECT_TABCONSTRAINT", "OBJECT_ATTRIBUTE"):
            objtype = node.relationType
        return f"ALTER {_object_words(objtype)}"
    if isinstance(
        node, ast.AlterObjectSchemaStmt | ast.AlterOwnerStmt | ast.AlterObjectDependsStmt
    ):
        return f"ALTER {_object_words(node.objectType)}"
    if isinstance(node, ast.AlterFunctionStmt):
        return f"ALTER {_object_words(node.objtype)}"
    if isinstance(node, ast.DefineStmt):
        return f"CREATE {_object_words(node.kind)}"
    if isinstance(node, ast.CreateFunctionStmt):
        return "CREATE PROCEDURE" if node.is_procedure else "CREATE FUNCTION"
    if isinstance(node, ast.GrantStmt):
        return "GRANT" if node.is_grant else "REVOKE"
    if isinstance(node, ast.GrantRoleStmt):
        return "GRANT ROLE" if node.is_grant else "REVOKE ROLE"
    if isinstance(node, ast.CopyStmt):
        direction = "COPY FROM" if node.is_from else "COPY TO"
        if node.is_program:
            return f"{direction} PROGRAM"
        return f"{direction} FILE" if node.filename is not None else direction
    if isinstance(node, ast.VariableSetStmt):
        if _enum_name(node.kind) in ("VAR_RESET", "VAR_RESET_ALL"):
            return "RESET"
        return _PG_SETTINGS.get((node.name or "").lower(), "SET")
    if isinstance(node, ast.TransactionStmt):
        return _PG_TRANSACTIONS.get(_enum_name(node.kind).removeprefix("TRANS_STMT_"))
    if isinstance(node, ast.FetchStmt):
        return "MOVE" if node.ismove else "FETCH"
    if isinstance(node, ast.VacuumStmt):
        return "VACUUM" if node.is_vacuumcmd else "ANALYZE"
    return None


def _pg_nodes(value: Any) -> Iterator[ast.Node]:
    if isinstance(value, ast.Node):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _pg_nodes(item)


def _pg_children(node: ast.Node, skip: tuple[str, ...] = ()) -> Iterator[ast.Node]:
    for name in node:
        if name not in skip:
            yield from _pg_nodes(getattr(node, name, None))


def _pg_descendants(node: ast.Node) -> Iterator[ast.Node]:
    yield node
    for child in _pg_children(node):
        yield from _pg_descendants(child)


def _pg_function_problem(name: str) -> str | None:
    name = name.lower()
    if name in _PG_FUNCTIONS:
        return f"the function {name}() {_PG_FUNCTIONS[name]}"
    for prefix, why in _PG_FUNCTION_PREFIXES.items():
        if name.startswith(prefix):
            return f"the function {name}() {why}"
    return None


# Settings set_config() may change without the statement being unknown: search_path moves
# where unqualified names are found (as SET search_path does: names are unsure after it), and
# restrict_nonsystem_relation_kind only forbids (pg_dump sets both first).
_SAFE_SETTINGS = frozenset({"search_path", "restrict_nonsystem_relation_kind"})


def _pg_sets_safe_setting(node: ast.FuncCall, names: tuple[str, ...], named: str | None) -> bool:
    """set_config('<a safe setting>', …, …), its name written out, or given as the `name`
    column of pg_settings filtered to that one setting (NAMED). Any other setting, or one
    named at run time, stays unknown."""
    if [n.lower() for n in names] not in (["set_config"], ["pg_catalog", "set_config"]):
        return False
    args = node.args or ()
    if len(args) != 3:
        return False
    first = args[0]
    if isinstance(first, ast.A_Const) and isinstance(first.val, ast.String):
        return first.val.sval.lower() in _SAFE_SETTINGS
    column = _pg_strings(first.fields) if isinstance(first, ast.ColumnRef) else ()
    return column == ("name",) and named is not None and named.lower() in _SAFE_SETTINGS


def _pg_settings_filter(node: ast.Node) -> str | None:
    """For `… FROM pg_settings WHERE name = '<x>'` (one relation, that one filter): x."""
    if not isinstance(node, ast.SelectStmt) or len(node.fromClause or ()) != 1:
        return None
    (source,) = node.fromClause
    if not isinstance(source, ast.RangeVar) or source.relname != "pg_settings":
        return None
    if source.schemaname not in (None, "pg_catalog") or source.catalogname:
        return None
    where = node.whereClause
    if not isinstance(where, ast.A_Expr) or _pg_strings(where.name or ()) != ("=",):
        return None
    left, right = where.lexpr, where.rexpr
    if not isinstance(left, ast.ColumnRef) or _pg_strings(left.fields) != ("name",):
        return None
    if isinstance(right, ast.A_Const) and isinstance(right.val, ast.String):
        return str(right.val.sval)
    return None


def _pg_false(arg: Any) -> bool:
    """True for an EXPLAIN option value that turns the option off (false, off, 0)."""
    if isinstance(arg, ast.String):
        return arg.sval.lower() in ("false", "off", "no", "0")
    if isinstance(arg, ast.Integer):
        return arg.ival == 0
    if isinstance(arg, ast.Boolean):
        return not arg.boolval
    return False


def _pg_explain_runs(node: ast.ExplainStmt) -> bool:
    """EXPLAIN ANALYZE executes the statement it explains. PostgreSQL reads the options in
    order and the last of a repeated option wins: (ANALYZE off, ANALYZE on) runs it."""
    runs = False
    for option in node.options or ():
        if str(getattr(option, "defname", "")).lower() == "analyze":
            runs = not _pg_false(getattr(option, "arg", None))
    return runs


def _without_where(verdict: Verdict) -> bool | None:
    return {"true": True, "false": False, "bound": False}.get(verdict)


def _pg_without_where(node: ast.UpdateStmt | ast.DeleteStmt) -> bool | None:
    relation = node.relation
    target = {relation.relname} if relation is not None and relation.relname else set()
    if relation is not None and relation.alias is not None:
        target = {relation.alias.aliasname}  # once aliased, the table name no longer qualifies
    extra = node.usingClause if isinstance(node, ast.DeleteStmt) else node.fromClause
    judge = PgPredicate(target, joined=bool(extra))
    return _without_where(judge.verdict(node.whereClause))


# What a statement can do, by parse node; anything not listed writes.
_PG_DESTROYS = {
    "DeleteStmt",
    "UpdateStmt",
    "TruncateStmt",
    "DropStmt",
    "DropdbStmt",
    "DropRoleStmt",
    "DropOwnedStmt",
    "DropTableSpaceStmt",
    "DropSubscriptionStmt",
    "DropUserMappingStmt",
    "RenameStmt",
    "ReassignOwnedStmt",
    "AlterObjectSchemaStmt",  # SET SCHEMA moves the object away from where it was
}
_PG_SESSION = {
    "VariableSetStmt",
    "DiscardStmt",
    "TransactionStmt",
    "LockStmt",
    "ListenStmt",
    "UnlistenStmt",
    "DeclareCursorStmt",
    "ClosePortalStmt",
    "FetchStmt",
    "DeallocateStmt",
    "ConstraintsSetStmt",
    "PrepareStmt",
}
_PG_READS = {"SelectStmt", "VariableShowStmt", "ExplainStmt"}
_PG_CODE = {
    "DoStmt", "CreateFunctionStmt", "CallStmt", "ExecuteStmt", "LoadStmt", "CreateTrigStmt",
    "CreateEventTrigStmt", "RuleStmt", "CreatePLangStmt", "CreateExtensionStmt",
    "PLAssignStmt",
}  # fmt: skip


def _pg_alter_destroys(node: ast.AlterTableStmt) -> bool:
    """ALTER TABLE … DROP …, DETACH PARTITION, or a column type change (values are rewritten)."""
    for cmd in node.cmds or ():
        subtype = _enum_name(getattr(cmd, "subtype", ""))
        if "DROP" in subtype.upper() or "DETACH" in subtype.upper():
            return True
        if subtype in ("AT_AlterColumnType", "AT_SetExpression"):
            return True
    return False


def _pg_effects(node: ast.Node, program: bool, opaque: bool) -> set[str]:
    name = type(node).__name__
    effects: set[str] = set()
    if name in _PG_DESTROYS:
        effects |= {"destroys", "writes"}
    elif name in _PG_SESSION:
        effects.add("session")
    elif name in _PG_READS:
        effects.add("reads")
    elif name in _PG_CODE:
        effects.add("code")
    else:
        effects.add("writes")
    if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
        effects.add("writes")
    if isinstance(node, ast.CopyStmt):
        effects = {"writes"} if node.is_from else {"reads"}
    if isinstance(node, ast.AlterTableStmt) and _pg_alter_destroys(node):
        effects.add("destroys")
    if isinstance(node, ast.InsertStmt) and node.onConflictClause is not None:
        if _enum_name(node.onConflictClause.action) == "ONCONFLICT_UPDATE":
            effects.add("destroys")  # an upsert overwrites the rows it conflicts with
    if isinstance(node, ast.MergeStmt) and _pg_merge_branches(node):
        effects.add("destroys")
    if any(isinstance(n, ast.SelectStmt) and n.valuesLists is None for n in _pg_descendants(node)):
        effects.add("reads")
    if getattr(node, "returningList", None):
        effects.add("reads")
    if program or opaque:
        effects.add("code")
    return effects


def _pg_merge_branches(node: ast.MergeStmt) -> list[str]:
    """The kinds (UPDATE, DELETE) of the MERGE branches that change or remove target rows."""
    kinds = []
    for clause in node.mergeWhenClauses or ():
        command = _enum_name(getattr(clause, "commandType", ""))
        if command == "CMD_DELETE":
            kinds.append("DELETE")
        elif command == "CMD_UPDATE":
            kinds.append("UPDATE")
    return list(dict.fromkeys(kinds))


def _pg_strings(items: Any) -> tuple[str, ...]:
    return tuple(getattr(item, "sval", "") or "" for item in items or ())


class _PgWalk:
    """Tables, problems and nested statements of one statement's parse tree."""

    def __init__(self) -> None:
        self.tables: list[tuple[str, ...]] = []
        self.problems: list[str] = []
        self.nested: list[tuple[ast.Node, frozenset[str]]] = []
        self.settings = False  # sets a setting that only moves names or restricts
        self.named_setting: str | None = None  # FROM pg_settings WHERE name = '…'

    def visit(self, node: ast.Node, scope: frozenset[str], collect: bool, root: bool) -> None:
        if not root and collect and isinstance(node, _PG_DML):
            self.nested.append((node, scope))
            collect = False  # statements nested in it are found when it is classified
        if isinstance(node, ast.RangeVar):
            self._range_var(node, scope, force=False)
            return
        problem = _PG_OPAQUE.get(type(node).__name__)
        if problem is not None:
            self.problems.append(problem)
        if isinstance(node, ast.FuncCall):
            names = _pg_strings(node.funcname)
            if _pg_sets_safe_setting(node, names, self.named_setting):
                self.settings = True
            else:
                problem = _pg_function_problem(names[-1]) if names else None
                if problem is not None:
                    self.problems.append(problem)
        if isinstance(node, ast.DropStmt):
            self._dropped(node)
        skip: tuple[str, ...] = ()
        if isinstance(node, _PG_DML) and node.relation is not None:
            self._range_var(node.relation, scope, force=True)  # a target is never a CTE
            skip = ("relation",)
        if isinstance(node, ast.IntoClause) and node.rel is not None:
            self._range_var(node.rel, scope, force=True)
            skip = ("rel",)
        with_clause = node.withClause if isinstance(node, _PG_WITH) else None
        if with_clause is not None:
            ctes = list(with_clause.ctes or ())
            names = [cte.ctename for cte in ctes]
            for index, cte in enumerate(ctes):
                visible = names if with_clause.recursive else names[:index]
                if cte.ctequery is not None:
                    self.visit(cte.ctequery, scope | set(visible), collect, root=False)
            scope = scope | set(names)
            skip += ("withClause",)
        for child in _pg_children(node, skip):
            self.visit(child, scope, collect, root=False)

    def _range_var(self, node: ast.RangeVar, scope: frozenset[str], force: bool) -> None:
        parts = (node.catalogname, node.schemaname, node.relname)
        qualified = tuple(p for p in parts if p)
        if not force and len(qualified) == 1 and qualified[0] in scope:
            return  # a reference to a CTE
        self.tables.append(qualified)

    def _dropped(self, node: ast.DropStmt) -> None:
        removed = _enum_name(node.removeType).removeprefix("OBJECT_")
        for obj in node.objects or ():
            if not isinstance(obj, list | tuple):
                continue
            names = _pg_strings(obj)
            if removed in _PG_RELATIONS:
                self.tables.append(names)
            elif removed in _PG_ON_TABLE and len(names) > 1:
                self.tables.append(names[:-1])


def _pg_statement(node: ast.Node, text: str, scope: frozenset[str] = frozenset()) -> Statement:
    walk = _PgWalk()
    inner_nodes: list[tuple[ast.Node, frozenset[str]]] = []
    if isinstance(node, ast.ExplainStmt):
        walk.visit(node, scope, collect=False, root=True)
        if _pg_explain_runs(node) and node.query is not None:
            inner_nodes.append((node.query, scope))
    elif isinstance(node, ast.CreateSchemaStmt):
        walk.visit(node, scope, collect=False, root=True)
        inner_nodes += [(element, scope) for element in _pg_nodes(node.schemaElts)]
    else:
        walk.named_setting = _pg_settings_filter(node)
        walk.visit(node, scope, collect=True, root=True)
        inner_nodes += walk.nested
    kind = _pg_kind(node)
    unknown = walk.problems[0] if walk.problems else None
    if kind is None:
        kind = type(node).__name__.removesuffix("Stmt").upper()
        unknown = unknown or f"the statement type {type(node).__name__} is not classified"
    program = isinstance(node, ast.CopyStmt) and bool(node.is_program)
    inner = [_pg_statement(n, text, s) for n, s in inner_nodes]
    if isinstance(node, ast.MergeStmt):
        # Which target rows a branch updates or deletes is decided by the join with the
        # source, which the broker cannot bound: each such branch is an UPDATE or DELETE
        # without WHERE on the target.
        target = _dedupe([_pg_range_parts(node.relation)]) if node.relation else ()
        inner += [
            Statement(branch, target, text, without_where=True, effects=_DESTROYS)
            for branch in _pg_merge_branches(node)
        ]
    effects = _pg_effects(node, program, bool(walk.problems))
    for part in inner:
        effects |= part.effects
    if walk.settings:
        effects.add("session")
    return Statement(
        kind=kind,
        tables=_dedupe(walk.tables),
        text=text,
        without_where=_pg_without_where(node)
        if isinstance(node, ast.UpdateStmt | ast.DeleteStmt)
        else False,
        program=program,
        unknown=unknown,
        effects=frozenset(effects),
        refused=pg_state_problem(node),
        inner=tuple(inner),
    )


_DESTROYS = frozenset({"destroys", "writes"})


def _pg_range_parts(node: ast.RangeVar) -> tuple[str, ...]:
    return tuple(p for p in (node.catalogname, node.schemaname, node.relname) if p)


def _pg_ambiguous_strings(text: str) -> str | None:
    """A backslash before a quote in a '…' string ends the string only while
    standard_conforming_strings is on (the default); a session may have turned it off."""
    try:
        tokens = pglast.parser.scan(text)
    except pglast.parser.ParseError:
        return None  # reported by the parser
    for token in tokens:
        if token.name != "SCONST":
            continue
        raw = text[token.start : token.end + 1]
        quote = raw.find("'")
        # '…', N'…' and U&'…' strings; not E'…' (always escaped) nor $$…$$ (never)
        if quote < 0 or raw[:quote].upper() not in ("", "N", "U&") or "\\" not in raw:
            continue
        if _backslash_quote(raw[quote + 1 :], "'"):
            return (
                "a backslash before a quote in a string: its meaning depends on the "
                "server's standard_conforming_strings setting"
            )
    return None


def _backslash_quote(body: str, quote: str) -> bool:
    i = 0
    while i < len(body):
        if body[i] == "\\":
            if body[i + 1 : i + 2] == quote:
                return True
            i += 2
            continue
        i += 1
    return False


def _pg_slice(text: str, raw: ast.RawStmt, offset: int = 0) -> str:
    start = (raw.stmt_location or 0) + offset
    end = start + raw.stmt_len if raw.stmt_len else len(text)
    return text[start:end].strip()


def _parse_pglast(text: str) -> ParsedSql:
    ambiguous = _pg_ambiguous_strings(text)
    try:
        raws = guarded_parse(text)
    except pglast.parser.ParseError as exc:
        return _pg_fallback(text, f"cannot parse: {exc.args[0] if exc.args else exc}")
    except TooComplex as exc:
        return ParsedSql((), str(exc))
    statements = tuple(_pg_statement(raw.stmt, _pg_slice(text, raw)) for raw in raws)
    return ParsedSql(statements, ambiguous)


def _pg_fallback(text: str, problem: str) -> ParsedSql:
    """The input does not parse: split it at the scanner's semicolons and classify the
    pieces that parse alone, so that what is known can still make the decision stricter."""
    try:
        tokens = pglast.parser.scan(text)
    except pglast.parser.ParseError:
        return ParsedSql((), problem)
    chunks: list[tuple[int, int]] = []
    start = end = None
    code = list(text)
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            for i in range(token.start, token.end + 1):
                code[i] = " " if text[i] != "\n" else "\n"
            continue
        if token.name == "ASCII_59":
            if start is not None and end is not None:
                chunks.append((start, end))
            start = end = None
            continue
        start = token.start if start is None else start
        end = token.end + 1
    if start is not None and end is not None:
        chunks.append((start, end))
    blanked = "".join(code)
    statements: list[Statement] = []
    for start, end in chunks:
        chunk = text[start:end]
        try:
            raws = guarded_parse(chunk)
        except (pglast.parser.ParseError, TooComplex) as exc:
            reason = f"cannot parse: {exc.args[0] if exc.args else exc}"
            code = blanked[start:end]
            effects = effects_of_words(code)
            statements.append(
                Statement(_guess_kind(code), (), chunk, unknown=reason, effects=effects)
            )
            continue
        statements += [_pg_statement(raw.stmt, _pg_slice(chunk, raw)) for raw in raws]
    return ParsedSql(tuple(statements), problem)


# --------------------------------------------------------------------- MySQL and SQLite


@dataclass
class _Lexed:
    code: str  # the text with comments blanked out (same length, newlines kept)
    chunks: list[tuple[int, int]]  # each statement: first to one past the last code char
    quoted: list[tuple[int, int]]  # strings and quoted identifiers: opening to closing quote
    problems: list[str]


def _lex(text: str, unit: SqlUnit) -> _Lexed:
    """Find statements, strings and comments the way the server's own lexer does.

    MySQL: '…' and "…" strings with backslash escapes and doubled quotes, `…` identifiers,
    # and `-- ` comments (the dashes followed by a space or control character), /* … */.
    SQLite: '…' strings, "…", `…` and […] identifiers, -- and /* … */ comments (an
    unterminated /* comment runs to the end)."""
    quotes = "'\"" + "`" * unit.backtick_identifiers + "[" * unit.bracket_identifiers
    code = list(text)
    chunks: list[tuple[int, int]] = []
    quoted: list[tuple[int, int]] = []
    problems: list[str] = []
    start: int | None = None
    last = 0
    i, n = 0, len(text)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if code[k] != "\n":
                code[k] = " "

    while i < n:
        c = text[i]
        if c in " \t\n\r\f\v":
            i += 1
            continue
        line_comment = (unit.hash_comments and c == "#") or (
            text.startswith("--", i)
            and (
                not unit.dash_comment_needs_space
                or i + 2 >= n
                or ord(text[i + 2]) <= 32
                or ord(text[i + 2]) == 127
            )
        )
        if line_comment:
            end = text.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
            continue
        if text.startswith("/*", i):
            executable = unit.executable_comments and (
                text.startswith("/*!", i) or text.startswith("/*M!", i)
            )
            if executable:
                problems.append("a /*! … */ comment, whose content the server executes")
            end = text.find("*/", i + 2)
            if end < 0:
                if not unit.open_comment_ends_input:
                    problems.append("an unterminated /* comment")
                end = n
            else:
                end += 2
            blank(i, end)
            if executable:
                # It is code to MySQL: it stays part of the statement that runs, even at its
                # end (`UPDATE t SET v = 1 /*! WHERE id = 1 */` must not lose its WHERE).
                start = i if start is None else start
                last = end
            i = end
            continue
        if c == ";":
            if start is not None:
                chunks.append((start, last))
            start = None
            i += 1
            continue
        if start is None:
            start = i
        if c in quotes:
            close = "]" if c == "[" else c
            j = i + 1
            while True:
                if j >= n:
                    problems.append("an unterminated quoted string or identifier")
                    break
                ch = text[j]
                if unit.backslash_escapes and c != "`" and ch == "\\":
                    if text[j + 1 : j + 2] == c:
                        problems.append(
                            "a backslash before a quote in a string: its meaning depends "
                            "on the server's NO_BACKSLASH_ESCAPES and ANSI_QUOTES modes"
                        )
                    j += 2
                    continue
                if ch == close:
                    if close != "]" and text[j + 1 : j + 2] == close:
                        j += 2
                        continue
                    break
                j += 1
            j = min(j, n - 1)
            quoted.append((i, j))
            i = last = j + 1
            continue
        if not c.isascii() and c.isspace():
            problems.append(f"the unusual space character U+{ord(c):04X} outside a string")
        i += 1
        last = i
    if start is not None:
        chunks.append((start, last))
    return _Lexed("".join(code), chunks, quoted, list(dict.fromkeys(problems)))


_GLOT_STRINGS = {
    TokenType.STRING,
    TokenType.IDENTIFIER,
    TokenType.BIT_STRING,
    TokenType.HEX_STRING,
    TokenType.BYTE_STRING,
    TokenType.NATIONAL_STRING,
    TokenType.NATIONAL_RAW_STRING,
    TokenType.RAW_STRING,
    TokenType.HEREDOC_STRING,
    TokenType.UNICODE_STRING,
}


def _tokens_disagree(tokens: list[Any], code: str, quoted: list[tuple[int, int]]) -> str | None:
    """sqlglot must see the same strings, no comment and no semicolon in a statement the
    broker's lexer delimited; otherwise the two read the text differently."""
    starts = {end: begin for begin, end in quoted}
    inside = bytearray(len(code))
    for begin, end in quoted:
        inside[begin : end + 1] = b"\x01" * (end + 1 - begin)
    seen: set[int] = set()
    for token in tokens:
        if token.comments:
            return "the SQL parser sees a comment the lexer does not"
        if token.token_type == TokenType.SEMICOLON:
            return "the SQL parser sees a ';' the lexer does not"
        begin, end = token.start, token.end
        opening = starts.get(end)
        if opening is not None and begin <= opening and re.fullmatch(r"\w*", code[begin:opening]):
            seen.add(end)
            continue
        if any(inside[begin : end + 1]):
            return "the SQL parser reads a string or identifier differently"
        if token.token_type in _GLOT_STRINGS and any(q in code[begin : end + 1] for q in "'\"`["):
            return "the SQL parser sees a string the lexer does not"
    if len(seen) != len(quoted):
        return "the SQL parser reads a string or identifier differently"
    return None


_GLOT_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_GLOT_RELATIONS = {"TABLE", "VIEW", "INDEX", "SEQUENCE"}


class _GlotWalk:
    def __init__(self, unit: SqlUnit) -> None:
        self.functions = unit.dangerous_functions
        self.tables: list[tuple[str, ...]] = []
        self.problems: list[str] = []
        self.nested: list[tuple[exp.Expression, frozenset[str]]] = []
        self.targets: set[int] = set()
        self.ignored: set[int] = set()

    def visit(self, node: exp.Expression, scope: frozenset[str], collect: bool, root: bool) -> None:
        if not root and collect and isinstance(node, _GLOT_DML):
            self.nested.append((node, scope))
            collect = False
        if isinstance(node, _GLOT_DML):
            target = node.this.this if isinstance(node.this, exp.Schema) else node.this
            if isinstance(target, exp.Table):
                self.targets.add(id(target))
        self._ignore_names(node)
        if isinstance(node, exp.Table) and id(node) not in self.ignored:
            self._table(node, scope)
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in self.functions:
                self.problems.append(f"the function {name}() {self.functions[name]}")
        with_clause = next((v for v in node.args.values() if isinstance(v, exp.With)), None)
        if with_clause is not None:
            ctes = [cte for cte in with_clause.expressions if isinstance(cte, exp.CTE)]
            names = [cte.alias_or_name.lower() for cte in ctes]
            for index, cte in enumerate(ctes):
                visible = names if with_clause.args.get("recursive") else names[:index]
                self.visit(cte.this, scope | set(visible), collect, root=False)
            scope = scope | set(names)
        for value in node.args.values():
            if value is with_clause:
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Expression):
                    self.visit(child, scope, collect, root=False)

    def _ignore_names(self, node: exp.Expression) -> None:
        """Names that are not tables: USE db, CREATE DATABASE/SCHEMA/FUNCTION …, DROP of
        such objects, a function's name."""
        ignored: list[Any] = []
        if isinstance(node, exp.Use | exp.UserDefinedFunction):
            ignored.append(node.this)
        elif isinstance(node, exp.Create) and _glot_object(node) not in _GLOT_RELATIONS:
            ignored.append(node.this)
        elif isinstance(node, exp.Drop) and _glot_object(node) not in _GLOT_RELATIONS:
            ignored += node.expressions or node.args.get("tables") or [node.this]
        for item in ignored:
            if isinstance(item, exp.Table):
                self.ignored.add(id(item))

    def _table(self, node: exp.Table, scope: frozenset[str]) -> None:
        if not isinstance(node.this, exp.Identifier):
            return  # a table function, UNNEST, …
        parts = tuple(p.lower() for p in (node.catalog, node.db, node.name) if p)
        if id(node) not in self.targets and len(parts) == 1 and parts[0] in scope:
            return  # a reference to a CTE
        self.tables.append(parts)


def _glot_object(node: exp.Expression) -> str:
    return str(node.args.get("kind") or "").upper()


def _glot_kind(node: exp.Expression) -> tuple[str | None, str | None]:
    """(kind, problem) of a parsed statement; kind None when it is not understood."""
    if isinstance(node, exp.Select):
        if node.args.get("into") is not None:
            return "SELECT", "SELECT … INTO writes to variables or to a file"
        return "SELECT", None
    if isinstance(node, exp.SetOperation | exp.Values | exp.Subquery):
        return "SELECT", None
    simple = {
        exp.Insert: "INSERT",
        exp.Update: "UPDATE",
        exp.Delete: "DELETE",
        exp.Merge: "MERGE",
        exp.TruncateTable: "TRUNCATE",
        exp.Grant: "GRANT",
        exp.Revoke: "REVOKE",
        exp.Use: "USE",
        exp.Set: "SET",
        exp.Show: "SHOW",
        exp.Transaction: "BEGIN",
        exp.Commit: "COMMIT",
        exp.Pragma: "PRAGMA",
        exp.Detach: "DETACH",
        exp.Analyze: "ANALYZE",
        exp.Kill: "KILL",
    }
    for cls, kind in simple.items():
        if isinstance(node, cls):
            return kind, None
    if isinstance(node, exp.Rollback):
        return ("ROLLBACK TO SAVEPOINT" if node.args.get("savepoint") else "ROLLBACK"), None
    if isinstance(node, exp.Create):
        what = _glot_object(node)
        if what in ("FUNCTION", "PROCEDURE", "TRIGGER", "EVENT"):
            return f"CREATE {what}", f"the body of a {what.lower()} is not inspected"
        properties = node.args.get("properties")
        if what == "VIEW" and properties and properties.find(exp.MaterializedProperty):
            return "CREATE MATERIALIZED VIEW", None
        if what == "TABLE" and isinstance(node.expression, exp.Query):
            return "CREATE TABLE AS", None
        return (f"CREATE {what}" if what else None), None
    if isinstance(node, exp.Drop):
        what = _glot_object(node)
        if node.args.get("materialized"):
            what = f"MATERIALIZED {what}"
        return (f"DROP {what}" if what else None), None
    if isinstance(node, exp.Alter):
        what = _glot_object(node)
        return (f"ALTER {what}" if what else None), None
    if isinstance(node, exp.Describe):
        if isinstance(node.this, exp.Table):
            return "DESCRIBE", None
        return "EXPLAIN", None
    if isinstance(node, exp.Attach):
        return "ATTACH", "ATTACH opens another database file, which may be any file"
    return None, None


def _glot_statement(
    text: str, lexed: _Lexed, start: int, end: int, unit: SqlUnit, scope: frozenset[str]
) -> Statement:
    source = text[start:end]
    code = lexed.code[start:end]
    first_quote = bisect_left(lexed.quoted, (start, -1))
    last_quote = bisect_left(lexed.quoted, (end, -1))
    quoted = [(b - start, e - start) for b, e in lexed.quoted[first_quote:last_quote]]
    guess = _guess_kind(code)
    first = guess.split()[0]
    bare = _blank_strings(code, quoted)
    refused = unit.state_problem(code, bare)
    if _depth(bare) > GLOT_MAX_DEPTH:
        # sqlglot's parser can take time exponential in some nestings (DATE(DATE(…)) doubles
        # per level): a short statement could hold a judging thread for hours.
        return Statement(
            guess,
            (),
            source,
            unknown=f"nested more than {GLOT_MAX_DEPTH} levels deep: too deep to inspect",
            effects=effects_of_words(bare),
            refused=refused,
        )

    def unknown(reason: str) -> Statement:
        effects = effects_of_words(bare)
        return Statement(guess, (), source, unknown=reason, effects=effects, refused=refused)

    # Statements sqlglot does not parse, recognised by their shape.
    if first == "SAVEPOINT" and re.fullmatch(r"\s*SAVEPOINT\s+\w+\s*", code, re.I):
        return Statement("SAVEPOINT", (), source)
    if first == "RELEASE" and re.fullmatch(r"\s*RELEASE(\s+SAVEPOINT)?\s+\w+\s*", code, re.I):
        return Statement("RELEASE SAVEPOINT", (), source)
    recognised = unit.recognise(code, first)
    if recognised is not None:
        if recognised.unknown is not None:
            return unknown(recognised.unknown)
        if recognised.inner_from is None:
            return Statement(recognised.kind, (), source)
        inner = _glot_statement(text, lexed, start + recognised.inner_from, end, unit, scope)
        if not recognised.runs_inner:
            return Statement(recognised.kind, inner.tables, source, unknown=inner.unknown)
        return Statement(
            recognised.kind,
            inner.tables,
            source,
            unknown=inner.unknown,
            effects=inner.effects,
            inner=(dataclasses.replace(inner, text=source),),
        )
    replace = first == "REPLACE"
    if replace:  # REPLACE has INSERT's syntax; parse it as one and call it REPLACE
        code = re.sub(r"^(\s*)REPLACE", r"\1INSERT ", code, count=1, flags=re.I)
    glot = _GlotDialect.get_or_raise(unit.glot_name)
    try:
        tokens = glot.tokenize(code)
    except sqlglot.errors.TokenError as exc:
        return unknown(f"cannot parse: {_glot_error(exc)}")
    disagree = _tokens_disagree(tokens, code, quoted)
    if disagree is not None:
        return unknown(disagree)
    try:
        trees = glot.parser(error_level=ErrorLevel.RAISE).parse(tokens, code)
    except RecursionError:
        raise
    except Exception as exc:  # sqlglot raises more than ParseError on some inputs
        return unknown(f"cannot parse: {_glot_error(exc)}")
    trees = [t for t in trees if t is not None and not isinstance(t, exp.Semicolon)]
    if len(trees) != 1:
        return unknown("the SQL parser does not read this as one statement")
    tree = trees[0]
    if isinstance(tree, exp.Command):
        return unknown("the SQL parser does not understand this statement")
    kind, problem = _glot_kind(tree)
    if replace and kind == "INSERT":
        kind = "REPLACE"
    if kind is None:
        return unknown("not a statement the SQL parser understands")
    walk = _GlotWalk(unit)
    inner_nodes: list[tuple[exp.Expression, frozenset[str]]] = []
    if isinstance(tree, exp.Describe):
        walk.visit(tree, scope, collect=False, root=True)
        runs = str(tree.args.get("style") or "").upper() == "ANALYZE"
        if runs and isinstance(tree.this, exp.Expression):
            inner_nodes.append((tree.this, scope))
    else:
        walk.visit(tree, scope, collect=True, root=True)
        inner_nodes = walk.nested
    problems = ([problem] if problem else []) + walk.problems
    inner = [_glot_inner(n, s, source, unit) for n, s in inner_nodes]
    return _glot_result(tree, kind, walk, problems, source, unit, inner, refused)


def _glot_inner(node: exp.Expression, scope: frozenset[str], text: str, unit: SqlUnit) -> Statement:
    kind, problem = _glot_kind(node)
    walk = _GlotWalk(unit)
    walk.visit(node, scope, collect=True, root=True)
    problems = ([problem] if problem else []) + walk.problems
    if kind is None:
        problems.append("not a statement the SQL parser understands")
    inner = [_glot_inner(n, s, text, unit) for n, s in walk.nested]
    return _glot_result(node, kind or "UNKNOWN", walk, problems, text, unit, inner, None)


def _glot_result(
    node: exp.Expression,
    kind: str,
    walk: _GlotWalk,
    problems: list[str],
    text: str,
    unit: SqlUnit,
    inner: list[Statement],
    refused: str | None,
) -> Statement:
    tables = _dedupe(walk.tables)
    if isinstance(node, exp.Create) and node.args.get("replace") and _glot_object(node) == "TABLE":
        # CREATE OR REPLACE TABLE drops the table (and its rows) first.
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        dropped = _dedupe([_glot_parts(target)]) if isinstance(target, exp.Table) else tables
        inner.append(Statement("DROP TABLE", dropped, text, effects=_DESTROYS))
    if isinstance(node, exp.Merge):
        target = _dedupe([_glot_parts(node.this)]) if isinstance(node.this, exp.Table) else tables
        inner += [
            Statement(branch, target, text, without_where=True, effects=_DESTROYS)
            for branch in _glot_merge_branches(node)
        ]
    effects = _glot_effects(node, kind, bool(problems))
    for part in inner:
        effects |= part.effects
    return Statement(
        kind=kind,
        tables=tables,
        text=text,
        without_where=_glot_without_where(node, unit)
        if isinstance(node, exp.Update | exp.Delete)
        else False,
        unknown=problems[0] if problems else None,
        effects=frozenset(effects),
        refused=refused,
        inner=tuple(inner),
    )


def _glot_parts(table: exp.Table) -> tuple[str, ...]:
    return tuple(p.lower() for p in (table.catalog, table.db, table.name) if p)


def _glot_merge_branches(node: exp.Merge) -> list[str]:
    kinds = []
    for when in node.find_all(exp.When):
        action = when.args.get("then")
        if isinstance(action, exp.Update):
            kinds.append("UPDATE")
        elif isinstance(action, exp.Var) and action.name.upper() == "DELETE":
            kinds.append("DELETE")
        elif action is not None and "DELETE" in action.sql().upper().split()[:1]:
            kinds.append("DELETE")
    return list(dict.fromkeys(kinds))


def _glot_effects(node: exp.Expression, kind: str, opaque: bool) -> set[str]:
    effects: set[str] = set()
    if isinstance(node, exp.Delete | exp.Update | exp.TruncateTable | exp.Drop):
        effects |= _DESTROYS
    elif isinstance(node, exp.Insert):
        effects.add("writes")
        conflict = node.args.get("conflict")
        replaces = kind == "REPLACE" or str(node.args.get("alternative") or "").upper() in (
            "REPLACE",
        )
        if replaces or (conflict is not None and not conflict.args.get("nothing")):
            effects.add("destroys")  # the rows it conflicts with are overwritten
    elif isinstance(node, exp.Alter):
        effects.add("writes")
        for action in node.args.get("actions") or ():
            if isinstance(action, exp.Drop | exp.AlterRename | exp.RenameColumn):
                effects.add("destroys")
            elif isinstance(action, exp.ModifyColumn) or (
                isinstance(action, exp.AlterColumn) and action.args.get("dtype") is not None
            ):
                effects.add("destroys")  # a type change rewrites (and may cut) every value
            elif not isinstance(action, exp.ColumnDef | exp.AlterColumn):
                effects.add("destroys")  # an action the broker does not list: assume the worst
    elif isinstance(node, exp.Set | exp.Use | exp.Transaction | exp.Commit | exp.Rollback):
        effects.add("session")
    elif isinstance(node, exp.Pragma):
        effects |= {"session", "writes"}
    elif isinstance(node, exp.Query | exp.Show | exp.Describe | exp.Values):
        effects.add("reads")
    elif isinstance(node, exp.Merge):
        effects.add("writes")
        if _glot_merge_branches(node):
            effects.add("destroys")
    else:
        effects.add("writes")
    if isinstance(node, exp.Select) and node.args.get("into") is not None:
        effects.add("writes")
    if node.find(exp.Select) is not None or node.args.get("returning") is not None:
        effects.add("reads")
    if opaque:
        effects.add("code")
    return effects


def _glot_without_where(node: exp.Update | exp.Delete, unit: SqlUnit) -> bool | None:
    this = node.this
    targets = [t for t in node.args.get("tables") or [] if isinstance(t, exp.Table)]
    if isinstance(this, exp.Table):
        targets = targets or [this]
    names: set[str] = set()
    for table in targets:
        alias = table.alias
        names.add((alias or table.name).lower())
    joined = bool(
        node.args.get("using")
        or node.args.get("from")
        or (isinstance(this, exp.Table) and this.args.get("joins"))
        or len(node.args.get("tables") or []) > 1
    )
    where = node.args.get("where")
    judge = GlotPredicate(names, joined, unit.coerces_strings)
    return _without_where(judge.verdict(where.this if where is not None else None))


GLOT_MAX_DEPTH = 10  # brackets nested deeper than this are not handed to sqlglot
GLOT_BUDGET = 5.0  # seconds of parsing per input; statements past it are unknown


def _depth(code: str) -> int:
    deepest = depth = 0
    for char in code:
        if char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth = max(0, depth - 1)
    return deepest


def _blank_strings(code: str, quoted: list[tuple[int, int]]) -> str:
    """CODE with the contents of '…' and "…" strings blanked (identifiers in `…` kept)."""
    chars = list(code)
    for begin, end in quoted:
        if 0 <= begin < len(chars) and chars[begin] in "'\"":
            for i in range(begin + 1, min(end, len(chars))):
                chars[i] = " "
    return "".join(chars)


def _glot_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors and isinstance(errors[0], dict) and errors[0].get("description"):
        return str(errors[0]["description"])
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    return " ".join(message.split("\n", 1)[0].split())


def _parse_glot(text: str, unit: SqlUnit) -> ParsedSql:
    lexed = _lex(text, unit)
    deadline = time.monotonic() + GLOT_BUDGET
    statements = []
    for start, end in lexed.chunks:
        if time.monotonic() > deadline:
            source = text[start:end]
            statements.append(
                Statement(
                    _guess_kind(lexed.code[start:end]),
                    (),
                    source,
                    unknown="the input takes too long to inspect",
                    effects=effects_of_words(lexed.code[start:end]),
                )
            )
            continue
        statements.append(_glot_statement(text, lexed, start, end, unit, frozenset()))
    return ParsedSql(tuple(statements), "; ".join(lexed.problems) or None)
