"""What one statement does to data the session can read back later, and what it reads.

broker.masking works out the sources of the columns of a *result*. Values also travel where no
result shows them:

* into a table: ``INSERT … SELECT``, ``UPDATE … SET``, ``MERGE``, ``SELECT … INTO``,
  ``CREATE TABLE … AS``, an upsert's ``DO UPDATE SET``, ``COPY … FROM``, ``LOAD DATA``;
* into a MySQL user variable (``SET @v = …``, ``SELECT … INTO @v``, ``@v := …``) or a server
  setting (``set_config()``, ``SET @@x = …``), or a sequence (``setval()``);
* under another name: ``ALTER TABLE users RENAME TO people``, ``RENAME COLUMN email TO x``,
  a generated column computed from another;
* into code the broker cannot follow: ``DO``, ``CALL``, ``EXECUTE``, triggers, a volatile
  user-defined function (whatever it writes, anything may hold anything afterwards);
* into an error message.

:func:`analyze` tells both for one statement: its :class:`Effects` (each column written and the
source columns of what goes in, resolved with broker.masking's resolvers against the session's
catalog and what the session already wrote) and its :class:`Reads` (every relation and column
name it refers to *anywhere*, not only in its result: ``WHERE``, casts, subqueries; an error
may echo any of them). broker.masking_views keeps the taint per connection and applies them.

Everything here fails closed: a statement that is not understood reads anything; one that may
write and is not understood makes every table it names hold anything (opaque); one that runs
code makes everything opaque. Pure functions: nothing here touches a connection.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.masking.lineage import (
    _ANYWHERE,
    _NONE,
    PURE_FUNCTIONS,
    Catalog,
    Variables,
    ViewSources,
    _DerivedRel,
    _FunctionRel,
    _Item,
    _Scope,
    _Src,
    _TableRel,
    _union,
)
from broker.masking.lineage_pglast import _PgResolver
from broker.masking.lineage_sqlglot import _GlotResolver
from broker.protocols import sql_unit
from broker.protocols.sql import SqlUnit

log = logging.getLogger("hoop.broker.masking")

ANYTHING = "*"  # a source that may be anything (every column rule matches it)
Key = tuple[str | None, str]  # (schema, name) as the statement writes them

# Built-in functions that write what a later statement reads back.
_SETTERS = frozenset({"set_config"})  # server settings (read back with SHOW, current_setting)
_SEQUENCE_SETTERS = frozenset({"setval"})  # sequences (read back with SELECT last_value FROM s)


@dataclass(frozen=True)
class Write:
    """Column ``column`` (lower case; ``"*"``: every column) of relation ``table`` now may hold
    values of ``sources`` (``"*"``: anything). With ``from_reads`` the sources are everything
    the statement reads (filled in by broker.masking_views from :class:`Reads`)."""

    table: Key
    column: str
    sources: frozenset[str] = frozenset()
    from_reads: bool = False


@dataclass
class Effects:
    writes: list[Write] = field(default_factory=list)
    renames: list[tuple[Key, Key]] = field(default_factory=list)  # table: old -> new
    column_renames: list[tuple[Key, str, str]] = field(default_factory=list)  # (table, old, new)
    # (table, generated column, columns of the same table it is computed from)
    generated: list[tuple[Key, str, frozenset[str]]] = field(default_factory=list)
    family: list[tuple[Key, Key]] = field(default_factory=list)  # (child, parent): inheritance
    # Tables it creates, with their columns when known (a MySQL temporary table is in no
    # catalog: the session knows it from here).
    created: list[tuple[Key, tuple[str, ...] | None]] = field(default_factory=list)
    temporary: set[Key] = field(default_factory=set)  # of those, the temporary tables
    attach: bool = False  # SQLite ATTACH: relations named without a schema may be anywhere
    variables: set[str] = field(default_factory=set)  # "@name" assigned what the statement reads
    settings: bool = False  # server settings assigned what the statement reads
    code: bool = False  # runs code whose writes cannot be known
    functions: set[str] = field(default_factory=set)  # calls: user-defined (volatile) ones = code

    def write(self, table: Key | None, column: str, src: _Src) -> None:
        if table is None:
            return
        self.writes.append(Write(table, column.lower(), _strings(src)))

    def write_reads(self, table: Key | None, column: str = "*") -> None:
        if table is not None:
            self.writes.append(Write(table, column.lower(), frozenset(), from_reads=True))

    @property
    def empty(self) -> bool:
        return not (
            self.writes
            or self.renames
            or self.column_renames
            or self.generated
            or self.family
            or self.variables
            or self.settings
            or self.code
        )


@dataclass
class Reads:
    """What a statement refers to anywhere in its text: the relations it names (not CTEs),
    the column names it uses, whether it takes whole rows (``*``, ``t.*``, ``row_to_json(t)``),
    and what it reads that is not a table column."""

    relations: list[Key] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    star: bool = False
    anything: bool = False  # a function that may read anything, or a statement not understood
    variables: set[str] = field(default_factory=set)  # "@name", "@@name"
    settings: bool = False  # SHOW: server settings


@dataclass
class Analysis:
    effects: Effects = field(default_factory=Effects)
    reads: Reads = field(default_factory=Reads)

    def merge(self, other: Analysis) -> None:
        e, o = self.effects, other.effects
        e.writes += o.writes
        e.renames += o.renames
        e.column_renames += o.column_renames
        e.generated += o.generated
        e.family += o.family
        e.created += o.created
        e.temporary |= o.temporary
        e.attach = e.attach or o.attach
        e.variables |= o.variables
        e.settings = e.settings or o.settings
        e.code = e.code or o.code
        e.functions |= o.functions
        r, q = self.reads, other.reads
        r.relations += [k for k in q.relations if k not in r.relations]
        r.names |= q.names
        r.star = r.star or q.star
        r.anything = r.anything or q.anything
        r.variables |= q.variables
        r.settings = r.settings or q.settings


def _strings(src: _Src) -> frozenset[str]:
    return src.cols | {ANYTHING} if src.anywhere else src.cols


def analyze(
    dialect: str,
    sql: str,
    catalog: Catalog | None = None,
    view_sources: ViewSources | None = None,
    variables: Variables | None = None,
) -> Analysis:
    """What statement ``sql`` writes and reads (see the module's doc). Never raises: a
    statement that cannot be analysed reads anything and, unless it clearly cannot write,
    runs code (everything may hold anything afterwards)."""
    try:
        unit = sql_unit(dialect)
        if unit.parser == "pglast":
            return _analyze_pglast(sql, catalog, view_sources)
        return _analyze_glot(unit, sql, catalog, view_sources, variables)
    except RecursionError:
        pass
    except Exception:  # a bug here must not unmask anything
        log.exception("masking: analysing a statement failed; treated as running code")
    failed = Analysis()
    failed.effects.code = True
    failed.reads.anything = True
    return failed


# --------------------------------------------------------------------------- PostgreSQL


def _analyze_pglast(
    sql: str, catalog: Catalog | None, view_sources: ViewSources | None
) -> Analysis:
    from pglast.parser import ParseError

    from broker.pglast_guard import parse_sql

    try:
        statements = parse_sql(sql)
    except ParseError:
        # PostgreSQL's own parser (pglast is built from it, of the same or a newer version)
        # refuses it too: nothing runs, and the error can only echo the statement's text.
        return Analysis()
    out = Analysis()
    for raw in statements:
        analyzer = _PgAnalyzer(catalog, view_sources)
        analyzer.statement(raw.stmt, _Scope())
        analyzer.collect_reads(raw.stmt)
        out.merge(analyzer.out)
    return out


_PG_CODE = (
    "DoStmt",
    "CallStmt",
    "ExecuteStmt",
    "CreateTrigStmt",
    "CreateEventTrigStmt",
    "RuleStmt",
    "LoadStmt",
)


class _PgAnalyzer:
    def __init__(self, catalog: Catalog | None, view_sources: ViewSources | None) -> None:
        self.r = _PgResolver(catalog, view_sources)
        self.a = self.r.ast
        self.catalog = catalog
        self.out = Analysis()
        self.created: set[Key] = set()  # tables it creates: not read, not there yet

    @property
    def effects(self) -> Effects:
        return self.out.effects

    def key(self, node: Any) -> Key | None:
        if isinstance(node, self.a.RangeVar) and node.relname:
            return (node.schemaname, node.relname)
        return None

    def columns_of(self, key: Key | None) -> list[str]:
        if key is None or self.catalog is None:
            return []
        name = f"{key[0]}.{key[1]}" if key[0] else key[1]
        try:
            return [str(c).lower() for c in self.catalog(name) or ()]
        except Exception:
            return []

    # -- statements

    def statement(self, node: Any, scope: _Scope) -> None:
        a = self.a
        name = type(node).__name__
        if name in _PG_CODE:
            self.effects.code = True
        if isinstance(node, a.ExplainStmt):
            # Whether ANALYZE runs it or not: assume it runs (the effects only mask more).
            self.statement(node.query, scope)
            return
        with_clause = getattr(node, "withClause", None)
        if with_clause is not None:
            scope = _Scope(scope)
            self.r.with_clause(with_clause, scope)
            for cte in with_clause.ctes or ():
                if not isinstance(cte.ctequery, a.SelectStmt):
                    self.statement(cte.ctequery, scope)  # a data-modifying CTE
        if isinstance(node, a.InsertStmt):
            self.insert(node, scope)
        elif isinstance(node, a.UpdateStmt):
            self.update(node, scope)
        elif isinstance(node, a.MergeStmt):
            self.merge(node, scope)
        elif isinstance(node, a.SelectStmt) and node.intoClause is not None:
            self.into(node, node.intoClause, scope)
        elif isinstance(node, a.CreateTableAsStmt):
            if isinstance(node.query, a.SelectStmt):
                self.into(node.query, node.into, scope)
            else:  # CREATE TABLE x AS EXECUTE p: lineage unknown
                self.statement(node.query, scope)
                self.effects.write(self.key(node.into.rel), "*", _ANYWHERE)
        elif isinstance(node, a.CreateStmt):
            self.create(node)
        elif isinstance(node, a.AlterTableStmt):
            self.alter(node, scope)
        elif isinstance(node, a.RenameStmt):
            self.rename(node)
        elif isinstance(node, a.CopyStmt) and node.is_from and node.relation is not None:
            target = self.key(node.relation)
            for column in [c.sval for c in node.attlist or ()] or ["*"]:
                self.effects.write(target, column, _ANYWHERE)

    def align(self, items: list[_Item], columns: Sequence[str]) -> list[tuple[str, _Src]]:
        """What goes into each column: by position when known, else everything into all."""
        if columns and items and len(items) <= len(columns) and not any(i.star for i in items):
            return [(col, item.src) for col, item in zip(columns, items, strict=False)]
        everything = _union(i.star.whole() if i.star else i.src for i in items)
        return [("*", everything)]

    def insert(self, node: Any, scope: _Scope) -> None:
        target = self.key(node.relation)
        columns = [rt.name for rt in node.cols or ()] or self.columns_of(target)
        items = self.r.query_items(node.selectStmt, scope) if node.selectStmt is not None else []
        aligned = self.align(items, columns) if items else []
        for column, src in aligned:
            self.effects.write(target, column, src)
        conflict = node.onConflictClause
        if conflict is not None and conflict.targetList:
            inner = _Scope(scope)
            inner.add(self.r.from_item(node.relation, inner))
            inner.add(_excluded(aligned))
            self.assignments(target, conflict.targetList, inner)

    def assignments(self, target: Key | None, targets: Sequence[Any], scope: _Scope) -> None:
        a = self.a
        for rt in targets or ():
            value = rt.val
            if isinstance(value, a.MultiAssignRef):
                value = value.source
            self.effects.write(target, rt.name or "*", self.r.expr(value, scope))

    def update(self, node: Any, scope: _Scope) -> None:
        target = self.key(node.relation)
        inner = _Scope(scope)
        inner.add(self.r.from_item(node.relation, inner))
        for item in node.fromClause or ():
            inner.add(self.r.from_item(item, inner))
        self.assignments(target, node.targetList, inner)

    def merge(self, node: Any, scope: _Scope) -> None:
        target = self.key(node.relation)
        inner = _Scope(scope)
        inner.add(self.r.from_item(node.relation, inner))
        if node.sourceRelation is not None:
            inner.add(self.r.from_item(node.sourceRelation, inner))
        for clause in node.mergeWhenClauses or ():
            command = getattr(clause.commandType, "name", str(clause.commandType))
            if command.endswith("UPDATE"):
                self.assignments(target, clause.targetList, inner)
            elif command.endswith("INSERT") and clause.values:
                columns = [rt.name for rt in clause.targetList or ()] or self.columns_of(target)
                items = [_Item("?column?", self.r.expr(v, inner)) for v in clause.values]
                for column, src in self.align(items, columns):
                    self.effects.write(target, column, src)

    def into(self, query: Any, into: Any, scope: _Scope) -> None:
        target = self.key(into.rel)
        if target is not None and into.rel.relpersistence == "t":
            self.effects.temporary.add(target)
        items = self.r.query_items(query, scope)
        names = [c.sval for c in into.colNames or ()]
        if any(item.star for item in items):
            self.made(target, None)
            self.effects.write(
                target, "*", _union(i.star.whole() if i.star else i.src for i in items)
            )
            return
        columns = [names[k] if k < len(names) else item.name for k, item in enumerate(items)]
        self.made(target, columns)
        for column, item in zip(columns, items, strict=True):
            self.effects.write(target, column, item.src)

    def made(self, target: Key | None, columns: Sequence[str] | None) -> None:
        if target is not None:
            self.created.add(target)
            known = tuple(c.lower() for c in columns) if columns is not None else None
            self.effects.created.append((target, known))

    def create(self, node: Any) -> None:
        a = self.a
        target = self.key(node.relation)
        if target is not None and node.relation.relpersistence == "t":
            self.effects.temporary.add(target)
        elements = list(node.tableElts or ())
        plain = not node.inhRelations and all(
            isinstance(x, a.ColumnDef | a.Constraint) for x in elements
        )
        names = [x.colname for x in elements if isinstance(x, a.ColumnDef)]
        self.made(target, names if plain and node.ofTypename is None else None)
        for parent in node.inhRelations or ():
            key = self.key(parent)
            if target is not None and key is not None:
                self.effects.family.append((target, key))
        for element in node.tableElts or ():
            if isinstance(element, a.ColumnDef):
                self.generated(target, element)

    def generated(self, target: Key | None, column: Any) -> None:
        """A generated column (GENERATED ALWAYS AS (expr)) holds what its expression reads."""
        a = self.a
        for constraint in column.constraints or ():
            expr = getattr(constraint, "raw_expr", None)
            if isinstance(constraint, a.Constraint) and expr is not None and target is not None:
                names = frozenset(
                    n.fields[-1].sval.lower()
                    for n in _pg_walk(expr, a)
                    if isinstance(n, a.ColumnRef) and isinstance(n.fields[-1], a.String)
                )
                self.effects.generated.append((target, column.colname.lower(), names))

    def alter(self, node: Any, scope: _Scope) -> None:
        a = self.a
        target = self.key(node.relation)
        inner = _Scope(scope)
        inner.add(self.r.from_item(node.relation, inner))
        for cmd in node.cmds or ():
            subtype = getattr(cmd.subtype, "name", str(cmd.subtype))
            definition = cmd.def_
            if isinstance(definition, a.ColumnDef):
                if subtype == "AT_AlterColumnType" and definition.raw_default is not None:
                    # ALTER COLUMN x TYPE … USING expr: x now holds what expr computes.
                    src = self.r.expr(definition.raw_default, inner)
                    self.effects.write(target, cmd.name or "*", src)
                if definition.colname:
                    self.generated(target, definition)
            elif subtype in ("AT_SetExpression", "AT_CookedColumnDefault") and cmd.name:
                src = self.r.expr(definition, inner)
                self.effects.write(target, cmd.name, src)
                names = frozenset(
                    n.fields[-1].sval.lower()
                    for n in _pg_walk(definition, a)
                    if isinstance(n, a.ColumnRef) and isinstance(n.fields[-1], a.String)
                )
                if target is not None:
                    self.effects.generated.append((target, cmd.name.lower(), names))

    def rename(self, node: Any) -> None:
        kind = getattr(node.renameType, "name", str(node.renameType))
        target = self.key(node.relation)
        if target is None or not node.newname:
            return
        if kind in ("OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"):
            self.effects.renames.append((target, (target[0], node.newname)))
        elif kind == "OBJECT_COLUMN" and node.subname:
            self.effects.column_renames.append((target, node.subname, node.newname))

    # -- everything it refers to

    def collect_reads(self, root: Any) -> None:
        a = self.a
        reads = self.out.reads
        ctes: set[str] = set()
        aliases: set[str] = set()
        whole: set[str] = set()  # bare names that may be whole-row references
        keys: dict[Key, None] = {}
        for node in _pg_walk(root, a):
            if isinstance(node, a.RangeVar):
                keys[(node.schemaname, node.relname)] = None
                aliases.add((node.alias.aliasname if node.alias else node.relname).lower())
            elif isinstance(node, a.Alias):
                aliases.add(node.aliasname.lower())
            elif isinstance(node, a.CommonTableExpr):
                ctes.add(node.ctename.lower())
            elif isinstance(node, a.ColumnRef):
                fields = node.fields
                if isinstance(fields[-1], a.A_Star):
                    reads.star = True
                strings = [f.sval.lower() for f in fields if isinstance(f, a.String)]
                if len(fields) == 1 and strings:
                    whole.add(strings[0])
                reads.names.update(strings[1:] if len(strings) > 1 else strings)
            elif isinstance(node, a.FuncCall):
                self.function(node)
            elif isinstance(node, a.VariableShowStmt):
                reads.settings = True
            elif type(node).__name__ in (*_PG_CODE, "FetchStmt"):
                reads.anything = True
        reads.relations = [
            k for k in keys if not (k[0] is None and k[1].lower() in ctes) and k not in self.created
        ]
        if whole & (aliases | {k[1].lower() for k in keys}):
            reads.star = True

    def function(self, node: Any) -> None:
        a = self.a
        name = node.funcname[-1].sval.lower()
        schema = node.funcname[0].sval.lower() if len(node.funcname) > 1 else None
        builtin = schema in (None, "pg_catalog")
        if builtin and name in _SETTERS:
            self.effects.settings = True
        elif builtin and name in _SEQUENCE_SETTERS:
            first = node.args[0] if node.args else None
            target = _pg_regclass(first, a)
            if target is None:
                self.effects.code = True  # which sequence is unknown
            else:
                self.effects.write_reads(target)
        if not (builtin and name in PURE_FUNCTIONS):
            # May read anything (query_to_xml, a user-defined function); and may write, if
            # it is a user-defined volatile one (broker.masking_views looks that up).
            self.out.reads.anything = True
            self.effects.functions.add(name)


def _pg_regclass(node: Any, a: Any) -> Key | None:
    """The relation named by a constant 'name' or 'schema.name'::regclass argument."""
    while isinstance(node, a.TypeCast):
        node = node.arg
    if isinstance(node, a.A_Const) and isinstance(node.val, a.String):
        parts = node.val.sval.split(".")
        if 1 <= len(parts) <= 2 and all(re.fullmatch(r"[A-Za-z_][\w$]*", p) for p in parts):
            return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return None


def _pg_walk(root: Any, a: Any) -> Iterator[Any]:
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list | tuple):
            stack.extend(node)
            continue
        if not isinstance(node, a.Node):
            continue
        yield node
        for attr in node.__slots__:
            value = getattr(node, attr, None)
            if isinstance(value, a.Node | list | tuple):
                stack.append(value)


def _excluded(aligned: list[tuple[str, _Src]]) -> Any:
    """The EXCLUDED row of an upsert: what the INSERT part would have written."""
    if aligned and aligned[0][0] != "*":
        return _DerivedRel("excluded", [_Item(c, s) for c, s in aligned], ())
    return _FunctionRel("excluded", (), _union(s for _, s in aligned) if aligned else _NONE)


# --------------------------------------------------------------------------- MySQL, SQLite


def glot_text(dialect: str, sql: str) -> str:
    """The text sqlglot (its DIALECT) is given for ``sql``: REPLACE has INSERT's syntax where
    there is one (sqlglot only parses the latter)."""
    try:
        tokens = _tokens(dialect, sql)
    except Exception:
        return sql
    if tokens and tokens[0].text.upper() == "REPLACE":
        start, end = tokens[0].start, tokens[0].end + 1
        return sql[:start] + "INSERT " + sql[end:]
    return sql


def _tokens(dialect: str, sql: str) -> list[Any]:
    import sqlglot

    return list(sqlglot.Dialect.get_or_raise(dialect).tokenize(sql))


def _glot_parse(dialect: str, sql: str) -> Any | None:
    """One statement's tree, or None (not one statement, or sqlglot fell back to Command)."""
    import sqlglot
    from sqlglot import exp

    statements = [s for s in sqlglot.parse(glot_text(dialect, sql), read=dialect) if s]
    if len(statements) != 1 or isinstance(statements[0], exp.Command):
        return None
    return statements[0]


def _analyze_glot(
    unit: SqlUnit,
    sql: str,
    catalog: Catalog | None,
    view_sources: ViewSources | None,
    variables: Variables | None,
) -> Analysis:
    try:
        tree = _glot_parse(unit.glot_name, sql)
    except Exception:
        tree = None
    if tree is None:
        return _GlotFallback(unit, catalog, view_sources, variables).run(sql)
    analyzer = _GlotAnalyzer(unit, catalog, view_sources, variables)
    analyzer.statement(tree, _Scope())
    analyzer.collect_reads(tree)
    return analyzer.out


class _GlotAnalyzer:
    def __init__(
        self,
        unit: SqlUnit,
        catalog: Catalog | None,
        view_sources: ViewSources | None,
        variables: Variables | None,
    ) -> None:
        from sqlglot import exp

        self.e = exp
        self.unit = unit
        self.catalog = catalog
        self.r = _GlotResolver(exp, catalog, view_sources, variables)
        self.out = Analysis()
        self.created: set[Key] = set()  # tables it creates: not read, not there yet

    @property
    def effects(self) -> Effects:
        return self.out.effects

    def key(self, node: Any) -> Key | None:
        e = self.e
        if isinstance(node, e.Schema):
            node = node.this
        if isinstance(node, e.Table) and isinstance(node.this, e.Identifier) and node.name:
            db = node.args.get("db")
            return (db.name if db is not None and db.name else None, node.name)
        return None

    def columns_of(self, key: Key | None) -> list[str]:
        if key is None or self.catalog is None:
            return []
        name = f"{key[0]}.{key[1]}" if key[0] else key[1]
        try:
            return [str(c).lower() for c in self.catalog(name) or ()]
        except Exception:
            return []

    def statement(self, node: Any, scope: _Scope) -> None:
        e = self.e
        if self.r.arg(node, "with_", "with") is not None:
            scope = _Scope(scope)
            self.r.with_clause(node, scope)
        if isinstance(node, e.Insert):
            self.insert(node, scope)
        elif isinstance(node, e.Update):
            self.update(node, scope)
        elif isinstance(node, e.Create):
            self.create(node, scope)
        elif isinstance(node, e.Select) and node.args.get("into") is not None:
            self.into(node, node.args["into"], scope)
        elif isinstance(node, e.Set):
            for item in node.expressions:
                assignment = item.this if isinstance(item, e.SetItem) else item
                target = assignment.this if isinstance(assignment, e.EQ | e.PropertyEQ) else None
                if isinstance(target, e.Parameter):
                    self.effects.variables.add("@" + _var_name(target))
                elif target is not None:
                    self.effects.settings = True
        elif isinstance(node, e.Alter):
            self.alter(node)
        elif isinstance(node, e.Merge):
            self.merge(node, scope)
        elif type(node).__name__ == "Attach":
            self.effects.attach = True

    def insert(self, node: Any, scope: _Scope) -> None:
        e = self.e
        this = node.this
        target = self.key(this)
        columns = [c.name for c in this.expressions] if isinstance(this, e.Schema) else []
        columns = columns or self.columns_of(target)
        expression = node.args.get("expression")
        items = self.r.items(expression, scope) if expression is not None else []
        aligned = _align_writes(items, columns) if items else []
        for column, src in aligned:
            self.effects.write(target, column, src)
        conflict = node.args.get("conflict")
        if conflict is not None:
            inner = _Scope(scope)
            inner.add(self.r.from_item(this.this if isinstance(this, e.Schema) else this, inner))
            inner.add(_excluded(aligned))
            inserted = _union(s for _, s in aligned)
            for assignment in conflict.expressions or ():
                if isinstance(assignment, e.EQ) and isinstance(assignment.this, e.Column):
                    # VALUES(col) (MySQL) is what the INSERT part would have written.
                    value = assignment.expression.transform(
                        lambda n: (
                            e.null()
                            if isinstance(n, e.Anonymous) and n.name.upper() == "VALUES"
                            else n
                        )
                    )
                    src = self.r.expr(value, inner) | inserted
                    self.effects.write(target, assignment.this.name, src)

    def update(self, node: Any, scope: _Scope) -> None:
        e = self.e
        inner = _Scope(scope)
        this = node.this
        tables: list[_TableRel] = []
        sources = [this, *(j.this for j in (this.args.get("joins") or ()))]
        from_ = self.r.arg(node, "from_", "from")
        if from_ is not None:
            sources += [from_.this, *from_.expressions]
        sources += [j.this for j in node.args.get("joins") or ()]
        for source in sources:
            if source is None:
                continue
            rel = self.r.from_item(source, inner)
            inner.add(rel)
            if isinstance(rel, _TableRel) and source is not from_:
                tables.append(rel)
        main = self.key(this)
        for assignment in node.expressions or ():
            if not (isinstance(assignment, e.EQ) and isinstance(assignment.this, e.Column)):
                continue
            column = assignment.this
            src = self.r.expr(assignment.expression, inner)
            qualifier = [p.name for p in column.parts[:-1]]
            rel = inner.find(qualifier) if qualifier else None
            if isinstance(rel, _TableRel):
                targets = [(rel.schema, rel.table)]
            elif len(tables) <= 1 or rel is not None:
                targets = [main] if main is not None else []
            else:  # an unqualified column of a multi-table UPDATE: any table that has it
                having = [t for t in tables if t.lookup(column.name.lower()) is not None]
                targets = [(t.schema, t.table) for t in having or tables]
            for target in targets:
                self.effects.write(target, column.name, src)

    def merge(self, node: Any, scope: _Scope) -> None:
        # Neither MariaDB nor SQLite has MERGE; whatever sqlglot makes of it, fail closed.
        target = self.key(node.this)
        self.effects.write(target, "*", _ANYWHERE)

    def create(self, node: Any, scope: _Scope) -> None:
        e = self.e
        kind = str(node.args.get("kind") or "").upper()
        if kind in ("TRIGGER", "EVENT", "RULE"):
            self.effects.code = True
            return
        if kind != "TABLE":
            return
        this = node.this
        target = self.key(this)
        if target is not None and node.find(e.TemporaryProperty) is not None:
            self.effects.temporary.add(target)
        declared: list[str] = []
        if isinstance(this, e.Schema):
            for column in this.expressions:
                if isinstance(column, e.ColumnDef):
                    declared.append(column.name)
                    self.generated(target, column)
        like = node.find(e.LikeProperty) is not None or any(
            not isinstance(c, e.ColumnDef) and not isinstance(c, e.Constraint)
            for c in (this.expressions if isinstance(this, e.Schema) else ())
        )
        expression = node.args.get("expression")
        if expression is None:  # CREATE TABLE x (…), CREATE TABLE x LIKE y: empty
            known = isinstance(this, e.Schema) and not like
            self.made(target, declared if known else None)
            return
        items = self.r.items(expression, scope)
        if any(item.star for item in items) or like:
            self.made(target, None)
            self.effects.write(
                target, "*", _union(i.star.whole() if i.star else i.src for i in items)
            )
            return
        lowered = {d.lower() for d in declared}
        self.made(target, [*declared, *(i.name for i in items if i.name.lower() not in lowered)])
        for item in items:  # MySQL matches SELECT columns to declared ones by name
            self.effects.write(target, item.name, item.src)

    def made(self, target: Key | None, columns: Sequence[str] | None) -> None:
        if target is not None:
            self.created.add(target)
            known = tuple(c.lower() for c in columns) if columns is not None else None
            self.effects.created.append((target, known))

    def generated(self, target: Key | None, column: Any) -> None:
        e = self.e
        for constraint in column.args.get("constraints") or ():
            kind = (
                constraint.args.get("kind") if isinstance(constraint, e.ColumnConstraint) else None
            )
            if isinstance(kind, e.ComputedColumnConstraint | e.GeneratedAsIdentityColumnConstraint):
                expr = kind.this if isinstance(kind, e.ComputedColumnConstraint) else kind
                names = frozenset(c.name.lower() for c in expr.find_all(e.Column))
                if target is not None and names:
                    self.effects.generated.append((target, column.name.lower(), names))

    def into(self, node: Any, into: Any, scope: _Scope) -> None:
        e = self.e
        targets = [into.this, *(into.expressions or ())]
        for target in targets:
            inner = target.this if isinstance(target, e.Table) else target
            if isinstance(inner, e.Parameter):
                self.effects.variables.add("@" + _var_name(inner))
            elif isinstance(target, e.Table) and self.key(target) is not None:
                items = self.r.items(node, scope)
                self.effects.write(
                    self.key(target),
                    "*",
                    _union(i.star.whole() if i.star else i.src for i in items),
                )

    def alter(self, node: Any) -> None:
        e = self.e
        target = self.key(node.this)
        if target is None:
            return
        for action in node.args.get("actions") or ():
            if isinstance(action, e.AlterRename):
                new = self.key(action.this)
                if new is not None:
                    self.effects.renames.append((target, new))
            elif isinstance(action, e.RenameColumn):
                old, new = action.this, action.args.get("to")
                if old is not None and new is not None:
                    self.effects.column_renames.append((target, old.name, new.name))
            elif isinstance(action, e.ModifyColumn):
                old = action.args.get("rename_from")
                column = action.this
                if old is not None and column is not None and old.name != column.name:
                    self.effects.column_renames.append((target, old.name, column.name))
                if isinstance(column, e.ColumnDef):
                    self.generated(target, column)
            elif isinstance(action, e.ColumnDef):
                self.generated(target, action)

    def collect_reads(self, root: Any) -> None:
        e = self.e
        reads = self.out.reads
        ctes: set[str] = set()
        keys: dict[Key, None] = {}
        for node in root.walk():
            if isinstance(node, e.Table) and isinstance(node.this, e.Identifier):
                key = self.key(node)
                if key is not None:
                    keys[key] = None
            elif isinstance(node, e.CTE):
                ctes.add(node.alias_or_name.lower())
            elif isinstance(node, e.Column):
                if isinstance(node.this, e.Star):
                    reads.star = True
                elif node.name:
                    reads.names.add(node.name.lower())
            elif isinstance(node, e.Star):
                reads.star = True
            elif isinstance(node, e.Parameter):
                reads.variables.add("@" + _var_name(node))
            elif isinstance(node, e.SessionParameter):
                reads.variables.add("@@" + _var_name(node))
            elif isinstance(node, e.PropertyEQ) and isinstance(node.this, e.Parameter):
                self.effects.variables.add("@" + _var_name(node.this))
            elif isinstance(node, e.Anonymous):
                if not (self.unit.values_function and node.name.upper() == "VALUES"):
                    self.function(node.name.lower(), node.expressions)
            elif isinstance(node, e.Show):
                reads.settings = True
            elif isinstance(node, e.Command):
                reads.anything = True
        reads.relations = [
            k for k in keys if not (k[0] is None and k[1].lower() in ctes) and k not in self.created
        ]

    def function(self, name: str, args: Sequence[Any]) -> None:
        e = self.e
        if name in _SEQUENCE_SETTERS:  # MariaDB's SETVAL(seq, n)
            first = args[0] if args else None
            target = None
            if isinstance(first, e.Column) and first.name:
                table = first.args.get("table")
                target = (table.name if table is not None else None, first.name)
            if target is None:
                self.effects.code = True
            else:
                self.effects.write_reads(target)
        if name not in PURE_FUNCTIONS:
            self.out.reads.anything = True
            if self.unit.has_user_functions:
                self.effects.functions.add(name)


def _var_name(node: Any) -> str:
    inner = node.this
    name = inner.name if hasattr(inner, "name") else str(inner or "")
    return str(name).lower()


def _align_writes(items: list[_Item], columns: Sequence[str]) -> list[tuple[str, _Src]]:
    if columns and items and len(items) <= len(columns) and not any(i.star for i in items):
        return [(col, item.src) for col, item in zip(columns, items, strict=False)]
    return [("*", _union(i.star.whole() if i.star else i.src for i in items))]


# Statements (by first word) that write no table data and assign no variable.
_HARMLESS = frozenset(
    """
    SHOW DESCRIBE DESC HELP BEGIN START COMMIT ROLLBACK SAVEPOINT RELEASE LOCK UNLOCK USE
    FLUSH KILL OPTIMIZE CHECK CHECKSUM REPAIR GRANT REVOKE PREPARE DEALLOCATE XA CACHE
    RESET PURGE DROP TRUNCATE ATTACH DETACH VACUUM REINDEX PRAGMA BACKUP SHUTDOWN
    """.split()
)
_RUNS_CODE = frozenset({"CALL", "EXECUTE", "EXEC", "INSTALL", "HANDLER"})
_STATEMENT_WORDS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "VALUES", "TABLE"}
)
_AFTER_INTO = frozenset(
    {"FROM", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "FOR", "LOCK", "UNION", "WINDOW"}
)


