"""Column lineage of a MySQL or SQLite statement, from sqlglot's AST."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.masking.lineage import (
    _ANYWHERE,
    _NONE,
    _PURE_TABLE_FUNCTIONS,
    Catalog,
    ColumnSource,
    Variables,
    ViewSources,
    _align,
    _all_opaque,
    _cte_factory,
    _DerivedRel,
    _from_strings,
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


def column_sources_sqlglot(
    sql: str,
    dialect: str,
    result_columns: Sequence[str],
    catalog: Catalog | None = None,
    *,
    view_sources: ViewSources | None = None,
    variables: Variables | None = None,
) -> list[ColumnSource]:
    """Like :func:`column_sources_pglast`, for MySQL ("mysql") or SQLite ("sqlite") with
    sqlglot's AST. Best effort with the same fail-closed rule: never raises.

    ``variables(name)`` gives the sources of what a MySQL variable holds in this session
    (``"@name"`` a user variable, ``"@@name"`` a system variable; ``"*"``: anything). Without
    it a user variable may hold anything (opaque) and a system variable holds no table data."""
    names = list(result_columns)
    try:
        import sqlglot
        from sqlglot import exp
    except ImportError:  # pragma: no cover - sqlglot is a dependency
        return _all_opaque(names)
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except Exception:
        return _all_opaque(names)
    if len(statements) != 1:
        return _all_opaque(names)
    try:
        resolver = _GlotResolver(exp, catalog, view_sources, variables)
        return resolver.statement(statements[0], names)
    except Exception:
        return _all_opaque(names)


class _GlotResolver:
    def __init__(
        self,
        exp: Any,
        catalog: Catalog | None,
        view_sources: ViewSources | None,
        variables: Variables | None = None,
    ) -> None:
        self.exp = exp
        self.catalog = catalog
        self.view_sources = view_sources
        self.variables = variables

    def variable(self, node: Any) -> _Src:
        """What ``@name`` (exp.Parameter) or ``@@name`` (exp.SessionParameter) holds."""
        e = self.exp
        system = isinstance(node, e.SessionParameter)
        inner = node.this
        name = inner.name if isinstance(inner, e.Expression) else str(inner or "")
        if not name:
            return _NONE if system else _ANYWHERE
        if self.variables is None:
            return _NONE if system else _ANYWHERE
        try:
            sources = tuple(self.variables(("@@" if system else "@") + name.lower()))
        except Exception:
            return _ANYWHERE
        return _from_strings(sources)

    @staticmethod
    def arg(node: Any, *keys: str) -> Any:
        for key in keys:
            value = node.args.get(key)
            if value is not None:
                return value
        return None

    def statement(self, stmt: Any, names: list[str]) -> list[ColumnSource]:
        e = self.exp
        if isinstance(stmt, e.Select | e.SetOperation | e.Subquery):
            if isinstance(stmt, e.Select) and self.arg(stmt, "into") is not None:
                return _all_opaque(names)
            return _to_sources(names, self.aligned(stmt, _Scope(), names))
        if isinstance(stmt, e.Insert | e.Update | e.Delete):
            returning = self.arg(stmt, "returning")
            if returning is None:
                return _all_opaque(names)
            scope = _Scope()
            target = self.arg(stmt, "this")
            if isinstance(target, e.Schema):
                target = target.this
            scope.add(self.from_item(target, scope))
            items = self.select_list(returning.expressions, scope)
            return _to_sources(names, _align(items, names))
        if isinstance(stmt, e.Describe | e.Show | e.Pragma | e.Set):
            return _not_data(names)
        return _all_opaque(names)

    def with_clause(self, node: Any, scope: _Scope) -> None:
        with_ = self.arg(node, "with_", "with")
        if with_ is None:
            return
        recursive = bool(with_.args.get("recursive"))
        for cte in with_.expressions:
            name = cte.alias_or_name.lower()
            alias = cte.args.get("alias")
            colnames = [c.name for c in (alias.columns if alias is not None else [])]
            query = cte.this
            e = self.exp
            if recursive and isinstance(query, e.SetOperation):
                base = self.items(query.this, scope)
                items = base
                for _ in range(4):
                    scope.ctes[name] = _cte_factory(name, items, colnames)
                    merged = _merge_items(items, self.items(query.expression, scope))
                    if _same_items(merged, items):
                        break
                    items = merged
            else:
                items = self.items(query, scope)
            scope.ctes[name] = _cte_factory(name, items, colnames)

    def aligned(self, node: Any, parent: _Scope, names: list[str]) -> list[_Src]:
        e = self.exp
        if isinstance(node, e.Subquery):
            return self.aligned(node.this, parent, names)
        if isinstance(node, e.SetOperation):
            scope = _Scope(parent)
            self.with_clause(node, scope)
            left = self.aligned(node.this, scope, names)
            right = self.aligned(node.expression, scope, names)
            return [lhs | rhs for lhs, rhs in zip(left, right, strict=True)]
        return _align(self.items(node, parent), names)

    def items(self, node: Any, parent: _Scope) -> list[_Item]:
        e = self.exp
        if isinstance(node, e.Subquery):
            return self.items(node.this, parent)
        scope = _Scope(parent)
        self.with_clause(node, scope)
        if isinstance(node, e.SetOperation):
            return _merge_items(self.items(node.this, scope), self.items(node.expression, scope))
        if isinstance(node, e.Values):
            rows = [list(t.expressions) for t in node.expressions]
            width = max((len(r) for r in rows), default=0)
            return [
                _Item(f"column{k + 1}", _union(self.expr(r[k], scope) for r in rows if k < len(r)))
                for k in range(width)
            ]
        if not isinstance(node, e.Select):
            return [_Item("*", _ANYWHERE, star=_FunctionRel(None, (), _ANYWHERE))]
        from_ = self.arg(node, "from_", "from")
        if from_ is not None:
            for source in [from_.this, *from_.expressions]:
                if source is not None:
                    scope.add(self.from_item(source, scope))
        for join in node.args.get("joins") or ():
            left = scope.from_items.pop() if scope.from_items else None
            inner = _Scope(scope)
            if left is not None:
                inner.add(left)
            right = self.from_item(join.this, inner)
            using = [u.name for u in join.args.get("using") or ()]
            if left is None:
                scope.add(right)
            else:
                if str(join.args.get("method") or "").upper() == "NATURAL":
                    lcols, rcols = left.columns(), right.columns()
                    if lcols is not None and rcols is not None:
                        rnames = {n for n, _ in rcols}
                        using = [n for n, _ in lcols if n in rnames]
                scope.add(_JoinRel(left, right, using, None))
        return self.select_list(node.expressions, scope)

    def select_list(self, expressions: Sequence[Any], scope: _Scope) -> list[_Item]:
        e = self.exp
        items: list[_Item] = []
        for node in expressions:
            if isinstance(node, e.Star):
                items.extend(scope.star())
                continue
            if isinstance(node, e.Column) and isinstance(node.this, e.Star):
                qualifier = [p.name for p in node.parts[:-1]]
                rel = scope.find(qualifier)
                items.extend(_star_items(rel) if rel is not None else [_Item("*", _ANYWHERE)])
                continue
            if isinstance(node, e.Alias):
                items.append(_Item(node.alias, self.expr(node.this, scope)))
                continue
            items.append(_Item(node.output_name or "?column?", self.expr(node, scope)))
        return items

    def from_item(self, node: Any, scope: _Scope) -> _Rel:
        e = self.exp
        alias_node = node.args.get("alias") if hasattr(node, "args") else None
        alias = alias_node.name if alias_node is not None and alias_node.name else None
        colnames = [c.name for c in alias_node.columns] if alias_node is not None else []
        if isinstance(node, e.Table) and isinstance(node.this, e.Identifier):
            db = node.args.get("db")
            schema = db.name if db is not None else None
            if schema is None:
                cte = scope.cte(node.name.lower())
                if cte is not None:
                    return cte(alias, colnames)
            return _TableRel(schema, node.name, alias, colnames, self.catalog, self.view_sources)
        if isinstance(node, e.Table):  # a function in FROM: json_each(x), ...
            call = node.this
            fname = (call.name if isinstance(call, e.Anonymous) else call.key or "").lower()
            src = self.expr(call, scope)
            if fname in _PURE_TABLE_FUNCTIONS or (
                not isinstance(call, e.Anonymous) and isinstance(call, e.Func)
            ):
                src = _union(self.expr(arg, scope) for arg in call.iter_expressions())
            return _FunctionRel(alias or fname, colnames, src)
        if isinstance(node, e.Subquery):
            return _DerivedRel(alias, self.items(node.this, scope), colnames)
        if isinstance(node, e.Unnest):
            return _FunctionRel(alias, colnames, self.expr(node.expressions, scope))
        if isinstance(node, e.Lateral):
            return self.from_item(node.this, scope)
        return _FunctionRel(alias, colnames, _ANYWHERE)

    def expr(self, node: Any, scope: _Scope) -> _Src:
        e = self.exp
        if node is None:
            return _NONE
        if isinstance(node, list | tuple):
            return _union(self.expr(n, scope) for n in node)
        if not isinstance(node, e.Expression):
            return _NONE
        if isinstance(node, e.Column):
            parts = [p.name for p in node.parts]
            if isinstance(node.this, e.Star):
                rel = scope.find(parts[:-1])
                return rel.whole() if rel is not None else _ANYWHERE
            if len(parts) == 1:
                return scope.column(parts[0])
            rel = scope.find(parts[:-1])
            if rel is None:
                return scope.column(parts[-1]) | _Src(opaque=True)
            return rel.get(parts[-1])
        if isinstance(node, e.Star):
            return _union(item.star.whole() if item.star else item.src for item in scope.star())
        if isinstance(node, e.Parameter | e.SessionParameter):
            return self.variable(node)
        if isinstance(node, e.Exists):  # chooses rows, produces no value (as in PostgreSQL)
            return _NONE
        if isinstance(node, e.Count) and isinstance(node.this, e.Star):
            return _NONE  # count(*) counts rows; it carries no column's value
        if isinstance(node, e.Select | e.SetOperation):
            return _union(i.star.whole() if i.star else i.src for i in self.items(node, scope))
        if isinstance(node, e.Subquery):
            return self.expr(node.this, scope)
        src = _NONE
        if isinstance(node, e.Anonymous) and not _pure(node.name):
            src = _ANYWHERE
        for child in node.iter_expressions():
            src = src | self.expr(child, scope)
        return src
