"""What the WHERE clause of an UPDATE or DELETE can filter, decided from its parse tree.

A predicate is one of:

- ``"true"``: it holds for every row (``OR true``, ``1 = 1``, ``id = id``, ``NOT false``,
  ``x IS NOT NULL OR true``, ``ctid IS NOT NULL``, ``WHERE 1``): the statement has no WHERE;
- ``"false"``: it holds for no row;
- ``"bound"``: it compares a column of the target with something that does not depend on the
  row (``id = 5``, ``name LIKE 'a%'``, ``id IN (1, 2)``, ``flag``), so it really filters;
- ``"unknown"``: anything else (a subquery, a join condition, a function of a column compared
  with a range, ``x IS NOT NULL``, which filters only NULLs). The policy cannot show that it
  filters rows, so a ``without_where = true`` deny or review rule applies to it.

Nothing here claims more than the text shows: an operator or node it does not know is unknown.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pglast import ast
from sqlglot import exp

Verdict = Literal["true", "false", "bound", "unknown"]

# Columns that are never NULL: PostgreSQL's system columns, SQLite's rowid aliases, MariaDB's
# _rowid (the primary key). They say where a row is stored, not what it holds: comparing one
# with a value (`ctid >= '(0,0)'`, `tableoid = 't'::regclass`) may hold for every row, so such
# a comparison does not count as filtering.
_NEVER_NULL = {
    "ctid", "xmin", "xmax", "cmin", "cmax", "tableoid", "oid", "rowid", "_rowid_", "_rowid",
}  # fmt: skip
_ORDER = ("=", "<=", ">=", "<>", "!=", "<", ">")
_SAME_TRUE = {"=", "<=", ">=", "<=>"}  # x op x holds for every non-NULL x
_SAME_FALSE = {"<>", "!=", "<", ">"}


class _Unknown:
    """A constant whose value the evaluator does not work out (now(), a parameter)."""


UNKNOWN_VALUE = _Unknown()


def conjunction(verdicts: list[Verdict]) -> Verdict:
    if "false" in verdicts:
        return "false"
    if "bound" in verdicts:
        return "bound"
    if all(v == "true" for v in verdicts):
        return "true"
    return "unknown"


def disjunction(verdicts: list[Verdict]) -> Verdict:
    if "true" in verdicts:
        return "true"
    if all(v == "false" for v in verdicts):
        return "false"
    if all(v in ("bound", "false") for v in verdicts):
        return "bound"
    return "unknown"


def negation(verdict: Verdict) -> Verdict:
    return {"true": "false", "false": "true"}.get(verdict, verdict)  # type: ignore[return-value]


def _truth(value: object, coerces_strings: bool) -> Verdict:
    """The verdict of a constant used as a predicate."""
    if value is UNKNOWN_VALUE:
        return "unknown"
    if value is None or value is False:
        return "false"
    if value is True:
        return "true"
    if isinstance(value, int | float):
        return "true" if value != 0 else "false"
    if isinstance(value, str):
        text = value.strip().lower()
        if not coerces_strings:
            if text in ("t", "true", "y", "yes", "on", "1"):
                return "true"
            if text in ("f", "false", "n", "no", "off", "0"):
                return "false"
            return "unknown"
        # MySQL reads a string as the number its leading digits spell, 0 if none.
        number = re.match(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text)
        try:
            return "true" if number and float(number.group(0)) != 0 else "false"
        except ValueError:
            return "unknown"
    return "unknown"


def _compare(op: str, left: object, right: object) -> Verdict:
    if left is UNKNOWN_VALUE or right is UNKNOWN_VALUE:
        return "unknown"
    if left is None or right is None:
        return "false"  # NULL compares to nothing
    if isinstance(left, bool) or isinstance(right, bool):
        left, right = (
            (int(left) if isinstance(left, bool) else left),
            (int(right) if isinstance(right, bool) else right),
        )
    if type(left) is not type(right) and not (
        isinstance(left, int | float) and isinstance(right, int | float)
    ):
        return "unknown"  # the server's coercion rules decide; do not guess
    result = {
        "=": left == right,
        "<=>": left == right,
        "<>": left != right,
        "!=": left != right,
        "<": left < right,  # type: ignore[operator]
        ">": left > right,  # type: ignore[operator]
        "<=": left <= right,  # type: ignore[operator]
        ">=": left >= right,  # type: ignore[operator]
    }.get(op)
    if result is None:
        return "unknown"
    return "true" if result else "false"


def _same(op: str) -> Verdict:
    if op in _SAME_TRUE:
        return "true"
    if op in _SAME_FALSE:
        return "false"
    return "unknown"


def _like_everything(pattern: object) -> bool:
    return isinstance(pattern, str) and pattern != "" and set(pattern) <= {"%"}


# --------------------------------------------------------------------------- PostgreSQL


class PgPredicate:
    """Judges a PostgreSQL WHERE clause. TARGET: the names (relation name and alias) by which
    the statement's target may be qualified; JOINED: the statement reads other relations too
    (UPDATE … FROM, DELETE … USING), so an unqualified column may be one of theirs."""

    def __init__(self, target: set[str], joined: bool) -> None:
        self.target = target
        self.joined = joined

    def verdict(self, node: Any) -> Verdict:
        if node is None:
            return "true"
        if isinstance(node, ast.CurrentOfExpr):
            return "bound"
        return self._pred(node)

    # -- values

    def _value(self, node: Any) -> object | None:
        """A constant's value (UNKNOWN_VALUE when it is one but not worked out); None when it is
        not a constant. A NULL constant is returned as the string "NULL" sentinel below."""
        if isinstance(node, ast.A_Const):
            if node.isnull:
                return _NULL
            val = node.val
            if isinstance(val, ast.Integer):
                return val.ival
            if isinstance(val, ast.Float):
                try:
                    return float(val.fval)
                except ValueError:
                    return UNKNOWN_VALUE
            if isinstance(val, ast.Boolean):
                return bool(val.boolval)
            if isinstance(val, ast.String):
                return val.sval
            return UNKNOWN_VALUE
        if isinstance(node, ast.TypeCast):
            inner = self._value(node.arg)
            if inner is None:
                return None
            names = [getattr(n, "sval", "") for n in node.typeName.names or ()]
            if names and names[-1] in ("bool", "boolean") and isinstance(inner, str):
                truth = _truth(inner, coerces_strings=False)
                return {"true": True, "false": False}.get(truth, UNKNOWN_VALUE)
            if names and names[-1] in ("int2", "int4", "int8", "integer", "bigint", "smallint"):
                if isinstance(inner, str) and re.fullmatch(r"\s*[+-]?\d+\s*", inner):
                    return int(inner)
            if names and names[-1] in ("text", "varchar") and isinstance(inner, str):
                return inner
            return inner if isinstance(inner, _Null) else UNKNOWN_VALUE
        if isinstance(node, ast.ParamRef | ast.SQLValueFunction):
            return UNKNOWN_VALUE
        if isinstance(node, ast.CoalesceExpr):
            values = [self._value(a) for a in node.args or ()]
            for value in values:
                if value is None or value is UNKNOWN_VALUE:
                    return None if value is None else UNKNOWN_VALUE
                if not isinstance(value, _Null):
                    return value
            return _NULL
        return None

    def _column(self, node: Any) -> tuple[str, ...] | None:
        """A column of the target, as a comparable key; None if NODE is not one."""
        while isinstance(node, ast.TypeCast):
            node = node.arg
        if not isinstance(node, ast.ColumnRef):
            return None
        fields = [getattr(f, "sval", None) for f in node.fields or ()]
        if not fields or any(f is None for f in fields):
            return None
        if len(fields) == 1:
            return None if self.joined and fields[0] not in _NEVER_NULL else (fields[0],)
        if fields[-2] in self.target:
            return (fields[-1],)
        return None

    def _row_free(self, node: Any) -> bool:
        """No column and no subquery anywhere in NODE: its value is the same for every row."""
        for child in _pg_walk(node):
            if isinstance(child, ast.ColumnRef | ast.SubLink):
                return False
            if isinstance(child, ast.FuncCall):
                name = [getattr(n, "sval", "") for n in child.funcname or ()]
                if name and name[-1].lower() in ("random", "nextval", "setseed"):
                    return False  # a new value per row
        return True

    def _key(self, node: Any) -> str | None:
        """A structural key for "the same expression of the target's columns" (id = id)."""
        if not self._mentions_only_target(node):
            return None
        return _pg_shape(node, self.target)

    def _mentions_only_target(self, node: Any) -> bool:
        seen_column = False
        for child in _pg_walk(node):
            if isinstance(child, ast.SubLink):
                return False
            if isinstance(child, ast.FuncCall):
                name = [getattr(n, "sval", "") for n in child.funcname or ()]
                if name and name[-1].lower() in ("random", "nextval", "setseed", "clock_timestamp"):
                    return False
            if isinstance(child, ast.ColumnRef):
                if self._column(child) is None:
                    return False
                seen_column = True
        return seen_column

    # -- predicates

    def _pred(self, node: Any) -> Verdict:
        if isinstance(node, ast.BoolExpr):
            parts = [self._pred(a) for a in node.args or ()]
            op = getattr(node.boolop, "name", str(node.boolop))
            if op == "AND_EXPR":
                return conjunction(parts)
            if op == "OR_EXPR":
                return disjunction(parts)
            return negation(parts[0]) if parts else "unknown"
        value = self._value(node)
        if value is not None:
            return "false" if isinstance(value, _Null) else _truth(value, coerces_strings=False)
        if self._filtering(node):
            return "bound"  # a boolean column
        if isinstance(node, ast.NullTest):
            return self._null_test(node)
        if isinstance(node, ast.BooleanTest):
            return self._boolean_test(node)
        if isinstance(node, ast.A_Expr):
            return self._a_expr(node)
        return "unknown"

    def _null_test(self, node: ast.NullTest) -> Verdict:
        is_null = getattr(node.nulltesttype, "name", "") == "IS_NULL"
        value = self._value(node.arg)
        if value is not None and value is not UNKNOWN_VALUE:
            return "true" if isinstance(value, _Null) == is_null else "false"
        column = self._column(node.arg)
        if column is not None and column[-1] in _NEVER_NULL:
            return "false" if is_null else "true"
        if column is not None and is_null:
            return "bound"
        return "unknown"  # IS NOT NULL filters only NULLs

    def _boolean_test(self, node: ast.BooleanTest) -> Verdict:
        inner = self._pred(node.arg)
        test = getattr(node.booltesttype, "name", "")
        if inner in ("true", "false"):
            holds = {
                "IS_TRUE": inner == "true",
                "IS_NOT_TRUE": inner != "true",
                "IS_FALSE": inner == "false",
                "IS_NOT_FALSE": inner != "false",
            }.get(test)
            if holds is not None:
                return "true" if holds else "false"
        return "bound" if inner == "bound" and test in ("IS_TRUE", "IS_FALSE") else "unknown"

    def _a_expr(self, node: ast.A_Expr) -> Verdict:
        kind = getattr(node.kind, "name", "")
        op = getattr((node.name or (None,))[-1], "sval", "")
        left, right = node.lexpr, node.rexpr
        if kind in ("AEXPR_OP", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"):
            if kind == "AEXPR_NOT_DISTINCT":
                op = "<=>"
            elif kind == "AEXPR_DISTINCT":
                op = "<>"
            if op not in _ORDER and op != "<=>":
                return "unknown"
            lv, rv = self._value(left), self._value(right)
            if lv is not None and rv is not None:
                if kind != "AEXPR_OP" and (isinstance(lv, _Null) or isinstance(rv, _Null)):
                    same = isinstance(lv, _Null) and isinstance(rv, _Null)
                    return "true" if same == (op == "<=>") else "false"
                if isinstance(lv, _Null) or isinstance(rv, _Null):
                    return "false"
                return _compare(op, lv, rv)
            key = self._key(left)
            if key is not None and key == self._key(right):
                return _same(op)
            return self._column_against_constant(left, right, op)
        if kind in ("AEXPR_IN", "AEXPR_OP_ANY", "AEXPR_OP_ALL"):
            if isinstance(right, tuple | list):
                free = all(self._row_free(r) for r in right)
            else:
                free = self._row_free(right)
            if self._filtering(left) and free:
                return "bound"
            return "unknown"
        if kind in ("AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR"):
            if not self._filtering(left) or not self._row_free(right):
                return "unknown"
            pattern = self._value(right)
            if _like_everything(pattern) and op in ("~~", "~~*"):
                return "unknown"  # matches every non-NULL value
            return "bound"
        if kind in ("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_BETWEEN_SYM"):
            bounds = right if isinstance(right, tuple | list) else (right,)
            if self._filtering(left) and all(self._row_free(b) for b in bounds):
                return "bound"
            return "unknown"
        return "unknown"

    def _filtering(self, node: Any) -> bool:
        """A column of the target whose value says something about the row's content."""
        column = self._column(node)
        return column is not None and column[-1] not in _NEVER_NULL

    def _column_against_constant(self, left: Any, right: Any, op: str) -> Verdict:
        for column, other in ((left, right), (right, left)):
            if not self._row_free(other):
                continue
            if self._filtering(column):
                return "bound"
            if op == "=" and self._mentions_only_target(column) and self._column(column) is None:
                return "bound"  # lower(email) = 'x'
        return "unknown"


