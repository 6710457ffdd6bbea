"""Help that shows what each option takes, shared by hoopctl and hoop-broker.

Typer labels every option with its Python type (`--no-wait <bool>`, `--reason <str>`). A flag
takes no value, so it shows none; the others show the usual words (TEXT, INTEGER, PATH).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

_WORDS = {
    "<str>": "TEXT",
    "<int>": "INTEGER",
    "<float>": "NUMBER",
    "<path>": "PATH",
    "<list[str]>": "TEXT",
    "<list[path]>": "PATH",
}


def plain_help_types() -> None:
    """Install the labels (once; harmless if Typer's internals change: then nothing changes)."""
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_hoop", False):
        return

    def option_label(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False):
            return None
        label = original(self, ctx)
        return _WORDS.get(label, label) if isinstance(label, str) else label

    option_label._hoop = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = option_label  # type: ignore[method-assign]
    argument_label = getattr(TyperArgument, "display_type_rich", None)
    if argument_label is not None:

        def plain_argument(self: Any, ctx: Any) -> str | None:
            label = argument_label(self, ctx)
            return _WORDS.get(label, label) if isinstance(label, str) else label

        TyperArgument.display_type_rich = plain_argument  # type: ignore[method-assign]
