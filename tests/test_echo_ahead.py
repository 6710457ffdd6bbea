"""Keys echoed ahead of the guarded terminal's line editor (broker.sessions.echo_ahead).

prompt_toolkit runs here in-process, fed through the broker's own ChannelInput as a session
channel feeds it, with its output kept in a pyte terminal; the real terminal flows, through
`hoopctl connect` and sshd, are in test_guard_strict.py. Each key is given to EchoAhead first,
as ChannelTerminal._deliver does, and what it returns is shown before the key is handled.

The oracle is prompt_toolkit itself: the same keys and events at a prompt without echo
ahead. The screen must match it after every step, and prompt_toolkit's own full redraw at the
end must change nothing on the screen (its picture of the screen is exact, so any later
redraw draws right)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pyte
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.application.current import create_app_session
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.data_structures import Size
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import PromptSession
from pygments.lexers.shell import BashLexer

from broker.sessions.echo_ahead import EchoAhead
from broker.sessions.guarded_terminal import line_editor
from broker.sessions.prompt_channel import ChannelInput, lean_session, one_key

PROMPT = [
    ("[ZeroWidthEscape]", "\x1b]133;A\x07"),
    ("class:prompt", "alice@web"),
    ("", ":"),
    ("class:prompt.cwd", "~"),
    ("", "$"),
    ("[ZeroWidthEscape]", "\x1b]133;B\x07"),
    ("", "\u00a0"),
]
LEFT, RIGHT, HOME, END, UP = "\x1b[D", "\x1b[C", "\x1b[H", "\x1b[F", "\x1b[A"
PASTE = "\x1b[200~{}\x1b[201~"
# Cursor moves, shown/hidden, autowrap, attributes reset: what any redraw writes (an erase is
# not among them: it would change the screen).
_CONTROL = re.compile(r"\x1b\[\??[0-9;]*[hlABCD]|\x1b\[0m|[\r\x08]")


class _Terminal:
    """A pyte screen that prompt_toolkit (and the echo) write to."""

    encoding = "utf-8"

    def __init__(self, cols: int, rows: int) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.Stream(self.screen)
        self.written: list[str] = []

    def write(self, data: str) -> None:
        self.written.append(data)
        self.stream.feed(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def picture(self) -> tuple[list[str], tuple[int, int]]:
        return [line.rstrip() for line in self.screen.display], (
            self.screen.cursor.x,
            self.screen.cursor.y,
        )


class _Prompt:
    """The guarded terminal's line editor (guarded_terminal.line_editor), with or without echo
    ahead; with OPTIONS, a PromptSession of those options instead (configurations that echo
    ahead must stay out of)."""

    def __init__(self, ahead: bool, *, cols: int = 40, rows: int = 10, **options: Any) -> None:
        self.size = Size(rows=rows, columns=cols)
        self.terminal = _Terminal(cols, rows)
        self.input = ChannelInput()
        self.output = Vt100_Output(self.terminal, lambda: self.size, term="xterm", enable_cpr=False)
        history = InMemoryHistory()
        for line in ("echo older", "ls -la"):
            history.append_string(line)
        completer = WordCompleter(["echo", "export", "exit", "ls"])
        if options:
            self.session: PromptSession[str] = PromptSession(
                message=PROMPT,
                input=self.input,
                output=self.output,
                complete_while_typing=False,
                **options,
            )
            self.session.app.max_render_postpone_time = 0
        else:
            self.session = line_editor(lambda: PROMPT, completer, history, self.input, self.output)
        self.ahead = EchoAhead(self.session, lambda: self.size.columns) if ahead else None
        lean_session(self.session)
        self.renders = 0
        renderer = self.session.app.renderer
        draw = renderer.render

        def render(*args: Any, **kwargs: Any) -> None:
            self.renders += 1
            draw(*args, **kwargs)

        renderer.render = render  # type: ignore[method-assign]
        self.echoed = 0
        self.accepted: list[str] = []
        self._task: asyncio.Task[str] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(
            self.session.prompt_async(handle_sigint=False, set_exception_handler=False)
        )
        await self.settle()

    async def settle(self) -> None:
        """Until the keys fed are handled and drawn; a prompt that took a line (Enter) or
        was left (Ctrl-C, Ctrl-D) is followed by the next one, as in a session."""
        app = self.session.app
        for _ in range(200):
            for _ in range(5):
                await asyncio.sleep(0)
            if self._task is not None and self._task.done():
                with contextlib.suppress(KeyboardInterrupt, EOFError):
                    self.accepted.append(self._task.result())
                await self.start()
                continue
            if not app.invalidated and not self.input._keys and not self.input._scheduled:
                return
            await asyncio.sleep(0.001)

    def deliver(self, key: str) -> None:
        """As ChannelTerminal._deliver: KEY's bytes as one read, parsed, then its echo (when
        there is one) shown before the prompt handles it."""
        data = key.encode()
        parsed = self.input.feed(data)
        if self.ahead is not None and one_key(data, parsed):
            echo = self.ahead(data)
            if echo:
                self.echoed += 1
                self.terminal.write(echo.decode())

    async def above(self, text: str) -> None:
        """Output of a job printed above the prompt, as ChannelTerminal._print_above does."""
        await run_in_terminal(lambda: self.terminal.write(text), in_executor=False)

    def resize(self, cols: int) -> None:
        self.size = Size(rows=self.size.rows, columns=cols)
        self.terminal.screen.resize(self.size.rows, cols)
        self.session.app._on_resize()

    def full_redraw_changes_nothing(self) -> bool:
        """prompt_toolkit's full redraw now writes no cell: not a character, not a style, not
        an erase."""
        start = len(self.terminal.written)
        self.session.app.renderer.render(self.session.app, self.session.app.layout)
        written = "".join(self.terminal.written[start:])
        return not _CONTROL.sub("", written)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


Picture = tuple[list[str], tuple[int, int]]


async def _run(
    steps: list[tuple[str, Any]], ahead: bool, **options: Any
) -> tuple[_Prompt, list[tuple[Picture, str]]]:
    """The prompt after STEPS, and the screen and the buffer after each step."""
    prompt = _Prompt(ahead, **options)
    seen = []
    with create_app_session(input=prompt.input, output=prompt.output):
        await prompt.start()
        for kind, value in steps:
            if kind == "key":
                prompt.deliver(value)
            elif kind == "bytes":  # one read per byte: escape sequences split up
                for byte in value.encode():
                    prompt.deliver(bytes([byte]).decode("latin-1"))
                    await prompt.settle()
            elif kind == "burst":  # keys that arrive before the first is handled
                for key in value:
                    prompt.deliver(key)
            elif kind == "above":  # job output between a key's echo and its handling
                prompt.deliver(value[0])
                await prompt.above(value[1])
            elif kind == "resize":  # a resize between a key's echo and its handling
                prompt.deliver(value[0])
                prompt.resize(value[1])
            await prompt.settle()
            seen.append((prompt.terminal.picture(), prompt.session.default_buffer.text))
        prompt.pictures_match = prompt.full_redraw_changes_nothing()  # type: ignore[attr-defined]
        await prompt.stop()
    return prompt, seen


def _compare(steps: list[tuple[str, Any]], **options: Any) -> tuple[_Prompt, _Prompt]:
    """Run STEPS with and without echo ahead: after every step the screens and the buffers
    must be the same, and at the end the renderer's picture of the screen exact."""

    async def both() -> tuple[tuple[_Prompt, list[Any]], tuple[_Prompt, list[Any]]]:
        return await _run(steps, False, **options), await _run(steps, True, **options)

    (plain, plain_seen), (ahead, ahead_seen) = asyncio.run(both())
    for index, (step, expected, got) in enumerate(zip(steps, plain_seen, ahead_seen, strict=True)):
        assert got == expected, f"after step {index} {step!r}"
    assert ahead.accepted == plain.accepted
    assert ahead.pictures_match  # type: ignore[attr-defined]
    return plain, ahead


