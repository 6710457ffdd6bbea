"""Judging a shell command line against a policy before the Enter key reaches the target.

The line is split with bashlex into the simple commands it would run: pipelines, lists,
subshells, groups, command and process substitutions, and the commands hidden behind
wrappers such as ``sudo``, ``env``, ``xargs`` or ``sh -c``. Every simple command is judged;
the strongest decision wins. Anything that cannot be classified with certainty (a program
name computed at run time, ``eval``, a parse error, …) is "unknown" and gets the policy's
``on_unknown``. The module fails closed: an exception while judging yields ``deny``.

Programs that run their arguments as a command ("wrappers") come from one table,
``WRAPPERS``, each with the reason it is one. A program given inline code (``python -c``,
``perl -e``, an unknown program's ``-c 'a command'``) is "opaque": its command is judged
as unknown unless a rule names it at least as strictly as ``on_unknown``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from itertools import pairwise

import bashlex
import bashlex.ast
import bashlex.errors
import bashlex.subst

from broker.config import Policy, Rule
from broker.policy.decision import Decision, combine, stronger
from broker.protocols import sql_dialects, sql_unit

# The databases' command-line clients (psql, mysql, sqlite3 …) by program name, from the
# protocol units: SQL given to them is data, unless it holds the client's shell escapes.
_SQL_CLIENTS = {
    program: client
    for dialect in sql_dialects()
    for program, client in sql_unit(dialect).clients.items()
}

MAX_LINE = 16384  # longer lines are not inspected (unknown); parsing costs ~25 ms per KiB
MAX_INPUT = 64 * 1024  # longer input is refused before any other look at it
MAX_DEPTH = 16  # nesting of wrappers and `sh -c` strings
MAX_WORDS = 1024  # words one brace expansion may produce


@dataclass(frozen=True)
class SimpleCommand:
    """One program the line would start, with its arguments after quote removal."""

    program: str  # as the shell looks it up: unescaped, unquoted ("/bin/rm", "rm")
    args: tuple[str, ...]
    text: str  # the original text, from the program word to the end of the command
    # Empty when every argument is known as typed. Otherwise one entry per argument: None
    # for an argument known as typed, or an fnmatch pattern of the values the argument may
    # take at run time ("*" for `$X`, "*.log" for the glob *.log, "x*" for "x$Y").
    runtime: tuple[str | None, ...] = ()
    # Why what this command runs cannot be read (inline code such as `python -c CODE`, or
    # a command string given to an option of a program the broker does not know); None
    # when its arguments are plain data as far as the broker knows.
    opaque: str | None = None

    @property
    def name(self) -> str:
        """Basename of the program, as rules match it: "/bin/rm" -> "rm", "\\rm" -> "rm"."""
        return self.program.rsplit("/", 1)[-1].replace("\\", "")


@dataclass(frozen=True)
class ParsedLine:
    commands: tuple[SimpleCommand, ...]
    unknown: str | None  # why the line cannot be classified with certainty; None if it can


# --------------------------------------------------------------------------- decisions


def decide_shell(policy: Policy, line: str) -> Decision:
    """Judge one command line; never raises (an internal error is a deny). The decision also
    names the programs the line runs (``programs``)."""
    try:
        return _decide(policy, line)
    except Exception as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return Decision("deny", None, f"policy error: {message}")


def _decide(policy: Policy, line: str) -> Decision:
    if not line.strip(" \t\n"):
        return Decision("allow", None, "empty line")
    token = _RULE_PROGRAMS.set(tuple(p for rule in policy.rules for p in (rule.program or ())))
    try:
        parsed = parse_command_line(line)
    finally:
        _RULE_PROGRAMS.reset(token)
    programs = tuple(command.name for command in parsed.commands)
    return replace(_decide_parsed(policy, line, parsed), programs=programs)


def _decide_parsed(policy: Policy, line: str, parsed: ParsedLine) -> Decision:
    parts = [_judge(policy, command, line) for command in parsed.commands]
    if parsed.unknown is not None:
        unknown = Decision(
            policy.on_unknown,
            None,
            f"cannot tell what this line runs: {parsed.unknown}",
            unknown=True,
        )
        # What is known can only make the decision stricter, never more lenient.
        candidates = [*parts, _line_rule(policy, line, regex_only=True)]
        stricter = [d for d in candidates if d and stronger(d.action, policy.on_unknown)]
        return combine([*stricter, unknown])
    if parts:
        return combine(parts)
    if _comment_only(line):
        return Decision("allow", None, "comment only; nothing runs")
    return _line_rule(policy, line, regex_only=False) or Decision(
        policy.default,
        None,
        f"no program runs (only assignments or redirections); default {policy.default}",
    )


# Program-name patterns of the policy being applied (see parse_command_line).
_RULE_PROGRAMS: ContextVar[tuple[str, ...]] = ContextVar("_RULE_PROGRAMS", default=())


def _rule_label(rule: Rule, index: int) -> str:
    return rule.name or f"#{index + 1}"


def _rule_decision(rule: Rule, index: int, matched: str) -> Decision:
    return Decision(
        rule.action,
        rule.name or f"rule #{index + 1}",
        f"rule {_rule_label(rule, index)} matched `{_short(matched)}`",
        approvers=tuple(rule.approvers),
        approvals=rule.approvals,
        timeout=rule.timeout,
        reason_required=rule.reason_required,
        matched=matched,
    )


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _applies_to_shell(rule: Rule) -> bool:
    """Rules with program/args/regex, or no match keys at all; never SQL-only rules."""
    shell = rule.program is not None or rule.args is not None or rule.regex is not None
    sql = (
        rule.statement is not None
        or rule.effect is not None
        or rule.tables is not None
        or rule.without_where is not None
        or rule.rows_over is not None
    )
    return shell or not sql


def _judge(policy: Policy, command: SimpleCommand, line: str) -> Decision:
    decision = _judge_rules(policy, command, line)
    if command.opaque is None:
        return decision
    # Code the broker cannot read: a rule decides only when it is at least as strict as
    # on_unknown (it names the program, e.g. `python*` -> review); nothing can relax it.
    if decision.rule is not None and not stronger(policy.on_unknown, decision.action):
        return decision
    return Decision(
        policy.on_unknown,
        None,
        f"cannot tell what `{_short(command.text)}` runs: {command.opaque}",
        unknown=True,
    )


def _judge_rules(policy: Policy, command: SimpleCommand, line: str) -> Decision:
    for index, rule in enumerate(policy.rules):
        if not _applies_to_shell(rule):
            continue
        verdict = _match(rule, command, line)
        if verdict is True:
            matched = command.text
            if rule.program is None and rule.args is None and rule.regex is not None:
                found = re.search(rule.regex, line)  # a line-level rule: show what it found
                matched = found.group(0) if found and found.group(0) else line
            return _rule_decision(rule, index, matched)
        if isinstance(verdict, str):
            return Decision(
                policy.on_unknown,
                None,
                f"cannot tell whether rule {_rule_label(rule, index)} matches "
                f"`{_short(command.text)}`: {verdict}",
                unknown=True,
            )
    return Decision(
        policy.default,
        None,
        f"no rule matched `{_short(command.text)}`; default {policy.default}",
    )


def _match(rule: Rule, command: SimpleCommand, line: str) -> bool | str:
    """True, False, or (a str) the reason it cannot be told."""
    if rule.regex is not None and not re.search(rule.regex, line):
        return False
    if rule.program is not None and not any(
        fnmatchcase(command.name, p) or fnmatchcase(command.program, p) for p in rule.program
    ):
        return False
    if rule.args is None:
        return True
    runtime = command.runtime or (None,) * len(command.args)
    for value, pattern in zip(command.args, runtime, strict=True):
        if pattern is None and any(fnmatchcase(value, p) for p in rule.args):
            return True
    for value, pattern in zip(command.args, runtime, strict=True):
        if pattern is not None and any(_could_match(pattern, p) for p in rule.args):
            return f"the argument `{value}` is only known at run time"
    return False


def _line_rule(policy: Policy, line: str, *, regex_only: bool) -> Decision | None:
    """First rule without program/args that matches the whole line (regex or catch-all)."""
    for index, rule in enumerate(policy.rules):
        if not _applies_to_shell(rule) or rule.program is not None or rule.args is not None:
            continue
        if rule.regex is None:
            if regex_only:
                continue
            return _rule_decision(rule, index, line)
        found = re.search(rule.regex, line)
        if found:
            return _rule_decision(rule, index, found.group(0) or line)
    return None


# ------------------------------------------------------------- glob pattern intersection

_STAR = ("*", "")
_ANY = ("?", "")


def _glob_tokens(pattern: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if not out or out[-1] != _STAR:
                out.append(_STAR)
            i += 1
        elif c == "?":
            out.append(_ANY)
            i += 1
        elif c == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 1
            if j >= len(pattern):
                out.append(("lit", "["))
                i += 1
            else:
                out.append(("cls", pattern[i : j + 1]))
                i = j + 1
        else:
            out.append(("lit", c))
            i += 1
    return out


def _same_char_possible(a: tuple[str, str], b: tuple[str, str]) -> bool:
    if a == _ANY or b == _ANY:
        return True
    if a[0] == "lit" and b[0] == "lit":
        return a[1] == b[1]
    if a[0] == "lit":
        return fnmatchcase(a[1], b[1])
    if b[0] == "lit":
        return fnmatchcase(b[1], a[1])
    return True  # two character classes: assume they overlap (errs towards "unknown")


def _could_match(left: str, right: str) -> bool:
    """Could some string match both fnmatch patterns? (a search over the product automaton)"""
    a, b = _glob_tokens(left), _glob_tokens(right)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j = state
        if i == len(a) and j == len(b):
            return True
        a_star = i < len(a) and a[i] == _STAR
        b_star = j < len(b) and b[j] == _STAR
        if a_star:
            todo.append((i + 1, j))
        if b_star:
            todo.append((i, j + 1))
        if a_star and j < len(b) and not b_star:
            todo.append((i, j + 1))
        if b_star and i < len(a) and not a_star:
            todo.append((i + 1, j))
        if i < len(a) and j < len(b) and not a_star and not b_star:
            if _same_char_possible(a[i], b[j]):
                todo.append((i + 1, j + 1))
    return False


# ------------------------------------------------------------------------------ parsing


class _Unknown(Exception):
    """The line cannot be classified with certainty; the message says why."""


@dataclass(frozen=True)
class _Arg:
    """One word after brace expansion and quote removal."""

    value: str  # quotes removed; expansions kept as written ("$X")
    pattern: str | None  # fnmatch pattern of the run-time values; None when known as typed
    splits: bool  # holds an unquoted expansion: may become several words at run time
    start: int  # offset of the word in its source text

    @property
    def match_pattern(self) -> str | None:
        return "*" if self.splits else self.pattern


@dataclass(frozen=True)
class _Ctx:
    src: str  # the text positions refer to (the line, or the string given to `sh -c`)
    depth: int
    stdin: bool  # standard input comes from a pipe or a redirection, not the terminal
    # Regions of src replaced before parsing: start -> (end, kind); see _Masker.
    masks: dict[int, tuple[int, str]] = field(default_factory=dict)
    redirected: bool = False  # the simple command being judged has redirections


_Token = tuple[str, str, bool]  # ("c", char, quoted) or ("d", raw expansion, in double quotes)
_EMPTY_QUOTED: _Token = ("c", "", True)
_TIME = re.compile(r"\btime\b")
_HEREDOC_EOF = re.compile(r"here-document .*delimited by end-of-file \(wanted (['\"])(.*)\1\)")
_SIMPLE_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-])")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_PROMPTS = {"PS0", "PS1", "PS2", "PS3", "PS4"}
_SOURCED = {"BASH_ENV", "ENV", "LD_PRELOAD", "LD_AUDIT"}
_COMMAND_VARS = {
    "PAGER", "MANPAGER", "GIT_PAGER", "SYSTEMD_PAGER", "PSQL_PAGER", "EDITOR", "VISUAL",
    "GIT_EDITOR", "SUDO_EDITOR", "GIT_SEQUENCE_EDITOR", "GIT_SSH_COMMAND", "GIT_EXTERNAL_DIFF",
    "RSYNC_RSH", "LESSOPEN", "LESSCLOSE", "BROWSER", "FCEDIT",
}  # fmt: skip


def parse_command_line(line: str, *, programs: tuple[str, ...] | None = None) -> ParsedLine:
    """Split a command line into the simple commands it runs; say why if it cannot be sure.

    ``programs`` are program-name patterns (by default those of the rules of the policy
    being applied): an option value of an unknown program that names one of them is taken
    for a command (`foo -c rm`)."""
    problem = _input_problem(line)
    if problem is not None:
        return ParsedLine((), problem)
    parser = _Parser(_RULE_PROGRAMS.get() if programs is None else programs)
    try:
        if len(line) > MAX_LINE:
            raise _Unknown("the line is too long to inspect")
        parser.parse(line, 0, stdin=False)
    except _Unknown as exc:
        parser.note(str(exc))
    except RecursionError:
        parser.note("the line is nested too deeply")
    return ParsedLine(tuple(parser.commands), parser.unknown)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _input_problem(line: str) -> str | None:
    """Input refused before it is parsed: cheap checks, each a scan at C speed."""
    if len(line) > MAX_INPUT or (
        len(line) > MAX_INPUT // 4 and len(line.encode("utf-8", "surrogatepass")) > MAX_INPUT
    ):
        return f"the input is longer than {MAX_INPUT // 1024} KiB; it is not inspected"
    if "\x00" in line:
        return "the line contains a NUL byte, which the shell would not read as it is shown"
    bad = _SURROGATE.search(line)
    if bad is not None:
        code = ord(bad.group(0))
        detail = f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        return f"the line is not valid UTF-8 ({detail} at character {bad.start()})"
    return None


def _bad_char(text: str) -> str | None:
    for ch in text:
        if ch in "\t\n":
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return ch
    return None


def _line_end(text: str, i: int) -> int:
    """Where the line holding text[i] ends: the index of its newline, or len(text)."""
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _skip(text: str, i: int, chars: str) -> int:
    """The index of the first character from text[i] on that is not one of chars."""
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _closing(text: str, i: int, close: str) -> int:
    """The index after the first `close` from text[i] on, where a backslash escapes the
    character after it; -1 when there is none."""
    n = len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
        elif text[i] == close:
            return i + 1
        else:
            i += 1
    return -1


def _comment_only(text: str) -> bool:
    lines = [ln.strip() for ln in text.split("\n")]
    return any(lines) and all(not ln or ln.startswith("#") for ln in lines)


def _history_expansion(line: str) -> str | None:
    """Interactive shells re-run earlier commands for `!!`, `!rm`, `^old^new`: unknown."""
    for ln in line.split("\n"):
        if ln.lstrip(" \t").startswith("^"):
            return "`^old^new` re-runs an earlier command from the history"
    i, n, quote = 0, len(line), ""
    while i < n:
        c = line[i]
        nxt = line[i + 1] if i + 1 < n else ""
        if quote in ("'", "$'"):
            if quote == "$'" and c == "\\":
                i += 2
                continue
            quote = "" if c == "'" else quote
            i += 1
            continue
        if c == "\\":
            i += 2
            continue
        if not quote:
            if c == "'":
                quote = "'"
            elif c == "$" and nxt == "'":
                quote = "$'"
                i += 1
            elif c == "#" and (i == 0 or line[i - 1] in " \t\n;&|()<>"):
                i = _line_end(line, i)
                continue
            elif c == '"':
                quote = '"'
        elif quote == '"' and c == '"':
            quote = ""
            i += 1
            continue
        if (
            c == "!"
            and nxt not in ("", " ", "\t", "\n", "=", "(")
            and not (quote == '"' and nxt == '"')
        ):
            end = i + 1
            while end < n and line[end] not in " \t\n;&|()<>\"'":
                end += 1
            return f"`{line[i:end]}` is history expansion, which re-runs an earlier command"
        i += 1
    return None


def _describe_parse_error(exc: Exception) -> str:
    message = re.sub(r"\s*\(position \d+\)$", "", str(exc))
    if isinstance(exc, bashlex.errors.ParsingError):
        found = re.search(r"looking for matching [`'\"]?(.)", message)
        if found and found.group(1) in "'\"`":
            return "unterminated quote"
        if found:
            return f"unterminated `{found.group(1)}` (missing closing bracket)"
        if "here-document" in message:
            return "unfinished here-document (or one whose quoted delimiter bashlex cannot read)"
        if message == "unexpected EOF":
            return "incomplete command (it ends with an operator or a backslash)"
        return message
    if isinstance(exc, NotImplementedError):
        kind = re.search(r"type = \{([^}]*)\}", message)
        return f"unsupported shell syntax ({kind.group(1) if kind else message})"
    return f"{type(exc).__name__}: {message}"


def _guard_bashlex() -> None:
    """Work around a bashlex 0.18 bug that loops forever, growing memory, on a `${` with no
    `}` after it in the same word (reachable by typing `echo '${x'y`): raise a parse error
    instead. Installed once, at import."""
    original = bashlex.subst._paramexpand
    if getattr(original, "_hoop_guarded", False):
        return

    def guarded(parserobj: object, string: str, sindex: int) -> object:
        if string.startswith("${", sindex) and string.find("}", sindex + 2) < 0:
            raise bashlex.errors.ParsingError("bad substitution: no closing `}`", string, sindex)
        return original(parserobj, string, sindex)

    guarded._hoop_guarded = True  # type: ignore[attr-defined]
    bashlex.subst._paramexpand = guarded


_guard_bashlex()


# ------------------------------------------------------------ preprocessing for bashlex
#
# bashlex 0.18 cannot parse `$(( ))`, `(( ))`, `for (( ))` or `[[ ]]`. Before parsing, each
# such region is replaced by text of the same length that bashlex reads (`${___}`, `:`,
# `for x`), so every position still points into the original line; the walker reads words
# from the original. Nothing that can run a command is hidden by this:
# - arithmetic may hold only numbers, operators and names; a substitution inside it (`$(`,
#   backtick, `${`) is unknown, and so is reading a variable not assigned a number in the
#   same expression, because bash evaluates a variable's value as arithmetic in turn and a
#   value such as `a[$(cmd)]` runs cmd;
# - in `[[ ]]` every word holding a substitution is kept in place and parsed as usual; an
#   operand of -eq/-ne/-lt/-le/-gt/-ge must be a plain number (it is arithmetic too);
# - a region never spans a newline, the line has no here-document, and anything the scanner
#   is not sure of is left alone (bashlex then fails: unknown).


class _NoMask(Exception):
    """The scanner is not sure how bash reads this text; leave it to bashlex."""


_BEFORE_COMMAND = {"!", "time", "{", "then", "do", "else", "elif", "if", "while", "until"}
_ARITH_CHARS = re.compile(r"[A-Za-z0-9_ \t+\-*/%<>=!&|^~?:,;()\[\]#$]*")
_ARITH_TOKEN = re.compile(
    r"(?P<num>[0-9]+#[0-9A-Za-z@_]+|0[xX][0-9A-Fa-f]+|[0-9]+)"
    r"|\$(?P<param>[A-Za-z_][A-Za-z0-9_]*|[0-9]|[#?$!@*-])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|.",
    re.S,
)
_ARITH_TARGET = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")
_NUMERIC_PARAMS = {"#", "?", "$", "!"}
_ARITH_TESTS = {"-eq", "-ne", "-lt", "-le", "-gt", "-ge"}
_NUMERIC_OPERAND = re.compile(r'"?(-?[0-9]+|\$[#?$!])"?')
# A here-document (`<<EOF`, `<<-'X'`), not a shift in arithmetic (`1 << 4`, `x<<(n)`): a
# delimiter made of digits cannot hold a region, so it may pass as a shift.
_HEREDOC = re.compile(r"(?<!<)<<-?[ \t]*[^\s\d(<]")


def _arith_segments(text: str) -> list[str]:
    """Split arithmetic at the top-level `,` and `;` (the order bash evaluates it in)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch in ",;" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _check_arith(
    text: str, where: str, *, semicolons: bool = False, outside: str | None = None
) -> None:
    """Raise _Unknown unless evaluating this arithmetic can run nothing."""
    if "$(" in text or "`" in text or "${" in text:
        raise _Unknown(f"{where} holds a substitution, which arithmetic would run")
    if not _ARITH_CHARS.fullmatch(text) or (";" in text and not semicolons):
        raise _Unknown(f"{where} holds characters the broker does not read in arithmetic")
    assigned: set[str] = set()
    for segment in _arith_segments(text):
        target = _ARITH_TARGET.match(segment)
        rest = segment[target.end() :] if target else segment
        for token in _ARITH_TOKEN.finditer(rest):
            name = token.group("name") or token.group("param")
            if not name or name in _NUMERIC_PARAMS or name in assigned:
                continue
            shown = f"${name}" if token.group("param") else name
            raise _Unknown(
                f"{where} reads `{shown}`: bash evaluates a variable's value as arithmetic, "
                "where a value such as `a[$(cmd)]` runs cmd"
            )
        if target:
            assigned.add(target.group(1))
    for name in sorted(assigned if outside is not None else ()):
        assert outside is not None
        if re.search(rf"(?<![\w$])(?<!\$\{{){name}(?!\w)", outside):
            raise _Unknown(
                f"{where} assigns `{name}`, which the line may change elsewhere (its value "
                "is evaluated as arithmetic on each turn of the loop)"
            )


