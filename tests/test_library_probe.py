"""asyncssh looks for liboqs when it loads, and keyring's macOS backend for macOS's libraries
when keyring picks a backend; hoopctl and the broker make those looks run no C compiler
(broker.library_probe), and a liboqs the dynamic linker can load is still found.

A `gcc`, `cc` and `ld` of the test's own, first on PATH, write down that they were run: that is
what ctypes.util.find_library's fallback would start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import User, dev_config, free_port, start_broker

TOOLS = ("gcc", "cc", "ld")


@pytest.fixture
def compiler_trap(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH starts with stand-ins for the compiler and linker; each
    appends its name to the returned log file when run."""
    bin_dir = tmp_path / "trap-bin"
    bin_dir.mkdir()
    log = tmp_path / "compiler-runs.log"
    for tool in TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho {tool} "$@" >> {log}\nexit 1\n')
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


def _python(
    code: str, env: dict[str, str], unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key not in unset}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_plain_asyncssh_runs_the_compiler_so_the_trap_can_see_it(
    compiler_trap: tuple[dict[str, str], Path],
) -> None:
    # The control: without hoopctl's or the broker's package loaded first, the stand-ins run.
    env, log = compiler_trap
    result = _python("import asyncssh", env)
    assert result.returncode == 0, result.stderr
    assert log.exists() and "gcc" in log.read_text()


