"""The SQL shell's backslash commands and its completion catalog, for each dialect.

Every meta command is a fixed catalog query (pg_catalog/information_schema on PostgreSQL,
information_schema on MySQL/MariaDB, sqlite_master and the pragma table functions on SQLite):
names given by the user reach the SQL only as hex-encoded literals, so no setting of the
server (standard_conforming_strings, NO_BACKSLASH_ESCAPES) can turn a name into SQL.

Also here: whether typed input is a complete statement (a `;` outside quotes and comments),
which the shell uses to decide between running the input and a continuation line.
"""

# The catalog queries are built as text on purpose: names enter only through literal(), as hex.

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from broker.protocols import sql_unit

# -- typed input ---------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z0-9_$]")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


@dataclass
class ScanState:
    """Where the end of some SQL text is: inside a quote or comment, and how deep in parentheses."""

    quote: str | None = None  # "'", '"', "`", "/*", or a dollar tag such as "$$"
    depth: int = 0
    last: str = ""  # the last significant character outside quotes and comments
    comment_depth: int = 0


def scan_sql(text: str, dialect: str) -> ScanState:
    """Lex TEXT far enough to know whether it ends inside a string, identifier or comment."""
    unit = sql_unit(dialect)
    state = ScanState()
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        quote = state.quote
        if quote is None:
            if ch in "'\"`" and (ch != "`" or unit.backtick_identifiers):
                state.quote = ch
                # E'...' strings take backslash escapes.
                if ch == "'" and unit.escape_strings and i and text[i - 1] in "eE":
                    if i < 2 or not _IDENT.match(text[i - 2]):
                        state.quote = "E'"
                i += 1
                continue
            if text.startswith("--", i) and (
                not unit.dash_comment_needs_space or i + 2 >= n or text[i + 2] in " \t\r\n"
            ):
                end = text.find("\n", i)
                if end < 0:
                    return state  # a line comment ends at the end of the line
                i = end + 1
                continue
            if ch == "#" and unit.hash_comments:
                end = text.find("\n", i)
                if end < 0:
                    return state
                i = end + 1
                continue
            if text.startswith("/*", i):
                state.quote = "/*"
                state.comment_depth = 1
                i += 2
                continue
            if ch == "$" and unit.dollar_quotes and (i == 0 or not _IDENT.match(text[i - 1])):
                found = _DOLLAR_TAG.match(text, i)
                if found:
                    state.quote = found.group(0)
                    i = found.end()
                    continue
            if ch == "(":
                state.depth += 1
            elif ch == ")":
                state.depth = max(0, state.depth - 1)
            if not ch.isspace():
                state.last = ch
            i += 1
            continue
        # inside something
        if quote == "/*":
            if text.startswith("*/", i):
                state.comment_depth -= 1
                i += 2
                if state.comment_depth == 0 or not unit.nested_comments:
                    state.quote = None
                    state.comment_depth = 0
                continue
            if unit.nested_comments and text.startswith("/*", i):
                state.comment_depth += 1
                i += 2
                continue
            i += 1
            continue
        if quote.startswith("$"):
            if text.startswith(quote, i):
                state.quote = None
                i += len(quote)
                continue
            i += 1
            continue
        close = quote[-1]
        if ch == "\\" and ((unit.backslash_escapes and close in "'\"") or quote == "E'"):
            i += 2
            continue
        if ch == close:
            if i + 1 < n and text[i + 1] == close:  # a doubled quote stands for itself
                i += 2
                continue
            state.quote = None
            state.last = ch
        i += 1
    return state


def is_meta(text: str) -> bool:
    return text.lstrip().startswith("\\")


def ends_in_meta(text: str, dialect: str) -> bool:
    """True when the last line of TEXT is a backslash command (not inside a quote or comment)."""
    before, _, last = text.rstrip().rpartition("\n")
    return is_meta(last) and (not before or scan_sql(before + "\n", dialect).quote is None)


QUIT_WORDS = ("quit", "exit", "\\q")


@functools.lru_cache(maxsize=256)
def input_complete(text: str, dialect: str) -> bool:
    """True when Enter should run TEXT: a `;` ends it outside quotes and comments, or its last
    line is a backslash command, or it is empty, `quit` or `exit`.

    Cached: the prompt's multiline filter asks it many times for each redraw."""
    stripped = text.strip()
    if not stripped or stripped.rstrip(";").strip().lower() in QUIT_WORDS:
        return True
    if ends_in_meta(text, dialect):
        return True
    state = scan_sql(text, dialect)
    return state.quote is None and state.last == ";"


def continuation_mark(text: str, dialect: str) -> str:
    """psql's %R for a continuation line: ' " ` * $ ( or -."""
    state = scan_sql(text, dialect)
    if state.quote is not None:
        if state.quote == "/*":
            return "*"
        if state.quote.startswith("$"):
            return "$"
        return state.quote[-1]
    return "(" if state.depth else "-"


# -- meta commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaCommand:
    name: str  # without the backslash: "d", "dt", "x", "timing", "?", "q"
    arg: str  # the rest of the line, stripped ("" when none)
    text: str  # the whole command as typed, stripped