class _Null:
    """SQL NULL as a constant (None means "not a constant" above)."""


_NULL = _Null()


def _pg_walk(node: Any) -> Any:
    if isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from _pg_walk(getattr(node, name, None))
    elif isinstance(node, tuple | list):
        for item in node:
            yield from _pg_walk(item)


def _pg_shape(node: Any, target: set[str]) -> str:
    """A printable structure of NODE with the target's qualifiers dropped and locations left
    out, so that ``t.id`` and ``id`` compare equal."""
    if isinstance(node, ast.ColumnRef):
        fields = [getattr(f, "sval", "*") for f in node.fields or ()]
        if len(fields) > 1 and fields[-2] in target:
            fields = fields[-1:]
        return "col:" + ".".join(fields)
    if isinstance(node, ast.Node):
        parts = []
        for name in node:
            if name in ("location", "rexpr_list_start", "rexpr_list_end", "list_start"):
                continue
            if name == "list_end":
                continue
            parts.append(f"{name}={_pg_shape(getattr(node, name, None), target)}")
        return f"{type(node).__name__}({','.join(parts)})"
    if isinstance(node, tuple | list):
        return "[" + ",".join(_pg_shape(i, target) for i in node) + "]"
    return repr(getattr(node, "name", node))


# ----------------------------------------------------------------------- MySQL, SQLite

