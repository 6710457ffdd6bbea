"""Looks for C libraries at import, without starting a process.

Some modules ask `ctypes.util.find_library` for a C library when they load. On Linux that runs
`ldconfig -p` for every name asked, and where the library is not installed it goes on to run
`gcc` and then `ld` to search for it:

- `asyncssh.crypto.pq` and `asyncssh.crypto.umac`, on every `import asyncssh`: liboqs (the
  sntrup761 key exchange) and libnettle (UMAC). 40-90 ms of every hoopctl command that
  connects and of every broker process, on any machine that has a compiler.
- `keyring.backends.macOS.api`, whenever keyring picks a backend by itself (no
  PYTHON_KEYRING_BACKEND): Security, CoreServices and Foundation, which only macOS has.
  About 50 ms of every hoopctl command that reads its key from the keyring.

`install()` makes those modules' lookups ask what the dynamic linker would load instead: the
folders of LD_LIBRARY_PATH, then its cache (/etc/ld.so.cache, read directly). A library that
`ctypes` could load is found as before; nothing else in the process is changed.

Installed by both packages' `__init__`, where asyncssh's import is already tuned (its DSA
warnings), so every hoopctl and broker process has it.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself is not imported: `hoopctl --version` loads this module
if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType
    from typing import Any

# The modules that look for a C library when they load.
LOOKING_MODULES = ("asyncssh.crypto.pq", "asyncssh.crypto.umac", "keyring.backends.macOS.api")
LINKER_CACHE = "/etc/ld.so.cache"
DEFAULT_FOLDERS = ("/lib", "/usr/local/lib", "/usr/lib")  # musl's, where there is no cache


def linker_library(name: str) -> str | None:
    """The library NAME (as in `-lNAME`) the dynamic linker would load, or None. Searched as
    the linker does: the folders of LD_LIBRARY_PATH, then its cache (/etc/ld.so.cache, read as
    it is: running `ldconfig -p` costs a process start per name), or the default folders where
    there is no cache (musl), then the bare `libNAME.so` as the linker itself finds it. In
    each, the newest `libNAME.so.N` this process can load wins (the cache may also list other
    architectures' libraries)."""
    for group in _candidate_groups(name):
        for candidate in sorted(group, key=_version, reverse=True):
            if _loads(candidate):
                return candidate
    return None


def _candidate_groups(name: str) -> Iterator[list[str]]:
    from pathlib import Path

    pattern = f"lib{name}.so*"
    for folder in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if folder:
            yield sorted(str(path) for path in Path(folder).glob(pattern))
    try:
        cache = Path(LINKER_CACHE).read_bytes()
    except OSError:
        # No cache (musl has none): the linker's default folders, as it would search them.
        for folder in DEFAULT_FOLDERS:
            yield sorted(str(path) for path in Path(folder).glob(pattern))
    else:
        marker = f"/lib{name}.so".encode()
        found: list[str] = []
        at = cache.find(marker)
        while at >= 0:
            # The cache's string table holds each library's full path, NUL-terminated.
            start, end = cache.rfind(b"\0", 0, at) + 1, cache.find(b"\0", at)
            found.append(os.fsdecode(cache[start : end if end >= 0 else len(cache)]))
            at = cache.find(marker, at + 1)
        yield found
    yield [f"lib{name}.so"]


def _version(path: str) -> tuple[int, ...]:
    """`libx.so.8.6` -> (8, 6); the unversioned development link -> () (tried last)."""
    suffix = path.rpartition(".so")[2]
    return tuple(int(part) for part in suffix.split(".") if part.isdigit())


def _loads(path: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(path)
    except OSError:
        return False
    return True


class _QuietLoader:
    """Runs a looking module with find_library answered by `linker_library`."""

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


class _LookingFinder:
    """Finds the looking modules as the import system would, with the quiet loader."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in LOOKING_MODULES:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """From now on, loading asyncssh, or keyring's macOS backend, runs no compiler in this
    process. Idempotent; nothing to do where find_library has no compiler fallback (not
    Linux)."""
    if not sys.platform.startswith("linux") or any(name in sys.modules for name in LOOKING_MODULES):
        return
    if not any(isinstance(finder, _LookingFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LookingFinder())
