"""Hypothesis strategies for tests/test_fuzz_classifiers.py.

Three families:
- arbitrary text: any unicode (no lone surrogates), text biased towards the characters
  that matter to SQL and shell lexers (quotes, comment starts, control characters, look-alike
  quotes, bidi overrides), token soups, very deep nesting;
- SQL: destructive seeds (DROP, TRUNCATE, DELETE, UPDATE), plain and nested (CTE, EXPLAIN
  ANALYZE, COPY (…), rules, triggers, events), rendered with grammar-preserving mutations:
  keyword case, comments and odd whitespace between tokens, quoted identifiers, empty
  statements and neighbours;
- shell: `rm` with recursive or force flags, rendered with quoting of every word, prefix
  assignments, redirections, line continuations, then wrapped in sudo/env/nice/timeout/
  xargs/`bash -c`/compound commands, several levels deep.

Every mutation keeps the meaning: the test file checks that the generated SQL parses with
the PostgreSQL parser, runs against SQLite, and that the generated shell lines start `rm`
with a recursive or force flag when bash runs them (with a fake `rm`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypothesis import strategies as st

# ----------------------------------------------------------------------- arbitrary text

# Characters that lexers treat specially, or that look like something they are not.
ODD_CHARS = (
    "\x00\x01\x07\x08\t\n\x0b\x0c\r\x1b\x7f\x85\xa0\xad"
    "\u00b4\u02bc\u2018\u2019\u201b\u201c\u201d\u2032\uff07\uff02\uff40\uff1b\u037e"
    "\u2028\u2029\u200b\u200c\u200d\u200e\u200f\u202a\u202e\u2066\u2069\ufeff\u3000"
    "\u2044\u2215\uff0f\u0301\u00e9\u4e00\U0001f600"
)
ASCII_SPECIAL = " \t\n;'\"`[]()${}\\#-/*!&|<>=,.:@?%^~+0123456789abcdefrmxyzADEFLORSTU_"

special_text = st.text(alphabet=st.sampled_from(ODD_CHARS + ASCII_SPECIAL), max_size=120)
# st.text() never generates lone surrogates (category Cs) unless asked to.
unicode_text = st.text(max_size=120)

SQL_WORDS = (
    "SELECT", "DROP", "TABLE", "DELETE", "FROM", "UPDATE", "SET", "TRUNCATE", "WHERE", "WITH",
    "AS", "RETURNING", "EXPLAIN", "ANALYZE", "INSERT", "INTO", "VALUES", "CREATE", "BEGIN",
    "END", "COMMIT", "DO", "COPY", "TO", "PROGRAM", "STDOUT", "PREPARE", "EXECUTE", "CALL",
    "REPLACE", "MERGE", "USING", "ON", "WHEN", "MATCHED", "THEN", "TRUE", "NULL", "OR",
    "NOT", "IS", "LIMIT", "TRIGGER", "FOR", "EACH", "ROW", "AFTER", "QUERY", "PLAN",
    "t", "u", "x", "a", "public", "1", "0", "*", "=", ",", ".", "(", ")", ";", ";", "'", '"',
    "`", "[", "]", "$$", "$a$", "E'", "N'", "U&'", 'U&"', "X'", "B'", "0x", "/*", "*/",
    "/*!", "/*M!", "/*+", "--", "-- ", "#", "\\", "\\'", "''", '""', "\n", "\t", " ", " ",
    ":=", "::", "@", "@@", "?", ":a", "$1", "{", "}", "\r\n", "\\g", "\\\\", "'a'", '"t"',
    "\u2019", "\u201d", "\ufeff", "\u00a0", "\u202e", "\x00", "\x0b",
)  # fmt: skip

SHELL_WORDS = (
    "rm", "rm", "-rf", "-r", "/x", "sudo", "env", "bash", "sh", "-c", "xargs", "eval", "exec",
    "command", "builtin", "echo", "true", "nice", "timeout", "5", "FOO=1", "PATH=/x", "$X",
    "${X}", "${X:-rm}", "${X", "$(", ")", "`", "'", '"', "$'", "$\"", "\\", "\\\n", ";", "&&",
    "||", "|", "|&", "&", ">", "<", ">>", "<<", "<<<", "<<-", "EOF", "2>&1", ">&", "(",
    "((", "))", "$((", "[[", "]]", "{", "}", "!", "!!", "^", "#", "\n", "=", "*", "?", "~",
    "%", ":", "if", "then", "fi", "for", "in", "do", "done", "while", "case", "esac", ";;",
    "function", "f()", "coproc", "time", "-", "--", "$'\\x72'", "{a,b}", "{1..3}", "$@",
    "$*", "$?", "$$", "$!", "$#", "$0", "${#X}", "${X//a/b}", "${!X}", "declare", "alias",
    "set", "-o", "shopt", "trap", "source", ".", "exit", "a[$(rm)]", "$[", "]", "@(", "+(",
    " ", " ", "\t", "\u2019", "\u201c", "\u00a0", "\u202e", "\x1b", "\x00",
)  # fmt: skip


def soup(words: tuple[str, ...], max_size: int = 40) -> st.SearchStrategy[str]:
    """Tokens of a language thrown together, joined by nothing, a space or a newline."""
    piece = st.one_of(
        st.sampled_from(words),
        st.sampled_from(words),
        st.sampled_from(words),
        st.text(alphabet=st.sampled_from(ODD_CHARS + ASCII_SPECIAL), max_size=3),
    )
    sep = st.sampled_from(["", " ", " ", "\n"])
    return st.lists(st.tuples(piece, sep), max_size=max_size).map(
        lambda pairs: "".join(p + s for p, s in pairs)
    )


sql_soup = soup(SQL_WORDS)
shell_soup = soup(SHELL_WORDS)


@st.composite
def deep_nesting(draw: st.DrawFn, opens: tuple[str, ...], middle: str, closes: tuple[str, ...]):
    """`((((x))))` and friends, a few to a few thousand levels, sometimes unbalanced."""
    depth = draw(st.sampled_from([1, 2, 50, 200, 500, 1000, 3000]))
    which = draw(st.integers(0, len(opens) - 1))
    open_, close = opens[which], closes[which]
    missing = draw(st.sampled_from([0, 0, 0, 1, depth]))
    return open_ * depth + middle + close * (depth - missing)


# sqlglot takes time exponential in the nesting of calls to functions named like types
# (DATE, TIME, CHAR, STRUCT, …) and of MySQL's ARRAY[…]: see test_known_sql_gaps. They are
# left out here until broker/policy/sql.py bounds it; the other nestings must stay fast.
SQLGLOT_SLOW_NESTING = ("SELECT DATE(", "SELECT CHAR(", "SELECT STRUCT(", "SELECT ARRAY[")
sql_nesting = deep_nesting(
    (
        "(", "(SELECT ", "WITH x AS (", "SELECT -", "SELECT NOT ", "SELECT CAST(",
        "SELECT COALESCE(", "SELECT f(", "SELECT x[", "SELECT ROW(", "SELECT EXISTS(",
    ),
    "SELECT 1",
    (")", ")", ") SELECT 1", "", "", " AS INT)", ")", ")", "]", ")", ")"),
)  # fmt: skip
shell_nesting = deep_nesting(
    ("(", "$(", "{ ", "`", "bash -c '", "$((", "[[ ", "sudo ", "if true; then "),
    "rm -rf /x",
    (")", ")", "; }", "`", "'", "))", " ]]", "", "; fi"),
)

any_sql_text = st.one_of(unicode_text, special_text, sql_soup, sql_soup)
any_shell_text = st.one_of(unicode_text, special_text, shell_soup, shell_soup)


# ------------------------------------------------------------------ SQL destructive seeds

# Upper-case words are keywords (their case is mutated), lower-case words are identifiers
# (they may be quoted), digits and '…' are literals (left alone), the rest is punctuation.
# DML seeds may be nested by the templates below.
_COMMON_DML = (
    "DELETE FROM t",
    "DELETE FROM t WHERE a = 1",
    "UPDATE t SET a = 1",
    "UPDATE t SET a = 3 WHERE a = 2",
)
SQL_DML: dict[str, tuple[str, ...]] = {
    "postgres": (
        *_COMMON_DML,
        "DELETE FROM ONLY t",
        "DELETE FROM public.t AS z WHERE z.a > 0",
        "DELETE FROM t USING u WHERE t.a = u.a",
        "UPDATE t SET a = a + 1 FROM u WHERE t.a = u.a",
        "UPDATE ONLY t SET ( a ) = ROW ( 1 )",
    ),
    "mysql": (
        *_COMMON_DML,
        "DELETE t FROM t JOIN u ON t.a = u.a",
        "DELETE FROM t USING t JOIN u ON t.a = u.a",
        "DELETE LOW_PRIORITY QUICK IGNORE FROM t",
        "DELETE FROM t ORDER BY a LIMIT 1",
        "UPDATE IGNORE t SET a = 1",
        "UPDATE t JOIN u ON t.a = u.a SET t.a = 1",
        "UPDATE t , u SET t.a = 1",
    ),
    "sqlite": (
        *_COMMON_DML,
        "DELETE FROM main.t",
        "DELETE FROM t WHERE rowid IN ( SELECT rowid FROM t )",
        "UPDATE OR IGNORE t SET a = 1",
        "UPDATE t SET a = 1 FROM u WHERE t.a = u.a",
    ),
}
SQL_DDL: dict[str, tuple[str, ...]] = {
    "postgres": (
        "DROP TABLE t",
        "DROP TABLE IF EXISTS t , u CASCADE",
        "DROP TABLE public.t RESTRICT",
        "TRUNCATE t",
        "TRUNCATE TABLE ONLY t , u RESTART IDENTITY",
    ),
    "mysql": (
        "DROP TABLE t",
        "DROP TABLE IF EXISTS t , u",
        "TRUNCATE t",
        "TRUNCATE TABLE t",
    ),
    "sqlite": ("DROP TABLE t", "DROP TABLE IF EXISTS main.t"),
}
# Templates that run a DML statement ("S"; "R" is S with a RETURNING clause) as part of
# another one. Each runs S when the whole text runs, or stores it to run later (rules,
# triggers, events, prepared statements): both must be judged as S.
SQL_NESTED: dict[str, tuple[str, ...]] = {
    "postgres": (
        "WITH x AS ( R ) SELECT * FROM x",
        "WITH x AS ( R ) SELECT 1",
        "WITH y AS ( SELECT 1 ) , x AS ( R ) SELECT * FROM y",
        "WITH RECURSIVE x AS ( R ) SELECT * FROM x",
        "WITH x AS ( R ) INSERT INTO u SELECT * FROM x",
        "WITH x AS ( SELECT 1 ) S",
        "WITH x AS ( R ) S",
        "EXPLAIN ANALYZE S",
        "EXPLAIN ANALYZE VERBOSE S",
        "EXPLAIN OPTIONS S",
        "EXPLAIN OPTIONS WITH x AS ( R ) SELECT * FROM x",
        "COPY ( R ) TO STDOUT",
        "PREPARE p AS S",
        "CREATE RULE r AS ON INSERT TO u DO ALSO S",
        "CREATE RULE r AS ON INSERT TO u DO INSTEAD ( SELECT 1 ; S )",
    ),
    "mysql": (
        "WITH x AS ( SELECT 1 ) S",
        "EXPLAIN ANALYZE S",
        "EXPLAIN ANALYZE FORMAT = TREE S",
        "DESCRIBE ANALYZE S",
        "DESC ANALYZE S",
        "ANALYZE S",
        "ANALYZE FORMAT = JSON S",
        "CREATE TRIGGER r BEFORE INSERT ON u FOR EACH ROW S",
        "CREATE EVENT e ON SCHEDULE AT CURRENT_TIMESTAMP DO S",
    ),
    "sqlite": (
        "WITH x AS ( SELECT 1 ) S",
        "WITH x AS ( SELECT 1 ) , y AS ( SELECT 2 ) R",
        "CREATE TRIGGER r AFTER INSERT ON u BEGIN S ; END ; INSERT INTO u VALUES ( 5 )",
    ),
}

# EXPLAIN options other than ANALYZE (PostgreSQL), and truthy values of ANALYZE.
_PG_EXPLAIN_OTHER = (
    "VERBOSE", "VERBOSE FALSE", "COSTS", "COSTS OFF", "BUFFERS", "BUFFERS ON", "TIMING",
    "TIMING 0", "SUMMARY", "SETTINGS TRUE", "WAL", "FORMAT TEXT", "FORMAT JSON",
)  # fmt: skip
_PG_ANALYZE_ON = ("ANALYZE", "ANALYZE TRUE", "ANALYZE ON", "ANALYZE 1", "ANALYZE 'on'")
_PG_ANALYZE_OFF = ("ANALYZE FALSE", "ANALYZE OFF", "ANALYZE 0", "ANALYZE 'off'")

_SQL_TOKEN = re.compile(r"\s+|'[^']*'|[A-Za-z_][A-Za-z0-9_]*|\d+|\S")


@dataclass(frozen=True)
class Tok:
    kind: str  # "kw", "id", "lit", "p"
    text: str


def sql_tokens(source: str) -> list[Tok]:
    out = []
    for found in _SQL_TOKEN.finditer(source):
        text = found.group(0)
        if text.isspace():
            continue
        if text[0] == "'" or text.isdigit():
            kind = "lit"
        elif re.fullmatch(r"[A-Z_]+", text):
            kind = "kw"
        elif re.fullmatch(r"[a-z_][a-z0-9_]*", text):
            kind = "id"
        else:
            kind = "p"
        out.append(Tok(kind, text))
    return out


_WS = (" ", "  ", "\t", "\n", "\r\n", "\f", " \n\t ")
_COMMENTS: dict[str, tuple[str, ...]] = {
    "postgres": (
        "/* c */", "/**/", "/* ; */", "/* ' */", "/*-- */", "/* /* nested */ */", "-- c\n",
        "--\n", "--c;\n",
    ),
    "mysql": (
        "/* c */", "/**/", "/* ; */", "/* ' */", "/*-- */", "/*+ hint */", "-- c\n", "--\n",
        "--\t\n", "#c\n", "# ;\n", "#\n",
    ),
    "sqlite": ("/* c */", "/**/", "/* ; */", "/* ' */", "/*-- */", "-- c\n", "--c;\n", "--\n"),
}  # fmt: skip
_QUOTES: dict[str, tuple[str, ...]] = {
    "postgres": ('"{}"',),
    "mysql": ("`{}`",),
    "sqlite": ('"{}"', "`{}`", "[{}]"),
}
# Statement neighbours: (before, after).
_CONTEXTS: tuple[tuple[str, str], ...] = (
    ("", ""),
    ("", ";"),
    (";", ""),
    (" ; ;\n", " ;; "),
    ("SELECT 1;", ""),
    ("", "; SELECT 1"),
    ("SELECT 1 ;\n", ";\nSELECT 2;"),
    ("BEGIN;", "; COMMIT"),
    ("/* lead */", "/* tail */"),
)


def _wordish(a: str, b: str) -> bool:
    return bool(re.search(r"[\w$]$", a)) and bool(re.match(r"[\w$]", b))


@st.composite
def _mixed_case(draw: st.DrawFn, word: str) -> str:
    style = draw(st.sampled_from(["same", "lower", "mixed"]))
    if style == "same":
        return word
    if style == "lower":
        return word.lower()
    mask = draw(st.integers(0, (1 << len(word)) - 1))
    return "".join(c.swapcase() if mask >> i & 1 else c for i, c in enumerate(word))


_TABLE_POSITION = {"FROM", "UPDATE", "TABLE", "INTO", "EXISTS", "JOIN", "ONLY", "IGNORE"}


@st.composite
def _render_token(
    draw: st.DrawFn, tok: Tok, dialect: str, prev: Tok | None, nxt: Tok | None
) -> str:
    if tok.kind == "kw":
        return draw(_mixed_case(tok.text))
    if tok.kind == "id":
        choices = ["plain", "case", *_QUOTES[dialect]]
        if dialect == "postgres":
            choices.append("unicode")
        table = prev is not None and prev.text in _TABLE_POSITION
        if dialect == "sqlite" and table and (nxt is None or nxt.text != "."):
            choices.append("'{}'")  # SQLite takes a string where only a table name fits
        style = draw(st.sampled_from(choices))
        if style == "plain":
            return tok.text
        if style == "case":
            return draw(_mixed_case(tok.text))
        if style == "unicode":
            return 'U&"' + "".join(f"\\{ord(c):04x}" for c in tok.text) + '"'
        return style.format(tok.text)
    if tok.kind == "lit" and tok.text.isdigit() and (prev is None or prev.kind != "kw"):
        return draw(st.sampled_from(_NUMBERS[dialect])).format(tok.text)
    return tok.text


# Spellings of a small integer that compare equal to it on each server (not after a
# keyword: `LIMIT 1` and `ANALYZE 1` take a plain number).
_NUMBERS: dict[str, tuple[str, ...]] = {
    "postgres": (
        "{}", "({})", "+{}", "{}.0", "'{}'", "E'{}'", "$${}$$", "$q${}$q$", "U&'{}'",
        "{}::int", "CAST({} AS int)", "int '{}'",
    ),
    "mysql": ("{}", "({})", "+{}", "{}.0", "'{}'", '"{}"', "0x{}", "{}e0", "N'{}'", "_utf8mb4'{}'"),
    "sqlite": ("{}", "({})", "+{}", "{}.0", "0x{}", "{}e0", "CAST('{}' AS INTEGER)"),
}  # fmt: skip


@st.composite
def _separator(draw: st.DrawFn, dialect: str, before: str, after: str) -> str:
    pieces = draw(st.lists(st.sampled_from(_WS + _COMMENTS[dialect]), min_size=0, max_size=3))
    if not pieces:
        return " " if _wordish(before, after) or draw(st.booleans()) else ""
    sep = "".join(pieces)
    # `*/* c */` or `-/*`: keep operators and comment starts apart with a space.
    if sep[0] in "/-#" and before and before[-1] in "*/-+<>=!|&^~%#@":
        sep = " " + sep
    return sep


@st.composite
def render_sql(draw: st.DrawFn, source: str, dialect: str) -> str:
    out: list[str] = []
    tokens = sql_tokens(source)
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        text = draw(_render_token(tok, dialect, prev, nxt))
        if out:
            out.append(draw(_separator(dialect, out[-1], text)))
        out.append(text)
    return "".join(out)


@st.composite
def _pg_explain_options(draw: st.DrawFn) -> str:
    others = draw(st.lists(st.sampled_from(_PG_EXPLAIN_OTHER), max_size=3, unique=True))
    analyze = [draw(st.sampled_from(_PG_ANALYZE_ON))]
    if draw(st.booleans()):  # the server reads the last: (ANALYZE off, ANALYZE) runs
        analyze.insert(0, draw(st.sampled_from(_PG_ANALYZE_OFF)))
    options = others + analyze
    order = draw(st.permutations(range(len(options))))
    # The last ANALYZE must stay last among the ANALYZE options: the server reads the last.
    ordered = [options[i] for i in order]
    analyzes = [o for o in ordered if o.startswith("ANALYZE")]
    if analyzes != analyze:
        ordered = [o for o in ordered if not o.startswith("ANALYZE")] + analyze
    return "( " + " , ".join(ordered) + " )"


@st.composite
def destructive_sql_source(draw: st.DrawFn, dialect: str) -> str:
    """A destructive statement in its canonical spelling, possibly nested."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(SQL_DDL[dialect]))
    dml = draw(st.sampled_from(SQL_DML[dialect]))
    if draw(st.booleans()):
        return dml
    template = draw(st.sampled_from(SQL_NESTED[dialect]))
    if dialect == "sqlite" and "TRIGGER" in template and "main." in dml:
        dml = dml.replace("main.", "")  # SQLite refuses qualified names inside a trigger
    if "OPTIONS" in template:
        template = template.replace("OPTIONS", draw(_pg_explain_options()))
    returning = dml + " RETURNING *"
    # whole tokens only: `R`, `S` and `r` (a rule's name) are different words
    template = re.sub(r"\bR\b", lambda _m: returning, template)
    return re.sub(r"\bS\b", lambda _m: dml, template)