class _Masker:
    """Find the regions bashlex cannot parse and replace them (see above)."""

    def __init__(self, src: str) -> None:
        self.s = src
        self.n = len(src)
        self.out = list(src)
        self.regions: dict[int, tuple[int, str]] = {}
        self.checks: list[tuple[str, str, int, int]] = []  # (text, kind, start, end)

    # ---- results

    def run(self) -> tuple[str, dict[int, tuple[int, str]]]:
        if self.commands(0, None) != self.n:
            raise _NoMask
        outside = list(self.s)
        for start, (end, _) in self.regions.items():
            outside[start:end] = " " * (end - start)
        blanked = "".join(outside)
        for text, kind, _start, _end in self.checks:
            if kind == "arith-for":
                _check_arith(text, "`for (( … ))`", semicolons=True, outside=blanked)
            else:
                _check_arith(text, "`$(( … ))`" if kind == "arith" else "`(( … ))`")
        return "".join(self.out), self.regions

    def replace(self, start: int, end: int, kind: str, text: str) -> None:
        self.regions[start] = (end, kind)
        self.out[start:end] = text.ljust(end - start)

    # ---- commands and words

    def commands(self, i: int, stop: str | None) -> int:
        """Scan commands from i; return the index after the `)` that ends a `$(`."""
        s, n = self.s, self.n
        cmdpos, depth = True, 0
        while i < n:
            c = s[i]
            if c in " \t":
                i += 1
            elif c == "\n":
                cmdpos = True
                i += 1
            elif c == "#":
                i = _line_end(s, i)
            elif c in "<>" and not s.startswith("(", i + 1):
                i += 1
                while i < n and s[i] in "<>&|-" and not s.startswith("(", i):
                    i += 1
            elif c == "&" and s.startswith(">", i + 1):
                i += 2
            elif c in ";&|":
                i = _skip(s, i + 1, ";&|")
                cmdpos = True
            elif c == "(":
                end = (
                    self.arith(i, i + 2, "arith-cmd") if cmdpos and s.startswith("((", i) else None
                )
                if end is not None:
                    i, cmdpos = end, False
                else:
                    depth += 1
                    i += 1
                    cmdpos = True
            elif c == ")":
                if depth == 0:
                    if stop == ")":
                        return i + 1
                    raise _NoMask
                depth -= 1
                i += 1
                cmdpos = True
            elif cmdpos and s.startswith("[[", i) and s[i + 2 : i + 3] in (" ", "\t"):
                i = self.test(i)
                cmdpos = False
            else:
                start = i
                i = self.word(i)
                word = s[start:i]
                if cmdpos and word in ("case", "select", "coproc"):
                    raise _NoMask
                if cmdpos and word == "for":
                    j = _skip(s, i, " \t")
                    if s.startswith("((", j):
                        end = self.arith(start, j + 2, "arith-for")
                        if end is None:
                            raise _NoMask
                        i, cmdpos = end, False
                        continue
                cmdpos = cmdpos and word in _BEFORE_COMMAND
        if stop is not None:
            raise _NoMask
        return i

    def word(self, i: int) -> int:
        s, n = self.s, self.n
        start = i
        while i < n:
            c = s[i]
            if c in " \t\n;&|()" or (c in "<>" and not (i == start and s.startswith("(", i + 1))):
                break
            if c == "\\":
                i += 2
            elif c == "'":
                end = s.find("'", i + 1)
                if end < 0:
                    raise _NoMask
                i = end + 1
            elif c == '"':
                i = self.dquote(i + 1)
            elif c == "$" and s.startswith("'", i + 1):
                i = self.closing(i + 2, "'")
            elif c in "<>":  # process substitution at the start of a word
                i = self.commands(i + 2, ")")
            else:
                i = self.dollar_or_backtick(i)
        if i == start:
            raise _NoMask
        return min(i, n)

    def dquote(self, i: int) -> int:
        s, n = self.s, self.n
        while i < n:
            c = s[i]
            if c == '"':
                return i + 1
            if c == "\\":
                i += 2
            else:
                i = self.dollar_or_backtick(i)
        raise _NoMask

    def dollar_or_backtick(self, i: int) -> int:
        s = self.s
        if s.startswith("$((", i):
            end = self.arith(i, i + 3, "arith")
            if end is not None:
                return end
        if s.startswith("$(", i):
            return self.commands(i + 2, ")")
        if s.startswith("${", i):
            return self.braces(i + 2)
        if s[i] == "`":
            return self.closing(i + 1, "`")
        return i + 1

    def closing(self, i: int, close: str) -> int:
        """The end of `$'…'` or of backquotes (close is `'` or a backquote) from i."""
        end = _closing(self.s, i, close)
        if end < 0:
            raise _NoMask
        return end

    def braces(self, i: int) -> int:
        s, n = self.s, self.n
        depth = 0
        while i < n:
            c = s[i]
            if c == "\\":
                i += 2
                continue
            if s.startswith("${", i):
                depth += 1
                i += 2
                continue
            if c == "}":
                if depth == 0:
                    return i + 1
                depth -= 1
            i += 1
        raise _NoMask

    # ---- the regions

    def arith(self, start: int, i: int, kind: str) -> int | None:
        """`$((`, `((` or `for ((` at start, contents from i: the end, or None when bash
        would not read it as arithmetic (a `$(` or subshell that starts with `(`)."""
        s, n = self.s, self.n
        depth = 0
        while i < n:
            c = s[i]
            if c == "\n":
                raise _NoMask
            if c == "(":
                depth += 1
            elif c == ")":
                if depth:
                    depth -= 1
                elif s.startswith(")", i + 1):
                    inner = s[s.index("((", start) + 2 : i]
                    end = i + 2
                    if kind == "arith":
                        self.replace(start, end, kind, "${" + "_" * (end - start - 3) + "}")
                    elif kind == "arith-cmd":
                        self.replace(start, end, kind, ":")
                    else:
                        self.replace(start, end, kind, "for x")
                    self.checks.append((inner, kind, start, end))
                    return end
                else:
                    return None
            i += 1
        return None

    def test(self, start: int) -> int:
        """`[[ … ]]`: blank all but the words that hold a substitution; check its operands."""
        s, n = self.s, self.n
        i = start + 2
        words: list[tuple[int, int]] = []
        while True:
            i = _skip(s, i, " \t")
            if i >= n or s[i] == "\n":
                raise _NoMask
            if s.startswith("]]", i) and (i + 2 == n or s[i + 2] in " \t\n;&|)"):
                end = i + 2
                break
            if s.startswith(("&&", "||"), i):
                i += 2
            elif s[i] in ";&|":
                raise _NoMask
            elif s[i] in "()!" or (s[i] in "<>" and not s.startswith("(", i + 1)):
                i += 1
            else:
                word_start = i
                i = self.word(i)
                words.append((word_start, i))
        texts = [s[a:b] for a, b in words]
        for k, text in enumerate(texts):
            if text in _ARITH_TESTS:
                for operand in (
                    texts[k - 1] if k else "",
                    texts[k + 1] if k + 1 < len(texts) else "",
                ):
                    if not _NUMERIC_OPERAND.fullmatch(operand):
                        raise _Unknown(
                            f"`[[ … {text} … ]]` evaluates `{operand}` as arithmetic, where a "
                            "value such as `a[$(cmd)]` runs cmd"
                        )
            if text == "-v" and k + 1 < len(texts):
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", texts[k + 1]):
                    raise _Unknown(f"`[[ -v {texts[k + 1]} ]]` evaluates a subscript")
        keep = list(self.out[start:end])
        self.replace(start, end, "test", ":")
        for a, b in words:
            if any(m in s[a:b] for m in ("$(", "`", "${", "<(", ">(")):
                self.out[a:b] = keep[a - start : b - start]
        return end


