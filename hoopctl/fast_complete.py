"""One TAB on a target name, session id or request id, answered before Typer is imported.

Typer, rich and every command's module take longer to import than a TAB should.
The common completions (`hoopctl connect <TAB>`, `exec`, `request`, `approve`, `replay`,
`sessions show`) come from the local cache (hoopctl.completion_cache) anyway, so they are
answered here, in Typer's own output format for bash and zsh. Anything else (options, other
commands, an option given before the argument, fish) returns None and Typer answers it:
tests/test_completions.py checks that both give the same answer.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from hoopctl.completion_cache import recall

# The commands whose first argument names a thing in the cache, and the kind of thing.
FIRST_ARGUMENT = {
    ("connect",): "targets",
    ("exec",): "targets",
    ("request",): "targets",
    ("approve",): "requests",
    ("replay",): "sessions",
    ("sessions", "show"): "sessions",
}


def _split(text: str) -> list[str]:
    """Words as Click splits them: shell quoting, and an unterminated quote closes itself."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    try:
        for word in lexer:
            words.append(word)
    except ValueError:
        words.append(lexer.token)
    return words


def _zsh_escape(value: str) -> str:
    return (
        value.replace('"', '""')
        .replace("'", "''")
        .replace("$", "\\$")
        .replace("`", "\\`")
        .replace(":", r"\\:")
    )


def answer(env: Mapping[str, str]) -> str | None:
    """What hoopctl prints for this completion request, or None to let Typer answer."""
    mode = env.get("_HOOPCTL_COMPLETE", "")
    if mode == "complete_bash":
        words = _split(env.get("COMP_WORDS", ""))
        try:
            cword = int(env.get("COMP_CWORD", ""))
        except ValueError:
            return None
        args = words[1:cword]
        incomplete = words[cword] if cword < len(words) else ""
    elif mode == "complete_zsh":
        text = env.get("_TYPER_COMPLETE_ARGS", "")
        args = _split(text)[1:]
        if args and not text.endswith(" "):
            incomplete = args.pop()
        else:
            incomplete = ""
    else:
        return None
    kind = FIRST_ARGUMENT.get(tuple(args))
    if kind is None or incomplete.startswith("-"):
        return None
    from hoopctl.address import resolve
    from hoopctl.errors import HoopError

    try:
        broker = str(resolve(None))
    except HoopError:
        values: list[str] = []
    else:
        values = recall(broker, kind, incomplete)
    if mode == "complete_bash":
        return "\n".join(values) + "\n"
    if not values:
        return "_files\n"
    listed = "\n".join(f'"{_zsh_escape(value)}"' for value in values)
    return f"_arguments '*: :(({listed}))'\n"
