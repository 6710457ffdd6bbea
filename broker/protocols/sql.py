"""The SQL family's interface: what the core asks a database protocol unit.

The core (policy, masking, the SQL shell and exec) never names a dialect: it asks the unit of
the target's type (broker.protocols.sql_unit) for its connection, its parser and that parser's
settings, its lexical rules, catalog queries and the shapes of its errors. Two parser engines
serve the units: pglast (PostgreSQL's own parser) and sqlglot (``glot_name`` picks its
dialect); each unit says which one reads it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from broker.protocols.base import Unit

if TYPE_CHECKING:
    from pygments.lexer import Lexer

CONNECT_TIMEOUT = 10
FETCH_BATCH = 500
USER_CANCEL = "canceling statement due to user request"

Key = tuple[str | None, str]  # (schema, name) as a statement writes them


@dataclass(frozen=True)
class Cut:
    """A result stopped at its budget: which one, its limit, and the rows sent before."""

    budget: str  # "max_rows", "max_bytes" or "rows_over"
    limit: int
    rows: int
    rule: str | None = None  # budget "rows_over": the rule that stopped it

    @property
    def text(self) -> str:
        sent = f"{self.rows} row{'s' if self.rows != 1 else ''} sent"
        if self.budget == "rows_over":
            return (
                f"result stopped at rule {self.rule}: more than {self.limit} rows of masked "
                f"columns: {sent}"
            )
        unit = "rows" if self.budget == "max_rows" else "bytes"
        return (
            f"result truncated at the target's {self.budget} budget ({self.limit} {unit}): {sent}"
        )

    def as_dict(self) -> dict[str, object]:
        found: dict[str, object] = {"budget": self.budget, "limit": self.limit, "rows": self.rows}
        if self.rule is not None:
            found["rule"] = self.rule
        return found

    def marker(self, fmt: str) -> str:
        """The marker after the rows, in output format FMT (a script sees the cut too)."""
        if fmt == "json":
            return json.dumps({"hoop_truncated": self.as_dict()})
        return f"# hoop: {self.text}\n" if fmt == "csv" else f"({self.text})\n"


class StatementError(Exception):
    """The database refused a statement; the message is the database's own.

    ``sqlstate`` (the SQLSTATE), ``code`` (the server's error number or extended result code)
    and ``condition`` (the error's fixed name: "invalid text representation", "truncated wrong
    value", "SQLITE_CONSTRAINT_UNIQUE") come from the error's class, never from the data: what
    the broker may still show when the message itself must be withheld
    (broker.sessions.sql_base)."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        code: int | None = None,
        condition: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.code = code
        self.condition = condition

    def with_message(self, message: str) -> StatementError:
        """The same error (its SQLSTATE, code and condition) with another message."""
        return StatementError(
            message, sqlstate=self.sqlstate, code=self.code, condition=self.condition
        )


Row = tuple[Any, ...]


class Batched:
    """Rows that arrive in batches (the driver's fetch size, masking's batch): iterate it for
    rows, or take the rest a batch at a time with ``batches_of``, which costs no Python step
    per row where a whole batch goes the same way (an export)."""

    def __init__(self, batches: AsyncIterator[list[Row]]) -> None:
        self._batches = batches
        self._batch: list[Row] = []
        self._index = 0

    def __aiter__(self) -> Batched:
        return self

    async def __anext__(self) -> Row:
        while self._index >= len(self._batch):
            self._batch = await anext(self._batches)  # StopAsyncIteration ends the rows
            self._index = 0
        row = self._batch[self._index]
        self._index += 1
        return row

    async def batches(self) -> AsyncIterator[list[Row]]:
        if self._index < len(self._batch):
            rest, self._batch = self._batch[self._index :], []
            yield rest
        async for batch in self._batches:
            if batch:
                yield batch

    async def aclose(self) -> None:
        await self._batches.aclose()  # type: ignore[attr-defined]


async def batches_of(rows: AsyncIterator[Row], size: int = FETCH_BATCH) -> AsyncIterator[list[Row]]:
    """ROWS a batch at a time: as they came where they came in batches (``Batched``), else
    gathered SIZE at a time."""
    if isinstance(rows, Batched):
        async for batch in rows.batches():
            yield batch
        return
    batch: list[Row] = []
    async for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Result:
    columns: list[str]
    rows: AsyncIterator[tuple[Any, ...]]
    status: str


class DatabaseConnection(Protocol):
    dialect: str

    async def execute(self, sql: str, *, query: bool = True) -> Result:
        """Run one statement. QUERY says it is a SELECT-like statement whose rows are streamed;
        other statements (DML with RETURNING included) are run and their few rows buffered."""
        ...

    async def cancel(self) -> None:
        """Ask the database to stop the statement running on this connection, from any task,
        while execute() or the row iteration awaits. The statement then raises StatementError and
        the connection stays usable. A no-op when nothing runs; never raises."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Relation:
    """A table or view the SQL shell describes."""

    schema: str
    name: str
    kind: str
    oid: int | None = None

    @property
    def title(self) -> str:
        return f'{self.kind.capitalize()} "{self.schema}.{self.name}"'


@dataclass(frozen=True)
class CatalogRow:
    """One row of a unit's relation lookup (``relations_lookup``), as the masking views read
    it: the relation asked for as ``keys[key]``, its kind ("table" or "view"), a view's
    definition, and columns (all of them, or one per row: rows of one key are joined)."""

    key: int
    kind: str
    definition: str | None
    columns: tuple[str, ...]
    generated: tuple[str, ...] = ()
    family: tuple[str, ...] = ()  # relations that share its rows (inheritance, partitions)
    priority: int | None = None  # of several schemas searched, rows of the first that answers


@dataclass(frozen=True)
class Recognised:
    """What a unit makes of a statement its parser does not read: a fixed kind, an unknown
    statement with its reason, or a statement around another that starts at ``inner_from``
    (EXPLAIN shows it; ``runs_inner``: ANALYZE runs it)."""

    kind: str
    unknown: str | None = None
    inner_from: int | None = None
    runs_inner: bool = False


@dataclass(frozen=True)
class Client:
    """A command-line client of the database, as the shell guard reads its arguments: the
    options that take SQL (none: every argument after the database is SQL), and a pattern of
    the client's own escapes to a shell in that SQL (psql's `\\!`)."""

    escapes: str
    options: tuple[str, ...] = ()
    flags: int = 0


class RowMask(Protocol):
    """How one result's rows are masked (broker.masking.plans.MaskPlan)."""

    @property
    def active(self) -> bool: ...

    @property
    def rule_columns(self) -> tuple[int, ...]: ...

    @property
    def detector_columns(self) -> tuple[int, ...]: ...

    @property
    def counts(self) -> dict[str, int]: ...

    def apply_batch(self, rows: Sequence[Sequence[object]]) -> list[tuple[object, ...]]: ...


class Judgement(Protocol):
    """The session's verdict on one input (a simple Query's text, or one bound Execute): may
    it run (allowed, approved), and if not, what the client is told (refusal); the statements
    it holds (texts), whose answers are reported back one by one with ``ProxyHost.done``."""

    @property
    def allowed(self) -> bool: ...

    @property
    def refusal(self) -> str: ...

    @property
    def texts(self) -> tuple[str, ...]: ...

    @property
    def reads_only(self) -> tuple[bool, ...]:
        """For each of the texts: it changes neither the catalog nor the session (what was
        looked up before the input ran still holds after it)."""
        ...


class ProxyHost(Protocol):
    """What a unit's native-protocol server asks of the session that carries one client
    connection (broker.sessions.proxy): policy and approvals, masking, audit and recording.
    The unit speaks the protocol; it decides nothing."""

    @property
    def user(self) -> str: ...

    @property
    def target(self) -> Any: ...

    @property
    def masks(self) -> bool:
        """Whether any rule or detector masks this target's results."""
        ...

    async def judge(self, sql: str, *, unknown: str | None = None) -> Judgement:
        """Decide SQL (waiting for approval where a rule says review); UNKNOWN: why the unit
        could not read all of it (judged as unknown input)."""
        ...

    async def prepare(self, conn: DatabaseConnection, sql: str) -> None:
        """Before SQL runs on CONN (idle): look up what masking needs to know of it."""
        ...

    async def plan(
        self, conn: DatabaseConnection, sql: str, columns: list[str], *, opaque: bool = False
    ) -> RowMask:
        """How the rows of SQL's result (COLUMNS by name) are masked; OPAQUE: what was looked
        up may no longer hold (an earlier statement of the same input changed the catalog or
        the session), so every column may hold anything (any rule masks it)."""
        ...

    async def error_fields(
        self, conn: DatabaseConnection, sql: str, fields: dict[str, str]
    ) -> dict[str, str]:
        """An error's fields (message, detail …) of SQL run on CONN, as the client may see
        them."""
        ...

    async def settled(self, conn: DatabaseConnection) -> str | None:
        """CONN is at a Sync after statements ran: why the server no longer reads text as
        the broker does (the connection must end), or None."""
        ...

    async def gone(self) -> None:
        """Returns once the client has left."""
        ...

    @property
    def limits(self) -> Any:
        """The actor's result budget on the target: ``max_rows`` and ``max_bytes`` (None: no
        limit)."""
        ...

    def bulk_limit(self, sql: str) -> tuple[str, int, str] | None:
        """A `rows_over` rule over the statement SQL (the last judged): its name, the rows of
        masked columns the session may still be sent under it, and its action ("review":
        hold the result for approval before any row goes out; "deny": stop at the limit).
        It applies to results that hold masked columns."""
        ...

    def bulk_sent(self, sql: str, rows: int) -> None:
        """ROWS of a masked result of SQL went to the client (they count against its
        rows_over rule for the rest of the session)."""
        ...

    async def hold_bulk(self, sql: str, columns: list[str]) -> str | None:
        """Wait for approval of SQL's result (past its rows_over limit; COLUMNS are the masked
        ones): None once approved, else why it is withheld (one line)."""
        ...

    async def answered(self, sql: str, kind: str, *, refused: str | None = None) -> None:
        """SQL (of KIND) was answered by the unit itself, not run as written (a KILL QUERY
        of one of the user's connections): audit and record it; REFUSED: why it was not
        done."""
        ...

    async def done(
        self,
        judgement: Judgement,
        index: int,
        *,
        rows: int,
        masked: dict[str, int],
        notes: Sequence[str],
        error: str | None,
        truncated: dict[str, object] | None = None,
    ) -> None:
        """Statement INDEX of JUDGEMENT has run: audit and record it. NOTES: columns sent as
        NULL because their values could not be masked in the client's format; TRUNCATED:
        the budget that cut its result ({"budget", "limit", "rows"})."""
        ...


@contextlib.asynccontextmanager
async def abandoned_when_gone(
    host: ProxyHost, abandon: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    """While a native client is served: once it has left, ABANDON its target connection
    (nothing more is sent, and what runs is cancelled). A statement whose client can no longer
    see its answer, nor cancel it, must not run on to commit."""

    async def watch() -> None:
        await host.gone()
        with contextlib.suppress(Exception):
            await abandon()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def safe_literal(text: str) -> str | None:
    """A string literal that reads the same in every dialect and mode (standard strings,
    NO_BACKSLASH_ESCAPES or not); None for names with quotes, backslashes or control
    characters, which are then not looked up (and so stay opaque). Every name a unit puts into
    a lookup query has passed this (which is why those queries may be built as text)."""
    if any(ch in text for ch in "'\"\\") or any(ord(ch) < 32 for ch in text):
        return None
    return f"'{text}'"


class SqlUnit(Unit):
    """A database protocol. The class attributes are the dialect's settings; the defaults are
    standard SQL's."""

    family = "sql"

    # -- parsing: which engine reads the dialect, and how ---------------------------------
    aliases: ClassVar[tuple[str, ...]] = ()  # other names of the dialect (its forks)
    parser: ClassVar[Literal["pglast", "sqlglot"]]
    glot_name: ClassVar[str] = ""  # the sqlglot dialect (parser = "sqlglot")

    # Lexical rules (the policy's lexer, the shell's input scanner).
    backslash_escapes: ClassVar[bool] = False  # '…' and "…" take backslash escapes
    backtick_identifiers: ClassVar[bool] = False  # `name`
    bracket_identifiers: ClassVar[bool] = False  # [name]
    hash_comments: ClassVar[bool] = False  # # to the end of the line
    dash_comment_needs_space: ClassVar[bool] = False  # "-- " starts a comment, "--" does not
    executable_comments: ClassVar[bool] = False  # /*! … */ runs its content
    escape_strings: ClassVar[bool] = False  # E'…' takes backslash escapes
    dollar_quotes: ClassVar[bool] = False  # $tag$ … $tag$
    nested_comments: ClassVar[bool] = False  # /* /* */ */
    open_comment_ends_input: ClassVar[bool] = False  # an unclosed /* runs to the end
    folds_to_lower: ClassVar[bool] = False  # unquoted names are folded to lower case
    identifier_quote: ClassVar[str] = '"'

    # Where an unqualified name lives (broker.policy.sql._Names).
    default_schemas: ClassVar[tuple[str, ...]] = ()  # searched for an unqualified name
    catalog_schema_prefix: ClassVar[tuple[str, str] | None] = None  # ("pg_", "pg_catalog")
    current_schema_known: ClassVar[bool] = True  # False: the current database is not known
    # An unknown statement, or one that changes session settings, may move them.
    names_move_after_unknown: ClassVar[bool] = False
    name_moving_kinds: ClassVar[tuple[str, ...]] = ()  # statement kinds that move them

    # What statements may do.
    dangerous_functions: ClassVar[dict[str, str]] = {}  # name -> what it does
    coerces_strings: ClassVar[bool] = False  # '1abc' = 1 and a string's truth (MySQL rules)
    values_function: ClassVar[bool] = False  # VALUES(col) in ON DUPLICATE KEY UPDATE
    has_user_functions: ClassVar[bool] = True  # functions defined in the database
    statistics_tables: ClassVar[frozenset[str]] = frozenset()  # catalogs holding column values

    def state_problem(self, code: str, bare: str) -> str | None:
        """Why a statement (CODE: its text, comments blanked; BARE: strings blanked too) must be
        refused because it changes how the server reads text; None if it does not."""
        return None

    def recognise(self, code: str, first: str) -> Recognised | None:
        """A statement the sqlglot engine does not parse, by its shape (CODE: its text with
        comments blanked; FIRST: its first keyword, upper case); None to parse it."""
        return None

    # -- masking: catalogs the views are looked up in --------------------------------------
    catalog_sees_session_tables: ClassVar[bool] = False  # lookups see temporary tables

    def relations_lookup(self, keys: Sequence[Key]) -> str:
        """One query that finds the relations KEYS (names passed through ``safe_literal``)."""
        raise NotImplementedError

    def catalog_row(self, row: tuple[Any, ...]) -> CatalogRow | None:
        """One row of ``relations_lookup``; None for a relation that is no table or view."""
        raise NotImplementedError

    def functions_lookup(self, names: Sequence[str]) -> str | None:
        """A query naming those of NAMES that are user functions which may write; None when
        the dialect has no user functions."""
        return None

    # Command-line clients by program name (the shell guard checks what they are asked to run).
    clients: ClassVar[dict[str, Client]] = {}

    # -- the SQL shell ---------------------------------------------------------------------
    keywords: ClassVar[tuple[str, ...]] = ()  # completed besides standard SQL's
    command_tags: ClassVar[bool] = False  # the server reports `UPDATE 3`, `CREATE TABLE`
    cancel_aborts_transaction: ClassVar[bool] = False  # cancelling inside one aborts it

    def lexer(self) -> type[Lexer]:
        """The pygments lexer that highlights typed SQL."""
        from pygments.lexers.sql import SqlLexer

        return SqlLexer

    def literal(self, text: str) -> str:
        """TEXT as an SQL string expression that cannot be anything but that string."""
        return f"CAST(X'{text.encode('utf-8').hex()}' AS TEXT)"

    def quote_name(self, name: str) -> str:
        """NAME as an identifier, quoted where it must be."""
        import re

        plain = r"[a-z_][a-z0-9_$]*" if self.folds_to_lower else r"[A-Za-z_][A-Za-z0-9_$]*"
        if re.fullmatch(plain, name):
            return name
        q = self.identifier_quote
        return q + name.replace(q, q + q) + q

    def fold(self, part: str, quoted: bool) -> str:
        """An identifier as the catalog spells it."""
        return part.lower() if self.folds_to_lower and not quoted else part

    def relations_sql(self) -> str:
        """Schema, Name, Type of every relation the user sees."""
        raise NotImplementedError

    def find_sql(self, schema: str | None, name: str) -> str:
        """Schema, name, kind (and an oid) of one relation."""
        raise NotImplementedError

    def columns_sql(self, relation: Relation) -> str:
        """Column, Type, Nullable, Default of a relation."""
        raise NotImplementedError

    def indexes_sql(self, relation: Relation) -> str:
        """Name, primary, unique, definition of a relation's indexes."""
        raise NotImplementedError

    def completion_sql(self, limit: int) -> str:
        """(table, column) pairs for completion, at most LIMIT."""
        raise NotImplementedError

    # -- errors and the session's reading of text -------------------------------------------
    fixed_error_codes: ClassVar[frozenset[int]] = frozenset()  # messages that are fixed text

    def compile_error(self, exc: StatementError) -> bool:
        """EXC was raised while compiling the statement, before anything ran: its message can
        only quote the statement's own text."""
        return False

    drift_query: ClassVar[str | None] = None  # reads the settings that change reading

    def drift(self, row: tuple[Any, ...]) -> str | None:
        """Why the settings in ROW (of ``drift_query``) make the server read statements
        otherwise than the broker; None while it reads them the same."""
        return None

    # -- connecting ---------------------------------------------------------------------
    async def open(self, target: Any) -> DatabaseConnection:
        """A connection to TARGET with the broker's held credential."""
        raise NotImplementedError

    # -- native clients (hoopctl proxy) ---------------------------------------------------
    native_clients: ClassVar[bool] = False  # serve_native is implemented

    async def serve_native(
        self, host: ProxyHost, reader: Any, writer: Any, *, password_sha256: str | None
    ) -> None:
        """Serve one native client speaking the database's own protocol on READER/WRITER
        (an SSH channel from hoopctl proxy) until it leaves."""
        raise NotImplementedError