@st.composite
def destructive_sql(draw: st.DrawFn, dialect: str) -> tuple[str, str]:
    """(canonical source, mutated text) of a destructive statement among neighbours."""
    source = draw(destructive_sql_source(dialect))
    body = draw(render_sql(source, dialect))
    before, after = draw(st.sampled_from(_CONTEXTS))
    tail = draw(st.sampled_from(["", "", " -- tail", "/* tail */", "\n"]))
    return source, before + body + after + tail


# ----------------------------------------------------------------- shell destructive seeds

RM_ARGS = ["-[rRf]*", "-[!-]*[rRf]*", "--r*", "--f*"]

_FLAG_SETS = (
    ("-rf",), ("-fr",), ("-r",), ("-R",), ("-f",), ("-Rf",), ("-rfv",), ("-vrf",),
    ("-r", "-f"), ("-v", "-r"), ("--recursive",), ("--force",), ("--rec",), ("-i", "-R"),
)  # fmt: skip
_TARGETS = ("/x", "/x/y", "x", "/x/*")
_ASSIGNMENTS = ("FOO=1", "A=", "X='a b'", "LC_ALL=C", 'Y="$HOME"', "Z=$(echo z)", "W+=1")
_REDIRECTIONS = (
    ">/dev/null", "> /dev/null", "2>/dev/null", "2>&1", "1>&2", ">>/dev/null", "&>/dev/null",
    ">|/dev/null", "2>>/dev/null", "3>/dev/null", "{fd}>/dev/null", "</dev/null", "<<<x",
    "0</dev/null", "< /dev/null",
)  # fmt: skip
_WORD_SEPARATORS = (" ", " ", "  ", "\t", " \\\n", "\t\\\n", " \\\n\t")


