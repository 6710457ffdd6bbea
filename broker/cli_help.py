"""Help that shows what each option takes, shared by hoopctl and hoop-broker.

Typer labels every option and argument with its Python type (`--reason <str>`, `<path>`). Here
they show the usual words (TEXT, INTEGER, PATH); a flag shows none (Typer leaves out any label
naming bool), and a choice keeps its choices (`<table|json|csv>`).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument

# By the name of Typer's parameter type.
_WORDS = {
    "str": "TEXT",
    "int": "INTEGER",
    "int range": "INTEGER",
    "float": "NUMBER",
    "float range": "NUMBER",
    "path": "PATH",
}


def plain_help_types() -> None:
    """Install the labels (once; harmless if Typer's internals change: then nothing changes).

    A type without a label of its own is shown as `<name>`; the base type's `get_metavar` is the
    one place that label comes from, for options and arguments alike. An argument adds its
    type's label to its name (`target:TEXT`), which the usage line keeps without."""
    param_type = _base_param_type()
    original_argument = getattr(TyperArgument, "make_metavar", None)
    if param_type is None or original_argument is None or getattr(param_type, "_hoop", False):
        return

    def word(self: Any, param: Any, ctx: Any) -> str | None:
        return _WORDS.get(getattr(self, "name", ""))

    def argument_metavar(self: Any, ctx: Any, *args: Any, **kwargs: Any) -> Any:
        label = original_argument(self, ctx, *args, **kwargs)
        if not isinstance(label, str):
            return label
        ending = "..." if label.endswith("...") else ""
        stem = label.removesuffix(ending)
        for plain in _WORDS.values():
            if stem.endswith(":" + plain):
                return stem.removesuffix(":" + plain) + ending
        return label

    param_type.get_metavar = word  # type: ignore[attr-defined]
    param_type._hoop = True  # type: ignore[attr-defined]
    TyperArgument.make_metavar = argument_metavar  # type: ignore[method-assign]


def _base_param_type() -> Any:
    try:
        from typer._click.types import ParamType
    except ImportError:
        return None
    return ParamType
