"""Where each result column of a statement comes from, looked up against the live database so
that column rules also hold through views and ``SELECT *``.

The resolvers in broker.masking work from the SQL text alone. Here the relations a statement
names are looked up in the database's catalog, on the session's own connection (so the
search path, the current database and temporary objects are the statement's own): their
columns (the ``catalog`` of the resolvers: exact ``*`` and unqualified names) and, for views,
their definitions, which are resolved the same way, recursively (views over views), into
``view_sources``: a rule on ``users.email`` then masks ``SELECT e FROM v_renamed`` when the
view defines ``e`` as ``upper(users.email)``.

Two calls per statement, because the lookup needs the connection idle (a streaming result
holds it: psycopg's lock, MariaDB's unbuffered cursor) and the resolution needs the result's
column names:

    await prepare_column_sources(conn, dialect, sql)    # before conn.execute(sql)
    result = await conn.execute(sql)
    sources = await column_sources(conn, dialect, sql, result.columns)

``prepare_column_sources`` runs at most one catalog query per statement (plus one per level
of views over views), none when the statement names no relation. What was looked up holds
for that one statement only: another session (of any user, through any path) may replace a
view or a function between two statements, so each statement looks its relations up afresh.
Call it for every statement (it costs a parse when there is nothing to look up).

Fail closed: a relation whose lookup failed, that was not looked up, that the catalog does
not know, or a view whose definition cannot be resolved (or nests deeper than MAX_DEPTH)
makes the result columns derived from it opaque: masked whenever the target has a column
rule (value detectors still run on the others).

The connection's state also holds the *taint* of its session: what each statement wrote where
(broker.masking_effects works it out, ``prepare_column_sources`` records it before the
statement runs). A table column filled from ``users.card`` resolves to ``users.card``, as a
view column would; a MySQL variable to what was assigned to it; after code the broker cannot
follow, everything is opaque. What is written into lasting tables is also kept in a
:class:`SharedTaint` file per target, read by the target's later sessions. ``read_sources``
tells what a statement reads anywhere (for its error messages).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.masking.lineage import ColumnSource
from broker.masking.lineage_pglast import column_sources_pglast
from broker.masking.lineage_sqlglot import column_sources_sqlglot
from broker.masking_effects import ANYTHING, Analysis, Reads, analyze, glot_text
from broker.protocols import sql_dialects, sql_unit
from broker.protocols.sql import DatabaseConnection, Key, StatementError, safe_literal

log = logging.getLogger("hoop.broker.masking")

MAX_DEPTH = 8  # levels of views over views that are looked up and resolved
MAX_RELATIONS = 256  # relations looked up for one statement at most
ANYWHERE = "*"  # a source that every column rule matches (see broker.masking.masker._Rule)

# Statement kinds after which the cached lookups still hold (not ROLLBACK: it can undo DDL).
_PG_KEEP = frozenset(
    {
        "SelectStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "MergeStmt",
        "ExplainStmt",
        "VariableShowStmt",
    }
)
_GLOT_KEEP = frozenset(
    {
        "Select",
        "Union",
        "Intersect",
        "Except",
        "Subquery",
        "Values",
        "Insert",
        "Update",
        "Delete",
        "Merge",
        "Describe",
        "Show",
        "Pragma",
    }
)


@functools.cache
def statistics_tables() -> frozenset[str]:
    """Catalogs of column statistics: they hold values of every analysed column (most common
    values, histogram bounds, min and max values). Opaque, whichever dialect names them."""
    return frozenset().union(*(sql_unit(name).statistics_tables for name in sql_dialects()))


def _qualified(key: Key) -> str:
    """The name broker.masking's resolvers pass to catalog() and view_sources()."""
    return f"{key[0]}.{key[1]}" if key[0] else key[1]


@dataclass
class _Relation:
    kind: str  # "table" or "view" (PostgreSQL's materialised views too: derived data)
    columns: tuple[str, ...]
    definition: str | None  # the query of a view
    fetched: float
    generated: tuple[str, ...] = ()  # generated columns: computed from the others
    family: tuple[str, ...] = ()  # PostgreSQL: ancestors and descendants (inheritance, partitions)
    _query: tuple[str, list[Key]] | None = None  # the definition parsed (see query())
    _parsed: bool = False

    def query(self, dialect: str) -> tuple[str, list[Key]] | None:
        """A view's query as SQL and the relations it names (None: not understood)."""
        if not self._parsed:
            self._query = _view_query(dialect, self.definition) if self.definition else None
            self._parsed = True
        return self._query