def _escape_each(word: str) -> str:
    return "".join("\\" + c for c in word)


def _ansi_hex(word: str) -> str:
    return "$'" + "".join(f"\\x{ord(c):02x}" for c in word) + "'"


def _ansi_octal(word: str) -> str:
    return "$'" + "".join(f"\\{ord(c):03o}" for c in word) + "'"


_WORD_STYLES = {
    "plain": lambda w: w,
    "single": lambda w: f"'{w}'",
    "double": lambda w: f'"{w}"',
    "ansi": lambda w: f"$'{w}'",
    "locale": lambda w: f'$"{w}"',
    "hex": _ansi_hex,
    "octal": _ansi_octal,
    "escaped": _escape_each,
}


@st.composite
def shell_word(draw: st.DrawFn, word: str) -> str:
    """One literal word (letters, digits, '-', '/', '*' only), spelled another way."""
    style = draw(st.sampled_from([*_WORD_STYLES, "split", "empty", "continued"]))
    if "*" in word and style not in ("plain", "split", "empty"):
        style = "plain"  # a quoted * is no longer a glob; keep the word what it was
    if style == "split" and len(word) > 1:
        cut = draw(st.integers(1, len(word) - 1))
        left = draw(st.sampled_from(list(_WORD_STYLES)))
        right = draw(st.sampled_from(list(_WORD_STYLES)))
        if "*" in word:
            left = right = "plain"
        return _WORD_STYLES[left](word[:cut]) + _WORD_STYLES[right](word[cut:])
    if style == "continued" and len(word) > 1:
        cut = draw(st.integers(1, len(word) - 1))
        return word[:cut] + "\\\n" + word[cut:]  # a line continuation inside the word
    if style == "empty":
        cut = draw(st.integers(0, len(word)))
        empty = draw(st.sampled_from(["''", '""', "$''", '$""']))
        return word[:cut] + empty + word[cut:]
    return _WORD_STYLES.get(style, _WORD_STYLES["plain"])(word)