def parse_meta(line: str) -> MetaCommand:
    text = line.strip()
    body = text[1:]
    found = re.match(r"(\?|[A-Za-z]+\+?|[^\sA-Za-z]?)", body)
    name = found.group(0) if found else ""
    return MetaCommand(name=name, arg=body[len(name) :].strip(), text=text)


HELP: tuple[tuple[str, str], ...] = (
    ("\\d", "list tables, views and sequences"),
    ("\\d NAME", "describe a table, view or sequence: columns (name, type, nullable, default)"),
    ("", "and indexes"),
    ("\\dt [PATTERN]", "list tables (PATTERN: * and ? wildcards)"),
    ("\\dv [PATTERN]", "list views"),
    ("\\ds [PATTERN]", "list sequences"),
    ("\\x [on|off]", "toggle expanded display (one record per block)"),
    ("\\timing [on|off]", "toggle the time each statement takes"),
    ("\\?", "this help"),
    ("\\q", "quit (also `quit`, `exit` or Ctrl-D on an empty line)"),
)

HELP_KEYS = (
    ("Enter", "runs the input once it ends with `;` (or is a backslash command)"),
    ("Ctrl-C", "clears the input; while a statement runs, cancels it on the server"),
    ("Ctrl-R", "searches the history; Up/Down walk it"),
    ("Tab", "completes keywords, table and column names"),
)

META_NAMES = ("\\d", "\\dt", "\\dv", "\\ds", "\\x", "\\timing", "\\?", "\\q")


def help_text() -> str:
    width = max(len(name) for name, _ in HELP) + 2
    lines = ["Backslash commands (each on a line of its own):"]
    lines += [f"  {name.ljust(width)}{what}" for name, what in HELP]
    lines.append("")
    lines.append("Keys:")
    key_width = max(len(key) for key, _ in HELP_KEYS) + 2
    lines += [f"  {key.ljust(key_width)}{what}" for key, what in HELP_KEYS]
    lines.append("")
    lines.append("Every statement is judged by the target's policy before it runs; results are")
    lines.append("masked by the broker. The session is recorded.")
    return "\n".join(lines) + "\n"


def switch(arg: str, current: bool) -> bool | None:
    """The new value of an on/off setting: toggled without ARG; None if ARG is not on or off."""
    word = arg.lower()
    if not word:
        return not current
    if word in ("on", "true", "1", "yes"):
        return True
    if word in ("off", "false", "0", "no"):
        return False
    return None


LIST_KINDS: dict[str, tuple[str, ...] | None] = {
    "d": None,
    "dt": ("table", "partitioned table"),
    "dv": ("view", "materialized view"),
    "ds": ("sequence",),
}


def listing_filter(kinds: tuple[str, ...] | None, pattern: str) -> Callable[[str, str], bool]:
    def keep(name: str, kind: str) -> bool:
        if kinds is not None and kind not in kinds:
            return False
        return not pattern or fnmatch.fnmatchcase(name.lower(), pattern.lower())

    return keep


# -- names ---------------------------------------------------------------------------------


class BadName(ValueError):
    """A relation name the shell cannot read; the message is for the user."""


def split_name(arg: str, dialect: str) -> tuple[str | None, str]:
    """`schema.name`, `name`, `"Mixed Case"`: (schema or None, name) as the catalog spells them."""
    unit = sql_unit(dialect)
    quotes = '"`' if unit.backtick_identifiers else '"'
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    text = arg.strip()
    if not text:
        raise BadName("a name is needed")
    while i < len(text):
        ch = text[i]
        if ch in quotes:
            end = i + 1
            value: list[str] = []
            while True:
                if end >= len(text):
                    raise BadName(f"unterminated quote in {arg!r}")
                if text[end] == ch:
                    if end + 1 < len(text) and text[end + 1] == ch:
                        value.append(ch)
                        end += 2
                        continue
                    break
                value.append(text[end])
                end += 1
            current.append("".join(value))
            quoted = True
            i = end + 1
            continue
        if ch == ".":
            parts.append(unit.fold("".join(current), quoted))
            current, quoted = [], False
            i += 1
            continue
        if ch.isspace():
            raise BadName(f"one name only, not {arg!r}")
        current.append(ch)
        i += 1
    parts.append(unit.fold("".join(current), quoted))
    if len(parts) > 2 or not all(parts):
        raise BadName(f"cannot read the name {arg!r}: write NAME or SCHEMA.NAME")
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, parts[0]


def literal(dialect: str, text: str) -> str:
    """TEXT as an SQL string expression that cannot be anything but that string."""
    return sql_unit(dialect).literal(text)


# Every listing query yields Schema, Name, Type; the describe query yields the relation's
# schema, name and kind (and an oid where the dialect has one); columns: Column, Type,
# Nullable, Default; indexes: name, primary, unique, definition (broker.protocols.sql).

COMPLETION_LIMIT = 50_000


def index_line(name: str, primary: object, unique: object, definition: object) -> str:
    """One line of a describe's `Indexes:` block, as psql writes it."""
    what = "PRIMARY KEY, " if primary else ("UNIQUE, " if unique else "")
    return f'    "{name}" {what}{definition or ""}'.rstrip()


