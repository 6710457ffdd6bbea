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
of views over views, the first time they are seen), none when every relation is cached or
the statement names none. Lookups are cached per connection for CACHE_SECONDS; a statement
that is not a query or DML (DDL, SET, USE, ...) drops the cache, so call it for every
statement (it costs a parse when there is nothing to look up).

Fail closed: a relation whose lookup failed, that was not looked up, that the catalog does
not know, or a view whose definition cannot be resolved (or nests deeper than MAX_DEPTH)
makes the result columns derived from it opaque: masked whenever the target has a column
rule (value detectors still run on the others).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.masking import ColumnSource, column_sources_postgres, column_sources_sqlglot
from broker.targets.database import DatabaseConnection

log = logging.getLogger("hoop.broker.masking")

MAX_DEPTH = 8  # levels of views over views that are looked up and resolved
CACHE_SECONDS = 5.0  # a lookup is trusted this long (DDL by other sessions)
MAX_RELATIONS = 256  # relations looked up for one statement at most
ANYWHERE = "*"  # a source that every column rule matches (see broker.masking._Rule)

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

Key = tuple[str | None, str]  # (schema, name) as the statement writes them


def _qualified(key: Key) -> str:
    """The name broker.masking's resolvers pass to catalog() and view_sources()."""
    return f"{key[0]}.{key[1]}" if key[0] else key[1]


@dataclass
class _Relation:
    kind: str  # "table" or "view" (PostgreSQL's materialised views too: derived data)
    columns: tuple[str, ...]
    definition: str | None  # the query of a view
    fetched: float
    _query: tuple[str, list[Key]] | None = None  # the definition parsed (see query())
    _parsed: bool = False

    def query(self, dialect: str) -> tuple[str, list[Key]] | None:
        """A view's query as SQL and the relations it names (None: not understood)."""
        if not self._parsed:
            self._query = _view_query(dialect, self.definition) if self.definition else None
            self._parsed = True
        return self._query


@dataclass
class _State:
    """The cache of one connection."""

    relations: dict[str, _Relation] = field(default_factory=dict)
    generation: int = 0
    prepared: bool = False  # prepare_column_sources ran for this connection
    warned: bool = False
    # Resolved view sources, valid for one generation of `relations`.
    views: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    views_generation: int = -1

    def forget(self) -> None:
        self.relations.clear()
        self.generation += 1


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
# Connections that take no weak reference, held (so that their id is not reused) up to 64.
_UNREFERENCEABLE: dict[int, tuple[object, _State]] = {}


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


def _parse(dialect: str, sql: str) -> _Parsed | None:
    """The relations one statement names, or None when it does not parse as one statement."""
    try:
        if dialect == "postgres":
            return _parse_postgres(sql)
        return _parse_sqlglot(dialect, sql)
    except Exception:
        return None


def _parse_postgres(sql: str) -> _Parsed | None:
    from pglast import ast, parse_sql

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
    return _Parsed(list(keys), type(root).__name__ in _PG_KEEP)


def _parse_sqlglot(dialect: str, sql: str) -> _Parsed | None:
    import sqlglot
    from sqlglot import exp

    statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    if len(statements) != 1:
        return None
    root = statements[0]
    return _Parsed(_glot_keys(root, exp), type(root).__name__ in _GLOT_KEEP)


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
        if dialect == "postgres":
            parsed = _parse_postgres(definition)
            return (definition, parsed.keys) if parsed is not None else None
        import sqlglot
        from sqlglot import exp

        statements = [s for s in sqlglot.parse(definition, read=dialect) if s is not None]
        if len(statements) != 1:
            return None
        query = statements[0]
        if isinstance(query, exp.Create):  # SQLite keeps the CREATE VIEW statement
            query = query.expression
            if query is None:
                return None
            return query.sql(dialect=dialect), _glot_keys(query, exp)
        return definition, _glot_keys(query, exp)
    except Exception:
        return None


# --------------------------------------------------------------------------- lookups