def _mask(src: str) -> tuple[str, dict[int, tuple[int, str]]]:
    if not any(m in src for m in ("((", "[[")) or _HEREDOC.search(src):
        return src, {}
    try:
        return _Masker(src).run()
    except _NoMask:
        return src, {}


def _bashlex_parse(src: str) -> tuple[list[bashlex.ast.node], dict[int, tuple[int, str]]]:
    # bashlex does not support the `time` keyword; a same-length plain word keeps every
    # position intact, and words are always read from the original text.
    masked, regions = _mask(src)
    text = _TIME.sub("tim3", masked)
    for _ in range(16):
        try:
            return list(bashlex.parse(text)), regions
        except bashlex.errors.ParsingError as exc:
            wanted = _HEREDOC_EOF.search(str(exc))
            # A single line that starts a here-document: the body is typed on later lines.
            # Judge the command with an empty body (only when nothing follows on this line).
            if wanted and "\n" not in src:
                text += "\n" + wanted.group(2)
                continue
            raise _Unknown(f"cannot parse: {_describe_parse_error(exc)}") from None
        except RecursionError:
            raise
        except Exception as exc:
            raise _Unknown(f"cannot parse: {_describe_parse_error(exc)}") from None
    raise _Unknown("cannot parse: too many here-documents")


def _children(node: bashlex.ast.node) -> Iterator[bashlex.ast.node]:
    # Some nodes hold a child twice (a function's `body` is also in its `parts`).
    seen: set[int] = set()
    for key, value in vars(node).items():
        if key in ("kind", "pos"):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, bashlex.ast.node) and id(child) not in seen:
                seen.add(id(child))
                yield child


_CLOSE_PAREN = re.compile(r"[ \t\n]*\)")


def _substitution_end(node: bashlex.ast.node, src: str) -> int | None:
    """Where a $( ), <( ), >( ) or backtick substitution really ends, or None when its
    command does not reach the closing bracket: bashlex silently drops what follows a
    newline inside a substitution, and its end position stops short of blanks before `)`."""
    start, end = node.pos
    inner_start, inner_end = node.command.pos
    if src.startswith("`", start):
        if (
            src[end - 1 : end] != "`"
            or src[start + 1 : inner_start].strip(" \t\n")
            or src[inner_end : end - 1].strip(" \t\n")
        ):
            return None
        return end
    if src[start + 2 : inner_start].strip(" \t\n"):
        return None
    closing = _CLOSE_PAREN.match(src, inner_end)
    return closing.end() if closing else None


def _backquoted_text(raw: str) -> str | None:
    """The command bash runs for the text between backquotes; None when it depends on
    whether the substitution sits inside double quotes (a backslash before `"`)."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            if nxt == '"':
                return None
            if nxt == "\n":
                i += 2
                continue
            if nxt in "$`\\":
                out.append(nxt)
                i += 2
                continue
            out.append(c + nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _is_input(redirect: bashlex.ast.node) -> bool:
    return str(getattr(redirect, "type", "")).startswith("<")


# ------------------------------------------------------------------------ word expansion


def _ansi_c(raw: str, i: int) -> tuple[str, int]:
    """Decode a $'…' string whose body starts at raw[i]; return (text, index after it)."""
    simple = {
        "a": "\a",
        "b": "\b",
        "e": "\x1b",
        "E": "\x1b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
        "v": "\v",
        "\\": "\\",
        "'": "'",
        '"': '"',
        "?": "?",
    }
    out: list[str] = []
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == "'":
            return "".join(out), i + 1
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        e = raw[i + 1]
        i += 2
        if e in simple:
            out.append(simple[e])
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = re.match(rf"[0-9A-Fa-f]{{1,{width}}}", raw[i:])
            if digits:
                out.append(chr(min(int(digits.group(0), 16), 0x10FFFF)))
                i += digits.end()
            else:
                out.append("\\" + e)
        elif e in "01234567":
            digits = re.match(r"[0-7]{0,2}", raw[i:])
            assert digits is not None
            out.append(chr(int(e + digits.group(0), 8) & 0xFF))
            i += digits.end()
        elif e == "c" and i < n:
            out.append(chr(ord(raw[i]) & 0x1F))
            i += 1
        else:
            out.append("\\" + e)
    raise _Unknown("unterminated quote")


def _lex_word(raw: str, offset: int, parts: dict[int, int], src: str) -> list[_Token]:
    """Quote removal with bash's rules, keeping which characters were quoted."""
    toks: list[_Token] = []
    i, n, dq = 0, len(raw), False
    while i < n:
        c = raw[i]
        nxt = raw[i + 1] if i + 1 < n else ""
        if c == "\\" and (not dq or nxt in '$`"\\\n'):
            # outside double quotes a backslash quotes any character; inside them, only these
            if nxt != "\n":
                toks.append(("c", nxt, True))
            i += 2
            continue
        if not dq:
            if c == "'":
                end = raw.find("'", i + 1)
                if end < 0:
                    raise _Unknown("unterminated quote")
                toks.append(_EMPTY_QUOTED)
                toks.extend(("c", ch, True) for ch in raw[i + 1 : end])
                i = end + 1
                continue
            if c == '"' or (c == "$" and nxt == '"'):
                dq = True
                toks.append(_EMPTY_QUOTED)
                i += 1 if c == '"' else 2
                continue
            if c == "$" and nxt == "'":
                text, i = _ansi_c(raw, i + 2)
                toks.append(_EMPTY_QUOTED)
                toks.extend(("c", ch, True) for ch in text)
                continue
        elif c == '"':
            dq = False
            i += 1
            continue
        if c in "$`" or (not dq and c in "<>" and nxt == "("):
            pos = offset + i
            if pos in parts and parts[pos] > pos + (1 if c == "$" else 0):
                toks.append(("d", src[pos : parts[pos]], dq))
                i = parts[pos] - offset
                continue
            if c == "$":
                simple = _SIMPLE_PARAM.match(raw, i)
                if nxt and nxt in "({[":
                    raise _Unknown(f"cannot see inside `{raw}`")
                if simple:
                    toks.append(("d", simple.group(0), dq))
                    i = simple.end()
                    continue
            else:
                raise _Unknown(f"cannot see inside `{raw}`")
        if not dq and c in " \t\n;&|()<>":
            # bash would end the word here: bashlex read the line differently than bash does
            raise _Unknown(f"the parser and the shell disagree about `{_short(raw, 60)}`")
        toks.append(("c", c, dq))
        i += 1
    if dq:
        raise _Unknown("unterminated quote")
    return toks


def _is_unquoted(tok: _Token, char: str) -> bool:
    return tok[0] == "c" and not tok[2] and tok[1] == char


_SEQUENCE = re.compile(r"(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.(-?\d+))?")


def _sequence(toks: list[_Token]) -> list[str] | None:
    if not all(t[0] == "c" and not t[2] for t in toks):
        return None
    found = _SEQUENCE.fullmatch("".join(t[1] for t in toks))
    if not found:
        return None
    first, last, step_text = found.groups()
    step = abs(int(step_text)) if step_text else 1
    step = step or 1
    if first.lstrip("-").isdigit() and last.lstrip("-").isdigit():
        lo, hi = int(first), int(last)
        if abs(hi - lo) // step + 1 > MAX_WORDS:
            raise _Unknown("brace expansion produces too many words")
        rng = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [str(v) for v in rng]
    if len(first) == 1 and len(last) == 1 and first.isalpha() and last.isalpha():
        lo, hi = ord(first), ord(last)
        rng = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [chr(v) for v in rng]
    return None


def _brace(toks: list[_Token], budget: list[int]) -> list[list[_Token]]:
    """Bash brace expansion over unquoted { , } (and {a..b}); empty results are dropped."""
    for i, tok in enumerate(toks):
        if not _is_unquoted(tok, "{") or (i and toks[i - 1][0] == "c" and toks[i - 1][1] == "$"):
            continue
        depth, commas, close = 0, [], -1
        for j in range(i, len(toks)):
            if _is_unquoted(toks[j], "{"):
                depth += 1
            elif _is_unquoted(toks[j], "}"):
                depth -= 1
                if depth == 0:
                    close = j
                    break
            elif _is_unquoted(toks[j], ",") and depth == 1:
                commas.append(j)
        if close < 0:
            continue
        inner = toks[i + 1 : close]
        if commas:
            bounds = [i, *commas, close]
            alternatives = [toks[a + 1 : b] for a, b in pairwise(bounds)]
        else:
            seq = _sequence(inner)
            if seq is None:
                continue
            alternatives = [[("c", ch, True) for ch in item] for item in seq]
        results: list[list[_Token]] = []
        for alternative in alternatives:
            results.extend(_brace(toks[:i] + alternative + toks[close + 1 :], budget))
            if len(results) > MAX_WORDS:
                raise _Unknown("brace expansion produces too many words")
        return results
    budget[0] += 1
    if budget[0] > MAX_WORDS:
        raise _Unknown("brace expansion produces too many words")
    return [toks] if toks else []


def _escape(ch: str) -> str:
    return f"[{ch}]" if ch and ch in "*?[" else ch


def _make_arg(toks: list[_Token], start: int) -> _Arg:
    value = "".join(t[1] for t in toks)
    pattern: list[str] = []
    runtime = splits = False
    i = 0
    while i < len(toks):
        kind, text, quoted = toks[i]
        if kind == "d":
            runtime = True
            splits = splits or not quoted
            pattern.append("*")
        elif not quoted and text in ("*", "?"):
            runtime = True
            pattern.append(text)
        elif not quoted and text == "[":
            close = next(
                (j for j in range(i + 2, len(toks)) if _is_unquoted(toks[j], "]")),
                -1,
            )
            if close < 0:
                pattern.append(_escape(text))
            else:
                runtime = True
                pattern.append("?")
                i = close
        else:
            pattern.append(_escape(text))
        i += 1
    return _Arg(value, "".join(pattern) if runtime else None, splits, start)


# -------------------------------------------------------------------------- the walker


@dataclass(frozen=True)
class _Options:
    """getopt-style options of a wrapper: which take a value, which do not."""

    flags: str = ""
    values: str = ""
    optional: str = ""  # short options whose value, if any, is attached (-i{})
    long_flags: frozenset[str] = frozenset()
    long_values: frozenset[str] = frozenset()
    numeric: bool = False  # `nice -10`


def _opts(
    flags: str = "",
    values: str = "",
    optional: str = "",
    long_flags: str = "",
    long_values: str = "",
    numeric: bool = False,
) -> _Options:
    return _Options(
        flags,
        values,
        optional,
        frozenset(long_flags.split()),
        frozenset(long_values.split()),
        numeric,
    )


def _option_word(args: list[_Arg], i: int, option: str) -> _Arg:
    """args[i], the word after `option` that is its value."""
    if i >= len(args):
        raise _Unknown(f"`{option}` lacks its value")
    return args[i]


def _check_runtime_word(arg: _Arg, prog: str, signs: str = "-") -> None:
    """A word only known at run time where an option of `prog` may stand: unknown when it
    may be one (it starts with one of `signs`) or may become several words."""
    if arg.value[:1] in signs or arg.splits:
        raise _Unknown(f"an option of `{prog}` is only known at run time: `{arg.value}`")


def _parse_options(args: list[_Arg], spec: _Options, prog: str) -> tuple[int, dict[str, str]]:
    """Skip the options of a wrapper; return the index of its first operand and the options."""
    seen: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        if arg.pattern is not None:
            _check_runtime_word(arg, prog)
            return i, seen
        if value == "--":
            return i + 1, seen
        if not value.startswith("-") or value == "-":
            return i, seen
        if value.startswith("--"):
            name, eq, val = value[2:].partition("=")
            if name in spec.long_values:
                if not eq:
                    i += 1
                    val = _option_word(args, i, f"{prog} --{name}").value
                seen[name] = val
            elif name in spec.long_flags:
                seen[name] = val
            else:
                raise _Unknown(f"`{prog}` option `{value}` is not one the broker knows")
            i += 1
            continue
        if spec.numeric and re.fullmatch(r"-\d+", value):
            i += 1
            continue
        j = 1
        while j < len(value):
            ch = value[j]
            if ch in spec.values:
                val = value[j + 1 :]
                if not val:
                    i += 1
                    val = _option_word(args, i, f"{prog} -{ch}").value
                seen[ch] = val
                break
            if ch in spec.optional:
                seen[ch] = value[j + 1 :]
                break
            if ch in spec.flags:
                seen[ch] = ""
                j += 1
                continue
            raise _Unknown(f"`{prog}` option `-{ch}` is not one the broker knows")
        i += 1
    return i, seen


