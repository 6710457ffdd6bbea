"""The line editor's own floor: prompt_toolkit alone, with no SSH, no broker and no database.

    cd /work/main && .venv/bin/python -m bench.line_editor [--rounds 500] [--keys 400]

The SQL shell and the guarded terminal run the line editor in the broker (prompt_toolkit over
the SSH channel, as ../shared/DESIGN.md decides). This measures what that editor costs by
itself in this process, on a pipe instead of a channel, with output to memory:

1. one prompt cycle: `SELECT 1;` + Enter fed at once, from the start of `prompt_async` until
   it returns the line (what every SQL shell statement pays before the broker judges it);
2. one keystroke: a key fed, then the event loop left alone until prompt_toolkit has redrawn
   the line; the CPU time of this process per key (what every typed key costs the broker).

Each in three set-ups: a bare PromptSession, then with the SQL shell's multiline condition,
then with its SQL lexer too (the broker's `lean_session` in all). Prints p50/p90 and CPU per
key; asserts nothing. Nothing touches the network.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

from prompt_toolkit.data_structures import Size
from prompt_toolkit.filters import Condition
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import PromptSession
from pygments.lexers.sql import PostgresLexer

from broker.sessions.prompt_channel import lean_session


class _Screen(io.StringIO):
    def isatty(self) -> bool:
        return True


def _session(setup: str, inp: Any) -> PromptSession[str]:
    output = Vt100_Output(_Screen(), lambda: Size(40, 120), term="xterm", enable_cpr=False)
    options: dict[str, Any] = {}
    session: PromptSession[str]
    if setup != "bare":
        options["multiline"] = Condition(
            lambda: not session.default_buffer.text.rstrip().endswith(";")
        )
    if setup == "sql":
        options["lexer"] = PygmentsLexer(PostgresLexer)
    session = PromptSession(
        message="pg=> ",
        complete_while_typing=False,
        enable_history_search=False,
        mouse_support=False,
        input=inp,
        output=output,
        **options,
    )
    return lean_session(session)


async def prompt_cycles(setup: str, rounds: int) -> list[float]:
    with create_pipe_input() as inp:
        session = _session(setup, inp)
        samples = []
        for done in range(rounds + 20):
            start = time.perf_counter()
            inp.send_text("SELECT 1;\r")
            await session.prompt_async(handle_sigint=False, set_exception_handler=False)
            if done >= 20:  # the first rounds warm up
                samples.append(time.perf_counter() - start)
        return samples


async def keystroke_cpu(setup: str, keys: int) -> float:
    """CPU seconds of this process per key typed, each key redrawn before the next."""
    with create_pipe_input() as inp:
        session = _session(setup, inp)
        task = asyncio.ensure_future(
            session.prompt_async(handle_sigint=False, set_exception_handler=False)
        )
        await asyncio.sleep(0.2)
        renders = _counter(session)
        before = time.process_time()
        for i in range(keys):
            seen = renders()
            inp.send_text("x" if i % 2 == 0 else "\x7f")  # a key, then its erase
            deadline = time.monotonic() + 1
            while renders() == seen and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
        spent = time.process_time() - before
        inp.send_text(";\r")  # a complete line ends the prompt
        await asyncio.wait_for(task, 5)
        return spent / keys


def _counter(session: PromptSession[str]) -> Callable[[], int]:
    renderer = session.app.renderer
    original = renderer.render
    count = [0]

    def render(*args: Any, **kwargs: Any) -> None:
        count[0] += 1
        original(*args, **kwargs)

    renderer.render = render  # type: ignore[method-assign]
    return lambda: count[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--keys", type=int, default=400)
    args = parser.parse_args()
    print(f"{'set-up':<34} {'prompt p50':>11} {'p90':>8} {'CPU per key':>12}", flush=True)
    for setup, label in (
        ("bare", "bare PromptSession"),
        ("multiline", "+ the shell's multiline condition"),
        ("sql", "+ the SQL lexer (the SQL shell)"),
    ):
        samples = sorted(asyncio.run(prompt_cycles(setup, args.rounds)))
        per_key = asyncio.run(keystroke_cpu(setup, args.keys))
        p50 = statistics.median(samples) * 1000
        p90 = samples[int(len(samples) * 0.9)] * 1000
        print(f"{label:<34} {p50:>8.2f} ms {p90:>5.2f} ms {per_key * 1000:>9.2f} ms", flush=True)


if __name__ == "__main__":
    main()