@dataclass(frozen=True)
class ShellCommand:
    """A simple command: assignments, then words (redirections may sit anywhere)."""

    assignments: tuple[str, ...]
    words: tuple[str, ...]
    # The first word is a program on PATH (not a builtin or keyword such as `time`), so
    # sudo, env, nice or xargs can run the whole command.
    external: bool = True


_RUNNABLE_TARGETS = ("x", "x/y", "x/*", "./x")


@st.composite
def rm_command(draw: st.DrawFn, runnable: bool) -> ShellCommand:
    """`rm` with recursive or force flags, each word spelled its own way.

    ``runnable``: only what bash can run with a fake `rm` first on PATH (no absolute path
    to the real one, relative targets)."""
    if runnable:
        program = draw(shell_word("rm"))
    else:
        program = draw(
            st.one_of(
                shell_word("rm"),
                st.sampled_from(["/bin/rm", "/usr/bin/rm", "\\/bin/rm", "'/bin/'rm", "/bin//rm"]),
            )
        )
    flags = list(draw(st.sampled_from(_FLAG_SETS)))
    words = [draw(shell_word(f)) for f in flags]
    if flags == ["-r", "-f"] and draw(st.booleans()):
        words = [draw(st.sampled_from(["-{r,f}", "{-r,-f}", "-{r,}f"]))]
    target = draw(shell_word(draw(st.sampled_from(_RUNNABLE_TARGETS if runnable else _TARGETS))))
    whole = [program, *words, target] if draw(st.integers(0, 3)) else [program, target, *words]
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(whole)))
        whole.insert(at, draw(st.sampled_from(_REDIRECTIONS)))
    assignments = tuple(draw(st.lists(st.sampled_from(_ASSIGNMENTS), max_size=2)))
    if draw(st.integers(0, 9)) == 0:
        # brace expansion makes the words: {rm,-rf,x} is `rm -rf x`
        whole = ["{" + ",".join(["rm", *flags, "x"]) + "}"]
    return ShellCommand(assignments, tuple(whole))


