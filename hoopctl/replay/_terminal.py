"""The screen of a recording at any moment: a pyte terminal emulator, made faster, with an
alternate screen, a compact snapshot format (the index's keyframes), and a painter that puts a
snapshot back on a real terminal.

Speed: pyte parses every escape sequence one character at a time through a generator and
draws one character at a time; that is about 1 MB/s. :class:`_Stream` takes the common
tokens (plain text, complete CSI sequences, OSC strings, simple escapes and C0 controls) with
one regular expression and calls the screen directly, and :class:`_Screen` draws ASCII runs
a line at a time from a per-attribute cache of cells. Anything else goes through pyte's own
parser, so the result is what pyte would do (and exactly the same whether a screen is built
from the start or from a keyframe, which is what the index relies on).

Additions over pyte: the alternate screen (private modes 47, 1047, 1049: full-screen
programs get their own buffer and the shell's screen comes back when they leave), the
line-drawing character set (``ESC ( 0``, honoured as xterm does even with UTF-8), and an
optional callback for each line that leaves the main screen (the text export's
scrollback).
"""

from __future__ import annotations

import copy
import json
import operator
import re
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyte
from pyte import charsets, graphics
from pyte import modes as mo
from pyte.screens import Char, Cursor, Margins, Savepoint, StaticDefaultDict

Line = StaticDefaultDict[int, Char]
ScrollCallback = Callable[[str], None]

_ALT_MODES = (47, 1047, 1049)
_MAX_SAVEPOINTS = 16
_BLANK = Char(" ")
_CHARSET_CODES = {id(table): code for code, table in charsets.MAPS.items()}
_ASCII_RUN = re.compile(r"[\x20-\x7e]+")
_OTHER_RUN = re.compile(r"[^\x20-\x7e]+")

SNAPSHOT_VERSION = 1


class _CellCache(dict[str, Char]):
    """The cell for each character drawn with one set of attributes."""

    __slots__ = ("attrs",)

    def __init__(self, attrs: Char) -> None:
        super().__init__()
        self.attrs = attrs

    def __missing__(self, char: str) -> Char:
        cell = self.attrs._replace(data=char)
        self[char] = cell
        return cell


_CELL_CACHES: dict[Char, _CellCache] = {}
_SGR_RESULTS: dict[tuple[Any, ...], Char] = {}


def _cells_for(attrs: Char) -> _CellCache:
    cells = _CELL_CACHES.get(attrs)
    if cells is None:
        if len(_CELL_CACHES) > 4096:
            _CELL_CACHES.clear()
        cells = _CELL_CACHES[attrs] = _CellCache(attrs)
    return cells


class _NoDirty(set[int]):
    """pyte keeps a set of changed lines for redrawing; nothing here reads it."""

    def add(self, element: int) -> None:
        pass

    def update(self, *others: Any) -> None:
        pass


_REVERSE_BLANK = Char(" ", reverse=True)
_ATTRS_OF = operator.itemgetter(1, 2, 3, 4, 5, 6, 7, 8)  # a cell's attributes, without its text


@dataclass
class _Alt:
    """The alternate screen is on: the main screen's buffer waits here."""

    mode: int
    main: dict[int, Line]
    cursor: Cursor | None  # saved by mode 1049, restored when it ends


