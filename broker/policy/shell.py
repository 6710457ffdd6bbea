"""Judging a shell command line against a policy before the Enter key reaches the target.

The line is split with bashlex into the simple commands it would run: pipelines, lists,
subshells, groups, command and process substitutions, and the commands hidden behind
wrappers such as ``sudo``, ``env``, ``xargs`` or ``sh -c``. Every simple command is judged;
the strongest decision wins. Anything that cannot be classified with certainty (a program
name computed at run time, ``eval``, a parse error, …) is "unknown" and gets the policy's
``on_unknown``. The module fails closed: an exception while judging yields ``deny``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from itertools import pairwise

import bashlex
import bashlex.ast
import bashlex.errors
import bashlex.subst

from broker.config import Policy, Rule
from broker.policy.decision import Decision, combine, stronger

MAX_LINE = 16384  # longer lines are not inspected (unknown); parsing costs ~25 ms per KiB
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
    """Judge one command line; never raises (an internal error is a deny)."""
    try:
        return _decide(policy, line)
    except Exception as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return Decision("deny", None, f"policy error: {message}")


def _decide(policy: Policy, line: str) -> Decision:
    if not line.strip(" \t\n"):
        return Decision("allow", None, "empty line")
    parsed = parse_command_line(line)
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
    sql = rule.statement is not None or rule.tables is not None or rule.without_where is not None
    return shell or not sql


def _judge(policy: Policy, command: SimpleCommand, line: str) -> Decision:
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


_Token = tuple[str, str, bool]  # ("c", char, quoted) or ("d", raw expansion, in double quotes)
_EMPTY_QUOTED: _Token = ("c", "", True)
_TIME = re.compile(r"\btime\b")
_HEREDOC_EOF = re.compile(r"here-document .*delimited by end-of-file \(wanted (['\"])(.*)\1\)")
_SIMPLE_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-])")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_PROMPTS = {"PS0", "PS1", "PS2", "PS3", "PS4"}
_SOURCED = {"BASH_ENV", "ENV", "LD_PRELOAD", "LD_AUDIT"}


def parse_command_line(line: str) -> ParsedLine:
    """Split a command line into the simple commands it runs; say why if it cannot be sure."""
    parser = _Parser()
    try:
        if len(line) > MAX_LINE:
            raise _Unknown("the line is too long to inspect")
        parser.parse(line, 0, stdin=False)
    except _Unknown as exc:
        parser.note(str(exc))
    except RecursionError:
        parser.note("the line is nested too deeply")
    return ParsedLine(tuple(parser.commands), parser.unknown)


def _bad_char(text: str) -> str | None:
    for ch in text:
        if ch in "\t\n":
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return ch
    return None


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
        if quote == "'":
            quote = "" if c == "'" else quote
            i += 1
            continue
        if quote == "$'":
            if c == "\\":
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
                end = line.find("\n", i)
                i = n if end < 0 else end
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


def _bashlex_parse(src: str) -> list[bashlex.ast.node]:
    # bashlex does not support the `time` keyword; a same-length plain word keeps every
    # position intact, and words are always read from the original text.
    text = _TIME.sub("tim3", src)
    for _ in range(16):
        try:
            return list(bashlex.parse(text))
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
        if not dq:
            if c == "\\":
                if nxt != "\n":
                    toks.append(("c", nxt, True))
                i += 2
                continue
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
        else:
            if c == '"':
                dq = False
                i += 1
                continue
            if c == "\\" and nxt in '$`"\\\n':
                if nxt != "\n":
                    toks.append(("c", nxt, True))
                i += 2
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


def _parse_options(args: list[_Arg], spec: _Options, prog: str) -> tuple[int, dict[str, str]]:
    """Skip the options of a wrapper; return the index of its first operand and the options."""
    seen: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        value = arg.value
        if arg.pattern is not None:
            if value.startswith("-") or arg.splits:
                raise _Unknown(f"an option of `{prog}` is only known at run time: `{value}`")
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
                    if i >= len(args):
                        raise _Unknown(f"`{prog} --{name}` lacks its value")
                    val = args[i].value
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
                    if i >= len(args):
                        raise _Unknown(f"`{prog} -{ch}` lacks its value")
                    val = args[i].value
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


class _Parser:
    def __init__(self) -> None:
        self.commands: list[SimpleCommand] = []
        self.unknown: str | None = None

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
        ctx = _Ctx(src, depth, stdin)
        for node in _bashlex_parse(src):
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
            self.check_substitution(node, ctx)
            self.walk(node.command, ctx)
        elif kind == "parameter":
            value = str(getattr(node, "value", "") or "")
            if any(s in value for s in ("$(", "`", "<(", ">(")):
                start, end = node.pos
                self.note(f"cannot see inside `{ctx.src[start:end]}`")
        elif kind == "redirect":
            self.redirect(node, ctx)
        else:
            for child in _children(node):
                self.walk(child, ctx)

    def check_substitution(self, node: bashlex.ast.node, ctx: _Ctx) -> None:
        if _substitution_end(node, ctx.src) is None:
            start, end = node.pos
            self.note(f"cannot see all of `{_short(ctx.src[start:end], 60)}`")

    def redirect(self, node: bashlex.ast.node, ctx: _Ctx) -> None:
        target = getattr(node, "output", None)
        if isinstance(target, bashlex.ast.node):
            self.walk(target, ctx)
        heredoc = getattr(node, "heredoc", None)
        if heredoc is not None and isinstance(target, bashlex.ast.node):
            start, end = target.pos
            quoted = any(q in ctx.src[start:end] for q in "'\"\\")
            body = str(getattr(heredoc, "value", ""))
            if not quoted and ("$(" in body or "`" in body):
                self.note("the here-document body contains a command substitution")

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
            for assign in assigns:
                for arg in self.expand(assign, ctx, brace=False):
                    self.assignment(arg, ctx, declaration=False)
            argv = [arg for word in words for arg in self.expand(word, ctx)]
            if argv:
                self.simple(argv, node.pos[1], ctx, stdin)
        except _Unknown as exc:
            self.note(str(exc))

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
        runtime = tuple(a.match_pattern for a in args)
        command = SimpleCommand(
            program.value,
            tuple(a.value for a in args),
            ctx.src[program.start : end].strip() or program.value,
            runtime if any(r is not None for r in runtime) else (),
        )
        self.commands.append(command)
        handler = _HANDLERS.get(command.name)
        if handler is not None:
            handler(self, command.name, args, end, replace(ctx, depth=ctx.depth + 1), stdin)

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


# ----------------------------------------------------------- special names and wrappers

_Handler = Callable[[_Parser, str, list[_Arg], int, _Ctx, bool], None]


def _opaque(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    why = {
        "eval": "`eval` builds the command it runs at run time",
        "source": "`source` runs the commands in a file the broker cannot see",
        ".": "`.` runs the commands in a file the broker cannot see",
        "alias": "`alias` changes what later command names run",
        "fc": "`fc` re-runs commands from the history",
    }
    raise _Unknown(why[name])


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
            continue
        p.assignment(arg, ctx, declaration=True)


def _wrapper(spec: _Options, *, skip: int = 0, none_if: str = "") -> _Handler:
    """A wrapper that runs its first operand as a command, after options and `skip` words."""

    def handle(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
        index, seen = _parse_options(args, spec, name)
        if any(opt in seen for opt in none_if.split()):
            return
        p.run(args[index + skip :] if len(args) > index + skip else [], end, ctx, stdin)

    return handle


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
    index, seen = _parse_options(args, _SUDO, name)
    if any(opt in seen for opt in ("e", "edit", "V", "version", "v", "validate", "K")):
        return  # sudoedit, or no command at all
    p.run(args[index:], end, ctx, stdin)


def _env(p: _Parser, name: str, args: list[_Arg], end: int, ctx: _Ctx, stdin: bool) -> None:
    index, seen = _parse_options(args, _ENV, name)
    if "S" in seen or "split-string" in seen:
        raise _Unknown("`env -S` splits a string into a command")
    while index < len(args) and args[index].pattern is None and args[index].value == "-":
        index += 1
    while index < len(args) and _ASSIGNMENT.match(args[index].value):
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
            if value[:1] in "-+" or arg.splits:
                raise _Unknown(f"an option of `{name}` is only known at run time: `{value}`")
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
                    if i >= len(args):
                        raise _Unknown(f"`{name} {value}` lacks its value")
                    given = args[i]
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
                    if i >= len(args):
                        raise _Unknown(f"`{name} -{ch}` lacks its value")
                    given = args[i]
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


_HANDLERS: dict[str, _Handler] = {
    **dict.fromkeys(("eval", "source", ".", "alias", "fc"), _opaque),
    "hash": _hash,
    "trap": _trap,
    **dict.fromkeys(("export", "declare", "typeset", "local", "readonly"), _declare),
    "sudo": _sudo,
    "doas": _wrapper(_opts(flags="nLs", values="uC"), none_if="s"),
    "env": _env,
    "xargs": _xargs,
    "nice": _wrapper(_opts(values="n", long_values="adjustment", numeric=True)),
    "nohup": _wrapper(_opts()),
    "time": _time,
    "timeout": _wrapper(_TIMEOUT, skip=1),
    "command": _wrapper(_opts(flags="pvV"), none_if="v V"),
    "exec": _wrapper(_opts(flags="cl", values="a")),
    "builtin": _wrapper(_opts()),
    "stdbuf": _wrapper(_opts(values="ioe", long_values="input output error")),
    "ionice": _wrapper(
        _opts(
            flags="t",
            values="cnpPu",
            long_flags="ignore",
            long_values="class classdata pid pgid uid",
        ),
        none_if="p P u pid pgid uid",
    ),
    "chroot": _wrapper(_opts(long_flags="skip-chdir", long_values="userspec groups"), skip=1),
    "setsid": _wrapper(_opts(flags="cfw", long_flags="ctty fork wait")),
    "su": _su,
    "runuser": _su,
    "find": _find,
    "watch": _watch,
    "busybox": _busybox,
    **dict.fromkeys(_SHELLS, _shell),
    **dict.fromkeys(_FOREIGN_SHELLS, _foreign_shell),
}