@dataclass
class _Taint:
    """What the session wrote where, for the whole life of the connection (never cleared: a
    rolled-back write only masks more). Sources are as in ColumnSource; ``"*"`` may be
    anything."""

    # table (bare name, lower case) -> column (lower case; "*": every column) -> sources
    tables: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    variables: dict[str, frozenset[str]] = field(default_factory=dict)  # "@name" -> sources
    settings: frozenset[str] = frozenset()  # what server settings were assigned from
    everything: bool = False  # code ran that may have written anything anywhere
    # table -> column -> generated columns computed from it (tables created in the session)
    generated: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    family: dict[str, set[str]] = field(default_factory=dict)  # inheritance made in the session
    # Tables the session created -> their columns when known (MySQL's temporary tables are in
    # no catalog; these let them resolve like any table).
    created: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    attached: bool = False  # SQLite ATTACH ran: a name not in main or temp may be elsewhere
    temporary: set[str] = field(default_factory=set)  # tables the session made temporary
    version: int = 0
    # What this session wrote into lasting tables, not yet handed to the SharedTaint.
    lasting: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)

    def add(
        self, table: str, column: str, sources: frozenset[str], *, shared: bool = False
    ) -> None:
        """``table.column`` may now hold values of ``sources``. Unless the table is one the
        session made temporary (or ``shared``: it came from the SharedTaint), other sessions
        will read it too: it is kept for the SharedTaint."""
        if not sources:
            return
        columns = self.tables.setdefault(table, {})
        before = columns.get(column, frozenset())
        if not sources <= before:
            columns[column] = before | sources
            self.version += 1
        if not shared and table not in self.temporary:
            lasting = self.lasting.setdefault(table, {})
            lasting[column] = lasting.get(column, frozenset()) | sources

    def of(self, table: str, column: str) -> frozenset[str]:
        """What column ``column`` of ``table`` was filled from ("*": any of its columns)."""
        if self.everything:
            return frozenset({ANYTHING})
        columns = self.tables.get(table.lower())
        if not columns:
            return frozenset()
        if column == "*":
            return frozenset().union(*columns.values())
        return columns.get(column.lower(), frozenset()) | columns.get("*", frozenset())

    def expand(self, sources: frozenset[str]) -> frozenset[str]:
        """Sources plus what the session put into those source columns."""
        out = set(sources)
        for source in sources:
            parts = source.split(".")
            if len(parts) >= 2:
                out |= self.of(parts[-2], parts[-1])
        return frozenset(out)


@dataclass
class _State:
    """The cache of one connection, and the taint of its session."""

    relations: dict[str, _Relation] = field(default_factory=dict)
    generation: int = 0
    prepared: bool = False  # prepare_column_sources ran for this connection
    warned: bool = False
    # Resolved view sources, valid for one generation of `relations` and of the taint.
    views: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    views_generation: tuple[int, int] = (-1, -1)
    taint: _Taint = field(default_factory=_Taint)
    # Functions looked up: name -> (user-defined: it may write, when looked up)
    functions: dict[str, tuple[bool, float]] = field(default_factory=dict)
    last: tuple[str, Analysis] | None = None  # the statement prepared last, analysed
    last_reads: list[ColumnSource] | None = None  # what it reads, when worked out already
    # Relations the last lookups did not find (the lookup itself worked): they do not exist
    # (or, in MySQL and SQLite, are temporary, attached, or made by code: see _read_columns).
    absent: set[str] = field(default_factory=set)

    def forget(self) -> None:
        self.relations.clear()
        self.functions.clear()
        self.absent.clear()
        self.generation += 1


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
# Connections that take no weak reference, held (so that their id is not reused) up to 64.
_UNREFERENCEABLE: dict[int, tuple[object, _State]] = {}


MAX_SOURCES = 256  # sources kept per column in the shared file; more: "*" (anything)