# Prefix wrappers: (words, runnable with the fake PATH, takes VAR=value after it, a program
# on PATH rather than a builtin or keyword)
_PREFIX_WRAPPERS: tuple[tuple[str, bool, bool, bool], ...] = (
    ("sudo", True, True, True),
    ("sudo -u root", True, True, True),
    ("sudo -E", True, True, True),
    ("sudo --", True, False, True),
    ("sudo A=1 -u root", True, True, True),
    ("sudo a.b=1 -E", True, True, True),
    ("sudo -s", False, True, True),
    ("sudo -i", False, True, True),
    ("env", True, True, True),
    ("env -u X", True, True, True),
    ("env -i", False, True, True),
    ("env --", True, True, True),
    ("env a-b=1", True, True, True),
    ("env =x ./y=1", True, True, True),
    ("nice", True, False, True),
    ("nice -n 5", True, False, True),
    ("nice -n5", True, False, True),
    ("nice -5", True, False, True),
    ("timeout 5", True, False, True),
    ("timeout -s KILL 5", True, False, True),
    ("timeout --foreground 1m", True, False, True),
    ("nohup", True, False, True),
    ("stdbuf -o0", True, False, True),
    ("setsid -w", True, False, True),
    ("ionice -c3", True, False, True),
    ("sudo nice -n 5", True, False, True),
    ("command", True, False, False),
    ("command --", True, False, False),
    ("exec", True, False, False),
    ("builtin command", True, False, False),
    ("time", True, True, False),
    ("time -p", True, True, False),
)
_SHELLS = ("bash -c", "bash -e -c", "bash -xc", "bash --norc -c", "bash -O extglob -c")
# Not run by the bash check: /etc/profile may reset PATH; sh may not be bash (dash has no
# brace expansion nor $'…' quoting), and the broker reads `sh -c` strings as bash.
_OTHER_SHELLS = ("bash -lc", "bash --login -c", "sh -c", "sh -xc", "dash -c")