class _GlotFallback:
    """Statements sqlglot does not parse, by their tokens: MySQL's ``SET @a = …, @b = …``,
    ``SELECT … INTO @a, @b``, ``DO …``, ``ANALYZE …``, ``RENAME TABLE``, ``LOAD DATA``;
    the rest fail closed."""

    def __init__(
        self,
        unit: SqlUnit,
        catalog: Catalog | None,
        view_sources: ViewSources | None,
        variables: Variables | None,
    ) -> None:
        self.unit = unit
        self.dialect = unit.glot_name
        self.args = (catalog, view_sources, variables)

    def sub(self, sql: str) -> Analysis | None:
        """A rewritten statement's analysis, when sqlglot parses it."""
        try:
            tree = _glot_parse(self.dialect, sql)
        except Exception:
            return None
        if tree is None:
            return None
        analyzer = _GlotAnalyzer(self.unit, *self.args)
        analyzer.statement(tree, _Scope())
        analyzer.collect_reads(tree)
        return analyzer.out

    def run(self, sql: str) -> Analysis:
        try:
            tokens = _tokens(self.dialect, sql)
        except Exception:
            failed = Analysis()
            failed.effects.code = True
            failed.reads.anything = True
            return failed
        if not tokens:
            return Analysis()
        first = tokens[0].text.upper()
        # The tokenizer keeps the rest of some commands (RENAME, ...) as one string.
        if len(tokens) == 2 and tokens[1].token_type.name == "STRING":
            blanked = " " * (tokens[0].end + 1) + sql[tokens[0].end + 1 :]
            with contextlib.suppress(Exception):
                tokens = [tokens[0], *_tokens(self.dialect, blanked)]
        out: Analysis | None = None
        if first == "SET" and len(tokens) > 1 and tokens[1].text.upper() == "STATEMENT":
            # MariaDB's SET STATEMENT var = value [, …] FOR <statement>
            out = self.set_statement(sql, tokens)
        elif first == "SET":
            out = self.assignments(sql, tokens)
        elif first in ("SELECT", "WITH", "(") or first == "VALUES":
            out = self.select_into(sql, tokens)
        elif first == "DO":
            out = self.sub("SELECT " + sql[tokens[1].start :]) if len(tokens) > 1 else Analysis()
        elif first in ("ANALYZE", "EXPLAIN"):
            for t in tokens[1:]:
                if t.text.upper() in _STATEMENT_WORDS:
                    inner = sql[t.start :]
                    out = self.sub(inner) or _GlotFallback(self.unit, *self.args).run(inner)
                    break
        elif first == "RENAME":
            out = self.rename(tokens)
        elif first == "ATTACH":
            out = Analysis()
            out.effects.attach = True
        return out if out is not None else self.generic(first, tokens)

    def generic(self, first: str, tokens: list[Any]) -> Analysis:
        out = Analysis()
        out.reads.anything = True
        words = [t.text.upper() for t in tokens]
        if first in _RUNS_CODE:
            out.effects.code = True
        elif first == "CREATE":
            head = words[1:10]
            if any(w in ("TRIGGER", "EVENT", "RULE") for w in head):
                out.effects.code = True
            elif "TABLE" in head:
                self.taint_names(out, tokens)
        elif first == "LOAD":
            for k, word in enumerate(words):
                if word == "TABLE" and k + 1 < len(tokens):
                    key = _dotted(tokens, k + 1)
                    if key is not None:
                        out.effects.write(key, "*", _ANYWHERE)
        elif first not in _HARMLESS:
            self.taint_names(out, tokens)  # may write any table it names: opaque
        for k, token in enumerate(tokens[:-1]):
            if token.token_type.name == "PARAMETER":
                out.reads.variables.add("@" + tokens[k + 1].text.lower())
        return out

    @staticmethod
    def taint_names(out: Analysis, tokens: list[Any]) -> None:
        for token in tokens:
            if token.token_type.name in ("VAR", "IDENTIFIER"):
                out.effects.write((None, token.text), "*", _ANYWHERE)

    def set_statement(self, sql: str, tokens: list[Any]) -> Analysis | None:
        depth = 0
        for k, token in enumerate(tokens):
            kind = token.token_type.name
            depth += kind == "L_PAREN"
            depth -= kind == "R_PAREN"
            if depth == 0 and token.text.upper() == "FOR" and k + 1 < len(tokens):
                inner = sql[tokens[k + 1].start :]
                out = self.sub(inner) or _GlotFallback(self.unit, *self.args).run(inner)
                settings = self.assignments(sql[: token.start], tokens[1:k])
                if settings is not None:
                    out.merge(settings)
                return out
        return None

    def assignments(self, sql: str, tokens: list[Any]) -> Analysis | None:
        """SET a = x, @b := y, SESSION c = z (several assignments: sqlglot takes one)."""
        parts = _split_top(tokens[1:], "COMMA")
        values: list[str] = []
        assigned: set[str] = set()
        settings = False
        for part in parts:
            at = next(
                (k for k, t in enumerate(part) if t.token_type.name in ("EQ", "COLON_EQ")), None
            )
            if at is None or at + 1 >= len(part):
                settings = True  # SET NAMES x, SET TRANSACTION …: no data
                continue
            lhs = part[:at]
            values.append(sql[part[at + 1].start : part[-1].end + 1])
            if len(lhs) == 2 and lhs[0].token_type.name == "PARAMETER":
                assigned.add("@" + lhs[1].text.lower())
            else:
                settings = True
        if not values:
            return Analysis()
        out = self.sub("SELECT " + ", ".join(values))
        if out is None:
            out = Analysis()
            out.reads.anything = True
        out.effects.variables |= assigned
        out.effects.settings = out.effects.settings or settings
        return out

    def select_into(self, sql: str, tokens: list[Any]) -> Analysis | None:
        """SELECT … INTO @a, @b … / INTO OUTFILE (sqlglot takes one variable)."""
        depth = 0
        for k, token in enumerate(tokens):
            kind = token.token_type.name
            depth += kind == "L_PAREN"
            depth -= kind == "R_PAREN"
            if depth or token.text.upper() != "INTO":
                continue
            end = k + 1
            while end < len(tokens) and tokens[end].text.upper() not in _AFTER_INTO:
                end += 1
            names = {
                "@" + tokens[j + 1].text.lower()
                for j in range(k + 1, end - 1)
                if tokens[j].token_type.name == "PARAMETER"
            }
            stop = tokens[end].start if end < len(tokens) else len(sql)
            rest = sql[: token.start] + " " + sql[stop:]
            out = self.sub(rest)
            if out is None:
                out = Analysis()
                out.reads.anything = True
            out.effects.variables |= names
            return out
        return None

    def rename(self, tokens: list[Any]) -> Analysis | None:
        """RENAME TABLE a TO b, c TO d."""
        body = tokens[1:]
        if body and body[0].text.upper() in ("TABLE", "TABLES"):
            body = body[1:]
        out = Analysis()
        for part in _split_top(body, "COMMA"):
            words = [t.text.upper() for t in part]
            if "TO" not in words:
                return None
            at = words.index("TO")
            old, new = _dotted(part[:at], 0), _dotted(part[at + 1 :], 0)
            if old is None or new is None:
                return None
            out.effects.renames.append((old, new))
        return out


def _split_top(tokens: Sequence[Any], kind: str) -> list[list[Any]]:
    parts: list[list[Any]] = [[]]
    depth = 0
    for token in tokens:
        name = token.token_type.name
        depth += name == "L_PAREN"
        depth -= name == "R_PAREN"
        if name == kind and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


def _dotted(tokens: Sequence[Any], start: int) -> Key | None:
    """``name`` or ``schema.name`` at tokens[start]."""
    names = []
    k = start
    while k < len(tokens) and tokens[k].token_type.name in ("VAR", "IDENTIFIER"):
        names.append(tokens[k].text)
        if k + 1 < len(tokens) and tokens[k + 1].token_type.name == "DOT":
            k += 2
            continue
        break
    if len(names) == 1:
        return (None, names[0])
    if len(names) == 2:
        return (names[0], names[1])
    return None


__all__ = ["ANYTHING", "Analysis", "Effects", "Reads", "Write", "analyze", "glot_text"]