class SharedTaint:
    """What sessions wrote into lasting (not temporary) tables of one target, kept in a file:
    a table filled in one session (one ``hoopctl exec``) and read in the next, or by another
    user, carries the taint there too. Holds names only (tables, columns, source columns),
    never values. Several broker processes may share the file: updates are merged under a
    lock and replace the file whole. Deleting the file forgets the taint (for tables whose
    contents an administrator has checked)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tables: dict[str, dict[str, frozenset[str]]] = {}
        self._stamp: tuple[int, int] | None = None
        self._mutex = threading.Lock()

    def _read(self) -> dict[str, dict[str, frozenset[str]]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        tables = data.get("tables", {}) if isinstance(data, dict) else {}
        return {
            str(t): {str(c): frozenset(map(str, v)) for c, v in cols.items()}
            for t, cols in tables.items()
            if isinstance(cols, dict)
        }

    def refresh(self) -> dict[str, dict[str, frozenset[str]]]:
        """The taint as the file holds it now (re-read when it changed)."""
        with self._mutex:
            try:
                st = self.path.stat()
                stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self.tables = self._read() if stamp is not None else {}
                self._stamp = stamp
            return self.tables

    def record(self, additions: dict[str, dict[str, frozenset[str]]]) -> None:
        """Merge ``additions`` into the file."""
        if not additions:
            return
        with self._mutex:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = self.path.with_name(self.path.name + ".lock")
            with open(lock, "a") as held:
                fcntl.flock(held, fcntl.LOCK_EX)
                tables = self._read()
                for table, columns in additions.items():
                    mine = tables.setdefault(table, {})
                    for column, sources in columns.items():
                        merged = mine.get(column, frozenset()) | sources
                        mine[column] = merged if len(merged) <= MAX_SOURCES else frozenset({"*"})
                temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                payload = {
                    "tables": {
                        t: {c: sorted(v) for c, v in cols.items()} for t, cols in tables.items()
                    }
                }
                temporary.write_text(json.dumps(payload, sort_keys=True))
                os.replace(temporary, self.path)
                self.tables = tables
                with contextlib.suppress(OSError):
                    st = self.path.stat()
                    self._stamp = (st.st_mtime_ns, st.st_size)


_SHARED: dict[Path, SharedTaint] = {}
_SHARED_MUTEX = threading.Lock()


def shared_taint(path: Path) -> SharedTaint:
    """The SharedTaint kept in ``path`` (one object per file in this process)."""
    with _SHARED_MUTEX:
        found = _SHARED.get(path)
        if found is None:
            found = _SHARED[path] = SharedTaint(path)
        return found


def _state(conn: object) -> _State:
    try:
        state = _STATES.get(conn)
        if state is None:
            state = _STATES[conn] = _State()
        return state
    except TypeError:
        held = _UNREFERENCEABLE.get(id(conn))
        if held is None or held[0] is not conn:
            if len(_UNREFERENCEABLE) >= 64:
                _UNREFERENCEABLE.clear()  # their next statements find nothing: opaque
            held = _UNREFERENCEABLE[id(conn)] = (conn, _State())
        return held[1]


def forget_views(conn: DatabaseConnection) -> None:
    """Drop what is cached for ``conn`` (after DDL the broker ran some other way)."""
    _state(conn).forget()


# --------------------------------------------------------------------------- parsing


@dataclass
class _Parsed:
    keys: list[Key]  # relations named, in order, without duplicates
    keep_cache: bool  # a query or DML: the catalog is as it was
    show: bool = False  # SHOW: the values of server settings


def _parse(dialect: str, sql: str) -> _Parsed | None:
    """The relations one statement names, or None when it does not parse as one statement."""
    try:
        if sql_unit(dialect).parser == "pglast":
            return _parse_pglast(sql)
        return _parse_sqlglot(sql_unit(dialect).glot_name, sql)
    except Exception:
        return None


def _parse_pglast(sql: str) -> _Parsed | None:
    from pglast import ast

    from broker.pglast_guard import parse_sql

    statements = parse_sql(sql)
    if len(statements) != 1:
        return None
    root = statements[0].stmt
    keys: dict[Key, None] = {}
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list | tuple):
            stack.extend(reversed(node))
            continue
        if not isinstance(node, ast.Node):
            continue
        if isinstance(node, ast.RangeVar):
            keys[(node.schemaname, node.relname)] = None
        for attr in node.__slots__:
            value = getattr(node, attr, None)
            if isinstance(value, ast.Node | list | tuple):
                stack.append(value)
    return _Parsed(
        list(keys), type(root).__name__ in _PG_KEEP, isinstance(root, ast.VariableShowStmt)
    )


def _parse_sqlglot(glot_dialect: str, sql: str) -> _Parsed | None:
    import sqlglot
    from sqlglot import exp

    text = glot_text(glot_dialect, sql)
    statements = [s for s in sqlglot.parse(text, read=glot_dialect) if s is not None]
    if len(statements) != 1:
        return None
    root = statements[0]
    return _Parsed(
        _glot_keys(root, exp), type(root).__name__ in _GLOT_KEEP, isinstance(root, exp.Show)
    )


def _glot_keys(root: Any, exp: Any) -> list[Key]:
    keys: dict[Key, None] = {}
    for table in root.find_all(exp.Table):
        if isinstance(table.this, exp.Identifier):
            db = table.args.get("db")
            keys[(db.name if db is not None and db.name else None, table.name)] = None
    return list(keys)


def _view_query(dialect: str, definition: str) -> tuple[str, list[Key]] | None:
    """A view definition from the catalog -> (its query as SQL, the relations it names)."""
    try:
        unit = sql_unit(dialect)
        if unit.parser == "pglast":
            parsed = _parse_pglast(definition)
            return (definition, parsed.keys) if parsed is not None else None
        import sqlglot
        from sqlglot import exp

        statements = [s for s in sqlglot.parse(definition, read=unit.glot_name) if s is not None]
        if len(statements) != 1:
            return None
        query = statements[0]
        if isinstance(query, exp.Create):  # SQLite keeps the CREATE VIEW statement
            query = query.expression
            if query is None:
                return None
            return query.sql(dialect=unit.glot_name), _glot_keys(query, exp)
        return definition, _glot_keys(query, exp)
    except Exception:
        return None


# --------------------------------------------------------------------------- lookups


async def _fetch(
    conn: DatabaseConnection, dialect: str, keys: Sequence[Key]
) -> dict[Key, _Relation]:
    """Look ``keys`` up with one query. Keys not in the answer do not exist (or are CTEs)."""
    unit = sql_unit(dialect)
    result = await conn.execute(unit.relations_lookup(keys), query=True)
    now = time.monotonic()
    found: dict[Key, _Relation] = {}
    chosen: dict[int, int] = {}  # of several schemas searched: the one that answered first
    async for raw in result.rows:
        row = unit.catalog_row(raw)
        if row is None:
            continue
        if row.priority is not None and chosen.setdefault(row.key, row.priority) != row.priority:
            continue
        key = keys[row.key]
        rel = found.get(key)
        if rel is None:
            definition = row.definition if row.kind == "view" else None
            rel = found[key] = _Relation(row.kind, (), definition, now, (), row.family)
        rel.columns = (*rel.columns, *row.columns)
        rel.generated = (*rel.generated, *row.generated)
    return found


async def prepare_column_sources(
    conn: DatabaseConnection, dialect: str, sql: str, shared: SharedTaint | None = None
) -> None:
    """Look up (or find cached) the relations ``sql`` names and the views under them, and
    record what the statement writes (which tables, columns, variables, settings, from which
    sources: broker.masking_effects) in the taint of the session. Call it before
    ``conn.execute(sql)``, while the connection is idle, for every statement. Never raises: a
    failed lookup leaves the relations unknown, and :func:`column_sources` fails closed on
    them. With ``shared``, what other sessions wrote into lasting tables counts too, and what
    this statement writes into them is added to it."""
    state = _state(conn)
    state.prepared = True
    if shared is not None:
        try:
            for table, columns in shared.refresh().items():
                for column, sources in columns.items():
                    state.taint.add(table, column, sources, shared=True)
        except Exception:  # an unreadable file: every table may hold anything
            log.exception("masking: the shared taint file cannot be read; all opaque")
            state.taint.everything = True
            state.taint.version += 1
    parsed = _parse(dialect, sql)
    ddl = parsed is None or not parsed.keep_cache
    # Nothing looked up for an earlier statement is trusted: another connection may have
    # replaced a view (or made a function write) since, and would read through it unmasked.
    state.forget()
    if parsed is not None and parsed.keys:
        await _look_up(conn, state, dialect, parsed.keys)
    try:
        analysis = _analysis(state, dialect, sql)
        # Statements only the fallback analysis understands (MySQL's SET @a = …, @b = …;
        # SELECT … INTO @a, @b): the relations it found, looked up, and analysed again.
        named = [*analysis.reads.relations, *(w.table for w in analysis.effects.writes)]
        missing = [
            key
            for key in dict.fromkeys(named)
            if _qualified(key) not in state.relations and _qualified(key) not in state.absent
        ]
        if missing:
            await _look_up(conn, state, dialect, missing)
            analysis = _analysis(state, dialect, sql)
        await _check_functions(conn, state, dialect, analysis)
        _apply(state, dialect, analysis)
        if shared is not None and state.taint.lasting:
            lasting, state.taint.lasting = state.taint.lasting, {}
            shared.record(lasting)
    except Exception:  # never unmask because of a bug here
        log.exception("masking: recording what a statement writes failed; all opaque")
        state.taint.everything = True
        state.taint.version += 1
        analysis = Analysis()
        analysis.reads.anything = True
    state.last = (sql, analysis)
    state.last_reads = None
    if ddl:
        # What the statement reads, while its relations are known (for its errors).
        state.last_reads = _read_columns(state, dialect, analysis.reads)
        # What the statement names is looked up again after it ran, by the next statement.
        state.forget()


async def _look_up(
    conn: DatabaseConnection, state: _State, dialect: str, keys: Sequence[Key]
) -> None:
    """The relations ``keys`` and the views under them, into state.relations."""
    pending = list(keys)
    seen: set[Key] = set()
    for _ in range(MAX_DEPTH + 1):
        wanted: list[Key] = []
        for key in pending:
            if key in seen:
                continue
            seen.add(key)
            if _qualified(key) in state.relations:
                continue  # looked up for this statement already
            if safe_literal(key[1]) is None or (
                key[0] is not None and safe_literal(key[0]) is None
            ):
                continue  # a name we do not put in a query: unknown
            wanted.append(key)
        if len(wanted) > MAX_RELATIONS:
            wanted = wanted[:MAX_RELATIONS]  # the rest stays unknown
        if wanted:
            try:
                found = await _fetch(conn, dialect, wanted)
            except Exception:
                found = {}
                for key in wanted:  # unknown now, even if cached before
                    state.relations.pop(_qualified(key), None)
                    state.absent.discard(_qualified(key))
            else:
                for key in wanted:
                    if key in found:
                        state.relations[_qualified(key)] = found[key]
                        state.absent.discard(_qualified(key))
                    else:
                        state.relations.pop(_qualified(key), None)
                        state.absent.add(_qualified(key))
            state.generation += 1
        # The relations under the views of this level: the next level.
        level, pending = pending, []
        for key in level:
            rel = state.relations.get(_qualified(key))
            if rel is not None and rel.kind == "view":
                view = rel.query(dialect)
                if view is not None:
                    pending.extend(k for k in view[1] if k not in seen)
        if not pending:
            return


# --------------------------------------------------------------------------- session taint


def _analysis(state: _State, dialect: str, sql: str) -> Analysis:
    views = _Views(state, dialect)
    return analyze(dialect, sql, views.catalog, views.view_sources, views.variable)


async def _check_functions(
    conn: DatabaseConnection, state: _State, dialect: str, analysis: Analysis
) -> None:
    """A statement that calls a user-defined function that may write runs code: whatever it
    wrote, anything may hold anything afterwards (effects.code)."""
    effects = analysis.effects
    if effects.code or not effects.functions or not sql_unit(dialect).has_user_functions:
        return
    now = time.monotonic()
    wanted = []
    for name in sorted(effects.functions):
        cached = state.functions.get(name)  # looked up for this statement already
        if cached is not None:
            if cached[0]:
                effects.code = True
                return
            continue
        if safe_literal(name) is None:  # a name we do not put in a query: may be anything
            effects.code = True
            return
        wanted.append(name)
    if not wanted:
        return
    try:
        lookup = sql_unit(dialect).functions_lookup(wanted[:MAX_RELATIONS])
        if lookup is None:
            return
        result = await conn.execute(lookup, query=True)
        found = {str(row[0]) async for row in result.rows}
    except StatementError as exc:
        if exc.sqlstate != "25P02":  # in an aborted transaction the statement runs nothing
            effects.code = True
        return
    except Exception:
        effects.code = True
        return
    for name in wanted:
        state.functions[name] = (name in found, now)
    if found or len(wanted) > MAX_RELATIONS:
        effects.code = True


def _bare(key: Key | str) -> str:
    name = key[1] if isinstance(key, tuple) else key.split(".")[-1]
    return name.lower()


def _apply(state: _State, dialect: str, analysis: Analysis) -> None:
    """Record what one statement writes in the session's taint (before it runs: a RETURNING
    clause or a later statement reads it back)."""
    taint = state.taint
    effects = analysis.effects
    before = taint.version
    if effects.code and not taint.everything:
        taint.everything = True
        taint.version += 1
    if effects.attach:
        taint.attached = True
    taint.temporary.update(_bare(key) for key in effects.temporary)
    for key, columns in effects.created:
        name = _bare(key)
        if name in taint.created and taint.created[name] != columns:
            columns = None  # created twice with different columns: which one is read is unknown
        taint.created[name] = columns
        taint.version += 1
    reads: frozenset[str] | None = None

    def what_it_reads() -> frozenset[str]:
        nonlocal reads
        if reads is None:
            reads = _strings(_read_columns(state, dialect, analysis.reads))
        return reads

    for write in effects.writes:
        sources = what_it_reads() if write.from_reads else write.sources
        sources = taint.expand(sources)
        rel = state.relations.get(_qualified(write.table))
        if rel is not None and rel.kind == "view":
            # Written through a view (its base tables, or INSTEAD OF triggers: code).
            if not taint.everything:
                taint.everything = True
                taint.version += 1
            continue
        tables = {_bare(write.table)}
        if rel is not None:
            tables.update(name.lower() for name in rel.family)
        tables |= taint.family.get(_bare(write.table), set())
        for table in tables:
            columns = {write.column}
            if rel is not None and rel.generated:
                columns.update(c.lower() for c in rel.generated)
            generated = taint.generated.get(table, {})
            if write.column == "*":
                columns.update(c for cs in generated.values() for c in cs)
            else:
                columns.update(generated.get(write.column, ()))
            for column in columns:
                taint.add(table, column, sources)
    for old, new in effects.renames:
        rel = state.relations.get(_qualified(old))
        old_name, new_name = _bare(old), _bare(new)
        if rel is not None and rel.columns:
            for column in rel.columns:
                c = column.lower()
                taint.add(new_name, c, frozenset({f"{old_name}.{c}"}) | taint.of(old_name, c))
        else:
            taint.add(new_name, "*", frozenset({f"{old_name}.*"}) | taint.of(old_name, "*"))
    for table, old_column, new_column in effects.column_renames:
        name = _bare(table)
        o = old_column.lower()
        taint.add(name, new_column.lower(), frozenset({f"{name}.{o}"}) | taint.of(name, o))
    for table, column, names in effects.generated:
        name = _bare(table)
        for source in names:
            taint.generated.setdefault(name, {}).setdefault(source, set()).add(column)
            taint.add(name, column, frozenset({f"{name}.{source}"}) | taint.of(name, source))
    for child, parent in effects.family:
        a, b = _bare(child), _bare(parent)
        taint.family.setdefault(a, set()).add(b)
        taint.family.setdefault(b, set()).add(a)
        for x, y in ((a, b), (b, a)):  # rows already in one are read through the other
            for column, sources in list(taint.tables.get(x, {}).items()):
                taint.add(y, column, sources)
    for variable in effects.variables:
        sources = taint.expand(what_it_reads())
        current = taint.variables.get(variable, frozenset())
        if not sources <= current:
            taint.variables[variable] = current | sources
            taint.version += 1
    if effects.settings:
        sources = taint.expand(what_it_reads())
        if not sources <= taint.settings:
            taint.settings = taint.settings | sources
            taint.version += 1
    if taint.version != before:
        state.views = {}


def _strings(columns: Sequence[ColumnSource]) -> frozenset[str]:
    out: set[str] = set()
    for column in columns:
        if column.opaque and not column.sources:
            out.add(ANYTHING)
        else:
            out.update(column.sources)
    return frozenset(out)


def _read_columns(state: _State, dialect: str, reads: Reads) -> list[ColumnSource]:
    """Every value a statement may read, as pseudo-columns: for each relation it names, the
    columns it names (all of them for ``*`` or a whole-row reference) with their sources
    through views and the session's taint; its variables; opaque for anything unknown."""
    out: list[ColumnSource] = []
    if reads.anything or state.taint.everything:
        out.append(ColumnSource("?", (), True))
    views = _Views(state, dialect)
    taint = state.taint
    for key in reads.relations:
        name = _qualified(key)
        rel = state.relations.get(name)
        columns: Sequence[str] | None = rel.columns if rel is not None else None
        if rel is None:
            bare = _bare(key)
            columns = views.session_columns(name)
            if columns is None:
                made = bare in taint.tables or bare in taint.created
                elsewhere = not sql_unit(dialect).catalog_sees_session_tables and (
                    made or taint.attached
                )
                if name in state.absent and not elsewhere:
                    continue  # it does not exist: the statement fails, naming it, no value
                # Not looked up, the lookup failed, a temporary table of unknown shape, a
                # table of an attached database: may be a view of anything.
                out.append(ColumnSource(name, (), True))
                continue
        under = {k.lower(): v for k, v in views.view_sources(name).items()}
        for column in columns:
            c = column.lower()
            if reads.star or c in reads.names:
                sources = {f"{name}.{c}", *under.get(c, ()), *under.get("*", ())}
                out.append(ColumnSource(f"{name}.{c}", tuple(sorted(sources))))
    for variable in sorted(reads.variables):
        sources = views.variable(variable)
        if sources:
            out.append(ColumnSource(variable, tuple(sorted(sources))))
    if reads.settings and (state.taint.settings or state.taint.everything):
        out.append(ColumnSource("@@", tuple(sorted(views.variable("@@")))))
    return out