def _join(words: tuple[str, ...] | list[str], sep: str = " ") -> str:
    return sep.join(w for w in words if w)


def render_command(cmd: ShellCommand, sep: str = " ") -> str:
    return _join([*cmd.assignments, *cmd.words], sep)


@st.composite
def shell_quote(draw: st.DrawFn, line: str) -> str:
    """The line as one shell word, quoted one of several ways."""
    style = draw(st.sampled_from(["single", "double", "ansi", "escaped"]))
    if style == "single":
        return "'" + line.replace("'", "'\\''") + "'"
    if style == "double":
        return '"' + re.sub(r'(["\\$`])', r"\\\1", line) + '"'
    if style == "ansi":
        return "$'" + line.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    # every character escaped; a newline cannot be (it would continue the line): quote it
    return "".join("'\n'" if c == "\n" else "\\" + c for c in line)


# Compound commands around a line (C); each runs C, to its end, before the line ends.
_COMPOUNDS = (
    "{ C; }", "{ C\n}", "( C )", "(C)", "$(C)", "echo $(C)", "echo `C`", "x=$(C)",
    "true && C", "false || C", "C || true", "true; C", "true\nC", "C & wait", "! C",
    "if true; then C; fi", "if C; then :; fi", "for i in 1; do C; done",
    "while :; do C; break; done", "until false; do C; break; done",
    "case x in x) C;; esac", "f() { C; }; f", "function f { C; }; f", "echo | C", "C | cat",
    "[[ -n x ]] && C", "(( 1 )) && C", "test x && C", "time C", "cat <(C)",
    "bash <<'EOF'\nC\nEOF", "echo Q | bash", "bash <<< Q", "eval Q", ". <(echo Q)",
)  # fmt: skip
# C may still run when the line's shell has exited: not runnable in the bash check.
_ASYNC_COMPOUNDS = ("C &", "echo >(C)", "coproc C", "C & disown")