_GLOT_COMPARE: dict[type, str] = {
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.NullSafeEQ: "<=>",
}
_GLOT_VOLATILE = {"rand", "random", "uuid", "sysdate", "last_insert_id"}


class GlotPredicate:
    """Judges a WHERE clause read by sqlglot (see PgPredicate). COERCES_STRINGS: strings
    compare with numbers, and count as true or false, by MySQL's rules."""

    def __init__(self, target: set[str], joined: bool, coerces_strings: bool) -> None:
        self.target = target
        self.joined = joined
        self.coerces_strings = coerces_strings

    def verdict(self, node: exp.Expression | None) -> Verdict:
        if node is None:
            return "true"
        return self._pred(node)

    def _value(self, node: exp.Expression) -> object | None:
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Null):
            return _NULL
        if isinstance(node, exp.Boolean):
            return bool(node.this)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return node.this
            try:
                number = float(node.this)
            except ValueError:
                return UNKNOWN_VALUE
            return int(number) if number.is_integer() and "." not in node.this else number
        if isinstance(node, exp.Neg):
            inner = self._value(node.this)
            if isinstance(inner, int | float) and not isinstance(inner, bool):
                return -inner
            return None if inner is None else UNKNOWN_VALUE
        if isinstance(node, exp.Placeholder | exp.Parameter):
            return UNKNOWN_VALUE
        if isinstance(node, exp.Coalesce):
            for arg in [node.this, *node.expressions]:
                value = self._value(arg)
                if value is None or value is UNKNOWN_VALUE:
                    return value
                if not isinstance(value, _Null):
                    return value
            return _NULL
        if isinstance(node, exp.Cast):
            inner = self._value(node.this)
            return None if inner is None else (inner if isinstance(inner, _Null) else UNKNOWN_VALUE)
        return None

    def _column(self, node: exp.Expression) -> str | None:
        while isinstance(node, exp.Paren | exp.Cast):
            node = node.this
        if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
            return None
        qualifier = node.table.lower() if node.table else ""
        name = node.name.lower()
        if not qualifier:
            return None if self.joined and name not in _NEVER_NULL else name
        return name if qualifier in self.target else None

    def _filtering(self, node: exp.Expression) -> bool:
        column = self._column(node)
        return column is not None and column not in _NEVER_NULL

    def _row_free(self, node: exp.Expression) -> bool:
        for child in node.walk():
            if isinstance(child, exp.Column | exp.Subquery | exp.Select | exp.Exists):
                return False
            if isinstance(child, exp.Func):
                name = child.name if isinstance(child, exp.Anonymous) else child.sql_name()
                if name.lower() in _GLOT_VOLATILE or isinstance(child, exp.Rand):
                    return False
        return True

    def _key(self, node: exp.Expression) -> str | None:
        seen = False
        for child in node.walk():
            if isinstance(child, exp.Subquery | exp.Select | exp.Exists):
                return None
            if isinstance(child, exp.Func):
                name = child.name if isinstance(child, exp.Anonymous) else child.sql_name()
                if name.lower() in _GLOT_VOLATILE or isinstance(child, exp.Rand):
                    return None
            if isinstance(child, exp.Column):
                if self._column(child) is None:
                    return None
                seen = True
        if not seen:
            return None
        copy = node.copy()
        for column in copy.find_all(exp.Column):
            column.set("table", None)
            column.set("db", None)
            column.set("catalog", None)
        return copy.sql().lower()

    def _pred(self, node: exp.Expression) -> Verdict:
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.And):
            return conjunction([self._pred(node.this), self._pred(node.expression)])
        if isinstance(node, exp.Or):
            return disjunction([self._pred(node.this), self._pred(node.expression)])
        if isinstance(node, exp.Not):
            return negation(self._pred(node.this))
        value = self._value(node)
        if value is not None:
            return "false" if isinstance(value, _Null) else _truth(value, self.coerces_strings)
        if self._filtering(node):
            return "bound"
        if isinstance(node, exp.Is):
            return self._is(node)
        op = _GLOT_COMPARE.get(type(node))
        if op is not None:
            return self._comparison(op, node.this, node.expression)
        if isinstance(node, exp.In):
            if node.args.get("query") is not None or node.args.get("unnest") is not None:
                return "unknown"
            values = node.expressions or []
            if self._filtering(node.this) and all(self._row_free(v) for v in values):
                return "bound"
            return "unknown"
        if isinstance(node, exp.Like | exp.ILike):
            if not self._filtering(node.this) or not self._row_free(node.expression):
                return "unknown"
            if _like_everything(self._value(node.expression)):
                return "unknown"
            return "bound"
        if isinstance(node, exp.Between):
            bounds = [node.args.get("low"), node.args.get("high")]
            if self._filtering(node.this) and all(
                b is not None and self._row_free(b) for b in bounds
            ):
                return "bound"
            return "unknown"
        return "unknown"

    def _is(self, node: exp.Is) -> Verdict:
        right = node.expression
        if isinstance(right, exp.Null):
            value = self._value(node.this)
            if value is not None and value is not UNKNOWN_VALUE:
                return "true" if isinstance(value, _Null) else "false"
            column = self._column(node.this)
            if column is not None and column in _NEVER_NULL:
                return "false"
            return "bound" if column is not None else "unknown"
        if isinstance(right, exp.Boolean):
            inner = self._pred(node.this)
            if inner in ("true", "false"):
                return "true" if (inner == "true") == bool(right.this) else "false"
            return "bound" if inner == "bound" else "unknown"
        return "unknown"

    def _comparison(self, op: str, left: exp.Expression, right: exp.Expression) -> Verdict:
        lv, rv = self._value(left), self._value(right)
        if lv is not None and rv is not None:
            if isinstance(lv, _Null) or isinstance(rv, _Null):
                if op == "<=>":
                    return "true" if isinstance(lv, _Null) and isinstance(rv, _Null) else "false"
                return "false"
            if self.coerces_strings and isinstance(lv, str) != isinstance(rv, str):
                # MySQL compares a string with a number as numbers.
                lv = _leading_number(lv)
                rv = _leading_number(rv)
            elif self.coerces_strings and isinstance(lv, str) and isinstance(rv, str):
                return "unknown"  # the collation decides ('a' = 'A' under most)
            return _compare(op, lv, rv)
        key = self._key(left)
        if key is not None and key == self._key(right):
            return _same(op)
        for column, other in ((left, right), (right, left)):
            if not self._row_free(other):
                continue
            if self._filtering(column):
                return "bound"
            if op == "=" and self._key(column) is not None and self._column(column) is None:
                return "bound"
        return "unknown"


def _leading_number(value: object) -> object:
    if isinstance(value, str):
        found = re.match(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", value)
        return float(found.group(0)) if found else 0.0
    return value