def read_sources(conn: DatabaseConnection, dialect: str, sql: str) -> list[ColumnSource]:
    """The values statement ``sql`` may read anywhere (not only in its result: ``WHERE``,
    casts, subqueries), as columns to hand to Masker.strategy_for: what an error of the
    statement may echo. Uses what :func:`prepare_column_sources` looked up; does not touch
    the connection."""
    state = _state(conn)
    try:
        if state.last is not None and state.last[0] == sql:
            if state.last_reads is not None:
                return state.last_reads
            analysis = state.last[1]
        else:
            analysis = _analysis(state, dialect, sql)
        return _read_columns(state, dialect, analysis.reads)
    except Exception:
        log.exception("masking: what a statement reads could not be worked out")
        return [ColumnSource("?", (), True)]


# --------------------------------------------------------------------------- resolution


def _resolver(dialect: str, state: _State) -> Callable[..., list[ColumnSource]]:
    unit = sql_unit(dialect)
    if unit.parser == "pglast":
        return lambda sql, names, catalog, view_sources: column_sources_pglast(
            sql, names, catalog, view_sources=view_sources
        )
    return lambda sql, names, catalog, view_sources: column_sources_sqlglot(
        glot_text(unit.glot_name, sql),
        unit.glot_name,
        names,
        catalog,
        view_sources=view_sources,
        variables=lambda name: _variable(state, name),
    )


