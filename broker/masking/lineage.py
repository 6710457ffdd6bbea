"""Column lineage: which source columns each output column of a statement derives from.

:class:`ColumnSource` is the answer, one per result column. The resolvers of
broker.masking.lineage_pglast and broker.masking.lineage_sqlglot work it out with the scope
model here; broker.masking_effects uses the same model for what statements write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ColumnSource:
    """Where an output column's values come from.

    ``sources`` are source columns, qualified as far as known: "public.users.email",
    "users.email" or "email". For an opaque column they may also name whole tables as
    "users.*" (any column of users). An opaque column with no sources may derive from any
    column anywhere (a user-defined function, a statement the resolver does not understand).
    """

    name: str
    sources: tuple[str, ...]
    opaque: bool = False


# The resolvers (lineage_pglast, lineage_sqlglot) turn a statement into one _Src per output
# column. They share the scope model: relations (tables, CTEs, derived tables, functions,
# joins) with known or unknown column lists; output items that are single columns or stars of
# unknown width; and an alignment of the items with the column names the driver reports.


@dataclass(frozen=True)
class _Src:
    cols: frozenset[str] = frozenset()
    opaque: bool = False
    anywhere: bool = False  # may derive from any column of any table (unknown function)

    def __or__(self, other: _Src) -> _Src:
        if not other.cols and not other.opaque:
            return self
        if not self.cols and not self.opaque:
            return other
        return _Src(
            self.cols | other.cols,
            self.opaque or other.opaque,
            self.anywhere or other.anywhere,
        )


_NONE = _Src()
_ANYWHERE = _Src(opaque=True, anywhere=True)


def _union(srcs: Iterable[_Src]) -> _Src:
    out = _NONE
    for src in srcs:
        out = out | src
    return out


Catalog = Callable[[str], Sequence[str]]
ViewSources = Callable[[str], dict[str, tuple[str, ...]]]
Variables = Callable[[str], Sequence[str]]


def _from_strings(sources: Iterable[str]) -> _Src:
    """Source strings (``"*"``: anything) as a _Src."""
    cols = frozenset(sources)
    if "*" in cols:
        return _Src(cols - {"*"}, True, True)
    return _Src(cols)


class _Rel:
    """A relation visible in a FROM clause."""

    visible: str | None = None  # name it is referred to by (alias or table name), lower case

    def columns(self) -> list[tuple[str, _Src]] | None:
        """Output columns in order, when known."""
        return None

    def lookup(self, name: str) -> tuple[_Src, bool] | None:
        """(source, certain) for column ``name``; None when the relation has no such column."""
        known = self.columns()
        if known is not None:
            hits = [src for col, src in known if col == name]
            return (_union(hits), True) if hits else None
        return self.guess(name), False

    def guess(self, name: str) -> _Src:
        """Sources of a column of unknown columns list (only called when columns() is None)."""
        return self.whole()

    def whole(self) -> _Src:
        """The whole row (row_to_json(t), t.*)."""
        known = self.columns()
        if known is not None:
            return _union(src for _, src in known)
        return _ANYWHERE

    def matches(self, qualifier: Sequence[str]) -> bool:
        return len(qualifier) == 1 and qualifier[0].lower() == self.visible

    def get(self, name: str) -> _Src:
        """Column ``name`` of this relation; when it seems to have none, assume the worst."""
        found = self.lookup(name.lower())
        return found[0] if found is not None else self.missing(name.lower())

    def missing(self, name: str) -> _Src:
        return self.whole()


class _TableRel(_Rel):
    def __init__(
        self,
        schema: str | None,
        table: str,
        alias: str | None,
        colnames: Sequence[str],
        catalog: Catalog | None,
        view_sources: ViewSources | None,
    ) -> None:
        self.schema = schema
        self.table = table
        self.qualified = f"{schema}.{table}" if schema else table
        self.visible = (alias or table).lower()
        self._cols: list[tuple[str, _Src]] | None = None
        names: list[str] = []
        if catalog is not None:
            try:
                names = [str(c) for c in catalog(self.qualified) or ()]
            except Exception:
                names = []
        underlying: dict[str, tuple[str, ...]] = {}
        if view_sources is not None:
            try:
                underlying = {
                    k.lower(): tuple(v) for k, v in (view_sources(self.qualified) or {}).items()
                }
            except Exception:
                underlying = {}
        self._underlying = underlying
        if names:
            cols = [(n.lower(), self._source(n.lower())) for n in names]
            # Column aliases (FROM users AS u(a, b)) rename the first columns.
            for i, alias_name in enumerate(colnames[: len(cols)]):
                cols[i] = (alias_name.lower(), cols[i][1])
            self._cols = cols
        self._renamed = {a.lower(): i for i, a in enumerate(colnames)}

    def _source(self, column: str) -> _Src:
        cols = {f"{self.qualified}.{column}"}
        cols.update(self._underlying.get(column, ()))
        cols.update(self._underlying.get("*", ()))  # what every column of it may hold
        if "*" in cols:  # may hold anything (broker.masking_views: a table of unknown lineage)
            return _Src(frozenset(cols - {"*"}), True, True)
        return _Src(frozenset(cols))

    def columns(self) -> list[tuple[str, _Src]] | None:
        return self._cols

    def guess(self, name: str) -> _Src:
        if name in self._renamed:  # renamed by a column alias: which column is unknown
            return self.whole()
        return self._source(name)

    def missing(self, name: str) -> _Src:
        return self.whole() | self._source(name)

    def whole(self) -> _Src:
        if self._cols is not None:
            return _union(src for _, src in self._cols)
        extra = {s for sources in self._underlying.values() for s in sources}
        return _Src(
            frozenset({f"{self.qualified}.*", *extra} - {"*"}), opaque=True, anywhere="*" in extra
        )

    def matches(self, qualifier: Sequence[str]) -> bool:
        q = [part.lower() for part in qualifier]
        if len(q) == 1:
            return q[0] == self.visible
        if self.visible != self.table.lower():  # an aliased table is only known by its alias
            return False
        if len(q) == 2:
            return q[1] == self.table.lower() and (
                self.schema is None or q[0] == self.schema.lower()
            )
        return False


@dataclass
class _Item:
    """One entry of a select list: a column, or a star whose columns are unknown."""

    name: str
    src: _Src
    star: _Rel | None = None  # set for "t.*" / "*" over a relation of unknown columns


class _DerivedRel(_Rel):
    """A subquery, CTE or VALUES list in FROM."""

    def __init__(self, visible: str | None, items: list[_Item], colnames: Sequence[str]) -> None:
        self.visible = visible.lower() if visible else None
        self.items = items
        self.colnames = [c.lower() for c in colnames]
        self._known: list[tuple[str, _Src]] | None = None
        if all(item.star is None for item in items):
            cols = [(item.name.lower(), item.src) for item in items]
            for i, alias_name in enumerate(self.colnames[: len(cols)]):
                cols[i] = (alias_name, cols[i][1])
            self._known = cols

    def columns(self) -> list[tuple[str, _Src]] | None:
        return self._known

    def guess(self, name: str) -> _Src:
        if self.colnames:  # renamed columns over a star: positions unknown
            return self.whole()
        hits = [item.src for item in self.items if item.star is None and item.name.lower() == name]
        for item in self.items:
            if item.star is not None:
                found = item.star.lookup(name)
                if found is not None:
                    hits.append(found[0])
        return _union(hits) if hits else self.whole()

    def whole(self) -> _Src:
        return _union(
            item.star.whole() if item.star is not None else item.src for item in self.items
        )


class _FunctionRel(_Rel):
    """A function in FROM: pure built-ins derive from their arguments, others from anything."""

    def __init__(self, visible: str | None, colnames: Sequence[str], src: _Src) -> None:
        self.visible = visible.lower() if visible else None
        self.colnames = [c.lower() for c in colnames]
        self.src = src

    def columns(self) -> list[tuple[str, _Src]] | None:
        if self.colnames:
            return [(c, self.src) for c in self.colnames]
        return None

    def guess(self, name: str) -> _Src:
        return self.src

    def whole(self) -> _Src:
        return self.src


class _JoinRel(_Rel):
    """``a JOIN b [USING (...)] [AS j]``: for star expansion and, with an alias, lookups."""

    def __init__(self, left: _Rel, right: _Rel, using: Sequence[str], alias: str | None) -> None:
        self.left = left
        self.right = right
        self.using = [u.lower() for u in using]
        self.visible = alias.lower() if alias else None

    def star_items(self) -> list[_Item]:
        left = _star_items(self.left)
        right = _star_items(self.right)
        if not self.using:
            return left + right
        merged = []
        for name in self.using:
            srcs = [found[0] for rel in (self.left, self.right) if (found := rel.lookup(name))]
            merged.append(_Item(name, _union(srcs) if srcs else _ANYWHERE))
        keep = [i for i in left + right if i.star is not None or i.name.lower() not in self.using]
        return merged + keep

    def columns(self) -> list[tuple[str, _Src]] | None:
        items = self.star_items()
        if any(item.star is not None for item in items):
            return None
        return [(item.name.lower(), item.src) for item in items]

    def lookup(self, name: str) -> tuple[_Src, bool] | None:
        found = [f for rel in (self.left, self.right) if (f := rel.lookup(name)) is not None]
        if not found:
            return None
        return _union(f[0] for f in found), any(f[1] for f in found)

    def whole(self) -> _Src:
        return self.left.whole() | self.right.whole()

    def children(self) -> list[_Rel]:
        out: list[_Rel] = []
        for rel in (self.left, self.right):
            if isinstance(rel, _JoinRel) and rel.visible is None:
                out.extend(rel.children())
            else:
                out.append(rel)
        return out


def _star_items(rel: _Rel) -> list[_Item]:
    if isinstance(rel, _JoinRel):
        return rel.star_items()
    known = rel.columns()
    if known is None:
        return [_Item("*", rel.whole(), star=rel)]
    return [_Item(name, src) for name, src in known]


class _Scope:
    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent = parent
        self.from_items: list[_Rel] = []  # top-level FROM entries, for "*"
        self.ctes: dict[str, Callable[[str | None, Sequence[str]], _Rel]] = {}

    def add(self, rel: _Rel) -> None:
        self.from_items.append(rel)

    def rels(self) -> list[_Rel]:
        """Every relation addressable by name in this scope."""
        out: list[_Rel] = []
        for rel in self.from_items:
            if isinstance(rel, _JoinRel) and rel.visible is None:
                out.extend(rel.children())
            else:
                out.append(rel)
        return out

    def cte(self, name: str) -> Callable[[str | None, Sequence[str]], _Rel] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return scope.ctes[name]
            scope = scope.parent
        return None

    def find(self, qualifier: Sequence[str]) -> _Rel | None:
        scope: _Scope | None = self
        while scope is not None:
            for rel in scope.rels():
                if rel.matches(qualifier):
                    return rel
            scope = scope.parent
        return None

    def column(self, name: str) -> _Src:
        """An unqualified column: every relation that has or may have it, innermost first."""
        name = name.lower()
        hits: list[_Src] = []
        certain = False
        scope: _Scope | None = self
        while scope is not None and not certain:
            for rel in scope.rels():
                found = rel.lookup(name)
                if found is not None:
                    hits.append(found[0])
                    certain = certain or found[1]
            scope = scope.parent
        if not certain:
            rel = self.find([name])  # a whole-row reference: row_to_json(u)
            if rel is not None:
                hits.append(rel.whole())
        if hits:
            return _union(hits)
        # Nothing has a column of that name (a stale catalog, or our naming of a derived
        # column is off): it may be any of them.
        srcs: list[_Src] = []
        scope = self
        while scope is not None:
            srcs.extend(rel.missing(name) for rel in scope.rels())
            scope = scope.parent
        everything = _union(srcs)
        return _Src(everything.cols, True, everything.anywhere) if everything.cols else _ANYWHERE

    def star(self) -> list[_Item]:
        items: list[_Item] = []
        for rel in self.from_items:
            items.extend(_star_items(rel))
        return items


def _align(items: list[_Item], names: Sequence[str]) -> list[_Src]:
    """Map select-list items onto the result's columns (stars of unknown width by name)."""
    n = len(names)
    unknown = [k for k, item in enumerate(items) if item.star is not None]
    if not unknown:
        if len(items) == n:
            return [item.src for item in items]
        everything = _union(item.src for item in items)
        return [_Src(everything.cols, True, everything.anywhere)] * n
    first, last = unknown[0], unknown[-1]
    head = items[:first]
    tail = items[last + 1 :]
    middle = items[first : last + 1]
    width = n - len(head) - len(tail)
    if width < 0:
        everything = _union(item.star.whole() if item.star else item.src for item in items)
        return [_Src(everything.cols, True, everything.anywhere)] * n
    out = [item.src for item in head]
    if len(middle) == 1:
        rel = middle[0].star
        assert rel is not None
        for k in range(width):
            found = rel.lookup(names[len(head) + k].lower())
            out.append(found[0] if found is not None else rel.missing(names[len(head) + k].lower()))
    else:
        fixed = _union(item.src for item in middle if item.star is None)
        for k in range(width):
            name = names[len(head) + k].lower()
            srcs = [fixed]
            for item in middle:
                if item.star is not None:
                    found = item.star.lookup(name)
                    srcs.append(found[0] if found is not None else item.star.missing(name))
            out.append(_union(srcs))
    out.extend(item.src for item in tail)
    return out


