"""Keys shown before prompt_toolkit handles them, and the redraws that leaves with nothing to do.

The guarded terminal runs its line editor in the broker, and prompt_toolkit lays out and
diffs the whole prompt after every key: most of a keystroke's CPU (bench.scale). Yet the
commonest keys change one cell: a printable character typed at the end of a plain one-line
input, and a Backspace there. For those, EchoAhead

1. sends the terminal what the redraw would (the character, or one column back and an
   erase to the end of the line) before the key is handled, so the echo does not wait;
2. edits the renderer's copy of the screen and its cursor the same way, so any later redraw
   diffs against what the terminal really shows;
3. skips the key's own redraw when the key did exactly that: the line holds the text
   expected, still plain, on the very screen that was edited. Anything else (a key bound to
   something else, a completion menu, a selection, a resize, output printed above the
   prompt) gets prompt_toolkit's full redraw.

Only a key that the input parser has already turned into exactly that one key press is
echoed (never a byte of an escape sequence, a paste or a multi-key binding still being read),
and only at a prompt whose drawing depends on nothing but its text: no password, placeholder,
right prompt, toolbar, lexer, input processors or frame, Emacs keys, nothing drawn right of
the cursor. What is shown decides nothing: the command judged and run is the buffer's text,
whatever was echoed, and Enter draws the whole line again from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prompt_toolkit.data_structures import Point
from prompt_toolkit.enums import EditingMode
from prompt_toolkit.filters import to_filter
from prompt_toolkit.shortcuts import PromptSession

BACKSPACES = (b"\x7f", b"\x08")
ERASE_LAST = b"\x08\x1b[K"


class EchoAhead:
    """Call with one key's bytes: what to show now, or None to leave the key to the redraw."""

    def __init__(self, session: PromptSession[str], columns: Callable[[], int]) -> None:
        self._session = session
        self._columns = columns
        self._expected: str | None = None
        self._screen: Any = None
        self._cursor: Point | None = None
        app = session.app
        self._full_redraw = app._redraw
        app._redraw = self._redraw  # type: ignore[method-assign]

    def __call__(self, key: bytes) -> bytes | None:
        """KEY: one byte the input parser has just turned into exactly one key press, with
        no key press before it still waiting to be handled."""
        app = self._session.app
        if self._expected is not None or app._invalidated or not self._plain():
            return None  # (a redraw still to come would start from a cursor we cannot know)
        renderer = app.renderer
        screen = renderer._last_screen
        size = renderer._last_size
        if screen is None or size is None or size.columns != self._columns():
            return None
        x, y = renderer._cursor_pos
        if x + 2 >= size.columns:
            return None  # the line would wrap
        row = screen.data_buffer.get(y)
        escapes = screen.zero_width_escapes.get(y, {})
        cursor_cell = row.get(x) if row is not None else None
        # The cell under the cursor at the end of the input is the blank drawn for the cursor,
        # and nothing is drawn right of it (a right prompt, say).
        if cursor_cell is None or cursor_cell.char != " " or x in escapes or x + 1 in escapes:
            return None
        if any(cell.char != " " for column, cell in row.items() if column > x):
            return None
        text = self._session.default_buffer.text
        if key in BACKSPACES:
            # Only a last character drawn as itself in one cell (not wide, combining, a
            # control character drawn as ^X, or the first of a wrapped row) is erased here.
            last = text[-1:]
            if x == 0 or not " " <= last <= "~" or x - 1 in escapes:
                return None
            drawn = row.get(x - 1)
            if drawn is None or drawn.char != last:
                return None
            row[x - 1] = cursor_cell
            after = row.get(x + 1)  # padding: the terminal's erase left blanks there too
            if after is None:
                row.pop(x, None)
            else:
                row[x] = after
            self._expect(text[:-1], screen, Point(x=x - 1, y=y))
            return ERASE_LAST
        if len(key) != 1 or not 0x20 <= key[0] < 0x7F:
            return None
        row[x + 1] = cursor_cell
        row[x] = type(cursor_cell)(key.decode("ascii"), cursor_cell.style)
        self._expect(text + key.decode("ascii"), screen, Point(x=x + 1, y=y))
        return key

    def _expect(self, text: str, screen: Any, cursor: Point) -> None:
        self._expected, self._screen, self._cursor = text, screen, cursor
        self._session.app.renderer._cursor_pos = cursor

    def _plain(self) -> bool:
        """A one-line input with the cursor at its end, nothing drawn that depends on it but
        its text, and no key half read by a key binding."""
        session = self._session
        app = session.app
        buffer = session.default_buffer
        if not app.is_running or app.is_done or app.layout.is_searching:
            return False
        keys = app.key_processor
        if app.current_buffer is not buffer or keys.arg is not None or app.quoted_insert:
            return False
        if keys.key_buffer or keys.input_queue or app.editing_mode is not EditingMode.EMACS:
            return False
        if (
            session.lexer is not None
            or session.input_processors
            or session.placeholder is not None
            or session.rprompt is not None
            or session.bottom_toolbar is not None
            or to_filter(session.is_password)()
            or to_filter(session.show_frame)()
        ):
            return False
        if (
            buffer.complete_state is not None
            or buffer.selection_state is not None
            or buffer.validation_error is not None
            or buffer.suggestion is not None
            or buffer.auto_suggest is not None
            or buffer.complete_while_typing()
        ):
            return False
        document = buffer.document
        return "\n" not in document.text and document.is_cursor_at_the_end

    def _redraw(self, render_as_done: bool = False) -> None:
        expected, self._expected = self._expected, None
        renderer = self._session.app.renderer
        if (
            expected is not None
            and not render_as_done
            and renderer._last_screen is self._screen
            and renderer._cursor_pos == self._cursor
            and self._session.default_buffer.text == expected
            and self._plain()
        ):
            return  # the screen already shows this, and the renderer knows it
        self._full_redraw(render_as_done)