class _Screen(pyte.Screen):
    def __init__(self, columns: int, lines: int) -> None:
        self.alt: _Alt | None = None
        self.on_scroll: Callable[[Line | None], None] | None = None
        self._cells = _CellCache(_BLANK)
        super().__init__(columns, lines)
        self.dirty = _NoDirty()
        self.buffer = self.new_buffer()

    def new_buffer(self) -> defaultdict[int, Line]:
        return defaultdict(self._new_line)

    def _new_line(self) -> Line:
        return StaticDefaultDict(_REVERSE_BLANK if mo.DECSCNM in self.mode else _BLANK)

    # -- pyte overrides ----------------------------------------------------------------

    def reset(self) -> None:
        self.alt = None
        super().reset()
        self.g1_charset = charsets.LAT1_MAP  # G1 starts as ASCII, as in xterm

    def draw(self, data: str) -> None:
        if self.charset or self.g0_charset is not charsets.LAT1_MAP or mo.IRM in self.mode:
            super().draw(data)
            return
        if data.isascii() and data.isprintable():
            self._draw_ascii(data)
            return
        pos, end = 0, len(data)
        while pos < end:
            match = _ASCII_RUN.match(data, pos)
            if match:
                self._draw_ascii(match.group())
            else:
                match = _OTHER_RUN.match(data, pos)
                assert match is not None
                super().draw(match.group())
            pos = match.end()

    def _draw_ascii(self, text: str) -> None:
        """pyte's ``draw`` for characters of width 1, a line at a time."""
        cursor = self.cursor
        cells = self._cells
        if cells.attrs is not cursor.attrs:
            cells = self._cells = _cells_for(cursor.attrs)
        columns = self.columns
        wrap = mo.DECAWM in self.mode
        pos, end = 0, len(text)
        while pos < end:
            if cursor.x >= columns:
                if wrap:
                    self.dirty.add(cursor.y)
                    self.carriage_return()
                    self.linefeed()
                else:  # every further character overwrites the last column
                    self.buffer[cursor.y][columns - 1] = cells[text[-1]]
                    cursor.x = columns
                    break
            x = cursor.x
            take = min(end - pos, columns - x)
            self.buffer[cursor.y].update(
                zip(range(x, x + take), map(cells.__getitem__, text[pos : pos + take]), strict=True)
            )
            cursor.x = x + take
            pos += take
        self.dirty.add(cursor.y)

    def index(self) -> None:
        # pyte's, with the lines moved in one pass (every line between the margins ends up
        # present, as in pyte: its later operations depend on which lines are present).
        margins = self.margins
        top, bottom = (0, self.lines - 1) if margins is None else margins
        cursor = self.cursor
        if cursor.y != bottom:
            cursor.y = min(cursor.y + 1, bottom)
            return
        buffer = self.buffer
        if self.on_scroll is not None and self.alt is None and top == 0:
            self.on_scroll(buffer.get(0))
        moved = [buffer[y] for y in range(top + 1, bottom + 1)]
        buffer.update(zip(range(top, bottom), moved, strict=True))
        buffer.pop(bottom, None)

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        # A cleared screen keeps its text in the transcript, as terminals that push the
        # screen into their scrollback on clear do.
        if how in (2, 3) and self.on_scroll is not None and self.alt is None:
            shown = [y for y, line in self.buffer.items() if _line_text(line, self.columns)]
            last = max(shown, default=-1)
            for y in range(min(last + 1, self.lines)):
                self.on_scroll(self.buffer.get(y))
        super().erase_in_display(how, *args, **kwargs)

    def erase_in_line(self, how: int = 0, private: bool = False) -> None:
        # pyte's, with one dict update instead of a loop.
        self.dirty.add(self.cursor.y)
        if how == 0:
            interval = range(self.cursor.x, self.columns)
        elif how == 1:
            interval = range(self.cursor.x + 1)
        elif how == 2:
            interval = range(self.columns)
        else:
            return
        self.buffer[self.cursor.y].update(dict.fromkeys(interval, self.cursor.attrs))

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        super().set_mode(*modes, **kwargs)
        if kwargs.get("private"):
            for mode in modes:
                if mode in _ALT_MODES and self.alt is None:
                    saved = copy.copy(self.cursor) if mode == 1049 else None
                    self.alt = _Alt(mode, self.buffer, saved)
                    self.buffer = self.new_buffer()
                    self.dirty.update(range(self.lines))

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        super().reset_mode(*modes, **kwargs)
        if kwargs.get("private"):
            for mode in modes:
                if mode in _ALT_MODES and self.alt is not None:
                    alt, self.alt = self.alt, None
                    self.buffer = alt.main  # type: ignore[assignment]
                    if alt.cursor is not None:
                        self.cursor = alt.cursor
                        self.ensure_hbounds()
                        self.ensure_vbounds()
                    self.dirty.update(range(self.lines))

    def select_graphic_rendition(self, *attrs: int) -> None:
        # pyte's, remembered: the same colour changes come again and again.
        key = (self.cursor.attrs, attrs, mo.DECSCNM in self.mode)
        result = _SGR_RESULTS.get(key)
        if result is None:
            super().select_graphic_rendition(*attrs)
            if len(_SGR_RESULTS) > 4096:
                _SGR_RESULTS.clear()
            _SGR_RESULTS[key] = self.cursor.attrs
        else:
            self.cursor.attrs = result

    def save_cursor(self) -> None:
        super().save_cursor()
        del self.savepoints[:-_MAX_SAVEPOINTS]


