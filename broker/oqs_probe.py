"""asyncssh's look for liboqs, without running a C compiler.

When `asyncssh.crypto.pq` loads (on every `import asyncssh`), it asks
`ctypes.util.find_library` for liboqs (the sntrup761 key exchange). Where liboqs is not
installed, find_library falls back to running `gcc` and then `ld` to search for it: 40-90 ms of
every hoopctl command that connects and of every broker process, on any machine that has a
compiler. `install()` makes that one module's lookup ask what the dynamic linker would load
instead: its cache (`ldconfig -p`), then the folders of LD_LIBRARY_PATH. A liboqs that
`ctypes` could load is found as before; nothing else in the process is changed.

Installed by both packages' `__init__`, where asyncssh's import is already tuned (its DSA
warnings), so every hoopctl and broker process has it.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself is not imported: `hoopctl --version` loads this module
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

PQ_MODULE = "asyncssh.crypto.pq"


def linker_library(name: str) -> str | None:
    """The library NAME (as in `-lNAME`) the dynamic linker would load, or None."""
    import ctypes.util
    from pathlib import Path

    cached: Callable[[str], str | None] | None = getattr(ctypes.util, "_findSoname_ldconfig", None)
    if cached is not None:
        found = cached(name)
        if found:
            return found
    for folder in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if folder:
            matches = sorted(Path(folder).glob(f"lib{name}.so*"))
            if matches:
                return str(matches[0])
    return None


class _QuietLoader:
    """Runs the pq module with find_library answered by `linker_library`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        import ctypes.util

        original = ctypes.util.find_library
        ctypes.util.find_library = linker_library
        try:
            self._inner.exec_module(module)
        finally:
            ctypes.util.find_library = original

    def __getattr__(self, name: str) -> Any:  # get_source, is_package…: the real loader's
        return getattr(self._inner, name)


class _PqFinder:
    """Finds `asyncssh.crypto.pq` as the import system would, with the quiet loader."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != PQ_MODULE:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """From now on, loading asyncssh in this process runs no compiler. Idempotent; nothing
    to do where find_library has no compiler fallback (not Linux)."""
    if not sys.platform.startswith("linux") or PQ_MODULE in sys.modules:
        return
    if not any(isinstance(finder, _PqFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PqFinder())
