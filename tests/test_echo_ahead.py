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
import re
from typing import Any

import pyte
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.application.current import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.filters import Condition
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import PromptSession

from broker.sessions.echo_ahead import EchoAhead
from broker.sessions.prompt_channel import ChannelInput, lean_session

PROMPT = [
    ("[ZeroWidthEscape]", "\x1b]133;A\x07"),
    ("class:prompt", "alice@web"),
    ("", ":"),
    ("class:prompt.cwd", "~"),
    ("", "$"),
    ("[ZeroWidthEscape]", "\x1b]133;B\x07"),
    ("", "\u00a0"),
]
LEFT, RIGHT, HOME, END = "\x1b[D", "\x1b[C", "\x1b[H", "\x1b[F"
# Cursor moves, shown/hidden, autowrap, attributes reset: what any redraw writes.
_CONTROL = re.compile(r"\x1b\[\??[0-9;]*[hlABCDK]|\x1b\[0m|[\r\x08]")


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
    """One guarded-terminal-like prompt, with or without echo ahead."""

    def __init__(self, ahead: bool, *, cols: int = 40, rows: int = 10, **options: Any) -> None:
        self.size = Size(rows=rows, columns=cols)
        self.terminal = _Terminal(cols, rows)
        self.input = ChannelInput()
        self.output = Vt100_Output(self.terminal, lambda: self.size, term="xterm", enable_cpr=False)
        self.session: PromptSession[str] = PromptSession(
            message=PROMPT,
            complete_while_typing=False,
            input=self.input,
            output=self.output,
            **options,
        )
        self.session.app.max_render_postpone_time = 0
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
        self._task: asyncio.Task[str] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(
            self.session.prompt_async(handle_sigint=False, set_exception_handler=False)
        )
        await self.settle()

    async def settle(self) -> None:
        app = self.session.app
        for _ in range(200):
            for _ in range(5):
                await asyncio.sleep(0)
            if not app.invalidated and not self.input._keys and not self.input._scheduled:
                return
            await asyncio.sleep(0.001)

    def deliver(self, key: str) -> None:
        """As ChannelTerminal._deliver: the echo (when there is one) is shown first."""
        data = key.encode()
        if self.ahead is not None and len(data) == 1:
            echo = self.ahead(data)
            if echo:
                self.echoed += 1
                self.terminal.write(echo.decode())
        self.input.feed(data)

    async def above(self, text: str) -> None:
        """Output of a job printed above the prompt, as ChannelTerminal._print_above does."""
        await run_in_terminal(lambda: self.terminal.write(text), in_executor=False)

    def resize(self, cols: int) -> None:
        self.size = Size(rows=self.size.rows, columns=cols)
        self.terminal.screen.resize(self.size.rows, cols)
        self.session.app._on_resize()

    def full_redraw_changes_nothing(self) -> bool:
        """prompt_toolkit's full redraw now writes no cell: not a character, not a style."""
        start = len(self.terminal.written)
        self.session.app.renderer.render(self.session.app, self.session.app.layout)
        written = "".join(self.terminal.written[start:])
        return not _CONTROL.sub("", written)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _run(steps: list[tuple[str, Any]], ahead: bool, **options: Any) -> _Prompt:
    prompt = _Prompt(ahead, **options)
    with create_app_session(input=prompt.input, output=prompt.output):
        await prompt.start()
        for kind, value in steps:
            if kind == "key":
                prompt.deliver(value)
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
        prompt.pictures_match = prompt.full_redraw_changes_nothing()  # type: ignore[attr-defined]
        await prompt.stop()
    return prompt


def _compare(steps: list[tuple[str, Any]], **options: Any) -> tuple[_Prompt, _Prompt]:
    async def both() -> tuple[_Prompt, _Prompt]:
        return await _run(steps, False, **options), await _run(steps, True, **options)

    plain, ahead = asyncio.run(both())
    assert ahead.terminal.picture() == plain.terminal.picture()
    assert ahead.session.default_buffer.text == plain.session.default_buffer.text
    assert ahead.pictures_match  # type: ignore[attr-defined]
    return plain, ahead


def _keys(text: str) -> list[tuple[str, Any]]:
    return [("key", key) for key in text]


def test_typing_and_erasing_at_the_end_is_echoed_at_once_and_not_redrawn() -> None:
    steps = _keys("echo helpp") + [("key", "\x7f")] * 2 + _keys("lo world")
    plain, ahead = _compare(steps)
    assert ahead.terminal.picture()[0][0] == "alice@web:~$ echo hello world"
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
    assert ahead.terminal.picture()[0][0] == "alice@web:~$ xecho worl!"


def test_a_key_bound_to_something_else_is_corrected_by_the_redraw() -> None:
    # A printable key bound to something that inserts nothing: the echo showed it, and the
    # key's redraw takes it back off the screen.
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("q")
    def _ignore(event: Any) -> None:
        pass

    _, ahead = _compare(_keys("abq") + _keys("c"), key_bindings=bindings)
    assert ahead.session.default_buffer.text == "abc"
    assert ahead.terminal.picture()[0][0] == "alice@web:~$ abc"


def test_the_end_of_the_screen_line_is_left_to_the_line_editor() -> None:
    # 13 columns of prompt; 40 columns in all: the line wraps while typing.
    _, ahead = _compare(_keys("x" * 40) + [("key", "\x7f")] * 3, cols=40)
    assert ahead.session.default_buffer.text == "x" * 37
    assert ahead.echoed < 43


def test_a_multi_line_input_is_left_to_the_line_editor() -> None:
    steps = _keys("echo a \\") + [("key", "\r")] + _keys("b") + [("key", "\x7f")] * 2
    _, ahead = _compare(steps, multiline=Condition(lambda: True))
    assert ahead.session.default_buffer.text == "echo a \\"


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
    assert ahead.terminal.picture()[0][0] == "(reverse-i-search)`': a"
    _, ahead = _compare([("burst", ["a", "\x1b3"])])
    assert ahead.terminal.picture()[0][0] == "(arg: 3) a"


_KEY = st.sampled_from(
    [
        "a",
        "b",
        " ",
        "'",
        "\\",
        "-",
        "\x7f",
        "\x08",
        LEFT,
        RIGHT,
        HOME,
        END,
        "\x01",
        "\x05",
        "\x17",
        "\x15",
        "\x0b",
        "\x19",
        "\t",
        "\x1bb",
        "\x1bf",
        "\x1b3",
        "\x12",
        "\r",
    ]
)
_STEP = st.one_of(
    st.tuples(st.just("key"), _KEY),
    st.tuples(st.just("burst"), st.lists(_KEY, min_size=2, max_size=3)),
    st.tuples(st.just("above"), st.tuples(_KEY, st.sampled_from(["out\r\n", "a\r\nb\r\n"]))),
    st.tuples(st.just("resize"), st.tuples(_KEY, st.sampled_from([30, 40, 55]))),
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_STEP, max_size=30))
def test_any_keys_and_events_draw_what_the_line_editor_alone_draws(
    steps: list[tuple[str, Any]],
) -> None:
    _compare(steps, multiline=Condition(lambda: True))


def test_only_keys_at_the_end_of_a_plain_line_skip_their_redraw() -> None:
    plain, ahead = _compare([*_keys("ab"), ("key", LEFT), *_keys("cd")])
    # "a" and "b" were echoed and not redrawn; Left, "c" and "d" (mid-line) were redrawn.
    assert ahead.echoed == 2
    assert plain.renders - ahead.renders == 2
    assert ahead.session.default_buffer.text == "acdb"
