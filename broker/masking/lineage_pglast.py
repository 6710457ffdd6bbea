"""Column lineage of a PostgreSQL statement, from pglast's parse tree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.masking.lineage import (
    _ANYWHERE,
    _NONE,
    _PURE_TABLE_FUNCTIONS,
    Catalog,
    ColumnSource,
    ViewSources,
    _align,
    _all_opaque,
    _cte_factory,
    _DerivedRel,
    _FunctionRel,
    _Item,
    _JoinRel,
    _merge_items,
    _not_data,
    _pure,
    _Rel,
    _same_items,
    _Scope,
    _Src,
    _star_items,
    _TableRel,
    _to_sources,
    _union,
)


def column_sources_pglast(
    sql: str,
    result_columns: Sequence[str],
    catalog: Catalog | None = None,
    *,
    view_sources: ViewSources | None = None,
) -> list[ColumnSource]:
    """Source columns of each result column of one PostgreSQL statement (parsed with pglast).

    ``catalog(table)`` returns the column names of a table or view ("public.users" or "users",
    as written in the query) and makes ``*`` and whole-row references exact; without it they
    are resolved by the result's column names where that is sound, or are opaque.
    ``view_sources(view)`` may return ``{view_column: (underlying source columns, ...)}`` so
    that rules on the base tables also apply through a view; for a table it may name what a
    column was filled with in this session (key ``"*"``: every column; source ``"*"``:
    anything). Never raises: anything not understood yields opaque columns.
    """
    names = list(result_columns)
    try:
        from pglast.parser import ParseError

        from broker.pglast_guard import parse_sql
    except ImportError:  # pragma: no cover - pglast is a dependency
        return _all_opaque(names)
    try:
        statements = parse_sql(sql)
    except (ParseError, Exception):
        return _all_opaque(names)
    if len(statements) != 1:
        return _all_opaque(names)
    try:
        return _PgResolver(catalog, view_sources).statement(statements[0].stmt, names)
    except RecursionError:
        return _all_opaque(names)
    except Exception:
        return _all_opaque(names)


class _PgResolver:
    def __init__(self, catalog: Catalog | None, view_sources: ViewSources | None) -> None:
        from pglast import ast, enums

        self.ast = ast
        self.enums = enums
        self.catalog = catalog
        self.view_sources = view_sources

    # -- statements

    def statement(self, stmt: Any, names: list[str]) -> list[ColumnSource]:
        a = self.ast
        if isinstance(stmt, a.SelectStmt):
            if stmt.intoClause is not None:
                return _all_opaque(names)
            return _to_sources(names, self.select_aligned(stmt, _Scope(), names))
        if isinstance(stmt, a.InsertStmt | a.UpdateStmt | a.DeleteStmt | a.MergeStmt):
            return _to_sources(names, self.returning(stmt, names))
        if isinstance(stmt, a.ExplainStmt | a.VariableShowStmt):
            return _not_data(names)
        return _all_opaque(names)

    def returning(self, stmt: Any, names: list[str]) -> list[_Src]:
        a = self.ast
        scope = _Scope()
        self.with_clause(stmt.withClause, scope)
        clause = stmt.returningClause
        if clause is None or not clause.exprs:
            return [_ANYWHERE] * len(names)
        scope.add(self.from_item(stmt.relation, scope))
        extra: list[Any] = []
        if isinstance(stmt, a.UpdateStmt):
            extra = list(stmt.fromClause or ())
        elif isinstance(stmt, a.DeleteStmt):
            extra = list(stmt.usingClause or ())
        elif isinstance(stmt, a.MergeStmt) and stmt.sourceRelation is not None:
            extra = [stmt.sourceRelation]
        for node in extra:
            scope.add(self.from_item(node, scope))
        items = self.target_list(clause.exprs, scope)
        return _align(items, names)

    def with_clause(self, clause: Any, scope: _Scope) -> None:
        if clause is None:
            return
        for cte in clause.ctes or ():
            name = cte.ctename.lower()
            colnames = [c.sval for c in cte.aliascolnames or ()]
            query = cte.ctequery
            if clause.recursive and self._is_setop(query):
                items = self.recursive_cte(name, query, colnames, scope)
            elif isinstance(query, self.ast.SelectStmt):
                items = self.query_items(query, scope)
            else:  # data-modifying CTE: INSERT ... RETURNING
                items = self.modifying_items(query, scope)
            scope.ctes[name] = _cte_factory(name, items, colnames)

    def modifying_items(self, stmt: Any, scope: _Scope) -> list[_Item]:
        a = self.ast
        if not isinstance(stmt, a.InsertStmt | a.UpdateStmt | a.DeleteStmt | a.MergeStmt):
            return [_Item("*", _ANYWHERE, star=_FunctionRel(None, (), _ANYWHERE))]
        clause = stmt.returningClause
        if clause is None:
            return []
        inner = _Scope(scope)
        inner.add(self.from_item(stmt.relation, inner))
        return self.target_list(clause.exprs, inner)

    def _is_setop(self, stmt: Any) -> bool:
        return (
            isinstance(stmt, self.ast.SelectStmt) and stmt.op != self.enums.SetOperation.SETOP_NONE
        )

    def recursive_cte(
        self, name: str, query: Any, colnames: Sequence[str], scope: _Scope
    ) -> list[_Item]:
        """Fixpoint: the recursive term sees the CTE as resolved so far."""
        base = self.query_items(query.larg, scope)
        items = base
        for _ in range(4):
            scope.ctes[name] = _cte_factory(name, items, colnames)
            right = self.query_items(query.rarg, scope)
            merged = _merge_items(items, right)
            if _same_items(merged, items):
                break
            items = merged
        return items

    # -- queries

    def select_aligned(self, stmt: Any, parent: _Scope, names: list[str]) -> list[_Src]:
        if self._is_setop(stmt):
            scope = _Scope(parent)
            self.with_clause(stmt.withClause, scope)
            left = self.select_aligned(stmt.larg, scope, names)
            right = self.select_aligned(stmt.rarg, scope, names)
            return [lhs | rhs for lhs, rhs in zip(left, right, strict=True)]
        return _align(self.query_items(stmt, parent), names)

    def query_items(self, stmt: Any, parent: _Scope) -> list[_Item]:
        """Output items of a query (SELECT, set operation, VALUES)."""
        if not isinstance(stmt, self.ast.SelectStmt):
            return self.modifying_items(stmt, parent)
        scope = _Scope(parent)
        self.with_clause(stmt.withClause, scope)
        if self._is_setop(stmt):
            left = self.query_items(stmt.larg, scope)
            right = self.query_items(stmt.rarg, scope)
            return _merge_items(left, right)
        if stmt.valuesLists:
            rows = [list(row) for row in stmt.valuesLists]
            width = max(len(r) for r in rows)
            return [
                _Item(
                    f"column{k + 1}",
                    _union(self.expr(r[k], scope) for r in rows if k < len(r)),
                )
                for k in range(width)
            ]
        for node in stmt.fromClause or ():
            scope.add(self.from_item(node, scope))
        return self.target_list(stmt.targetList or (), scope)

    def target_list(self, targets: Sequence[Any], scope: _Scope) -> list[_Item]:
        a = self.ast
        items: list[_Item] = []
        for target in targets:
            val = target.val if isinstance(target, a.ResTarget) else target
            if isinstance(val, a.ColumnRef) and isinstance(val.fields[-1], a.A_Star):
                qualifier = [f.sval for f in val.fields[:-1]]
                if not qualifier:
                    items.extend(scope.star())
                    continue
                rel = scope.find(qualifier)
                items.extend(_star_items(rel) if rel is not None else [_Item("*", _ANYWHERE)])
                continue
            if (
                isinstance(val, a.A_Indirection)
                and val.indirection
                and isinstance(val.indirection[-1], a.A_Star)
            ):  # (t).* / (row_expr).*
                src = self.expr(val.arg, scope)
                items.append(_Item("*", src, star=_FunctionRel(None, (), src)))
                continue
            name = target.name if isinstance(target, a.ResTarget) and target.name else None
            items.append(_Item(name or self.figure_name(val), self.expr(val, scope)))
        return items

    def figure_name(self, node: Any) -> str:
        """PostgreSQL's FigureColname, enough for derived-table lookups."""
        a = self.ast
        if isinstance(node, a.ColumnRef):
            last = node.fields[-1]
            return last.sval if isinstance(last, a.String) else "?column?"
        if isinstance(node, a.A_Indirection):
            for ind in reversed(node.indirection or ()):
                if isinstance(ind, a.String):
                    return ind.sval
            return self.figure_name(node.arg)
        if isinstance(node, a.FuncCall):
            return node.funcname[-1].sval
        if isinstance(node, a.TypeCast):
            inner = self.figure_name(node.arg)
            if inner == "?column?" and node.typeName is not None:
                return node.typeName.names[-1].sval
            return inner
        if isinstance(node, a.CoalesceExpr):
            return "coalesce"
        if isinstance(node, a.CaseExpr):
            return "case"
        if isinstance(node, a.SubLink) and node.subselect is not None:
            sub = node.subselect
            if isinstance(sub, a.SelectStmt) and sub.targetList:
                first = sub.targetList[0]
                return first.name or self.figure_name(first.val)
        return "?column?"

    # -- FROM

    def from_item(self, node: Any, scope: _Scope) -> _Rel:
        a = self.ast
        if isinstance(node, a.RangeVar):
            alias = node.alias.aliasname if node.alias is not None else None
            colnames = [c.sval for c in (node.alias.colnames or ())] if node.alias else []
            if node.schemaname is None:
                cte = scope.cte(node.relname.lower())
                if cte is not None:
                    return cte(alias, colnames)
            return _TableRel(
                node.schemaname,
                node.relname,
                alias,
                colnames,
                self.catalog,
                self.view_sources,
            )
        if isinstance(node, a.RangeSubselect):
            alias = node.alias.aliasname if node.alias is not None else None
            colnames = [c.sval for c in (node.alias.colnames or ())] if node.alias else []
            items = self.query_items(node.subquery, scope)
            return _DerivedRel(alias, items, colnames)
        if isinstance(node, a.JoinExpr):
            left = self.from_item(node.larg, scope)
            # The right side sees the left (LATERAL); a plain join cannot refer to it anyway.
            inner = _Scope(scope)
            inner.add(left)
            right = self.from_item(node.rarg, inner)
            using = [u.sval for u in node.usingClause or ()]
            if node.isNatural:
                lcols, rcols = left.columns(), right.columns()
                if lcols is not None and rcols is not None:
                    rnames = {n for n, _ in rcols}
                    using = [n for n, _ in lcols if n in rnames]
            alias = node.alias.aliasname if node.alias is not None else None
            return _JoinRel(left, right, using, alias)
        if isinstance(node, a.RangeFunction):
            alias = node.alias.aliasname if node.alias is not None else None
            colnames = [c.sval for c in (node.alias.colnames or ())] if node.alias else []
            if not colnames and node.coldeflist:
                colnames = [c.colname for c in node.coldeflist]
            srcs: list[_Src] = []
            first_name: str | None = None
            for entry in node.functions or ():
                call = entry[0] if isinstance(entry, tuple | list) else entry
                if isinstance(call, a.FuncCall):
                    fname = call.funcname[-1].sval.lower()
                    schema = call.funcname[0].sval if len(call.funcname) > 1 else None
                    first_name = first_name or fname
                    args = _union(self.expr(arg, scope) for arg in call.args or ())
                    if fname in _PURE_TABLE_FUNCTIONS and (schema in (None, "pg_catalog")):
                        srcs.append(args)
                    else:
                        srcs.append(args | _ANYWHERE)
                else:
                    srcs.append(self.expr(call, scope))
            return _FunctionRel(alias or first_name, colnames, _union(srcs))
        if isinstance(node, a.RangeTableSample):
            return self.from_item(node.relation, scope)
        if isinstance(node, a.RangeTableFunc | a.JsonTable):
            alias = node.alias.aliasname if node.alias is not None else None
            src = _union(
                self.expr(part, scope)
                for part in (
                    getattr(node, "docexpr", None),
                    getattr(node, "rowexpr", None),
                    getattr(node, "context_item", None),
                )
                if part is not None
            )
            return _FunctionRel(alias, [], src)
        return _FunctionRel(None, [], _ANYWHERE)

    # -- expressions

    def expr(self, node: Any, scope: _Scope) -> _Src:
        a = self.ast
        if node is None:
            return _NONE
        if isinstance(node, tuple | list):
            return _union(self.expr(n, scope) for n in node)
        if not isinstance(node, a.Node):
            return _NONE
        if isinstance(node, a.ColumnRef):
            return self.column_ref(node, scope)
        if isinstance(node, a.A_Const | a.ParamRef | a.SQLValueFunction | a.TypeName):
            return _NONE
        if isinstance(node, a.A_Indirection):
            return self.indirection(node, scope)
        if isinstance(node, a.SubLink):
            src = self.expr(node.testexpr, scope)
            if node.subLinkType != self.enums.SubLinkType.EXISTS_SUBLINK:
                items = self.query_items(node.subselect, scope)
                src = src | _union(i.star.whole() if i.star else i.src for i in items)
            return src
        if isinstance(node, a.SelectStmt):
            items = self.query_items(node, scope)
            return _union(i.star.whole() if i.star else i.src for i in items)
        src = _NONE
        if isinstance(node, a.FuncCall):
            schema = node.funcname[0].sval if len(node.funcname) > 1 else None
            if not _pure(node.funcname[-1].sval, schema):
                src = _ANYWHERE
        for attr in node.__slots__:
            if attr == "location":
                continue
            value = getattr(node, attr, None)
            if isinstance(value, a.Node | tuple | list):
                src = src | self.expr(value, scope)
        return src

    def column_ref(self, node: Any, scope: _Scope) -> _Src:
        a = self.ast
        fields = node.fields
        if isinstance(fields[-1], a.A_Star):
            qualifier = [f.sval for f in fields[:-1]]
            if not qualifier:
                return _union(item.star.whole() if item.star else item.src for item in scope.star())
            rel = scope.find(qualifier)
            return rel.whole() if rel is not None else _ANYWHERE
        parts = [f.sval for f in fields]
        if len(parts) == 1:
            return scope.column(parts[0])
        for cut in (len(parts) - 1, 1):  # u.email / public.users.email; or col.field
            rel = scope.find(parts[:cut])
            if rel is not None:
                if cut == len(parts) - 1:
                    return rel.get(parts[-1])
                return rel.get(parts[cut])  # t.compositecol.field
        return scope.column(parts[0])  # compositecol.field

    def indirection(self, node: Any, scope: _Scope) -> _Src:
        a = self.ast
        arg = node.arg
        first = node.indirection[0] if node.indirection else None
        if isinstance(arg, a.ColumnRef) and len(arg.fields) == 1 and isinstance(first, a.String):
            rel = scope.find([arg.fields[0].sval])
            if rel is not None:  # (u).email
                return rel.get(first.sval) | self.expr(node.indirection[1:], scope)
        return self.expr(arg, scope) | self.expr(node.indirection, scope)
