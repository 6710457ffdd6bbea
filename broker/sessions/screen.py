"""What the user's terminal shows, rebuilt by a terminal emulator (pyte) fed with target output,
plus the prompt marks (OSC 133) that say where a command line starts."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import pyte

# Prompt marks: A prompt start, B input start, C command runs, D command done.
_MARK = re.compile(rb"\x1b\]133;([A-D])[^\x07\x1b]{0,64}(?:\x07|\x1b\\)")
_MARK_PREFIX = b"\x1b]133;"
_ALT_SCREEN = re.compile(rb"\x1b\[\?(?:1049|1047|47)([hl])")
_PASSWORD_PROMPT = re.compile(r"(pass(word|phrase|code)|PIN|secret|token)[^:]*:\s*$", re.IGNORECASE)
DEFAULT_PROMPT_PATTERN = r"^.*?[$#%>] "
# While a command runs, only the end of its output can matter (the screen the next prompt,
# a password prompt or an approver will see); older output is not emulated at all.
_RUNNING_TAIL = 16384


class ShellState(enum.Enum):
    UNKNOWN = "unknown"  # no prompt seen yet
    PROMPT = "prompt"  # the shell is reading a command line
    RUNNING = "running"  # a command runs; input belongs to it


@dataclass(frozen=True)
class CommandLine:
    """The command line as the screen shows it, or why it cannot be read with certainty."""

    text: str | None
    unknown: str | None = None


class _CountingScreen(pyte.Screen):
    """A pyte screen that counts how far its content has scrolled, so remembered rows stay valid."""

    scrolled = 0

    def index(self) -> None:
        bottom = self.margins.bottom if self.margins else self.lines - 1
        if self.cursor.y == bottom:
            self.scrolled += 1
        super().index()


class ScreenTracker:
    def __init__(
        self, cols: int, rows: int, *, integration: bool, prompt_pattern: str | None = None
    ) -> None:
        self.screen = _CountingScreen(cols, rows)
        self._stream = pyte.ByteStream(self.screen)
        self.integration = integration
        self._pattern = re.compile(prompt_pattern or DEFAULT_PROMPT_PATTERN)
        self.state = ShellState.UNKNOWN
        self.alternate_screen = False
        self._input_start: tuple[int, int] | None = None  # (absolute row, column)
        self._carry = b""
        self._pending = bytearray()
        self.prompts_seen = 0

    def feed(self, data: bytes) -> None:
        data = self._carry + data
        self._carry = b""
        # Keep a possibly incomplete mark at the end for the next chunk.
        tail = data.rfind(b"\x1b")
        if tail != -1 and len(data) - tail < 80:
            rest = data[tail:]
            if _MARK_PREFIX.startswith(rest) or (
                rest.startswith(_MARK_PREFIX) and not _MARK.match(rest)
            ):
                self._carry, data = rest, data[:tail]
        pos = 0
        for match in _MARK.finditer(data):
            self._feed_screen(data[pos : match.start()])
            self._on_mark(match.group(1))
            pos = match.end()
        self._feed_screen(data[pos:])

    def _feed_screen(self, data: bytes) -> None:
        if not data:
            return
        for match in _ALT_SCREEN.finditer(data):
            self.alternate_screen = match.group(1) == b"h"
        if self.integration and self.state is ShellState.RUNNING:
            self._pending += data
            if len(self._pending) > 2 * _RUNNING_TAIL:
                # Keep about the last _RUNNING_TAIL bytes, cut at a line break near there if
                # there is one; what is skipped scrolls by, and the tail starts on a fresh line.
                start = len(self._pending) - _RUNNING_TAIL
                cut = self._pending.rfind(b"\r\n", start - _RUNNING_TAIL // 2, start)
                keep_from = cut + 2 if cut != -1 else start
                self._pending = bytearray(b"\r\n") + self._pending[keep_from:]
            return
        self._sync()
        self._stream.feed(data)

    def _sync(self) -> None:
        """Bring the emulated screen up to date with output held back while a command ran."""
        if self._pending:
            pending, self._pending = bytes(self._pending), bytearray()
            self._stream.feed(pending)

    def _on_mark(self, kind: bytes) -> None:
        self._sync()
        if kind == b"A":
            self.state = ShellState.UNKNOWN
            self._input_start = None
        elif kind == b"B":
            self.state = ShellState.PROMPT
            self.prompts_seen += 1
            cursor = self.screen.cursor
            self._input_start = (cursor.y + self.screen.scrolled, cursor.x)
        elif kind == b"C":
            self.state = ShellState.RUNNING
            self._input_start = None

    def command_submitted(self) -> None:
        """The broker let an Enter through: until the next prompt, input belongs to the command."""
        if self.integration:
            self.state = ShellState.RUNNING
            self._input_start = None

    def resize(self, cols: int, rows: int) -> None:
        self._sync()
        self.screen.resize(rows, cols)

    def _row_text(self, row: int, start: int = 0) -> str:
        line = self.screen.buffer[row]
        return "".join(line[col].data for col in range(start, self.screen.columns))

    def command_line(self) -> CommandLine:
        self._sync()
        if self.alternate_screen:
            return CommandLine(None, "a full-screen program is showing")
        if not self.integration:
            return self._command_line_by_pattern()
        if self.state is not ShellState.PROMPT or self._input_start is None:
            return CommandLine(None, "no shell prompt seen")
        absolute_row, column = self._input_start
        row = absolute_row - self.screen.scrolled
        cursor = self.screen.cursor
        if row < 0 or row >= self.screen.lines:
            return CommandLine(None, "the prompt scrolled off the screen")
        if cursor.y < row or (cursor.y == row and cursor.x < column):
            return CommandLine(None, "the screen is out of sync with the prompt")
        parts = [self._row_text(row, column)]
        # Rows after the prompt row are the wrapped continuation of the same line.
        parts += [self._row_text(r) for r in range(row + 1, cursor.y + 1)]
        return CommandLine(_clean("".join(parts)))

    def _command_line_by_pattern(self) -> CommandLine:
        text = self._row_text(self.screen.cursor.y).rstrip()
        match = self._pattern.match(text)
        if not match:
            return CommandLine(None, "no shell prompt recognised on the cursor line")
        return CommandLine(_clean(text[match.end() :]))

    def at_password_prompt(self) -> bool:
        self._sync()
        text = self._row_text(self.screen.cursor.y)[: self.screen.cursor.x]
        return bool(_PASSWORD_PROMPT.search(text))

    def last_lines(self, count: int = 20) -> list[str]:
        self._sync()
        lines = [line.rstrip() for line in self.screen.display]
        while lines and not lines[-1]:
            lines.pop()
        return lines[-count:]


def _clean(text: str) -> str:
    return text.rstrip()