def _keys(text: str) -> list[tuple[str, Any]]:
    return [("key", key) for key in text]


def _line(prompt: _Prompt) -> str:
    return prompt.terminal.picture()[0][0]


def test_typing_and_erasing_at_the_end_is_echoed_at_once_and_not_redrawn() -> None:
    steps = [*_keys("echo helpp"), ("key", "\x7f"), ("key", "\x7f"), *_keys("lo world")]
    plain, ahead = _compare(steps)
    assert _line(ahead) == "alice@web:~$ echo hello world"
    # Every key was shown before prompt_toolkit handled it, and none needed a redraw.
    assert ahead.echoed == len(steps)
    assert ahead.renders == plain.renders - len(steps)


def test_ctrl_h_erases_like_backspace() -> None:
    _, ahead = _compare([*_keys("lsx"), ("key", "\x08"), *_keys(" -l")])
    assert ahead.session.default_buffer.text == "ls -l"
    assert ahead.echoed == 7


def test_edits_mid_line_are_drawn_by_the_line_editor() -> None:
    steps = [*_keys("echo world"), ("key", HOME), *_keys("xx"), ("key", "\x7f")]
    steps += [("key", END), *_keys("!"), ("key", LEFT), ("key", "\x7f"), ("key", RIGHT)]
    _, ahead = _compare(steps)
    assert ahead.session.default_buffer.text == "xecho worl!"
    assert _line(ahead) == "alice@web:~$ xecho worl!"


