"""The broker's prompts (SQL shell, guarded terminal, questions) draw once per key, and a line
that arrives with its Enter is drawn once.

prompt_toolkit runs here in-process on a pipe with output to memory, set up as the broker sets
up every prompt (broker.sessions.prompt_channel.lean_session); the real terminal flows are in
test_terminal_*.py and test_sql_shell.py. A second, identical redraw after each key was half
of the broker's CPU per keystroke (bench.scale); the validator of a session that has one must
still run while typing."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

import pyte
import pytest
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.data_structures import Size
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import PromptSession
from prompt_toolkit.validation import ValidationError, Validator

from broker.sessions.guarded_terminal import line_editor
from broker.sessions.prompt_channel import ChannelInput, lean_session


class _Screen(io.StringIO):
    def isatty(self) -> bool:
        return True


def _count_renders(session: PromptSession[str]) -> list[int]:
    """A counter (its one item) of SESSION's renders from now on."""
    renderer = session.app.renderer
    draw = renderer.render
    count = [0]

    def render(*args: Any, **kwargs: Any) -> None:
        count[0] += 1
        draw(*args, **kwargs)

    renderer.render = render  # type: ignore[method-assign]
    return count


async def _type(keys: list[str], **options: Any) -> tuple[list[int], str, str | None]:
    """Renders after each key of KEYS at a broker prompt, the text written, and the line the
    prompt returned on Enter (None if it did not return one)."""
    screen = _Screen()
    with create_pipe_input() as pipe:
        output = Vt100_Output(screen, lambda: Size(24, 80), term="xterm", enable_cpr=False)
        session: PromptSession[str] = lean_session(
            PromptSession(
                message="alice@web:~$ ",
                input=pipe,
                output=output,
                complete_while_typing=False,
                **options,
            )
        )
        session.app.max_render_postpone_time = 0  # as the guarded terminal draws
        count = _count_renders(session)
        task = asyncio.ensure_future(session.prompt_async(handle_sigint=False))
        await asyncio.sleep(0.2)
        per_key = []
        for key in keys:
            before = count[0]
            pipe.send_text(key)
            for _ in range(500):  # the key's own redraw (a loaded machine may be slow)
                if count[0] > before:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # then time for any later redraw the key asked for
            per_key.append(count[0] - before)
        pipe.send_text("\r")
        done, _ = await asyncio.wait({task}, timeout=2)
        line = task.result() if done else None  # a validator may refuse the line
        task.cancel()
    return per_key, screen.getvalue(), line


def test_each_key_typed_is_drawn_once_and_shows_on_the_screen() -> None:
    keys = [*"ls -la", "\x7f", "\x7f", "x"]
    per_key, written, line = asyncio.run(_type(keys))
    assert per_key == [1] * len(keys)
    assert line == "ls -x"
    assert "alice@web:~$ ls -x" in written  # the line as drawn when Enter took it


def test_a_session_with_a_validator_still_validates_while_typing() -> None:
    class NoSemicolon(Validator):
        def validate(self, document: Any) -> None:
            if ";" in document.text:
                raise ValidationError(message="no semicolons here")

    keys = ["e", "c", ";"]
    _, written, line = asyncio.run(_type(keys, validator=NoSemicolon()))
    assert "no semicolons here" in written
    assert line is None  # Enter did not accept it


async def _answer_at_once(lean: bool, keys: str) -> tuple[int, list[str], tuple[int, int]]:
    """KEYS arriving in one read, through the broker's ChannelInput, at a waiting prompt of the
    guarded terminal's line editor (which draws at once: no redraw held back), set up as the
    broker sets it up (LEAN) or as prompt_toolkit alone: the renders after the prompt was
    first drawn, and the screen at the end."""
    terminal = pyte.Screen(60, 10)
    stream = pyte.Stream(terminal)

    class _Terminal(_Screen):
        def write(self, data: str) -> int:
            stream.feed(data)
            return len(data)

    keys_in = ChannelInput()
    output = Vt100_Output(_Terminal(), lambda: Size(10, 60), term="xterm", enable_cpr=False)
    session = line_editor(
        lambda: [("class:prompt", "alice@web:~$ ")],
        WordCompleter(["echo", "ls"]),
        InMemoryHistory(),
        keys_in,
        output,
    )
    if lean:
        lean_session(session)
    count = _count_renders(session)

    async def answer() -> None:
        with contextlib.suppress(KeyboardInterrupt, EOFError):  # Ctrl-C, Ctrl-D
            await session.prompt_async(handle_sigint=False, set_exception_handler=False)

    task = asyncio.ensure_future(answer())
    await asyncio.sleep(0.2)
    first = count[0]
    keys_in.feed(keys.encode())
    await asyncio.wait_for(task, 5)
    await asyncio.sleep(0.1)  # any redraw still asked for
    screen = [line.rstrip() for line in terminal.display]
    return count[0] - first, screen, (terminal.cursor.x, terminal.cursor.y)


@pytest.mark.parametrize(
    ("keys", "drawn_alone"),
    [
        ("ls -la\r", 2),  # a command and its Enter in one read, as a paste or a script sends it
        ("echo 'a\rb'\r", 2),  # a continuation line, then the end of the construct
        ("ls -la\x03", 2),  # Ctrl-C with text on the line
        ("echo ab\x1b[D\x1b[Dx\r", 2),  # cursor moves and an edit before Enter
        ("\x04", 1),  # Ctrl-D on an empty line: nothing to draw but the end
    ],
)
def test_a_line_answered_in_one_read_is_drawn_once_as_prompt_toolkit_draws_it(
    keys: str, drawn_alone: int
) -> None:
    lean_renders, lean_screen, lean_cursor = asyncio.run(_answer_at_once(True, keys))
    plain_renders, plain_screen, plain_cursor = asyncio.run(_answer_at_once(False, keys))
    assert (lean_screen, lean_cursor) == (plain_screen, plain_cursor)
    assert lean_screen[0].startswith("alice@web:~$")
    assert lean_renders == 1  # only the final drawing of the answered line
    # prompt_toolkit alone draws an edited line, then draws it again as the answer
    assert plain_renders == drawn_alone