_RUNTIME_ARG = "..."  # stands for the arguments xargs reads from its input
_FD_PATH = re.compile(r"/(?:dev/fd|proc/[^/]+/fd)/([0-9]+)")
_VAR_REDIRECT = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_PARAMETER = re.compile(
    r"[#!]?(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*])(?:\[(?P<sub>[^\]]*)\])?(?P<rest>.*)", re.S
)


_SUBSCRIPTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[([^\]]*)\]")
_PLAIN_SUBSCRIPT = re.compile(r"\s*(-?[0-9]+|@|\*)\s*")  # not evaluated as arithmetic


def _check_subscript(arg: _Arg, where: str = "") -> None:
    """`a[i]=1`, `read 'a[i]'`, `printf -v 'a[i]'`, `test -v 'a[i]'`: bash evaluates the
    subscript of an indexed array as arithmetic (and `a[$(cmd)]` runs cmd)."""
    found = _SUBSCRIPTED.match(arg.value)
    if found and not _PLAIN_SUBSCRIPT.fullmatch(found.group(1)):
        raise _Unknown(
            f"{where or 'the name'} `{_short(found.group(0), 40)}` has a subscript that bash "
            "evaluates as arithmetic, where a value such as `a[$(cmd)]` runs cmd"
        )


def _parameter_arithmetic(value: str) -> str | None:
    """The part of `${…}` that bash evaluates as arithmetic and that is not a plain number:
    an array subscript (`${a[i]}`) or a substring offset or length (`${x:i:2}`)."""
    found = _PARAMETER.fullmatch(value)
    if found is None:
        return None
    subscript = found.group("sub")
    if subscript is not None and not _PLAIN_SUBSCRIPT.fullmatch(subscript):
        return subscript
    rest = found.group("rest")
    if rest.startswith(":") and rest[1:2] not in ("-", "=", "+", "?"):
        for part in rest[1:].split(":", 1):
            if not re.fullmatch(r"\s*-?[0-9]*\s*", part):
                return part
    return None