def _to_sources(names: Sequence[str], srcs: Sequence[_Src]) -> list[ColumnSource]:
    out = []
    for name, src in zip(names, srcs, strict=True):
        if src.anywhere:
            out.append(ColumnSource(name, (), True))
        else:
            out.append(ColumnSource(name, tuple(sorted(src.cols)), src.opaque))
    return out


def _all_opaque(names: Sequence[str]) -> list[ColumnSource]:
    return [ColumnSource(name, (), True) for name in names]


def _not_data(names: Sequence[str]) -> list[ColumnSource]:
    """Result columns that carry no table data (EXPLAIN, SHOW): matched by their own names."""
    return [ColumnSource(name, ()) for name in names]


# Functions whose result depends only on their arguments (and the clock, settings, ...):
# built-ins of PostgreSQL, MySQL and SQLite. Any other function may read any table (a
# user-defined function, query_to_xml, dblink, ...) and makes the output column opaque.
PURE_FUNCTIONS = frozenset(
    """
    bool bpchar char date float4 float8 int int2 int4 int8 interval numeric text timestamptz
    varchar
    abs acos acosd acosh age any_value array_agg array_append array_cat array_dims array_fill
    array_length array_lower array_ndims array_position array_positions array_prepend
    array_remove array_replace array_sample array_shuffle array_to_json array_to_string
    array_to_tsvector array_upper ascii asin asind asinh atan atan2 atan2d atand atanh avg
    bit_and bit_count bit_length bit_or bit_xor bool_and bool_or btrim cardinality casefold
    cbrt ceil ceiling char_length character_length chr clock_timestamp coalesce concat
    concat_ws convert convert_from convert_to corr cos cosd cosh cot cotd count covar_pop
    covar_samp cume_dist current_date current_time current_timestamp date_add date_bin
    date_format date_part date_sub date_trunc datediff day dayname dayofmonth dayofweek
    dayofyear decode degrees dense_rank div encode every exp extract factorial first_value
    floor format format_type gcd gen_random_uuid generate_series generate_subscripts
    get_byte greatest group_concat grouping hex hour ifnull iif initcap instr isfinite
    isnull json json_agg json_agg_strict json_array json_array_elements
    json_array_elements_text json_array_length json_arrayagg json_build_array
    json_build_object json_each json_each_text json_extract json_extract_path
    json_extract_path_text json_group_array json_group_object json_insert json_object
    json_object_agg json_object_keys json_objectagg json_patch json_populate_record
    json_populate_recordset json_quote json_remove json_replace json_set json_strip_nulls
    json_to_record json_to_recordset json_type json_typeof json_valid jsonb_agg
    jsonb_array_elements jsonb_array_elements_text jsonb_array_length jsonb_build_array
    jsonb_build_object jsonb_each jsonb_each_text jsonb_extract_path jsonb_extract_path_text
    jsonb_insert jsonb_object jsonb_object_agg jsonb_object_keys jsonb_path_exists
    jsonb_path_match jsonb_path_query jsonb_path_query_array jsonb_path_query_first
    jsonb_populate_record jsonb_populate_recordset jsonb_pretty jsonb_set jsonb_set_lax
    jsonb_strip_nulls jsonb_to_record jsonb_to_recordset jsonb_typeof julianday justify_days
    justify_hours justify_interval lag last_value lcase lcm lead least left length like
    ln localtime localtimestamp locate log log10 log2 lower lpad ltrim make_date
    make_interval make_time make_timestamp make_timestamptz max md5 min minute min_scale
    mod mode month monthname now nth_value ntile nullif num_nonnulls num_nulls octet_length
    overlay percent_rank percentile_cont percentile_disc pi position pow power printf
    quote quote_ident quote_literal quote_nullable radians random random_normal range_agg
    rank regexp_count regexp_instr regexp_like regexp_match regexp_matches regexp_replace
    regexp_split_to_array regexp_split_to_table regexp_substr regr_avgx regr_avgy
    regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy repeat replace
    reverse right round row_number row_to_json rpad rtrim scale second setseed sha1 sha2
    sha224 sha256 sha384 sha512 sign sin sind sinh split_part sqrt starts_with statement_timestamp
    stddev stddev_pop stddev_samp strftime string_agg string_to_array string_to_table strpos
    substr substring sum tan tand tanh time timeofday timestamp timezone to_ascii to_char
    to_date to_hex to_json to_jsonb to_number to_timestamp to_tsquery to_tsvector
    transaction_timestamp translate trim trim_array trunc truncate ts_headline ts_rank
    ts_rank_cd typeof ucase unhex unicode unistr unixepoch unnest upper uuid uuid_generate_v4
    var_pop var_samp variance version week weekday width_bucket xmlagg xmlconcat
    xmlelement xmlforest year
    current_catalog current_database current_role current_schema current_schemas current_user
    pg_backend_pid pg_is_in_recovery session_user
    """.split()
)