class _Stream(pyte.Stream):
    """pyte's stream with a fast path for the common tokens (see the module docstring)."""

    _TEXT = pyte.Stream._text_pattern
    _ESCAPE = re.compile(
        r"\x1b(?:"
        r"\[(?P<private>\??)(?P<params>[0-9;]*)(?P<final>[\x40-\x7e])"
        r"|\](?P<osc>[^\x07\x1b\x9c]+)(?:\x07|\x1b\\|\x9c)"
        r"|(?P<charset>[()])(?P<code>.)"
        r"|(?P<esc>[^\[\]#%()])"
        r")",
        re.DOTALL,
    )

    def attach(self, screen: pyte.Screen) -> None:
        super().attach(screen)

        def table(mapping: dict[str, str]) -> dict[str, Callable[..., None]]:
            return {key: getattr(screen, name) for key, name in mapping.items()}

        self._basic = table(self.basic)
        self._csi = table(self.csi)
        self._escape = table(self.escape)

    @property
    def at_ground(self) -> bool:
        """True when no escape sequence is half-way through (a keyframe may be taken)."""
        return bool(self._taking_plain_text)

    def feed(self, data: str) -> None:
        screen = self.listener
        assert screen is not None
        draw = screen.draw
        basic = self._basic
        match_text = self._TEXT.match
        match_escape = self._ESCAPE.match
        pos, end = 0, len(data)
        while pos < end:
            if self._taking_plain_text:
                char = data[pos]
                if char == "\x1b":
                    match = match_escape(data, pos)
                    if match is not None and self._escape_sequence(match, screen):
                        pos = match.end()
                        continue
                elif char in basic:
                    if not (char in "\x0e\x0f" and self.use_utf8):
                        basic[char]()
                    pos += 1
                    continue
                else:
                    match = match_text(data, pos)
                    if match is not None:
                        draw(match.group())
                        pos = match.end()
                        continue
            # One character through pyte's own parser.
            try:
                self._taking_plain_text = self._parser.send(data[pos])  # type: ignore[union-attr]
            except Exception:
                self._initialize_parser()  # pyte's handlers raise on odd parameters
            pos += 1

    def _escape_sequence(self, match: re.Match[str], screen: pyte.Screen) -> bool:
        """Act on one escape sequence as pyte would; False when pyte's parser must take it."""
        kind = match.lastgroup
        try:
            if kind == "final":
                text = match.group("params")
                if not text:
                    params = [0]
                elif ";" in text:
                    params = [min(int(p or 0), 9999) for p in text.split(";")]
                else:
                    params = [min(int(text), 9999)]
                handler = self._csi.get(match.group("final"), screen.debug)
                if match.group("private"):
                    handler(*params, private=True)
                else:
                    handler(*params)
            elif kind == "osc":
                body = match.group("osc")
                code = body[0]
                if code in "RP":
                    return False
                param = body[2:]
                if code in "01":
                    screen.set_icon_name(param)
                if code in "02":
                    screen.set_title(param)
            elif kind == "code":
                if not self.use_utf8:
                    screen.define_charset(match.group("code"), mode=match.group("charset"))
            elif kind == "esc":
                self._escape.get(match.group("esc"), screen.debug)()
        except Exception:  # noqa: S110 - pyte's handlers raise on odd parameters; skip it
            pass
        return True


def _line_text(line: Line | None, columns: int) -> str:
    """The text of one screen line, trailing blanks removed (wide-character stubs skipped)."""
    if not line:
        return ""
    last = min(max(line) + 1, columns)
    return "".join(line[x].data for x in range(last)).rstrip()


# -- painting on a real terminal -------------------------------------------------------

