"""The broker's prompts (SQL shell, guarded terminal, questions) draw once per key.

prompt_toolkit runs here in-process on a pipe with output to memory, set up as the broker sets
up every prompt (broker.sessions.prompt_channel.lean_session); the real terminal flows are in
test_terminal_*.py and test_sql_shell.py. A second, identical redraw after each key was half
of the broker's CPU per keystroke (bench.scale); the validator of a session that has one must
still run while typing."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import PromptSession
from prompt_toolkit.validation import ValidationError, Validator

from broker.sessions.prompt_channel import lean_session


class _Screen(io.StringIO):
    def isatty(self) -> bool:
        return True


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
        renderer = session.app.renderer
        draw = renderer.render
        count = [0]

        def render(*args: Any, **kwargs: Any) -> None:
            count[0] += 1
            draw(*args, **kwargs)

        renderer.render = render  # type: ignore[method-assign]
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