def _literal(text: str) -> str | None:
    """A string literal that reads the same in every dialect and mode (standard strings,
    NO_BACKSLASH_ESCAPES or not); None for names with quotes, backslashes or control
    characters, which are then not looked up (and so stay opaque). Every name put into the
    lookup queries below has passed this (which is why they may be built as text)."""
    if any(ch in text for ch in "'\"\\") or any(ord(ch) < 32 for ch in text):
        return None
    return f"'{text}'"


def _postgres_lookup(keys: Sequence[Key]) -> str:
    rows = []
    for k, (schema, name) in enumerate(keys):
        s = _literal(schema) if schema is not None else "NULL"
        rows.append(f"({k}, {s}::text, {_literal(name)}::text)")
    return (
        "SELECT x.k, c.relkind::text,"  # noqa: S608 (names checked by _literal)
        " CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END,"
        " ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a"
        " WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)"
        f" FROM (VALUES {', '.join(rows)}) AS x(k, s, r)"
        " JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass("
        "CASE WHEN x.s IS NULL THEN pg_catalog.quote_ident(x.r)"
        " ELSE pg_catalog.quote_ident(x.s) || '.' || pg_catalog.quote_ident(x.r) END)"
    )


def _mysql_lookup(keys: Sequence[Key]) -> str:
    rows = []
    for k, (schema, name) in enumerate(keys):
        s = _literal(schema) if schema is not None else "''"
        rows.append(f"SELECT {k} AS k, {s} AS s, {_literal(name)} AS n")
    return (
        "SELECT x.k, t.TABLE_TYPE, v.VIEW_DEFINITION, c.COLUMN_NAME"  # noqa: S608 (_literal)
        f" FROM ({' UNION ALL '.join(rows)}) AS x"
        " JOIN information_schema.TABLES t"
        " ON t.TABLE_SCHEMA = COALESCE(NULLIF(x.s, ''), DATABASE()) AND t.TABLE_NAME = x.n"
        " LEFT JOIN information_schema.VIEWS v"
        " ON v.TABLE_SCHEMA = t.TABLE_SCHEMA AND v.TABLE_NAME = t.TABLE_NAME"
        " LEFT JOIN information_schema.COLUMNS c"
        " ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME"
        " ORDER BY x.k, c.ORDINAL_POSITION"
    )


def _sqlite_lookup(keys: Sequence[Key]) -> str:
    # Unqualified names: temp first, then main (SQLite's own order; names only in an
    # attached database are not found and stay opaque).
    rows = []
    schemas: dict[str, None] = {"temp": None, "main": None}
    for k, (schema, name) in enumerate(keys):
        for priority, sch in enumerate([schema] if schema else ["temp", "main"]):
            schemas[sch] = None
            rows.append(f"SELECT {k} AS k, {priority} AS pri, {_literal(name)} AS n, '{sch}' AS s")
    masters = " UNION ALL ".join(
        f"SELECT '{sch}' AS s, type, name, sql FROM \"{sch}\".sqlite_master"  # noqa: S608
        for sch in schemas  # (names checked by _literal)
    )
    return (
        "SELECT x.k, m.type, m.sql, p.name, x.pri"  # noqa: S608 (names checked by _literal)
        f" FROM ({' UNION ALL '.join(rows)}) AS x"
        f" JOIN ({masters}) AS m"
        " ON m.s = x.s AND m.name = x.n COLLATE NOCASE AND m.type IN ('table', 'view')"
        " JOIN pragma_table_info(m.name, m.s) AS p"
        " ORDER BY x.k, x.pri, p.cid"
    )