_FG_CODES = {name: str(code) for code, name in {**graphics.FG_ANSI, **graphics.FG_AIXTERM}.items()}
_BG_CODES = {name: str(code) for code, name in {**graphics.BG_ANSI, **graphics.BG_AIXTERM}.items()}
_INDEX_256: dict[str, int] = {}
for _number, _hex in enumerate(graphics.FG_BG_256):
    _INDEX_256.setdefault(_hex, _number)
_SGR_CACHE: dict[tuple[Any, ...], str] = {}


def _color(value: str, names: dict[str, str], base: str) -> list[str]:
    if value == "default":
        return []
    if value in names:
        return [names[value]]
    if value in _INDEX_256:
        return [base, "5", str(_INDEX_256[value])]
    if len(value) == 6:
        try:
            return [
                base,
                "2",
                str(int(value[0:2], 16)),
                str(int(value[2:4], 16)),
                str(int(value[4:6], 16)),
            ]
        except ValueError:
            return []
    return []


def sgr(cell: Char) -> str:
    """The SGR sequence that draws with ``cell``'s attributes, from a reset."""
    key = tuple(cell[1:])
    cached = _SGR_CACHE.get(key)
    if cached is None:
        codes = ["0"]
        for flag, code in (
            (cell.bold, "1"),
            (cell.italics, "3"),
            (cell.underscore, "4"),
            (cell.blink, "5"),
            (cell.reverse, "7"),
            (cell.strikethrough, "9"),
        ):
            if flag:
                codes.append(code)
        codes += _color(cell.fg, _FG_CODES, "38")
        codes += _color(cell.bg, _BG_CODES, "48")
        cached = _SGR_CACHE[key] = "\x1b[" + ";".join(codes) + "m"
    return cached


def _paint_buffer(buffer: dict[int, Line], columns: int, lines: int) -> str:
    """Draw every line of ``buffer`` on a cleared screen (the cursor ends anywhere)."""
    out: list[str] = []
    current = sgr(_BLANK)
    for y in sorted(buffer):
        if y >= lines:
            continue
        line = buffer[y]
        if not line:
            continue
        last = min(max(line) + 1, columns)
        while last > 0 and line[last - 1] == _BLANK:
            last -= 1
        if last == 0:
            continue
        out.append(f"\x1b[{y + 1};1H")
        x = 0
        while x < last:
            cell = line[x]
            x += 1
            if not cell.data:
                continue  # the right half of a wide character
            code = sgr(cell)
            if code != current:
                out.append(code)
                current = code
            out.append(cell.data)
    out.append("\x1b[0m")
    return "".join(out)


# -- the terminal ----------------------------------------------------------------------