@st.composite
def _compound(draw: st.DrawFn, line: str, runnable: bool) -> str:
    choices = _COMPOUNDS if runnable else _COMPOUNDS + _ASYNC_COMPOUNDS
    template = draw(st.sampled_from(choices))
    if "`" in template:
        # inside backquotes bash drops the backslash before a backslash, ` or $: escape
        line = re.sub(r"([\\`$])", r"\\\1", line)
    if "EOF" in template and "EOF" in line:
        template = "{ C; }"
    if "Q" in template:
        return template.replace("Q", draw(shell_quote(line)))
    if line.startswith("("):
        template = template.replace("(C", "( C")  # `((` and `$((` are arithmetic
    return template.replace("C", line)


def _ends_heredoc(line: str) -> bool:
    return line.endswith("\nEOF")


@st.composite
def destructive_shell(draw: st.DrawFn, runnable: bool = False) -> str:
    """`rm -rf`-like command line behind up to four wrappers, with line-level noise."""
    steps = draw(
        st.lists(st.sampled_from(["prefix", "prefix", "shell", "compound", "xargs"]), max_size=4)
    )
    cmd: ShellCommand | str = draw(rm_command(runnable))
    for step in steps:
        if step == "prefix" and isinstance(cmd, ShellCommand) and cmd.external:
            choices = [w for w in _PREFIX_WRAPPERS if w[1] or not runnable]
            wrapper, _, takes_assignments, external = draw(st.sampled_from(choices))
            if cmd.assignments and takes_assignments and draw(st.booleans()):
                cmd = ShellCommand((), (wrapper, *cmd.assignments, *cmd.words), external)
            else:
                cmd = ShellCommand(cmd.assignments, (wrapper, *cmd.words), external)
        elif step == "xargs" and isinstance(cmd, ShellCommand) and cmd.external:
            if cmd.assignments:
                cmd = ShellCommand((), ("env", *cmd.assignments, *cmd.words))
            xargs = draw(st.sampled_from(["xargs", "xargs -0", "xargs -n1", "xargs -P2 -n1"]))
            feed = draw(st.sampled_from(["echo y | ", "printf '%s\\0' y | ", "</dev/null "]))
            if "-0" in xargs and "printf" not in feed:
                feed = "printf '%s\\0' y | "
            cmd = feed + _join([xargs, *cmd.words])
        elif step == "compound" and not (isinstance(cmd, str) and _ends_heredoc(cmd)):
            line = cmd if isinstance(cmd, str) else render_command(cmd)
            cmd = draw(_compound(line, runnable))
        else:
            line = cmd if isinstance(cmd, str) else render_command(cmd)
            shell = draw(st.sampled_from(_SHELLS if runnable else _SHELLS + _OTHER_SHELLS))
            cmd = ShellCommand((), (shell, draw(shell_quote(line))))
    if isinstance(cmd, ShellCommand):
        line = render_command(cmd, draw(st.sampled_from(_WORD_SEPARATORS)))
    else:
        line = cmd
    lead = draw(st.sampled_from(["", "", " ", "\t", "\n", "true;", "true &&"]))
    tail = draw(st.sampled_from(["", "", ";", " # note", "\n", " ;\n"]))
    if _ends_heredoc(line):
        tail = "\n"
    return lead + line + tail
