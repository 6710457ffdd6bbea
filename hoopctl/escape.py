"""Showing untrusted text (a requester's command, reason, screen) so that what you see is what it is.

A requester controls the command an approver is asked to approve. Printed raw, an escape
sequence could move the cursor, erase a line, recolour text to the background colour or
retitle the window; a carriage return or a fake newline could make one command look like
another; a bidi override or a zero-width character could reorder or hide characters. So every
such character is shown as visible text instead, never sent to the terminal:

    ESC               \\x1b          CR, LF, TAB       \\r \\n \\t
    other C0, DEL, C1 \\xNN          format characters (bidi overrides and isolates, zero-width
                                    space/joiners, BOM, soft hyphen, tag characters), line and
                                    paragraph separators, spaces other than U+0020, invisible
                                    letters and variation selectors, private-use, unassigned and
                                    surrogate code points: \\uXXXX or \\UXXXXXXXX

The result is unambiguous. Where the display sets the escapes apart (reversed on a colour
terminal, highlighted in the approval queue), a backslash the requester typed is shown as
typed: ``\\rm -rf x`` reads ``\\rm -rf x``. In plain text (a pipe, a file, no colour) it is
doubled when what follows could be read as one of these escapes (``printf 'a\\nb'`` shows
as ``printf 'a\\\\nb'``, while a real newline shows as ``\\n``); elsewhere it is left alone
(``grep 'a\\|b'``).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

# Named escapes, as people know them from C, Python and the shell.
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}

# Unicode categories that are invisible, zero-width, reorder text, or break lines.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})

# Characters outside those categories that still render as nothing (or as a blank) in
# common terminals: Hangul fillers, the braille blank, the combining grapheme joiner,
# Mongolian free variation selectors and the variation selectors.
_INVISIBLE = frozenset(
    {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x2800, 0x3164, 0xFFA0}
    | set(range(0xFE00, 0xFE10))
    | set(range(0xE0100, 0xE01F0))
)

# What may follow a backslash in an escape this module writes.
_ESCAPE_LEADS = frozenset("\\xuUnrt")


@lru_cache(maxsize=4096)
def _escape_char(char: str) -> str | None:
    """The visible form of CHAR, or None when CHAR is shown as itself."""
    if char == " ":
        return None
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if code < 0x7F:
        return None
    if code in _INVISIBLE or unicodedata.category(char) in _HIDDEN_CATEGORIES:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return None


def escape_parts(text: str, *, set_apart: bool = False) -> list[tuple[str, bool]]:
    """TEXT as (piece, is_escape) pairs, so a display can set the escapes apart (e.g. reversed).

    Joining the pieces gives escape(TEXT). With SET_APART (the display does show the escapes
    apart) a typed backslash is never doubled: the style, not the text, tells them apart.
    """
    parts: list[tuple[str, bool]] = []
    plain: list[str] = []

    def flush() -> None:
        if plain:
            parts.append(("".join(plain), False))
            plain.clear()

    for index, char in enumerate(text):
        if char == "\\" and not set_apart:
            following = text[index + 1] if index + 1 < len(text) else ""
            if following and (following in _ESCAPE_LEADS or _escape_char(following) is not None):
                flush()
                parts.append(("\\\\", True))
            else:
                plain.append(char)
            continue
        shown = _escape_char(char)
        if shown is None:
            plain.append(char)
        else:
            flush()
            parts.append((shown, True))
    flush()
    return parts


def escape(text: str) -> str:
    """TEXT with every control, format and invisible character written out as visible text."""
    return "".join(piece for piece, _ in escape_parts(text))


def escape_value(value: object) -> object:
    """Escape a string, or each string in a list; leave other values (numbers, None) alone."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, list | tuple):
        return [escape_value(item) for item in value]
    return value


def for_rich(text: str) -> str:
    """TEXT escaped and safe to hand to rich as markup (a literal "[red]" stays literal)."""
    from rich.markup import escape as markup_escape

    shown = escape(text)
    marked = markup_escape(shown)
    # rich doubles a final lone backslash for markup that goes on; a whole cell ends here.
    if marked.endswith("\\\\") and not shown.endswith("\\\\"):
        marked = marked[:-1]
    return marked


def shown(text: str | None, *, set_apart: bool) -> Text:
    """Untrusted TEXT as a rich Text cell: escaped, never markup. With SET_APART (the console
    shows styles) the escapes are reversed and typed backslashes stay as typed."""
    from rich.text import Text

    cell = Text()
    for piece, is_escape in escape_parts(text or "", set_apart=set_apart):
        cell.append(piece, style="reverse" if is_escape and set_apart else None)
    return cell


def has_hidden(text: str) -> bool:
    """True when TEXT holds a character that escape() writes out (a warning sign for approvers)."""
    return any(_escape_char(char) is not None for char in text)