def test_a_session_and_its_broker_run_no_compiler(
    tmp_path: Path, compiler_trap: tuple[dict[str, str], Path]
) -> None:
    env, log = compiler_trap
    broker = start_broker(
        tmp_path, dev_config(tmp_path / "data", port=free_port(), dev_port=free_port()), env=env
    )
    try:
        alice = User(tmp_path / "alice")
        assert alice.login(broker).returncode == 0
        result = alice.run("exec", "dev-shell", "--", "echo", "through-the-broker", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "through-the-broker"
    finally:
        broker.stop()
    assert not log.exists(), log.read_text()


PICK_A_BACKEND = "import keyring; print(type(keyring.get_keyring()).__name__)"


def test_keyring_picking_a_backend_runs_the_compiler_so_the_trap_can_see_it(
    compiler_trap: tuple[dict[str, str], Path],
) -> None:
    env, log = compiler_trap
    result = _python(PICK_A_BACKEND, env, unset=("PYTHON_KEYRING_BACKEND",))
    assert result.returncode == 0, result.stderr
    assert log.exists() and "gcc" in log.read_text()


def test_hoopctl_picking_a_keyring_backend_runs_no_compiler(
    compiler_trap: tuple[dict[str, str], Path],
) -> None:
    env, log = compiler_trap
    result = _python("import hoopctl\n" + PICK_A_BACKEND, env, unset=("PYTHON_KEYRING_BACKEND",))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # a backend was picked (the file one where nothing else is)
    assert not log.exists(), log.read_text()


STUB_OQS = textwrap.dedent(
    """
    /* Just the names asyncssh looks up; it calls them only in a sntrup761 key exchange. */
    int OQS_KEM_ntruprime_sntrup761_keypair(unsigned char *pk, unsigned char *sk) { return 0; }
    int OQS_KEM_ntruprime_sntrup761_encaps(unsigned char *c, unsigned char *k,
                                           const unsigned char *pk) { return 0; }
    int OQS_KEM_ntruprime_sntrup761_decaps(unsigned char *k, const unsigned char *c,
                                           const unsigned char *sk) { return 0; }
    """
)


@pytest.fixture
def stub_liboqs(tmp_path: Path) -> Path:
    """A stand-in liboqs (it has the sntrup761 symbols), laid out as a package installs it:
    the versioned file and the development link. Returns the versioned file."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler here to build a stand-in liboqs")
    source = tmp_path / "oqs.c"
    source.write_text(STUB_OQS)
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    library = lib_dir / "liboqs.so.9"
    build = [compiler, "-shared", "-fPIC", "-Wl,-soname,liboqs.so.9", "-o", str(library)]
    subprocess.run([*build, str(source)], check=True, timeout=60)
    (lib_dir / "liboqs.so").symlink_to("liboqs.so.9")
    return library


def test_a_liboqs_on_the_library_path_is_still_found(tmp_path: Path, stub_liboqs: Path) -> None:
    probe = "import hoopctl, asyncssh.crypto.pq as pq; print(pq.sntrup_available)"
    found = _python(probe, {"LD_LIBRARY_PATH": str(stub_liboqs.parent)})
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "True"
    missing = _python(probe, {"LD_LIBRARY_PATH": str(tmp_path / "empty")})
    assert missing.stdout.strip() == "False"


def test_a_liboqs_in_the_linker_cache_is_found_without_starting_a_process(
    tmp_path: Path, stub_liboqs: Path
) -> None:
    # The cache's string table as ld.so.cache holds it: sonames and full paths, NUL-terminated.
    # Its first liboqs is a file no process can load (as another architecture's would be).
    unloadable = tmp_path / "i386" / "liboqs.so.9"
    unloadable.parent.mkdir()
    unloadable.write_text("not a library")
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(
        b"glibc-ld.so.cache1.1\0libc.so.6\0/usr/lib/libc.so.6\0liboqs.so.9\0"
        + os.fsencode(unloadable)
        + b"\0liboqs.so.9\0"
        + os.fsencode(stub_liboqs)
        + b"\0"
    )
    probe = textwrap.dedent(
        f"""
        import subprocess
        def refuse(*args, **kwargs):
            raise AssertionError(f"a process was started: {{args}}")
        subprocess.Popen = refuse
        import broker.library_probe
        broker.library_probe.LINKER_CACHE = {str(cache)!r}
        import hoopctl, asyncssh.crypto.pq as pq
        print(pq.sntrup_available, pq._oqs_lib)
        """
    )
    found = _python(probe, {"LD_LIBRARY_PATH": ""})
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["True", str(stub_liboqs)]


def test_the_linker_order_holds_and_the_newest_version_wins(
    tmp_path: Path, stub_liboqs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker import library_probe

    # Two majors in one LD_LIBRARY_PATH folder: the newer is taken, not the first by name.
    ld_dir = tmp_path / "ld"
    ld_dir.mkdir()
    for version in ("9", "10"):
        shutil.copy(stub_liboqs, ld_dir / f"liboqs.so.{version}")
    cached = tmp_path / "cached" / "liboqs.so.11"
    cached.parent.mkdir()
    shutil.copy(stub_liboqs, cached)
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(b"glibc-ld.so.cache1.1\0liboqs.so.11\0" + os.fsencode(cached) + b"\0")
    monkeypatch.setattr(library_probe, "LINKER_CACHE", str(cache))

    # LD_LIBRARY_PATH comes before the cache, as the linker searches them.
    monkeypatch.setenv("LD_LIBRARY_PATH", str(ld_dir))
    assert library_probe.linker_library("oqs") == str(ld_dir / "liboqs.so.10")
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    assert library_probe.linker_library("oqs") == str(cached)

    # No cache at all (musl): the default folders are searched instead.
    monkeypatch.setattr(library_probe, "LINKER_CACHE", str(tmp_path / "no-such-cache"))
    monkeypatch.setattr(library_probe, "DEFAULT_FOLDERS", (str(tmp_path / "empty"), str(ld_dir)))
    assert library_probe.linker_library("oqs") == str(ld_dir / "liboqs.so.10")
    monkeypatch.setattr(library_probe, "DEFAULT_FOLDERS", (str(tmp_path / "empty"),))
    # Then only the linker's own search by the bare name is left (liboqs is not installed here).
    assert library_probe.linker_library("oqs") in (None, "liboqs.so")