# -- completion catalog --------------------------------------------------------------------


@dataclass
class Catalog:
    """Table and column names for completion (names only, never values)."""

    tables: list[str] = field(default_factory=list)
    columns: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_pairs(cls, pairs: list[tuple[object, object]]) -> Catalog:
        columns: dict[str, list[str]] = {}
        for table, column in pairs:
            names = columns.setdefault(str(table), [])
            if column is not None and str(column) not in names:
                names.append(str(column))
        return cls(tables=sorted(columns), columns=columns)

    def all_columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for names in self.columns.values():
            for name in names:
                seen.setdefault(name, None)
        return list(seen)

    def columns_of(self, table: str) -> list[str]:
        for name, columns in self.columns.items():
            if name.lower() == table.lower():
                return columns
        return []


SQL_KEYWORDS = tuple(
    """
    SELECT FROM WHERE AND OR NOT NULL IS IN EXISTS BETWEEN LIKE ILIKE AS ON JOIN INNER LEFT RIGHT
    FULL OUTER CROSS NATURAL USING GROUP BY HAVING ORDER ASC DESC NULLS FIRST LAST LIMIT OFFSET
    UNION ALL INTERSECT EXCEPT DISTINCT CASE WHEN THEN ELSE END CAST WITH RECURSIVE INSERT INTO
    VALUES DEFAULT UPDATE SET DELETE RETURNING CREATE TABLE VIEW INDEX UNIQUE PRIMARY KEY FOREIGN
    REFERENCES CHECK CONSTRAINT ALTER ADD COLUMN DROP RENAME TO IF TRUNCATE BEGIN COMMIT ROLLBACK
    SAVEPOINT RELEASE TRANSACTION EXPLAIN ANALYZE SHOW GRANT REVOKE TRUE FALSE COUNT SUM AVG MIN
    MAX COALESCE NULLIF LOWER UPPER INTEGER INT BIGINT SMALLINT TEXT VARCHAR CHAR BOOLEAN NUMERIC
    DECIMAL REAL DATE TIME TIMESTAMP INTERVAL OVER PARTITION WINDOW FETCH NEXT ROWS ONLY
    """.split()
)


def keywords(dialect: str) -> list[str]:
    return sorted(set(SQL_KEYWORDS) | set(sql_unit(dialect).keywords))


TABLE_CONTEXT = frozenset({"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "DESCRIBE", "TRUNCATE"})


# -- completion ----------------------------------------------------------------------------

_WORD_BEFORE = re.compile(r'[\w$."`]*$')
_PREVIOUS = re.compile(r"([A-Za-z_]+)\s*$")


def quote_name(name: str, dialect: str) -> str:
    return sql_unit(dialect).quote_name(name)


class SqlCompleter(Completer):
    """Keywords, table and column names (from the catalog loaded at start and after DDL), and
    backslash commands; table names only where a table is expected (after FROM, JOIN, …)."""

    def __init__(self, dialect: str, catalog: Callable[[], Catalog]) -> None:
        self._dialect = dialect
        self._catalog = catalog
        self._keywords = keywords(dialect)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        line = document.current_line_before_cursor
        catalog = self._catalog()
        if line.lstrip().startswith("\\"):
            if " " not in line.strip():
                partial = line.strip()
                for name in META_NAMES:
                    if name.startswith(partial) and name != partial:
                        yield Completion(name, start_position=-len(partial), display_meta="command")
                return
            found = _WORD_BEFORE.search(line)
            partial = found.group(0) if found else ""
            yield from self._names(catalog.tables, partial, "table")
            return
        text = document.text_before_cursor
        found = _WORD_BEFORE.search(text)
        word = found.group(0) if found else ""
        if "." in word:
            qualifier, partial = word.rsplit(".", 1)
            columns = catalog.columns_of(qualifier.strip('"`')) or catalog.all_columns()
            yield from self._names(columns, partial, "column")
            return
        before = text[: len(text) - len(word)]
        previous = _PREVIOUS.search(before)
        if previous and previous.group(1).upper() in TABLE_CONTEXT:
            yield from self._names(catalog.tables, word, "table")
            return
        if not word:
            return
        seen: set[str] = set()
        for kind, names in (("column", catalog.all_columns()), ("table", catalog.tables)):
            for completion in self._names(names, word, kind):
                if completion.text not in seen:
                    seen.add(completion.text)
                    yield completion
        lower = word[:1].islower()
        for keyword in self._keywords:
            if keyword.startswith(word.upper()):
                text_out = keyword.lower() if lower else keyword
                if text_out not in seen and text_out != word:
                    yield Completion(text_out, start_position=-len(word), display_meta="keyword")

    def _names(self, names: list[str], partial: str, kind: str) -> Iterator[Completion]:
        bare = partial.strip('"`').lower()
        for name in names:
            if name.lower().startswith(bare):
                quoted = quote_name(name, self._dialect)
                if quoted != partial:
                    yield Completion(quoted, start_position=-len(partial), display_meta=kind)