def test_only_keys_at_the_end_of_a_plain_line_skip_their_redraw() -> None:
    plain, ahead = _compare([*_keys("ab"), ("key", LEFT), *_keys("cd")])
    # "a" and "b" were echoed and not redrawn; Left, "c" and "d" (mid-line) were redrawn.
    assert ahead.echoed == 2
    assert plain.renders - ahead.renders == 2
    assert ahead.session.default_buffer.text == "acdb"


def test_a_key_bound_to_something_else_is_corrected_by_the_redraw() -> None:
    # A printable key bound to something that inserts nothing: the echo showed it, and the
    # key's redraw takes it back off the screen.
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("q")
    def _ignore(event: Any) -> None:
        pass

    _, ahead = _compare([*_keys("abq"), *_keys("c")], key_bindings=bindings)
    assert ahead.session.default_buffer.text == "abc"
    assert _line(ahead) == "alice@web:~$ abc"


def test_the_end_of_the_screen_line_is_left_to_the_line_editor() -> None:
    # 13 columns of prompt; 40 columns in all: the line wraps while typing, and a Backspace
    # at the first column of the second row is the line editor's.
    _, ahead = _compare([*_keys("x" * 40), ("key", "\x7f"), ("key", "\x7f")])
    assert ahead.session.default_buffer.text == "x" * 38
    _, ahead = _compare([*_keys("y" * 27), ("key", "\x7f"), *_keys("z")])
    assert ahead.session.default_buffer.text == "y" * 26 + "z"


def test_a_multi_line_input_is_left_to_the_line_editor() -> None:
    steps = [*_keys("echo a \\"), ("key", "\r"), *_keys("b"), ("key", "\x7f"), ("key", "\x7f")]
    _, ahead = _compare(steps)
    assert ahead.session.default_buffer.text == "echo a \\"


def test_erasing_what_is_not_one_plain_cell_is_the_line_editors() -> None:
    # The last character is wide, combining, two code points in one cell, or a control
    # character drawn as ^X: Backspace takes one code point, which is not one cell.
    for last in ("\u4e2d", "e\u0301", "\u0e01\u0e34", "\u200b"):
        _, ahead = _compare([*_keys("ls "), ("key", last), ("key", "\x7f"), *_keys("x")])
        assert ahead.session.default_buffer.text == "ls " + last[:-1] + "x"
    # Ctrl-Q quotes the next key: a Tab drawn as ^I.
    _, ahead = _compare(
        [*_keys("ls"), ("key", "\x11"), ("key", "\t"), ("key", "\x7f"), *_keys("x")]
    )
    assert ahead.session.default_buffer.text == "lsx"
    _, ahead = _compare([*_keys("ls"), ("key", PASTE.format("a\x01")), ("key", "\x7f")])
    assert ahead.session.default_buffer.text == "lsa"


def test_keys_split_across_reads_are_never_echoed_early() -> None:
    # An escape sequence one byte per read (Ctrl-Left, an unknown one), a two-key binding
    # (Ctrl-X, then r), and a paste one byte per read.
    _compare([*_keys("ls"), ("bytes", "\x1b[1;5D"), *_keys("x")])
    _compare([*_keys("ls"), ("bytes", "\x1b[20"), *_keys("x")])
    _compare([*_keys("ls"), ("key", "\x18"), ("key", "r"), *_keys("x")])
    _, ahead = _compare([*_keys("ls "), ("bytes", PASTE.format("ab")), *_keys("c")])
    assert ahead.session.default_buffer.text == "ls abc"