# Functions in FROM whose rows derive only from their arguments.
_PURE_TABLE_FUNCTIONS = frozenset(
    {
        "unnest",
        "generate_series",
        "generate_subscripts",
        "json_each",
        "json_each_text",
        "jsonb_each",
        "jsonb_each_text",
        "json_array_elements",
        "json_array_elements_text",
        "jsonb_array_elements",
        "jsonb_array_elements_text",
        "json_to_record",
        "json_to_recordset",
        "jsonb_to_record",
        "jsonb_to_recordset",
        "json_populate_record",
        "json_populate_recordset",
        "jsonb_populate_record",
        "jsonb_populate_recordset",
        "json_object_keys",
        "jsonb_object_keys",
        "jsonb_path_query",
        "regexp_matches",
        "regexp_split_to_table",
        "string_to_table",
        "json_tree",
    }
)


def _pure(name: str, schema: str | None = None) -> bool:
    if schema is not None and schema.lower() not in ("pg_catalog", "main"):
        return False
    return name.lower() in PURE_FUNCTIONS


# CTEs: a CTE's relation, made afresh where it is used (under its name or an alias).


def _cte_factory(
    name: str, items: list[_Item], colnames: Sequence[str]
) -> Callable[[str | None, Sequence[str]], _Rel]:
    def make(alias: str | None, alias_cols: Sequence[str]) -> _Rel:
        rel = _DerivedRel(alias or name, items, colnames)
        if alias_cols:
            rel = _DerivedRel(alias or name, _rename(rel, alias_cols), ())
        return rel

    return make


def _rename(rel: _Rel, names: Sequence[str]) -> list[_Item]:
    known = rel.columns()
    if known is None:
        return [_Item("*", rel.whole(), star=_FunctionRel(None, names, rel.whole()))]
    items = [_Item(n, s) for n, s in known]
    for i, new in enumerate(names[: len(items)]):
        items[i] = _Item(new, items[i].src)
    return items


def _merge_items(left: list[_Item], right: list[_Item]) -> list[_Item]:
    """Columns of ``left UNION right``: names from the left, sources of both."""
    if any(i.star for i in left) or any(i.star for i in right) or len(left) != len(right):
        everything = _union(i.star.whole() if i.star else i.src for i in left + right)
        return [_Item("*", everything, star=_FunctionRel(None, (), everything))]
    return [_Item(lhs.name, lhs.src | rhs.src) for lhs, rhs in zip(left, right, strict=True)]


def _same_items(a: list[_Item], b: list[_Item]) -> bool:
    return len(a) == len(b) and all(
        x.name == y.name and x.src == y.src and (x.star is None) == (y.star is None)
        for x, y in zip(a, b, strict=True)
    )