class Terminal:
    """A terminal emulator fed with a recording's output."""

    def __init__(self, width: int, height: int, *, on_scroll: ScrollCallback | None = None) -> None:
        self.screen = _Screen(width, height)
        self.stream = _Stream(self.screen)
        self.stream.use_utf8 = False  # honour ESC ( 0 and SI/SO, as xterm does
        if on_scroll is not None:
            screen = self.screen

            def scrolled(line: Line | None) -> None:
                on_scroll(_line_text(line, screen.columns))

            screen.on_scroll = scrolled

    @property
    def width(self) -> int:
        return self.screen.columns

    @property
    def height(self) -> int:
        return self.screen.lines

    @property
    def at_ground(self) -> bool:
        return self.stream.at_ground

    def feed(self, text: str) -> None:
        self.stream.feed(text)

    def resize(self, width: int, height: int) -> None:
        self.screen.resize(height, width)

    def lines(self) -> list[str]:
        """The screen as text: one string per line, trailing blanks removed."""
        buffer, columns = self.screen.buffer, self.screen.columns
        return [_line_text(buffer.get(y), columns) for y in range(self.screen.lines)]

    @property
    def cursor(self) -> tuple[int, int]:
        return self.screen.cursor.x, self.screen.cursor.y

    @property
    def alternate_screen(self) -> bool:
        return self.screen.alt is not None

    # -- painting ------------------------------------------------------------------------

    def render(self) -> str:
        """Escape sequences that make a real terminal show this screen, whatever it showed.

        The screen is cleared and painted (first the main screen, then -- when a full-screen
        program is on -- the alternate screen over it), then scroll region, modes, character
        sets, cursor position and the current colours are set, so that the recording's
        next bytes land as they did in the session.
        """
        screen = self.screen
        columns, lines = screen.columns, screen.lines
        out = ["\x1b[0m\x1b[r\x1b[?6l\x1b[?7h\x1b[4l\x1b(B\x0f\x1b[?1049l\x1b[H\x1b[2J"]
        alt = screen.alt
        out.append(_paint_buffer(alt.main if alt else screen.buffer, columns, lines))
        if alt is not None:
            saved = alt.cursor or screen.cursor
            out.append(f"\x1b[{min(saved.y, lines - 1) + 1};{min(saved.x, columns - 1) + 1}H")
            out.append(f"\x1b[?{alt.mode}h\x1b[H\x1b[2J")
            out.append(_paint_buffer(screen.buffer, columns, lines))
        modes = screen.mode
        if screen.margins is not None:
            out.append(f"\x1b[{screen.margins.top + 1};{screen.margins.bottom + 1}r")
        out.append("\x1b[4h" if mo.IRM in modes else "")
        out.append("\x1b[20h" if mo.LNM in modes else "\x1b[20l")
        out.append("\x1b[?5h" if mo.DECSCNM in modes else "\x1b[?5l")
        out.append("\x1b[?1h" if (1 << 5) in modes else "\x1b[?1l")
        g0 = _CHARSET_CODES.get(id(screen.g0_charset), "B")
        g1 = _CHARSET_CODES.get(id(screen.g1_charset), "B")
        out.append(f"\x1b({g0}\x1b){g1}" + ("\x0e" if screen.charset else "\x0f"))
        cursor = screen.cursor
        y = min(max(cursor.y, 0), lines - 1)
        x = min(max(cursor.x, 0), columns)
        pending_wrap = x >= columns
        out.append(f"\x1b[{y + 1};{min(x, columns - 1) + 1}H")
        if pending_wrap and mo.DECAWM in modes:
            # Redraw the last cell so the terminal, too, wraps at the next character.
            cell = screen.buffer[y][columns - 1] if y in screen.buffer else _BLANK
            if len(cell.data) == 1:
                out.append(sgr(cell) + cell.data)
        if mo.DECAWM not in modes:
            out.append("\x1b[?7l")
        if mo.DECOM in modes and screen.margins is not None:
            # Origin mode homes the cursor: set it, then move again relative to the margin.
            out.append(f"\x1b[?6h\x1b[{y - screen.margins.top + 1};{min(x, columns - 1) + 1}H")
        out.append("\x1b[?25l" if cursor.hidden else "\x1b[?25h")
        out.append(sgr(cursor.attrs))
        return "".join(out)

    # -- snapshots -----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The complete state (screen, cursor, modes, margins, charsets...) as compressed JSON.

        Only valid at a token boundary (:attr:`at_ground`); restoring it with
        :meth:`from_snapshot` gives a terminal that reacts to further output exactly as
        this one would.
        """
        screen = self.screen
        attrs: dict[tuple[Any, ...], int] = {}

        def key_id(key: tuple[Any, ...]) -> int:
            number = attrs.get(key)
            if number is None:
                number = attrs[key] = len(attrs)
            return number

        def attr_id(cell: Char) -> int:
            return key_id(_ATTRS_OF(cell))

        def encode_cursor(cursor: Cursor) -> list[Any]:
            return [cursor.x, cursor.y, cursor.hidden, attr_id(cursor.attrs)]

        def encode_buffer(buffer: dict[int, Line]) -> list[Any]:
            rows = []
            for y in sorted(buffer):
                line = buffer[y]
                runs: list[list[Any]] = []
                start = previous = -1
                run_key: tuple[Any, ...] = ()
                cells: list[str] = []
                for x, cell in sorted(line.items()):
                    key = _ATTRS_OF(cell)
                    if x == previous + 1 and key == run_key and cells:
                        cells.append(cell[0])
                    else:
                        if cells:
                            runs.append(_run(start, key_id(run_key), cells))
                        start, run_key, cells = x, key, [cell[0]]
                    previous = x
                if cells:
                    runs.append(_run(start, key_id(run_key), cells))
                default = None if line.default == _BLANK else attr_id(line.default)
                rows.append([y, runs] if default is None else [y, runs, default])
            return rows

        state: dict[str, Any] = {
            "v": SNAPSHOT_VERSION,
            "size": [screen.columns, screen.lines],
            "cursor": encode_cursor(screen.cursor),
            "modes": sorted(screen.mode),
            "margins": list(screen.margins) if screen.margins else None,
            "tabs": sorted(screen.tabstops),
            "charset": [
                screen.charset,
                _CHARSET_CODES.get(id(screen.g0_charset), "B"),
                _CHARSET_CODES.get(id(screen.g1_charset), "B"),
            ],
            "title": screen.title,
            "icon": screen.icon_name,
            "saved_columns": screen.saved_columns,
            "saves": [
                [
                    *encode_cursor(save.cursor),
                    _CHARSET_CODES.get(id(save.g0_charset), "B"),
                    _CHARSET_CODES.get(id(save.g1_charset), "B"),
                    save.charset,
                    save.origin,
                    save.wrap,
                ]
                for save in screen.savepoints
            ],
            "buffer": encode_buffer(screen.buffer),
            "alt": None,
        }
        if screen.alt is not None:
            state["alt"] = {
                "mode": screen.alt.mode,
                "main": encode_buffer(screen.alt.main),
                "cursor": encode_cursor(screen.alt.cursor) if screen.alt.cursor else None,
            }
        state["attrs"] = [list(key) for key in attrs]
        text = json.dumps(state, ensure_ascii=False, separators=(",", ":"))
        return zlib.compress(text.encode("utf-8", "surrogatepass"), 6)

    @classmethod
    def from_snapshot(cls, blob: bytes, *, on_scroll: ScrollCallback | None = None) -> Terminal:
        state = json.loads(zlib.decompress(blob).decode("utf-8", "surrogatepass"))
        if state.get("v") != SNAPSHOT_VERSION:
            raise ValueError("unknown snapshot version")
        width, height = state["size"]
        terminal = cls(width, height, on_scroll=on_scroll)
        screen = terminal.screen
        attrs = [Char(" ", *values) for values in state["attrs"]]

        def decode_cursor(values: list[Any]) -> Cursor:
            cursor = Cursor(values[0], values[1], attrs[values[3]])
            cursor.hidden = values[2]
            return cursor

        def decode_buffer(rows: list[Any]) -> defaultdict[int, Line]:
            buffer = screen.new_buffer()
            for row in rows:
                y, runs = row[0], row[1]
                line = buffer[y]
                if len(row) > 2:
                    line.default = attrs[row[2]]
                for start, number, cells in runs:
                    base = attrs[number]
                    line.update(
                        (start + i, base._replace(data=data)) for i, data in enumerate(cells)
                    )
            return buffer

        screen.cursor = decode_cursor(state["cursor"])
        screen.mode = set(state["modes"])
        screen.margins = Margins(*state["margins"]) if state["margins"] else None
        screen.tabstops = set(state["tabs"])
        charset, g0, g1 = state["charset"]
        screen.charset = charset
        screen.g0_charset = charsets.MAPS.get(g0, charsets.LAT1_MAP)
        screen.g1_charset = charsets.MAPS.get(g1, charsets.LAT1_MAP)
        screen.title = state["title"]
        screen.icon_name = state["icon"]
        screen.saved_columns = state["saved_columns"]
        screen.savepoints = [
            Savepoint(
                decode_cursor(save[:4]),
                charsets.MAPS.get(save[4], charsets.LAT1_MAP),
                charsets.MAPS.get(save[5], charsets.LAT1_MAP),
                save[6],
                save[7],
                save[8],
            )
            for save in state["saves"]
        ]
        screen.buffer = decode_buffer(state["buffer"])
        if state["alt"] is not None:
            alt = state["alt"]
            saved = decode_cursor(alt["cursor"]) if alt["cursor"] else None
            screen.alt = _Alt(alt["mode"], decode_buffer(alt["main"]), saved)
        return terminal


def _run(start: int, attr: int, cells: list[str]) -> list[Any]:
    """One run of cells: a string when every cell holds one character, else the cell list."""
    text = "".join(cells)
    if len(text) == len(cells) and "" not in cells:  # one character in every cell
        return [start, attr, text]
    return [start, attr, cells]