def test_menus_selections_and_history_are_the_line_editors() -> None:
    _, ahead = _compare([*_keys("e"), ("key", "\t"), *_keys("x"), ("key", "\x7f")])
    _compare([*_keys("e"), ("key", "\t"), ("key", "\t"), *_keys("a")])
    _compare([("burst", ["a", "\x00"]), *_keys("b"), ("key", "\x7f")])  # Ctrl-@ selects
    _, ahead = _compare([("key", UP), *_keys("x"), ("key", "\x7f"), ("key", "\x7f")])
    assert ahead.session.default_buffer.text == "ls -l"


def test_a_line_taken_by_enter_and_the_next_prompt() -> None:
    _, ahead = _compare([*_keys("ls"), ("key", "\r"), *_keys("pwd"), ("key", "\x7f")])
    assert ahead.accepted == ["ls"]
    assert ahead.session.default_buffer.text == "pw"


def test_job_output_and_resizes_between_an_echo_and_its_key() -> None:
    steps = [*_keys("ls"), ("above", ("x", "job output\r\n")), *_keys("y")]
    steps += [("resize", ("z", 60)), *_keys("w"), ("resize", ("\x7f", 30)), *_keys("!")]
    _, ahead = _compare(steps)
    assert ahead.session.default_buffer.text == "lsxyz!"


def test_keys_arriving_together_are_drawn_right() -> None:
    steps = [("burst", "ab"), ("burst", "c\x7f"), ("burst", "\x7f\x7f"), ("burst", "de")]
    _, ahead = _compare(steps)
    assert ahead.session.default_buffer.text == "de"


def test_a_key_that_changes_the_prompt_right_after_an_echo_gets_its_redraw() -> None:
    # The echoed character is in the line as expected, but the next key (handled before the
    # redraw) started a search or a numeric argument, which the prompt shows.
    _, ahead = _compare([("burst", ["a", "\x12"])])
    assert _line(ahead) == "(reverse-i-search)`': a"
    _, ahead = _compare([("burst", ["a", "\x1b3"])])
    assert _line(ahead) == "(arg: 3) a"
    _, ahead = _compare([("burst", ["a", "\x11"])])  # Ctrl-Q waits for the key to quote
    assert _line(ahead) == "alice@web:~$ a^"


def test_prompts_drawn_from_more_than_their_text_get_no_echo_ahead() -> None:
    # The same prompt without any of them is echoed ahead (the check below can fail).
    _, ahead = _compare([*_keys("ab"), ("key", "\x7f")], mouse_support=False)
    assert ahead.echoed == 3
    for options in (
        {"is_password": True},
        {"placeholder": "(type a command)"},
        {"rprompt": "RIGHT"},
        {"bottom_toolbar": lambda: "toolbar"},
        {"lexer": PygmentsLexer(BashLexer)},
        {"vi_mode": True},
    ):
        _, ahead = _compare(
            [*_keys("ab"), ("key", "\x7f"), ("key", "\x7f"), *_keys("c")], **options
        )
        assert ahead.echoed == 0, options


_KEY = st.sampled_from(
    [
        *("a", "b", " ", "'", "\\", "-", "\x7f", "\x08", LEFT, RIGHT, HOME, END, UP),
        *("e\u0301", "\x01", "\x05", "\x17", "\x15", "\x0b", "\x19", "\t"),
        *("\x1bb", "\x1b3", "\x12", "\r", "\x00", "\x18", "\x11", "\x1b"),
    ]
)
_STEP = st.one_of(
    st.tuples(st.just("key"), _KEY),
    st.tuples(st.just("bytes"), _KEY),
    st.tuples(st.just("burst"), st.lists(_KEY, min_size=2, max_size=3)),
    st.tuples(st.just("above"), st.tuples(_KEY, st.sampled_from(["out\r\n", "a\r\nb\r\n"]))),
    st.tuples(st.just("resize"), st.tuples(_KEY, st.sampled_from([30, 40, 55]))),
)


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(_STEP, max_size=30))
def test_any_keys_and_events_draw_what_the_line_editor_alone_draws(
    steps: list[tuple[str, Any]],
) -> None:
    _compare(steps)