class _Parser:
    def __init__(self, programs: tuple[str, ...] = ()) -> None:
        self.commands: list[SimpleCommand] = []
        self.unknown: str | None = None
        self.programs = programs  # program-name patterns the policy's rules mention

    def note(self, reason: str) -> None:
        if self.unknown is None:
            self.unknown = reason

    # ---- structure

    def parse(self, src: str, depth: int, *, stdin: bool) -> None:
        if depth > MAX_DEPTH:
            raise _Unknown("commands are nested too deeply")
        bad = _bad_char(src)
        if bad is not None:
            raise _Unknown(f"the line contains the control character U+{ord(bad):04X}")
        if not src.strip() or _comment_only(src):
            return
        if depth == 0:
            history = _history_expansion(src)
            if history:
                raise _Unknown(history)
        nodes, masks = _bashlex_parse(src)
        ctx = _Ctx(src, depth, stdin, masks)
        for node in nodes:
            self.walk(node, ctx)

    def walk(self, node: bashlex.ast.node, ctx: _Ctx) -> None:
        kind = node.kind
        if kind == "command":
            self.command(node, ctx)
        elif kind == "pipeline":
            index = 0
            for part in node.parts:
                if part.kind in ("pipe", "reservedword"):
                    continue
                self.walk(part, ctx if index == 0 else replace(ctx, stdin=True))
                index += 1
        elif kind == "compound":
            redirects = getattr(node, "redirects", None) or []
            inner = replace(ctx, stdin=True) if any(map(_is_input, redirects)) else ctx
            for child in node.list:
                self.walk(child, inner)
            for redirect in redirects:
                self.redirect(redirect, ctx)
        elif kind in ("commandsubstitution", "processsubstitution"):
            if self.backquoted(node, ctx):
                return
            self.check_substitution(node, ctx)
            self.walk(node.command, ctx)
        elif kind == "parameter":
            start, end = node.pos
            if ctx.masks.get(start, (0, ""))[1] == "arith":
                return  # `$(( … ))`, checked when it was masked
            value = str(getattr(node, "value", "") or "")
            if any(s in value for s in ("$(", "`", "<(", ">(")):
                self.note(f"cannot see inside `{ctx.src[start:end]}`")
            elif (evaluated := _parameter_arithmetic(value)) is not None:
                self.note(
                    f"`{ctx.src[start:end]}` evaluates `{evaluated}` as arithmetic, where a "
                    "value such as `a[$(cmd)]` runs cmd"
                )
        elif kind == "redirect":
            self.redirect(node, ctx)
        elif kind == "function":
            self.function(node, ctx)
        else:
            for child in _children(node):
                self.walk(child, ctx)

    def backquoted(self, node: bashlex.ast.node, ctx: _Ctx) -> bool:
        """A `…` substitution holding a backslash. Bash first drops a backslash before `$`,
        a backquote or a backslash (and removes a backslash-newline), then parses what is
        left: backquotes holding `$'\\\\x72m' -rf x` run rm, and `\\$X` is an expansion.
        The text is judged as its own command line. True when it was judged here."""
        start, end = node.pos
        if not ctx.src.startswith("`", start) or _substitution_end(node, ctx.src) is None:
            return False
        raw = ctx.src[start + 1 : end - 1]
        if "\\" not in raw:
            return False  # read as written: the walk keeps positions into the line
        text = _backquoted_text(raw)
        if text is None:
            self.note(
                f"`{_short(ctx.src[start:end], 60)}` holds a backslash before a double quote, "
                "which bash removes only inside double quotes"
            )
            return False
        try:
            self.parse_string(text, ctx, stdin=ctx.stdin)
        except _Unknown as exc:
            self.note(str(exc))
        return True

    def check_substitution(self, node: bashlex.ast.node, ctx: _Ctx) -> None:
        if _substitution_end(node, ctx.src) is None:
            start, end = node.pos
            self.note(f"cannot see all of `{_short(ctx.src[start:end], 60)}`")

    def function(self, node: bashlex.ast.node, ctx: _Ctx) -> None:
        name = getattr(node, "name", None)
        if isinstance(name, bashlex.ast.node):
            start, end = name.pos
            word = ctx.src[start:end]
            if word in _SHADOWED:
                self.note(f"a function named like the {_SHADOWED[word]} `{word}` shadows it")
        for child in _children(node):
            self.walk(child, ctx)

    def redirect(self, node: bashlex.ast.node, ctx: _Ctx) -> None:
        target = getattr(node, "output", None)
        self.check_descriptors(node, ctx)
        if isinstance(target, bashlex.ast.node):
            self.walk(target, ctx)
        heredoc = getattr(node, "heredoc", None)
        if heredoc is not None and isinstance(target, bashlex.ast.node):
            start, end = target.pos
            quoted = any(q in ctx.src[start:end] for q in "'\"\\")
            body = str(getattr(heredoc, "value", ""))
            if not quoted and ("$(" in body or "`" in body):
                self.note("the here-document body contains a command substitution")

    def check_descriptors(self, node: bashlex.ast.node, ctx: _Ctx) -> None:
        """File descriptors 10 and up are the shell's own (where it reads its commands)."""
        kind = str(getattr(node, "type", ""))
        source = getattr(node, "input", None)
        target = getattr(node, "output", None)
        numbers = [source] if isinstance(source, int) else []
        if isinstance(target, int):
            numbers.append(target)
        elif isinstance(target, bashlex.ast.node) and kind in (">&", "<&"):
            start, end = target.pos
            text = ctx.src[start:end]
            digits = re.fullmatch(r"([0-9]+)-?", text)
            if digits:
                numbers.append(int(digits.group(1)))
            elif "$" in text or "`" in text:
                self.note(f"the file descriptor `{text}` is only known at run time")
                return
        elif isinstance(target, bashlex.ast.node):
            start, end = target.pos
            path = _FD_PATH.fullmatch(ctx.src[start:end])
            if path:
                numbers.append(int(path.group(1)))
        if any(n >= 10 for n in numbers):
            start, end = node.pos
            self.note(
                f"`{ctx.src[start:end]}` uses a file descriptor of 10 or more, which is the "
                "shell's own"
            )

    def command(self, node: bashlex.ast.node, ctx: _Ctx) -> None:
        assigns: list[bashlex.ast.node] = []
        words: list[bashlex.ast.node] = []
        redirects: list[bashlex.ast.node] = []
        for part in node.parts:
            if part.kind == "assignment" and not words:
                assigns.append(part)
            elif part.kind in ("word", "assignment"):
                words.append(part)
            elif part.kind == "redirect":
                redirects.append(part)
            else:
                self.walk(part, ctx)
        for word in assigns + words:
            for child in _children(word):
                self.walk(child, ctx)
        for redirect in redirects:
            self.redirect(redirect, ctx)
        stdin = ctx.stdin or any(map(_is_input, redirects))
        try:
            for word in words:
                start, end = word.pos
                if _VAR_REDIRECT.fullmatch(ctx.src[start:end]) and any(
                    r.pos[0] == end for r in redirects
                ):
                    raise _Unknown(
                        f"`{ctx.src[start : end + 2]}…` makes the shell open a file descriptor "
                        "(10 or more) of its own"
                    )
            if self.masked_command(words, ctx):
                return
            for assign in assigns:
                for arg in self.expand(assign, ctx, brace=False):
                    self.assignment(arg, ctx, declaration=False)
            argv = [arg for word in words for arg in self.expand(word, ctx)]
            if argv:
                self.simple(argv, node.pos[1], replace(ctx, redirected=bool(redirects)), stdin)
        except _Unknown as exc:
            self.note(str(exc))

    def masked_command(self, words: list[bashlex.ast.node], ctx: _Ctx) -> bool:
        """`[[ … ]]` and `(( … ))` run no program (their substitutions are walked above)."""
        for index, word in enumerate(words):
            region = ctx.masks.get(word.pos[0])
            if region is None or region[1] not in ("test", "arith-cmd"):
                continue
            end = region[0]
            if any(w.pos[0] >= end for w in words[index:]):
                raise _Unknown(
                    f"the parser and the shell disagree about `{_short(ctx.src[word.pos[0] :], 60)}`"
                )
            return True
        return False

    def expand(self, word: bashlex.ast.node, ctx: _Ctx, *, brace: bool = True) -> list[_Arg]:
        start, end = word.pos
        parts: dict[int, int] = {}
        for part in getattr(word, "parts", None) or []:
            if part.kind == "parameter":
                parts[part.pos[0]] = part.pos[1]
            elif part.kind in ("commandsubstitution", "processsubstitution"):
                parts[part.pos[0]] = _substitution_end(part, ctx.src) or part.pos[1]
        toks = _lex_word(ctx.src[start:end], start, parts, ctx.src)
        alternatives = _brace(toks, [0]) if brace else [toks]
        return [_make_arg(t, start) for t in alternatives]

    def parse_string(self, text: str, ctx: _Ctx, *, stdin: bool) -> None:
        self.parse(text, ctx.depth + 1, stdin=stdin)

    # ---- one simple command

    def simple(self, argv: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
        if ctx.depth > MAX_DEPTH:
            raise _Unknown("commands are nested too deeply")
        program, args = argv[0], argv[1:]
        if program.pattern is not None:
            raise _Unknown(f"the program name `{program.value}` is only known at run time")
        for arg in args:
            path = _FD_PATH.fullmatch(arg.value)
            if path and int(path.group(1)) >= 10:
                self.note(f"`{arg.value}` is a file descriptor of 10 or more, the shell's own")
        runtime = tuple(a.match_pattern for a in args)
        name = program.value.rsplit("/", 1)[-1].replace("\\", "")
        opaque, strings = _code_check(self, name, args)
        command = SimpleCommand(
            program.value,
            tuple(a.value for a in args),
            ctx.src[program.start : end].strip() or program.value,
            runtime if any(r is not None for r in runtime) else (),
            opaque,
        )
        self.commands.append(command)
        inner = replace(ctx, depth=ctx.depth + 1)
        for text in strings:
            self.best_effort(text, inner)
        handler = _HANDLERS.get(command.name)
        if handler is not None:
            handler(self, command.name, args, end, inner, stdin)

    def best_effort(self, text: str, ctx: _Ctx) -> None:
        """Judge a string that some program may run as a shell line: its commands can only
        make the decision stricter; the program is already judged as opaque."""
        sub = _Parser(self.programs)
        try:
            sub.parse(text, ctx.depth, stdin=False)
        except (_Unknown, RecursionError):
            pass
        self.commands.extend(sub.commands)

    def run(self, argv: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
        """Judge the command a wrapper runs."""
        if argv:
            self.simple(argv, end, ctx, stdin)

    def assignment(self, arg: _Arg, ctx: _Ctx, *, declaration: bool) -> None:
        """Assignments that change what the shell runs later are checked."""
        if arg.pattern is not None:
            head, eq, _ = arg.pattern.partition("=")
            if any(ch in head for ch in "*?[") or (not eq and declaration):
                if declaration:
                    raise _Unknown(f"the variable name in `{arg.value}` is only known at run time")
                return
        _check_subscript(arg)
        if "=" not in arg.value:
            return
        name, _, value = arg.value.partition("=")
        name = name.rstrip("+").split("[", 1)[0]
        if name == "PROMPT_COMMAND":
            if arg.pattern is not None:
                raise _Unknown("PROMPT_COMMAND is set to a value only known at run time")
            self.parse_string(value, ctx, stdin=False)
        elif name in _PROMPTS:
            if arg.pattern is not None or "$(" in value or "`" in value:
                raise _Unknown(f"{name} would run commands each time the prompt is shown")
        elif name in _SOURCED or name.startswith("BASH_FUNC_"):
            raise _Unknown(f"setting {name} makes programs run code the broker cannot see")
        elif name in _COMMAND_VARS and value:
            # programs run these as commands (man's pager, git's editor, less's LESSOPEN)
            if arg.pattern is not None:
                raise _Unknown(f"{name} is set to a command only known at run time")
            self.parse_string(value.lstrip("|-"), ctx, stdin=False)


# ----------------------------------------------------------- special names and wrappers

_Handler = Callable[[_Parser, str, list[_Arg], int, _Ctx, bool], None]


def _hash(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    if any(a.value.startswith("-") and "p" in a.value for a in args):
        raise _Unknown("`hash -p` changes what a command name runs")


def _trap(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    if args and args[0].value == "--":
        args = args[1:]
    if len(args) < 2 or (args[0].pattern is None and args[0].value.startswith("-")):
        return
    action = args[0]
    if action.pattern is not None:
        raise _Unknown("the command of `trap` is only known at run time")
    p.parse_string(action.value, ctx, stdin=False)


def _declare(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    for arg in args:
        if arg.pattern is None and arg.value[:1] in "-+" and not arg.value.startswith("--"):
            if name != "export" and "n" in arg.value[1:]:
                raise _Unknown(f"`{name} -n` makes a name refer to another variable")
            if arg.value[0] == "-" and "i" in arg.value[1:]:
                raise _Unknown(
                    f"`{name} -i` makes every assignment to the name arithmetic, where a value "
                    "such as `a[$(cmd)]` runs cmd"
                )
            continue
        p.assignment(arg, ctx, declaration=True)


def _wrapper(
    spec: _Options, *, skip: int = 0, none_if: str = "", shell_if_empty: bool = False
) -> _Handler:
    """A wrapper that runs its first operand as a command, after options and `skip` words.

    ``none_if``: options with which it runs no command; ``shell_if_empty``: without a
    command it starts an interactive shell ($SHELL), which is unknown."""

    def handle(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
        index, seen = _parse_options(args, spec, name)
        if any(opt in seen for opt in none_if.split()):
            return
        _skip_operands(p, name, args[index : index + skip])
        argv = args[index + skip :]
        if not argv and shell_if_empty:
            raise _Unknown(_STARTS_SHELL.format(name=name))
        p.run(argv, end, ctx, stdin)

    return handle


_STARTS_SHELL = "`{name}` without a command starts an interactive shell ($SHELL)"


def _skip_operands(p: _Parser, name: str, operands: list[_Arg]) -> None:
    """Operands a wrapper reads before its command (a mask, a duration, a user): one that may
    split into several words, or none, moves the command; judge it as written, but unknown."""
    for arg in operands:
        if arg.splits:
            p.note(f"an operand of `{name}` is only known at run time: `{arg.value}`")


_SUDO = _opts(
    flags="AbEeHiKklnPSsVv",
    values="ugCDprtTUchR",
    long_flags="askpass background bell preserve-env edit set-home login remove-timestamp "
    "reset-timestamp list non-interactive preserve-groups stdin shell version validate help",
    long_values="user group close-from chdir chroot host prompt role type command-timeout "
    "other-user login-class",
)
_ENV = _opts(
    flags="i0v",
    values="uCS",
    long_flags="ignore-environment null debug default-signal ignore-signal block-signal "
    "list-signal-handling",
    long_values="unset chdir split-string",
)
_XARGS = _opts(
    flags="0prtxo",
    values="aEdILnPs",
    optional="eil",
    long_flags="null interactive no-run-if-empty verbose exit open-tty show-limits replace eof "
    "max-lines",
    long_values="arg-file delimiter max-args max-procs max-chars process-slot-var",
)
_TIMEOUT = _opts(
    flags="v", values="sk", long_flags="preserve-status foreground verbose",
    long_values="signal kill-after",
)  # fmt: skip


def _time(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    spec = _opts(
        flags="pvaq",
        values="fo",
        long_flags="portability verbose quiet append",
        long_values="format output",
    )
    index, _ = _parse_options(args, spec, name)
    # The `time` keyword times a whole pipeline: `time ! cmd`, `time A=1 cmd`.
    while index < len(args) and args[index].pattern is None and args[index].value == "!":
        index += 1
    while index < len(args) and _ASSIGNMENT.match(args[index].value):
        p.assignment(args[index], ctx, declaration=False)
        index += 1
    p.run(args[index:], end, ctx, stdin)


def _sudo(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    if [a.value for a in args] == ["-h"]:
        return  # help
    # sudo takes VAR=value words among its options (`sudo FOO=1 -u root rm`): any word with
    # a `=` that does not start with `/`. (Recent versions also exclude a leading `=` and a
    # word right after `--`, and run it as the command: taking it for a variable instead
    # errs on the strict side, whatever the version.)
    index, seen = 0, {}
    while True:
        used, options = _parse_options(args[index:], _SUDO, name)
        seen.update(options)
        index += used
        if index >= len(args):
            break
        arg = args[index]
        value = arg.value
        literal = arg.pattern is None and "=" in value and not value.startswith("/")
        if not (literal or _ASSIGNMENT.match(value)):
            break
        p.assignment(arg, ctx, declaration=False)
        index += 1
    if any(opt in seen for opt in ("e", "edit", "V", "version", "v", "validate", "K")):
        return  # sudoedit, or no command at all
    p.run(args[index:], end, ctx, stdin)


def _env_variable(arg: _Arg) -> bool:
    """GNU env takes every word holding a `=` for VAR=value, whatever comes before it."""
    return bool(_ASSIGNMENT.match(arg.value)) or (arg.pattern is None and "=" in arg.value)


def _env(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    index, seen = _parse_options(args, _ENV, name)
    if "S" in seen or "split-string" in seen:
        raise _Unknown("`env -S` splits a string into a command")
    while index < len(args) and args[index].pattern is None and args[index].value == "-":
        index += 1
    while index < len(args) and _env_variable(args[index]):
        p.assignment(args[index], ctx, declaration=False)
        index += 1
    p.run(args[index:], end, ctx, stdin)


def _xargs(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    index, seen = _parse_options(args, _XARGS, name)
    replace_str = seen.get("I") or seen.get("i") or seen.get("replace")
    if replace_str is None and ("i" in seen or "replace" in seen):
        replace_str = "{}"
    argv = args[index:]
    if not argv:
        return  # runs echo
    if replace_str:
        argv = [
            replace(a, pattern="*", splits=False) if replace_str in a.value else a for a in argv
        ]
    else:
        argv = [*argv, _Arg(_RUNTIME_ARG, "*", False, argv[0].start)]
    p.run(argv, end, ctx, stdin=True)


def _find(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    i = 0
    while i < len(args):
        if args[i].value in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(args) and not (args[j].pattern is None and args[j].value in (";", "+")):
                j += 1
            argv = [replace(a, pattern="*", splits=False) if "{}" in a.value else a
                    for a in args[i + 1 : j]]  # fmt: skip
            p.run(argv, end, ctx, stdin)
            i = j
        i += 1


_SHELLS = {"sh", "bash", "rbash", "zsh", "dash", "ksh", "mksh", "ash", "yash", "posh"}
_FOREIGN_SHELLS = {"fish", "csh", "tcsh", "nu", "xonsh", "elvish", "pwsh"}
_SHELL_LONG_FLAGS = {
    "--login", "--noprofile", "--norc", "--posix", "--restricted", "--verbose", "--debugger",
    "--noediting", "--dump-strings", "--dump-po-strings", "--help", "--version", "--protected",
    "--pretty-print", "--interactive",
}  # fmt: skip


def _shell(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    command_flag = read_stdin = False
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        if arg.pattern is not None:
            _check_runtime_word(arg, name, "-+")
            break
        if value in ("-", "--"):
            i += 1
            break
        if value.startswith("--"):
            if value in ("--rcfile", "--init-file"):
                i += 2
                continue
            if value not in _SHELL_LONG_FLAGS:
                raise _Unknown(f"`{name}` option `{value}` is not one the broker knows")
            i += 1
            continue
        if len(value) > 1 and value[0] in "-+":
            for ch in value[1:]:
                if ch == "c" and value[0] == "-":
                    command_flag = True
                elif ch == "s":
                    read_stdin = True
                elif ch in "oO":
                    i += 1  # the option name follows as the next word
                elif not ch.isalpha():
                    raise _Unknown(f"`{name}` option `{value}` is not one the broker knows")
            i += 1
            continue
        break
    operands = args[i:]
    if command_flag:
        if not operands:
            raise _Unknown(f"`{name} -c` without a command string")
        if operands[0].pattern is not None:
            raise _Unknown(f"the command string of `{name} -c` is only known at run time")
        p.parse_string(operands[0].value, ctx, stdin=stdin)
        return
    # `bash script.sh` is judged like `./script.sh`: a program the broker does not look into.
    if stdin and (read_stdin or not operands):
        raise _Unknown(f"`{name}` reads the commands it runs from its input")


def _foreign_shell(
    p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool
) -> None:
    for arg in args:
        value = arg.value
        if arg.pattern is not None or value == "--":
            break
        if value in ("--command", "-c") or (
            len(value) > 1 and value[0] == "-" and value[1] != "-" and "c" in value
        ):
            raise _Unknown(f"the broker cannot parse the `{name}` command given with -c")
        if not value.startswith("-"):
            return  # a script file, judged like any program
    if stdin:
        raise _Unknown(f"`{name}` reads the commands it runs from its input")


def _su(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    command: _Arg | None = None
    operands: list[_Arg] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        if arg.pattern is not None or value == "-" or not value.startswith("-"):
            if value != "-":
                operands.append(arg)
            i += 1
            continue
        if value == "--":
            operands.extend(args[i + 1 :])
            break
        if value.startswith("--"):
            opt, eq, _ = value[2:].partition("=")
            if opt in ("command", "session-command", "shell", "group", "supp-group",
                       "whitelist-environment", "user"):  # fmt: skip
                if eq:
                    given = replace(arg, value=value.split("=", 1)[1])
                else:
                    i += 1
                    given = _option_word(args, i, f"{name} {value}")
                if opt in ("command", "session-command"):
                    command = given
            elif opt not in ("login", "preserve-environment", "fast", "pty", "help", "version"):
                raise _Unknown(f"`{name}` option `{value}` is not one the broker knows")
            i += 1
            continue
        for k, ch in enumerate(value[1:], start=1):
            if ch in "cgGsuw":
                if value[k + 1 :]:
                    given = replace(arg, value=value[k + 1 :])
                else:
                    i += 1
                    given = _option_word(args, i, f"{name} -{ch}")
                if ch == "c":
                    command = given
                elif ch == "u" and name == "runuser":
                    # runuser -u USER [--] COMMAND… runs the command directly
                    rest = args[i + 1 :]
                    if rest and rest[0].pattern is None and rest[0].value == "--":
                        rest = rest[1:]
                    p.run(rest, end, ctx, stdin)
                    return
                break
            if ch not in "lmpfPhV":
                raise _Unknown(f"`{name}` option `-{ch}` is not one the broker knows")
        i += 1
    if command is not None:
        if command.pattern is not None:
            raise _Unknown(f"the command of `{name} -c` is only known at run time")
        p.parse_string(command.value, ctx, stdin=stdin)
    if len(operands) > 1:
        raise _Unknown(f"`{name}` passes arguments after the user name to that user's shell")


def _watch(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    spec = _opts(
        flags="bcCegprtwx",
        values="nq",
        optional="d",
        long_flags="beep color no-color differences errexit chgexit precise no-rerun no-title "
        "no-wrap exec",
        long_values="interval equexit",
    )
    index, seen = _parse_options(args, spec, name)
    argv = args[index:]
    if not argv:
        return
    if "x" in seen or "exec" in seen:
        p.run(argv, end, ctx, stdin)
        return
    if any(a.pattern is not None for a in argv):
        raise _Unknown("the command `watch` runs is only known at run time")
    p.parse_string(" ".join(a.value for a in argv), ctx, stdin=stdin)


def _busybox(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    if args and not (args[0].pattern is None and args[0].value.startswith("-")):
        p.run(args, end, ctx, stdin)


def _exec(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    index, _ = _parse_options(args, _opts(flags="cl", values="a"), name)
    if index >= len(args):
        if ctx.redirected:
            raise _Unknown("`exec` with redirections and no command changes the shell's own file "
                           "descriptors (where it reads its commands from)")  # fmt: skip
        return
    p.run(args[index:], end, ctx, stdin)


def _flock(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    spec = _opts(
        flags="sexnoFuhV",
        values="wE",
        long_flags="shared exclusive unlock nonblocking nb close no-fork verbose fcntl help version",
        long_values="timeout wait conflict-exit-code start length",
    )
    if any(a.pattern is None and a.value in ("-c", "--command") for a in args[:1]):
        raise _Unknown("`flock -c` before the lock file is an option the broker does not know")
    index, seen = _parse_options(args, spec, name)
    if any(opt in seen for opt in ("h", "help", "V", "version")):
        return
    rest = args[index + 1 :]  # after the lock file; `flock FD` alone runs nothing
    _skip_operands(p, name, args[index : index + 1])
    if rest and rest[0].pattern is None and rest[0].value in ("-c", "--command"):
        if len(rest) < 2:
            return
        if rest[1].pattern is not None:
            raise _Unknown("the command string of `flock -c` is only known at run time")
        p.parse_string(rest[1].value, ctx, stdin=stdin)  # run with $SHELL -c
        return
    p.run(rest, end, ctx, stdin)


def _chrt(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    spec = _opts(
        flags="pmabdforiRvhV",
        values="TPD",
        long_flags="pid max all-tasks batch deadline fifo idle other rr reset-on-fork verbose "
        "help version",
        long_values="sched-runtime sched-period sched-deadline",
    )
    index, seen = _parse_options(args, spec, name)
    if any(opt in seen for opt in ("p", "pid", "m", "max", "h", "help", "V", "version")):
        return
    # The priority; newer chrt lets it out for policies without one, so only a number (or a
    # value known at run time) is taken for it.
    if index < len(args) and (
        args[index].pattern is not None or re.fullmatch(r"-?[0-9]+", args[index].value)
    ):
        _skip_operands(p, name, args[index : index + 1])
        index += 1
    p.run(args[index:], end, ctx, stdin)


def _sg(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    # sg [-|-l] GROUP [-c] COMMAND: COMMAND is one word, run with `/bin/sh -c` (shadow-utils)
    i = 0
    if args and args[0].pattern is None and args[0].value in ("-", "-l"):
        i = 1
    if i >= len(args):
        return  # usage
    group = args[i]
    if group.pattern is None and group.value.startswith("-"):
        return  # usage
    _skip_operands(p, name, [group])
    rest = args[i + 1 :]
    if len(rest) > 1 and rest[0].pattern is None and rest[0].value == "-c":
        rest = rest[1:]
    if not rest:
        raise _Unknown(_STARTS_SHELL.format(name=name))
    if rest[0].pattern is not None:
        raise _Unknown(f"the command string of `{name}` is only known at run time")
    if len(rest) > 1:
        p.note(f"`{name}` takes one word as its command; versions differ on the words after it")
    p.parse_string(rest[0].value, ctx, stdin=stdin)


_SCRIPT_VALUES = {"B": "log-io", "I": "log-in", "O": "log-out", "T": "log-timing",
                  "m": "logging-format", "E": "echo", "o": "output-limit", "c": "command"}  # fmt: skip
_SCRIPT_FLAGS = {"a": "append", "e": "return", "f": "flush", "q": "quiet", "h": "help",
                 "V": "version"}  # fmt: skip


def _script(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    """script [options] [file]: options may follow the file (GNU getopt permutes)."""
    command: _Arg | None = None
    done = False
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        i += 1
        if arg.pattern is not None:
            _check_runtime_word(arg, name)
            continue  # the typescript file
        if value == "--":
            break
        if not value.startswith("-") or value == "-":
            continue
        if value.startswith("--"):
            opt, eq, val = value[2:].partition("=")
            if opt in _SCRIPT_VALUES.values():
                if not eq:
                    given = _option_word(args, i, f"{name} --{opt}")
                    i += 1
                else:
                    given = replace(arg, value=val, pattern=None if arg.pattern is None else "*")
                if opt == "command":
                    command = given
            elif opt in _SCRIPT_FLAGS.values() or opt in ("force", "timing"):
                done = done or opt in ("help", "version")
            else:
                raise _Unknown(f"`{name}` option `{value}` is not one the broker knows")
            continue
        for k, ch in enumerate(value[1:], start=1):
            if ch in _SCRIPT_VALUES:
                if value[k + 1 :]:
                    given = replace(arg, value=value[k + 1 :])
                else:
                    given = _option_word(args, i, f"{name} -{ch}")
                    i += 1
                if ch == "c":
                    command = given
                break
            if ch == "t":
                break  # -t[FILE]: its value is attached or absent
            if ch not in _SCRIPT_FLAGS:
                raise _Unknown(f"`{name}` option `-{ch}` is not one the broker knows")
            done = done or ch in "hV"
    if done:
        return
    if command is None:
        raise _Unknown(_STARTS_SHELL.format(name=name))
    if command.pattern is not None:
        raise _Unknown(f"the command string of `{name} -c` is only known at run time")
    p.parse_string(command.value, ctx, stdin=stdin)  # run with $SHELL -c


# strace/ltrace [options] [COMMAND]: with -p PID alone they attach and start nothing.
_STRACE = _opts(
    flags="ACcDdfFhikNnqrTtVvwxYyZz",
    values="abeEIoOpPsSuUX",
    long_flags="help version summary-only summary debug follow-forks output-separately "
    "instruction-pointer stack-traces syscall-number output-append-mode relative-timestamps "
    "absolute-timestamps syscall-times no-abbrev strings-in-hex decode-fds decode-pids "
    "successful-only failed-only summary-wall-clock seccomp-bpf daemonize tips quiet "
    "always-show-pid timestamps",
    long_values="attach user detach-on env interruptible trace signal status trace-path columns "
    "abbrev verbose raw read write kvm inject fault output string-limit const-print-style "
    "summary-syscall-overhead summary-sort-by summary-columns trace-fds",
)
_LTRACE = _opts(
    flags="bcCfhiLrStTV",
    values="aAeFlnopsuwxD",
    long_flags="help version demangle no-signals",
    long_values="align config debug indent library output where",
)


_PARALLEL = _opts(
    flags="0kqvtuXmgeDrh",
    values="jnNIaCdESP",
    long_flags="null keep-order quote verbose tag ungroup group line-buffer bar progress eta "
    "dry-run will-cite no-notice halt-on-error version help xargs no-run-if-empty shuf "
    "linebuffer lb",
    long_values="jobs max-args max-replace-args arg-file colsep delimiter eof sshlogin timeout "
    "retries halt joblog results res delay memfree load tmpdir workdir wd env tagstring "
    "max-procs max-line-length-allowed sshloginfile basefile return",
)
_PARALLEL_ARGS = {":::", "::::", ":::+", "::::+"}
_PARALLEL_REPLACE = re.compile(r"\{(?:[0-9]*(?:\.|/|//|/\.|#|%)?|[0-9]+)\}")


def _parallel(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    """parallel [options] COMMAND [args] ::: ARGS: the command line goes through a shell,
    with each input in place of {} (or after it)."""
    index, seen = _parse_options(args, _PARALLEL, name)
    if any(opt in seen for opt in ("version", "help", "h")):
        return
    words: list[_Arg] = []
    for arg in args[index:]:
        if arg.pattern is None and arg.value in _PARALLEL_ARGS:
            break
        words.append(arg)
    if not words:
        raise _Unknown(f"`{name}` without a command runs its input lines as commands")
    if "q" in seen or "quote" in seen:
        argv = [replace(a, pattern="*") if _PARALLEL_REPLACE.search(a.value) else a
                for a in words]  # fmt: skip
        if not any(_PARALLEL_REPLACE.search(a.value) for a in words):
            argv.append(_Arg(_RUNTIME_ARG, "*", False, words[0].start))
        p.run(argv, end, ctx, stdin=True)
        return
    if any(a.pattern is not None for a in words):
        raise _Unknown(f"the command `{name}` runs is only known at run time")
    line = " ".join(a.value for a in words)
    if _PARALLEL_REPLACE.search(line):
        line = _PARALLEL_REPLACE.sub("$PARALLEL_INPUT", line)
    else:
        line += " $PARALLEL_INPUT"
    p.parse_string(line, ctx, stdin=True)


_SETARCH_OPTIONS = _wrapper(
    _opts(
        flags="v3BFILRSTXZhV",
        long_flags="verbose 3gb 4gb addr-no-randomize fdpic-funcptrs mmap-page-zero "
        "addr-compat-layout read-implies-exec 32bit short-inode whole-seconds sticky-timeouts "
        "list help version",
        long_values="uname-2.6",
    ),
    none_if="h help V version list",
    shell_if_empty=True,
)


def _setarch(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    """setarch ARCH [options] [COMMAND]; linux32 and linux64 take no ARCH."""
    if name == "setarch":
        if not args or (args[0].pattern is None and args[0].value.startswith("-")):
            return  # --list, --help
        _skip_operands(p, name, args[:1])
        args = args[1:]
    _SETARCH_OPTIONS(p, name, args, end, ctx, stdin)


def _systemd_run(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    spec = _opts(
        flags="hrtPqGdS",
        values="HMEpu",
        long_flags="help version no-ask-password user system scope slice-inherit no-block "
        "remain-after-exit wait send-sighup same-dir pty pipe quiet collect shell "
        "on-timezone-change on-clock-change ignore-failure expand-environment",
        long_values="host machine unit property description slice service-type uid gid nice "
        "working-directory setenv path-property socket-property timer-property on-active "
        "on-boot on-startup on-unit-active on-unit-inactive on-calendar json job-mode "
        "background capsule",
    )
    index, seen = _parse_options(args, spec, name)
    if any(opt in seen for opt in ("h", "help", "version")):
        return
    if index >= len(args) and ("S" in seen or "shell" in seen):
        raise _Unknown(f"`{name} --shell` starts an interactive shell ($SHELL)")
    p.run(args[index:], end, ctx, stdin)


def _git(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    """git runs configured commands (`-c alias.x='!cmd'`, `core.pager`, hooks …) and some
    subcommands run a given command; both are judged as command lines."""
    i = 0
    while i < len(args) and args[i].value.startswith("-"):
        arg = args[i]
        if arg.value in ("-c", "--config-env", "-C", "--git-dir", "--work-tree", "--namespace",
                         "--exec-path", "--super-prefix", "--list-cmds", "--attr-source"):  # fmt: skip
            if arg.value == "-c" and i + 1 < len(args):
                setting = args[i + 1]
                if setting.pattern is not None:
                    raise _Unknown("a `git -c` setting is only known at run time")
                value = setting.value.partition("=")[2]
                if value and (_looks_like_command(value, p.programs) or value.startswith("!")):
                    p.parse_string(value.lstrip("!"), ctx, stdin=stdin)
            i += 2
            continue
        i += 1
    sub = [a.value if a.pattern is None else None for a in args[i:]]
    rest = args[i + 1 :]
    if sub[:2] == ["bisect", "run"]:
        p.run(args[i + 2 :], end, ctx, stdin)
    elif sub[:1] == ["submodule"] and "foreach" in sub:
        strings = [a for a in args[i + sub.index("foreach") + 1 :]
                   if not (a.pattern is None and a.value.startswith("-"))]  # fmt: skip
        if strings:
            if any(a.pattern is not None for a in strings):
                raise _Unknown("the command of `git submodule foreach` is only known at run time")
            p.parse_string(" ".join(a.value for a in strings), ctx, stdin=stdin)
    elif sub[:1] in (["rebase"], ["filter-branch"]):
        for k, arg in enumerate(rest):
            opt, eq, val = arg.value.partition("=")
            if opt in ("-x", "--exec") or opt.endswith("-filter"):
                given = val if eq else (rest[k + 1].value if k + 1 < len(rest) else "")
                if arg.pattern is not None or (not eq and k + 1 < len(rest)
                                               and rest[k + 1].pattern is not None):  # fmt: skip
                    raise _Unknown(f"the command of `git {sub[0]} {opt}` is only known at run time")
                p.parse_string(given, ctx, stdin=stdin)


# ---- builtins that change how the shell itself reads or runs its input


def _set(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        if arg.pattern is not None:
            _check_runtime_word(arg, name, "-+")
            return  # positional parameters
        if value in ("-", "--") or len(value) < 2 or value[0] not in "-+":
            return
        if "o" in value[1:]:
            i += 1
            if i < len(args):
                _line_editing(name, value[0], args[i])
        i += 1


def _line_editing(name: str, sign: str, option: _Arg) -> None:
    if option.pattern is not None:
        raise _Unknown(f"the option `{name} {sign}o` sets is only known at run time")
    if sign == "+" and option.value == "interactive-comments":
        raise _Unknown(_COMMENTS_OFF.format(what=f"{name} +o interactive-comments"))
    if sign == "-" and option.value in ("emacs", "vi"):
        raise _Unknown(
            f"`{name} -o {option.value}` turns on the shell's own line editing, whose key "
            "bindings can run input the broker has not judged"
        )


_COMMENTS_OFF = (
    "`{what}` makes `#` an ordinary character, so that later lines run what the broker "
    "reads as a comment"
)


def _shopt(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    flags = "".join(a.value[1:] for a in args if a.pattern is None and a.value.startswith("-"))
    names = [a for a in args if a.pattern is not None or not a.value.startswith("-")]
    if any(a.pattern is not None for a in names):
        raise _Unknown(f"the option `{name}` sets is only known at run time")
    off = {"interactive_comments", "interactive-comments"}  # the second with -o
    if "u" in flags and any(a.value in off for a in names):
        raise _Unknown(_COMMENTS_OFF.format(what=f"{name} -u interactive_comments"))
    if "o" not in flags or "u" in flags:
        return
    for arg in args:
        if not (arg.pattern is None and arg.value.startswith("-")):
            _line_editing(name, "-", arg)


def _names(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    """Builtins that assign to (or test) variables named by their arguments."""
    value_of = {"printf": ("-v",), "test": ("-v", "-R"), "[": ("-v", "-R"), "wait": ("-p",)}
    if name in value_of:
        targets = [b for a, b in pairwise(args) if a.pattern is None and a.value in value_of[name]]
    elif name == "getopts":
        targets = args[1:2]
    else:  # read, mapfile, readarray, unset: every word that is not an option
        targets = [a for a in args if not a.value.startswith("-")]
    for arg in targets:
        _check_subscript(arg, f"`{name}` of")


def _refuse(reason: str) -> _Handler:
    """A builtin whose effect the broker cannot see: always unknown, for `reason`."""

    def handle(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
        raise _Unknown(reason)

    return handle


def _let(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    if any(a.pattern is not None for a in args):
        raise _Unknown("an expression of `let` is only known at run time")
    _check_arith(", ".join(a.value for a in args), "`let`")


# ------------------------------------------------------------ the table of wrappers


@dataclass(frozen=True)
class Wrapper:
    """A program that runs (part of) its arguments as a command, and why it is one."""

    handler: _Handler
    reason: str


_AS_USER = "runs a command as another user"
_SHELL_REASON = "a shell: runs the string given with -c as a command line"

WRAPPERS: dict[str, Wrapper] = {
    "sudo": Wrapper(_sudo, _AS_USER),
    "doas": Wrapper(_wrapper(_opts(flags="nLs", values="uC"), none_if="s"), _AS_USER),
    "su": Wrapper(_su, "runs a login shell, or the -c command string, as another user"),
    "runuser": Wrapper(_su, "like su; `runuser -u USER CMD` runs CMD directly"),
    "pkexec": Wrapper(
        _wrapper(
            _opts(long_flags="version disable-internal-agent help keep-cwd", long_values="user"),
            none_if="version help",
            shell_if_empty=True,
        ),
        _AS_USER + " (polkit)",
    ),
    "setpriv": Wrapper(
        _wrapper(
            _opts(
                flags="dhV",
                long_flags="dump nnp no-new-privs clear-groups keep-groups init-groups "
                "reset-env help version",
                long_values="ruid euid rgid egid reuid regid groups inh-caps ambient-caps "
                "bounding-set securebits pdeathsig selinux-label apparmor-profile "
                "landlock-access landlock-rule seccomp-filter",
            ),
            none_if="d dump h help V version",
        ),
        "runs a command with other uids, gids, groups or capabilities",
    ),
    "sg": Wrapper(_sg, "runs a command string (`/bin/sh -c`) as another group"),
    "env": Wrapper(_env, "runs a command with a changed environment"),
    "nice": Wrapper(
        _wrapper(_opts(values="n", long_values="adjustment", numeric=True)),
        "runs a command at another CPU priority",
    ),
    "ionice": Wrapper(
        _wrapper(
            _opts(
                flags="t",
                values="cnpPu",
                long_flags="ignore",
                long_values="class classdata pid pgid uid",
            ),
            none_if="p P u pid pgid uid",
        ),
        "runs a command in another I/O scheduling class",
    ),
    "chrt": Wrapper(_chrt, "runs a command with another scheduling policy and priority"),
    "taskset": Wrapper(
        # taskset [options] MASK COMMAND; `taskset -p [MASK] PID` changes a running process
        _wrapper(
            _opts(flags="apchV", long_flags="all-tasks pid cpu-list help version"),
            skip=1,
            none_if="p pid h help V version",
        ),
        "runs a command on a given set of CPUs",
    ),
    "prlimit": Wrapper(
        _wrapper(
            _opts(
                flags="hV",
                values="po",
                optional="cdefilmnqrstuvxy",
                long_flags="noheadings raw verbose help version core data nice fsize "
                "sigpending memlock rss nofile msgqueue rtprio stack cpu nproc as locks rttime",
                long_values="pid output",
            ),
            none_if="p pid h help V version",
        ),
        "runs a command with other resource limits",
    ),
    "nohup": Wrapper(_wrapper(_opts()), "runs a command immune to hangups"),
    "setsid": Wrapper(
        _wrapper(_opts(flags="cfw", long_flags="ctty fork wait")), "runs a command in a new session"
    ),
    "timeout": Wrapper(_wrapper(_TIMEOUT, skip=1), "runs a command with a time limit"),
    "stdbuf": Wrapper(
        _wrapper(_opts(values="ioe", long_values="input output error")),
        "runs a command with other stdio buffering",
    ),
    "flock": Wrapper(_flock, "runs a command, or a -c command string, holding a file lock"),
    "unshare": Wrapper(
        _wrapper(
            _opts(
                flags="fhVmuinpCTUrc",
                values="RwSG",
                long_flags="fork help version mount uts ipc net pid user cgroup time "
                "map-root-user map-current-user map-auto keep-caps kill-child mount-proc "
                "mount-binfmt",
                long_values="map-user map-users map-group map-groups propagation setgroups root "
                "wd setuid setgid monotonic boottime load-interp",
            ),
            none_if="h help V version",
            shell_if_empty=True,
        ),
        "runs a command in new namespaces",
    ),
    "nsenter": Wrapper(
        _wrapper(
            _opts(
                flags="ahVFZ",
                values="tSGW",
                optional="muinpCUTrw",
                long_flags="all help version no-fork follow-context preserve-credentials "
                "user-parent keep-caps env join-cgroup mount uts ipc net pid cgroup user time "
                "root wd",
                long_values="target setuid setgid wdns",
            ),
            none_if="h help V version",
            shell_if_empty=True,
        ),
        "runs a command in the namespaces of another process",
    ),
    "chroot": Wrapper(
        _wrapper(
            _opts(long_flags="skip-chdir help version", long_values="userspec groups"),
            skip=1,
            none_if="help version",
            shell_if_empty=True,
        ),
        "runs a command in another root directory",
    ),
    "systemd-run": Wrapper(_systemd_run, "runs a command as a transient systemd unit"),
    "setarch": Wrapper(_setarch, "runs a command with another architecture personality"),
    "linux32": Wrapper(_setarch, "setarch for a 32-bit personality"),
    "linux64": Wrapper(_setarch, "setarch for a 64-bit personality"),
    "script": Wrapper(_script, "runs the -c command string ($SHELL -c), or a shell, in a new pty"),
    "strace": Wrapper(_wrapper(_STRACE), "runs a command under the system-call tracer"),
    "ltrace": Wrapper(_wrapper(_LTRACE), "runs a command under the library-call tracer"),
    "fakeroot": Wrapper(
        _wrapper(
            _opts(
                flags="uvh",
                values="lfisb",
                long_flags="unknown-is-real version help",
                long_values="lib faked fd-base",
            ),
            none_if="v h version help",
            shell_if_empty=True,
        ),
        "runs a command with faked root privileges",
    ),
    "eatmydata": Wrapper(_wrapper(_opts()), "runs a command with fsync disabled"),
    "unbuffer": Wrapper(_wrapper(_opts(flags="p")), "runs a command in a pty (expect)"),
    "rlwrap": Wrapper(_wrapper(_opts()), "runs a command with readline line editing"),
    "gosu": Wrapper(_wrapper(_opts(), skip=1), _AS_USER),
    "su-exec": Wrapper(_wrapper(_opts(), skip=1), _AS_USER),
    "ssh-agent": Wrapper(
        # -k, -D, -d: kill the agent, or run it in the foreground; without a command it
        # prints its environment
        _wrapper(_opts(flags="cDdks", values="EaOPt"), none_if="k D d"),
        "runs a command with an SSH agent in its environment",
    ),
    "xargs": Wrapper(_xargs, "runs a command with arguments read from its input"),
    "parallel": Wrapper(_parallel, "runs a command line (through a shell) for each input"),
    "find": Wrapper(_find, "runs the command of -exec, -execdir, -ok and -okdir"),
    "watch": Wrapper(_watch, "runs a command line repeatedly (through `sh -c`)"),
    "busybox": Wrapper(_busybox, "runs the applet its first argument names"),
    "time": Wrapper(_time, "runs a command and reports its times"),
    "command": Wrapper(
        _wrapper(_opts(flags="pvV"), none_if="v V"), "runs a command, bypassing functions"
    ),
    "builtin": Wrapper(_wrapper(_opts()), "runs a shell builtin, bypassing functions"),
    "exec": Wrapper(_exec, "replaces the shell with a command"),
    **{shell: Wrapper(_shell, _SHELL_REASON) for shell in sorted(_SHELLS)},
    **{
        shell: Wrapper(_foreign_shell, "a shell whose -c language the broker does not parse")
        for shell in sorted(_FOREIGN_SHELLS)
    },
}

# Shell builtins with handlers of their own (not wrappers: they do not run their arguments
# as a program, but they can run strings as commands or change how the shell runs them).
_BUILTINS: dict[str, _Handler] = {
    "eval": _refuse("`eval` builds the command it runs at run time"),
    "source": _refuse("`source` runs the commands in a file the broker cannot see"),
    ".": _refuse("`.` runs the commands in a file the broker cannot see"),
    "alias": _refuse("`alias` changes what later command names run"),
    "fc": _refuse("`fc` re-runs commands from the history"),
    "hash": _hash,
    "trap": _trap,
    **dict.fromkeys(("export", "declare", "typeset", "local", "readonly"), _declare),
    "set": _set,
    "shopt": _shopt,
    **dict.fromkeys(
        ("read", "mapfile", "readarray", "unset", "printf", "test", "[", "getopts", "wait"), _names
    ),
    "let": _let,
    "bind": _refuse(
        "`bind` changes the shell's own key bindings (and `bind -x` runs commands from a key)"
    ),
    "bindkey": _refuse("`bindkey` changes the shell's own key bindings (zsh line editor)"),
    "zle": _refuse("`zle` drives the shell's own line editor (zsh)"),
    "enable": _refuse(
        "`enable` turns shell builtins on or off, or loads new ones from a shared object"
    ),
    "git": _git,
}

_HANDLERS: dict[str, _Handler] = {
    **_BUILTINS,
    **{name: wrapper.handler for name, wrapper in WRAPPERS.items()},
}


# ------------------------------------------------------------------------ inline code
#
# A program that is not a wrapper may still run code given on its command line: inline
# code of an interpreter (`python -c`, `perl -e`), a command string given to an option
# (`foo -c 'rm -rf x'`, `rsync -e 'sh -c …'`, `tar --to-command=…`). Such a command is
# "opaque" (SimpleCommand.opaque): unknown, unless a rule decides it at least as strictly.
# A command string is also parsed, best effort, so what it would run can make the
# decision stricter.

# (why the command is opaque, or None; command strings worth judging best effort)
_Found = tuple[str | None, list[str]]
_Check = Callable[[str, list[_Arg], tuple[str, ...]], _Found]
_META = set(";|&$`()<>")
_CODE_OPTIONS = ("-c", "-e", "--command", "--exec", "--eval")

# Programs whose -c/-e are plain data, and what they mean there.
_DATA_OPTIONS: dict[str, str] = {
    **dict.fromkeys(("grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack", "pgrep", "pkill"),
                    "-e gives a pattern, -c counts"),
    **dict.fromkeys(("cut", "head", "tail", "wc", "xxd", "od", "split", "fold", "tr"),
                    "-c counts or selects characters or bytes"),
    **dict.fromkeys(("ls", "du", "df", "stat", "date", "cmp", "sort", "uniq", "cp", "ps", "top",
                     "free", "column", "pr", "nl", "touch", "chmod", "chown", "chgrp", "file",
                     "journalctl", "dmesg", "lsblk", "lsof", "iconv", "strings", "jq", "ip",
                     "md5sum", "sha1sum", "sha256sum", "sha512sum", "b2sum", "cksum", "base64",
                     "basenc", "more", "diff", "make", "ulimit"),
                    "-c/-e are options of its own that take no command"),
    **dict.fromkeys(("gzip", "gunzip", "zcat", "bzip2", "bunzip2", "bzcat", "xz", "unxz",
                     "xzcat", "zstd", "unzstd", "lz4", "lzop"), "-c writes to standard output"),
    **dict.fromkeys(("echo", "printf", "test", "[", "read", "mapfile", "readarray", "history",
                     "type", "help", "kill", "jobs", "ulimit", "compgen", "cd", "pushd", "popd",
                     "dirs", "wait", "umask", "printenv", "true", "false", ":"),
                    "a shell builtin whose -c/-e take no command"),
    **dict.fromkeys(("ssh", "scp", "sftp"), "-c names a cipher, -e an escape character"),
    **dict.fromkeys(("curl",), "-c names a cookie jar, -e a referer"),
    **dict.fromkeys(("docker", "podman", "kubectl", "oc", "nerdctl"),
                    "-e sets a variable, -c names a container (commands run elsewhere)"),
}  # fmt: skip


@dataclass(frozen=True)
class _Interpreter:
    short: str  # option letters that take inline code, also inside a cluster (`-pe`)
    long: tuple[str, ...] = ()  # options that take inline code, `--eval CODE` or `--eval=CODE`
    plus: bool = False  # `+CMD` runs an editor command (vim)


_VIM = _Interpreter("c", ("--cmd", "-S"), plus=True)
_INTERPRETERS: dict[str, _Interpreter] = {
    **dict.fromkeys(("python", "pypy", "jython", "ipython"), _Interpreter("c")),
    **dict.fromkeys(("perl",), _Interpreter("eE")),
    **dict.fromkeys(("ruby", "jruby", "lua", "luajit", "ghc", "osascript", "R", "Rscript"),
                    _Interpreter("e", ("--eval", "--expr"))),
    **dict.fromkeys(("node", "nodejs", "bun"), _Interpreter("ep", ("--eval", "--print"))),
    "deno": _Interpreter("", ("eval",)),
    "php": _Interpreter("rBRFE", ("--run", "--process-begin", "--process-code",
                                  "--process-file", "--process-end")),
    "julia": _Interpreter("eE", ("--eval", "--print")),
    "expect": _Interpreter("c"),
    "tclsh": _Interpreter(""),
    "gdb": _Interpreter("", ("-ex", "--ex", "-eval-command", "--eval-command", "-iex", "--iex",
                             "-init-eval-command", "--init-eval-command", "-x", "--command",
                             "-ix", "--init-command")),
    **dict.fromkeys(("vim", "vi", "nvim", "view", "vimdiff", "rvim", "gvim", "ex", "evim"), _VIM),
    "emacs": _Interpreter("", ("--eval", "-eval", "--execute", "-execute", "--funcall",
                               "-funcall", "-f", "--load", "-load", "-l")),
}  # fmt: skip
_AWKS = {"awk", "gawk", "mawk", "nawk", "busybox-awk"}
_SEDS = {"sed", "gsed"}

_KNOWN_PROGRAMS = {
    "rm", "rmdir", "mv", "cp", "dd", "shred", "truncate", "mkfs", "wipefs", "fdisk", "parted",
    "chmod", "chown", "chgrp", "chattr", "ln", "install", "kill", "pkill", "killall",
    "shutdown", "reboot", "halt", "poweroff", "systemctl", "service", "crontab", "at",
    "curl", "wget", "nc", "ncat", "netcat", "socat", "ssh", "scp", "rsync", "sftp", "telnet",
    "tee", "sed", "awk", "git", "make", "mount", "umount", "iptables", "nft", "useradd",
    "userdel", "usermod", "passwd", "chpasswd", "visudo", "tar", "zip", "unzip", "docker",
    "kubectl", "vim", "vi", "nvim", "emacs", "nano", "ed", "less",
    "more", "man", "tmux", "screen", "cat", "ls", "echo", "printf", "touch", "mkdir",
    *_SQL_CLIENTS,
}  # fmt: skip


def _looks_like_command(value: str, programs: tuple[str, ...]) -> bool:
    """Whitespace, a shell metacharacter, or a first word that names a program."""
    if not value.strip():
        return False
    if any(ch.isspace() or ch in _META for ch in value):
        return True
    base = value.rsplit("/", 1)[-1]
    return base in _COMMAND_NAMES or any(
        fnmatchcase(base, p) or fnmatchcase(value, p) for p in programs
    )


def _option_values(
    args: list[_Arg], short: str, long: tuple[str, ...]
) -> Iterator[tuple[str, _Arg | None]]:
    """(option, value) for each option in `short` (also inside a cluster, value attached or
    in the next word) or `long` (`--opt VALUE`, `--opt=VALUE`); value None when missing."""
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        i += 1
        if arg.pattern is None and value == "--":
            return
        if value in long or (value.startswith(long) and value.partition("=")[0] in long
                             and "=" in value):  # fmt: skip
            opt, eq, attached = value.partition("=")
            if eq:
                yield opt, replace(arg, value=attached)
            else:
                yield opt, args[i] if i < len(args) else None
                i += 1
            continue
        if not short or len(value) < 2 or value[0] != "-" or value[1] == "-":
            continue
        for k, ch in enumerate(value[1:], start=1):
            if not ch.isalnum():
                break
            if ch in short:
                if value[k + 1 :]:
                    yield f"-{ch}", replace(arg, value=value[k + 1 :])
                else:
                    yield f"-{ch}", args[i] if i < len(args) else None
                    i += 1
                break


def _interpreter_check(name: str, args: list[_Arg], programs: tuple[str, ...]) -> _Found:
    spec = _INTERPRETERS.get(name) or _INTERPRETERS[_VERSIONED.sub("", name)]
    for opt, _ in _option_values(args, spec.short, spec.long):
        return f"`{name} {opt}` runs inline code that the broker does not read", []
    if spec.plus:
        for arg in args:
            if arg.value.startswith("+") and not re.fullmatch(r"\+([0-9]*|/.*)", arg.value):
                return f"`{name} {_short(arg.value, 40)}` runs an editor command", []
    return None, []


def _awk_check(name: str, args: list[_Arg], programs: tuple[str, ...]) -> _Found:
    texts: list[_Arg] = []
    from_file = False
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        i += 1
        if arg.pattern is None and value == "--":
            break
        if arg.pattern is None and value.startswith("-") and len(value) > 1:
            opt = value[:2] if not value.startswith("--") else value.partition("=")[0]
            if opt in ("-l", "--load", "-E", "--exec"):
                return f"`{name} {opt}` loads code the broker cannot see", []
            if opt in ("-f", "--file"):
                from_file = True
            if opt in ("-e", "--source"):
                given = value[2:] if opt == "-e" and len(value) > 2 else None
                if given is None and "=" in value:
                    given = value.partition("=")[2]
                if given is None and i < len(args):
                    texts.append(args[i])
                    i += 1
                elif given is not None:
                    texts.append(replace(arg, value=given))
            elif opt in ("-v", "-F", "-f", "--assign", "--field-separator", "--file") and (
                len(value) == 2 or (value.startswith("--") and "=" not in value)
            ):
                i += 1
            continue
        if not texts and not from_file:
            texts.append(arg)
        break
    for text in texts:
        if text.pattern is not None:
            return f"the `{name}` program is only known at run time", []
        program = text.value.replace("||", "")
        if "system" in program or "|" in program or "@load" in program:
            return f"the `{name}` program runs commands (`system()` or a pipe)", []
    return None, []


def _sed_executes(script: str) -> str | None:
    """Why this sed script may run a command (the `e` command, the `e` flag of `s`), or
    None; a script the scanner cannot read counts as running one."""
    s, n, i = script, len(script), 0

    def delimited(i: int, delim: str) -> int:
        end = _closing(s, i, delim)
        if end < 0:
            raise ValueError("unterminated")
        return end

    try:
        while i < n:
            i = _skip(s, i, " \t\n;")
            if i >= n:
                break
            if s[i] == "#":
                i = _line_end(s, i)
                continue
            for _ in range(2):  # up to two addresses
                if s[i].isdigit() or s[i] == "$":
                    i += 1
                    while i < n and (s[i].isdigit() or s[i] in "~"):
                        i += 1
                elif s[i] in "/\\":
                    delim = s[i + 1] if s[i] == "\\" else "/"
                    i = delimited(i + (2 if s[i] == "\\" else 1), delim)
                    i = _skip(s, i, "IM")
                else:
                    break
                i = _skip(s, i, " \t")
                if i < n and s[i] in ",+~":
                    i = _skip(s, i + 1, " \t")
                    if i < n and s[i] in "+~":
                        i += 1
                    continue
                break
            i = _skip(s, i, " \t!")
            if i >= n:
                raise ValueError("address without a command")
            cmd = s[i]
            i += 1
            if cmd == "e":
                return "sed's `e` command runs a shell command"
            if cmd in "{}=dDgGhHnNpPxzF":
                continue
            if cmd == "s" or cmd == "y":
                delim = s[i]
                if delim in "\\\n":
                    raise ValueError("bad delimiter")
                i = delimited(delimited(i + 1, delim), delim)
                if cmd == "s":
                    while i < n and s[i] in "gpiImMe0123456789w":
                        if s[i] == "e":
                            return "the `e` flag of sed's `s` command runs the result as a command"
                        if s[i] == "w":
                            i = _line_end(s, i)
                            break
                        i += 1
                continue
            if cmd in "aic" or cmd in "rRwW":
                while True:  # text or file name to the end of the line (\ continues it)
                    i = _line_end(s, i)
                    if cmd in "aic" and i > 0 and s[i - 1] == "\\" and i < n:
                        i += 1
                        continue
                    break
                continue
            if cmd in ":btTqQLlv":
                while i < n and s[i] not in ";\n}":
                    i += 1
                continue
            raise ValueError(f"unknown command {cmd!r}")
    except (ValueError, IndexError):
        return "the broker cannot read this sed script"
    return None


def _sed_check(name: str, args: list[_Arg], programs: tuple[str, ...]) -> _Found:
    scripts: list[_Arg] = []
    from_file = sandbox = False
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        i += 1
        if arg.pattern is None and value == "--":
            break
        if arg.pattern is None and value.startswith("--"):
            opt, eq, val = value[2:].partition("=")
            if opt == "expression":
                if eq:
                    scripts.append(replace(arg, value=val))
                elif i < len(args):
                    scripts.append(args[i])
                    i += 1
            elif opt == "file":
                from_file = True
                i += 0 if eq else 1
            elif opt == "line-length":
                i += 0 if eq else 1
            sandbox = sandbox or opt == "sandbox"
            continue
        if arg.pattern is None and value.startswith("-") and len(value) > 1:
            for k, ch in enumerate(value[1:], start=1):
                if ch in "efl":
                    attached = value[k + 1 :]
                    if not attached and i < len(args):
                        attached_arg: _Arg | None = args[i]
                        i += 1
                    else:
                        attached_arg = replace(arg, value=attached) if attached else None
                    if ch == "e" and attached_arg is not None:
                        scripts.append(attached_arg)
                    from_file = from_file or ch == "f"
                    break
                if ch in "iI":
                    break  # -i[SUFFIX]
            continue
        if not scripts and not from_file:
            scripts.append(arg)
        break
    if sandbox:
        return None, []
    for script in scripts:
        if script.pattern is not None:
            return f"the `{name}` script is only known at run time", []
        why = _sed_executes(script.value)
        if why:
            return why, []
    return None, []


def _sql_client_check(name: str, args: list[_Arg], programs: tuple[str, ...]) -> _Found:
    """SQL given to a client is data for the database, unless it uses the client's own
    shell escapes (psql `\\!`, `\\o |cmd`, `COPY … PROGRAM`; mysql `system`; sqlite3
    `.shell`): each protocol unit names its clients and their escapes."""
    client = _SQL_CLIENTS[name]
    pattern = re.compile(client.escapes, client.flags)
    if not client.options:  # every argument after the database is SQL
        texts = [a for a in args if not a.value.startswith("-")][1:]
    else:
        short = "".join(o[1] for o in client.options if len(o) == 2)
        long = tuple(o for o in client.options if o.startswith("--"))
        texts = [v for _, v in _option_values(args, short, long) if v is not None]
    for text in texts:
        if text.pattern is not None and any(ch in text.value for ch in "\\.!"):
            return f"the `{name}` input is only known at run time", []
        if pattern.search(text.value):
            return f"`{name}` is asked to run a shell command (a client escape)", []
    return None, []


def _given_command(name: str, opt: str, value: _Arg | None, programs: tuple[str, ...]) -> _Found:
    if value is None:
        return None, []
    if value.pattern is not None:
        return f"the value of `{name} {opt}` is only known at run time (it may be a command)", []
    if _looks_like_command(value.value, programs):
        return (
            f"`{name} {opt}` is given what looks like a command (`{_short(value.value, 60)}`)",
            [value.value],
        )
    return None, []


def _known_value(value: _Arg | None) -> list[str]:
    """An option's value as a command string to judge, when it is known as typed."""
    return [value.value] if value and not value.pattern else []


def _tar_check(name: str, args: list[_Arg], programs: tuple[str, ...]) -> _Found:
    long = ("--to-command", "--use-compress-program", "--rsh-command", "--info-script",
            "--new-volume-script", "--rmt-command")  # fmt: skip
    for opt, value in _option_values(args, "IF", long):
        return f"`{name} {opt}` runs a program", _known_value(value)
    for arg in args:
        if "--checkpoint-action=exec" in arg.value or arg.value.startswith("--checkpoint-action"):
            given = arg.value.partition("exec=")[2]
            if given or arg.pattern is not None:
                return f"`{name} --checkpoint-action=exec` runs a command", [given]
    return None, []


def _ssh_check(name: str, args: list[_Arg], programs: tuple[str, ...]) -> _Found:
    for opt, value in _option_values(args, "oS" if name != "ssh" else "o", ()):
        if value is None:
            continue
        if opt == "-S" or value.pattern is not None:
            return f"`{name} {opt}` names a program to run", []
        key, _, given = re.sub(r"\s*=\s*|\s+", "=", value.value.strip(), count=1).partition("=")
        if key.lower() in ("proxycommand", "localcommand", "knownhostscommand", "remotecommand"):
            return f"`{name} -o {key}` runs a command", [
                given
            ] if key.lower() != "remotecommand" else []
    return None, []


def _zip_check(name: str, args: list[_Arg], programs: tuple[str, ...]) -> _Found:
    for opt, value in _option_values(args, "", ("-TT", "--unzip-command")):
        return f"`{name} {opt}` runs a command", _known_value(value)
    return None, []


def _generic_check(name: str, args: list[_Arg], programs: tuple[str, ...]) -> _Found:
    """An unknown program given -c/-e/--command/--exec/--eval with a command-like value."""
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        i += 1
        opt, eq, attached = value.partition("=")
        if arg.pattern is not None:
            if eq and opt in _CODE_OPTIONS[2:] and arg.pattern.startswith(opt + "="):
                return _given_command(name, opt, replace(arg, value=attached), programs)
            continue
        if value == "--":
            break
        if opt in _CODE_OPTIONS[2:]:
            given = replace(arg, value=attached) if eq else (args[i] if i < len(args) else None)
        elif value in ("-c", "-e") or re.fullmatch(r"-[A-Za-z]+[ce]", value):
            given = args[i] if i < len(args) else None
            opt = value
        elif re.fullmatch(r"-[ce].+", value) and any(
            ch.isspace() or ch in _META for ch in value[2:]
        ):
            given, opt = replace(arg, value=value[2:]), value[:2]
        else:
            continue
        found = _given_command(name, opt, given, programs)
        if found[0] is not None:
            return found
    return None, []


_CODE_CHECKS: dict[str, _Check] = {
    **dict.fromkeys(_INTERPRETERS, _interpreter_check),
    **dict.fromkeys(_AWKS, _awk_check),
    **dict.fromkeys(_SEDS, _sed_check),
    **dict.fromkeys(_SQL_CLIENTS, _sql_client_check),
    "tar": _tar_check,
    **dict.fromkeys(("ssh", "scp", "sftp"), _ssh_check),
    "zip": _zip_check,
}
_VERSIONED = re.compile(r"[0-9][0-9.]*$")
_COMMAND_NAMES = frozenset(_KNOWN_PROGRAMS | set(WRAPPERS) | set(_INTERPRETERS) | _AWKS | _SEDS)


def _code_check(parser: _Parser, name: str, args: list[_Arg]) -> _Found:
    """(why this command is opaque or None, command strings worth judging best effort)."""
    if name in WRAPPERS or (name in _BUILTINS and name != "git"):
        return None, []
    key = name
    if name not in _CODE_CHECKS and _VERSIONED.sub("", name) in _INTERPRETERS:
        key = _VERSIONED.sub("", name)  # python3.11, perl5.36
    check = _CODE_CHECKS.get(key)
    if check is not None:
        return check(name if check is _interpreter_check else key, args, parser.programs)
    if key in _DATA_OPTIONS:
        return None, []
    return _generic_check(name, args, parser.programs)


_BASH_BUILTINS = (
    ". : [ alias bg bind break builtin caller cd command compgen complete compopt continue "
    "declare dirs disown echo enable eval exec exit export false fc fg getopts hash help "
    "history jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly "
    "return set shift shopt source suspend test times trap true type typeset ulimit umask "
    "unalias unset wait"
).split()
_BASH_KEYWORDS = "! [[ ]] { } case coproc do done elif else esac fi for function if in select then time until while".split()
# A function with one of these names changes what the broker believes the name does.
_SHADOWED: dict[str, str] = {
    **dict.fromkeys(WRAPPERS, "wrapper"),
    **dict.fromkeys(_BASH_BUILTINS, "builtin"),
    **dict.fromkeys(_BASH_KEYWORDS, "keyword"),
}