async def _fetch(
    conn: DatabaseConnection, dialect: str, keys: Sequence[Key]
) -> dict[Key, _Relation]:
    """Look ``keys`` up with one query. Keys not in the answer do not exist (or are CTEs)."""
    if dialect == "postgres":
        sql = _postgres_lookup(keys)
    elif dialect == "mysql":
        sql = _mysql_lookup(keys)
    else:
        sql = _sqlite_lookup(keys)
    result = await conn.execute(sql, query=True)
    now = time.monotonic()
    found: dict[Key, _Relation] = {}
    chosen: dict[int, int] = {}  # SQLite: the schema that answered first
    async for row in result.rows:
        k = int(row[0])
        key = keys[k]
        if dialect == "postgres":
            _, relkind, definition, names = row
            if relkind not in ("r", "v", "m", "p", "f", "S"):
                continue
            kind = "view" if relkind in ("v", "m") else "table"  # materialised: a view too
            found[key] = _Relation(kind, tuple(names or ()), definition, now)
            continue
        if dialect == "mysql":
            _, table_type, definition, column = row
            kind = "view" if str(table_type).upper() == "VIEW" else "table"
        else:
            _, table_type, definition, column, priority = row
            if chosen.setdefault(k, priority) != priority:
                continue
            kind = "view" if table_type == "view" else "table"
        rel = found.get(key)
        if rel is None:
            rel = found[key] = _Relation(kind, (), definition if kind == "view" else None, now)
        if column is not None:
            rel.columns = (*rel.columns, str(column))
    return found


async def prepare_column_sources(conn: DatabaseConnection, dialect: str, sql: str) -> None:
    """Look up (or find cached) the relations ``sql`` names and the views under them. Call it
    before ``conn.execute(sql)``, while the connection is idle. Never raises: a failed lookup
    leaves the relations unknown, and :func:`column_sources` fails closed on them."""
    state = _state(conn)
    state.prepared = True
    parsed = _parse(dialect, sql)
    if parsed is None or not parsed.keep_cache:
        # DDL, SET search_path, USE, ... or not understood: what is cached may change, and
        # whatever the statement names is looked up after it ran, by the next statement.
        state.forget()
        return
    if not parsed.keys:
        return
    now = time.monotonic()
    pending = list(parsed.keys)
    seen: set[Key] = set()
    for _ in range(MAX_DEPTH + 1):
        wanted: list[Key] = []
        for key in pending:
            if key in seen:
                continue
            seen.add(key)
            rel = state.relations.get(_qualified(key))
            if rel is not None and now - rel.fetched < CACHE_SECONDS:
                continue
            if _literal(key[1]) is None or (key[0] is not None and _literal(key[0]) is None):
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
            else:
                for key in wanted:
                    if key in found:
                        state.relations[_qualified(key)] = found[key]
                    else:
                        state.relations.pop(_qualified(key), None)
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


# --------------------------------------------------------------------------- resolution


def _resolver(dialect: str) -> Callable[..., list[ColumnSource]]:
    if dialect == "postgres":
        return lambda sql, names, catalog, view_sources: column_sources_postgres(
            sql, names, catalog, view_sources=view_sources
        )
    return lambda sql, names, catalog, view_sources: column_sources_sqlglot(
        sql, dialect, names, catalog, view_sources=view_sources
    )


def _unknown(state: _State, keys: Sequence[Key]) -> list[str]:
    """Prefixes of the sources of relations we know nothing about (not found: maybe a CTE,
    maybe not looked up, maybe a failed lookup)."""
    return [_qualified(key) + "." for key in keys if _qualified(key) not in state.relations]


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
        self.resolve = _resolver(dialect)
        if state.views_generation != state.generation:
            state.views = {}
            state.views_generation = state.generation

    def catalog(self, name: str) -> Sequence[str]:
        rel = self.state.relations.get(name)
        return rel.columns if rel is not None else ()

    def view_sources(self, name: str, stack: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
        rel = self.state.relations.get(name)
        if rel is None or rel.kind != "view":
            return {}
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
    unknown = _unknown(state, parsed.keys)
    if unknown and not state.prepared and not state.warned:
        state.warned = True
        log.warning(
            "column_sources without prepare_column_sources on this connection: the relations "
            "of every statement are unknown and their columns opaque (masked by any rule)"
        )
    return _taint(sources, unknown)