def _variable(state: _State, name: str) -> frozenset[str]:
    """What MySQL variable ``name`` ("@v", "@@v") holds: the sources it was assigned from."""
    taint = state.taint
    if taint.everything:
        return frozenset({ANYTHING})
    if name.startswith("@@"):
        return taint.settings
    return taint.variables.get(name.lower(), frozenset())


def _unknown(state: _State, keys: Sequence[Key]) -> list[str]:
    """Prefixes of the sources of relations we know nothing about (not found: maybe a CTE,
    maybe not looked up, maybe a failed lookup; not a table the session made itself)."""
    return [
        _qualified(key) + "."
        for key in keys
        if _qualified(key) not in state.relations
        and not (_qualified(key) in state.absent and state.taint.created.get(_bare(key)))
    ]


def _taint(sources: list[ColumnSource], unknown: Sequence[str]) -> list[ColumnSource]:
    """Columns derived from an unknown relation become opaque (it may be a view of anything)."""
    if not unknown:
        return sources
    prefixes = tuple(unknown)
    return [
        ColumnSource(c.name, (), True)
        if any(source.startswith(prefixes) for source in c.sources)
        else c
        for c in sources
    ]


class _Views:
    """The catalog and view_sources callbacks of one resolution."""

    def __init__(self, state: _State, dialect: str) -> None:
        self.state = state
        self.dialect = dialect
        self.resolve = _resolver(dialect, state)
        generation = (state.generation, state.taint.version)
        if state.views_generation != generation:
            state.views = {}
            state.views_generation = generation

    def catalog(self, name: str) -> Sequence[str]:
        rel = self.state.relations.get(name)
        if rel is not None:
            return rel.columns
        return self.session_columns(name) or ()

    def session_columns(self, name: str) -> tuple[str, ...] | None:
        """The columns of a table the session created that the catalog does not show (a
        MySQL temporary table), when known."""
        if name in self.state.relations or name not in self.state.absent:
            return None
        return self.state.taint.created.get(_bare(name))

    def variable(self, name: str) -> frozenset[str]:
        return _variable(self.state, name)

    def view_sources(self, name: str, stack: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
        if _bare(name) in statistics_tables():
            return {"*": (ANYTHING,)}
        rel = self.state.relations.get(name)
        if rel is None or rel.kind != "view":
            # A table: what the session filled it with ("*": into every column).
            taint = self.state.taint
            if taint.everything:
                return {"*": (ANYTHING,)}
            columns = taint.tables.get(_bare(name))
            return {c: tuple(sorted(v)) for c, v in columns.items()} if columns else {}
        cached = self.state.views.get(name)
        if cached is not None:
            return cached
        everything = {column: (ANYWHERE,) for column in rel.columns}
        if len(stack) >= MAX_DEPTH or name in stack:  # too deep, or a cycle: opaque
            return everything
        view = rel.query(self.dialect)
        if view is None:
            return everything
        query, keys = view
        inner = (*stack, name)
        sources = self.resolve(
            query,
            list(rel.columns),
            self.catalog,
            lambda other: self.view_sources(other, inner),
        )
        sources = _taint(sources, _unknown(self.state, keys))
        if len(sources) != len(rel.columns):
            return everything
        out = {
            column: (ANYWHERE,) if source.opaque and not source.sources else source.sources
            for column, source in zip(rel.columns, sources, strict=True)
        }
        self.state.views[name] = out
        return out


async def column_sources(
    conn: DatabaseConnection, dialect: str, sql: str, columns: list[str]
) -> list[ColumnSource]:
    """Source columns of each of ``columns`` (the result's column names) of statement ``sql``,
    through views, with what :func:`prepare_column_sources` looked up for it. Does not touch
    the connection (it may be streaming the result). Relations that were not looked up make
    the columns derived from them opaque."""
    state = _state(conn)
    views = _Views(state, dialect)
    sources = views.resolve(sql, columns, views.catalog, views.view_sources)
    parsed = _parse(dialect, sql)
    if parsed is None:
        return sources  # the resolver could not parse it either: all opaque already
    if parsed.show and (state.taint.settings or state.taint.everything):
        # SHOW x after set_config('x', <a masked value>) / SET @@x = …
        settings = tuple(sorted(_variable(state, "@@")))
        sources = [ColumnSource(c.name, (*c.sources, *settings), c.opaque) for c in sources]
    unknown = _unknown(state, parsed.keys)
    if unknown and not state.prepared and not state.warned:
        state.warned = True
        log.warning(
            "column_sources without prepare_column_sources on this connection: the relations "
            "of every statement are unknown and their columns opaque (masked by any rule)"
        )
    return _taint(sources, unknown)
