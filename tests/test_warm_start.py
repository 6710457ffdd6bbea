"""Warm start (HOOPCTL_PERSIST): quick commands run in a child of a warm hoopctl process.

Real broker, real `hoopctl` console script, real local target. Each test has its own runtime
dir (XDG_RUNTIME_DIR), so its warm process and socket are its own; teardown stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.helpers import (
    HOOPCTL,
    TARGET_USER,
    BrokerProcess,
    User,
    dev_config,
    free_port,
    start_broker,
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    root = tmp_path_factory.mktemp("warm")
    sqlite3.connect(root / "notes.db").close()
    targets = f"""
[[targets]]
name = "notes"
type = "sqlite"
path = "{root / "notes.db"}"
allowed_groups = ["dba"]
"""
    config = dev_config(root / "data", port=free_port(), dev_port=free_port(), targets=targets)
    process = start_broker(root, config)
    yield process
    process.stop()


@pytest.fixture
def runtime() -> Iterator[Path]:
    # Short: a Unix socket's path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="hw", dir="/tmp"))
    path.chmod(0o700)
    yield path
    for sock in path.glob("hoopctl/warm-*.sock"):
        for pid in warm_pids(sock):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def person(broker: BrokerProcess, alice: User, runtime: Path) -> tuple[User, dict[str, str]]:
    assert alice.login(broker).returncode == 0
    env = {**alice.env, "XDG_RUNTIME_DIR": str(runtime), "HOOPCTL_PERSIST": "10m"}
    return alice, env


def warm_pids(sock: Path) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"hoopctl.warm {sock}"], capture_output=True, text=True
    ).stdout.split()
    return [int(pid) for pid in found]


def warm_process(runtime: Path, timeout: float = 15) -> tuple[Path, int]:
    """The warm process's socket and pid, once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sock in runtime.glob("hoopctl/warm-*.sock"):
            pids = warm_pids(sock)
            if pids:
                return sock, pids[0]
        time.sleep(0.05)
    raise AssertionError("no warm hoopctl process started")


def run(env: dict[str, str], *args: str, input: str = "", extra: dict[str, str] | None = None):
    return subprocess.run(
        [HOOPCTL, *args],
        input=input,
        capture_output=True,
        text=True,
        env={**env, **(extra or {})},
        timeout=60,
    )


def cold_python_path(tmp: Path) -> dict[str, str]:
    """An environment in which a cold hoopctl cannot start: `typer` fails to import. Only a
    run handed to the warm process (whose client imports nothing of the sort) succeeds."""
    (tmp / "typer.py").write_text("raise ImportError('cold start in a warm-start test')\n")
    return {"PYTHONPATH": str(tmp)}


def test_commands_run_warm_with_the_callers_streams_status_and_directory(
    person: tuple[User, dict[str, str]], runtime: Path, tmp_path: Path
) -> None:
    _alice, env = person
    first = run(env, "exec", "dev-shell", "--", "echo", "cold-first")
    assert first.returncode == 0 and first.stdout == "cold-first\n", first.stderr
    warm_process(runtime)
    (tmp_path / "broken").mkdir()
    broken = cold_python_path(tmp_path / "broken")
    # A cold start is impossible here, so these ran warm:
    # stdin and stdout are the caller's own...
    echoed = run(
        env, "exec", "notes", "--output", "csv", input="SELECT 'piped through' AS x", extra=broken
    )
    assert echoed.returncode == 0, echoed.stderr
    assert echoed.stdout.splitlines() == ["x", "piped through"]
    # ...and so are stderr and the exit status (a denied command: 3)...
    denied = run(env, "exec", "dev-shell", "--", "rm", "-f", "/tmp/x", extra=broken)
    assert denied.returncode == 3
    assert "denied by rule no-rm" in denied.stderr
    # ...the environment (the output format a listing picks up is the caller's)...
    listing = run(env, "whoami", "--output", "json", extra=broken)
    assert listing.returncode == 0, listing.stderr
    assert '"user": "alice"' in listing.stdout
    # ...and the working directory: a relative --file is read where the caller is.
    here = tmp_path / "here"
    here.mkdir()
    (here / "query.sql").write_text("SELECT 'from-the-callers-directory' AS place")
    queried = subprocess.run(
        [HOOPCTL, "exec", "notes", "-f", "query.sql", "--output", "csv"],
        capture_output=True,
        text=True,
        env={**env, **broken},
        cwd=here,
        timeout=60,
    )
    assert queried.returncode == 0, queried.stderr
    assert "from-the-callers-directory" in queried.stdout
    # Without HOOPCTL_PERSIST, the same environment is a cold start, which cannot run.
    cold = run({k: v for k, v in env.items() if k != "HOOPCTL_PERSIST"}, "whoami", extra=broken)
    assert cold.returncode != 0


def test_ctrl_c_reaches_the_warm_child(
    person: tuple[User, dict[str, str]], runtime: Path, tmp_path: Path
) -> None:
    _alice, env = person
    run(env, "whoami")
    warm_process(runtime)
    marker = f"/tmp/warm-sleep-{os.getpid()}"
    child = subprocess.Popen(
        [HOOPCTL, "exec", "dev-shell", "--", "sh", "-c", f"echo started; sleep 30; touch {marker}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "started\n"
    started = time.monotonic()
    child.send_signal(signal.SIGINT)
    status = child.wait(20)
    assert status == 130, child.stderr.read() if child.stderr else ""
    assert time.monotonic() - started < 15
    assert not Path(marker).exists()


def test_a_terminal_gets_the_same_output(
    person: tuple[User, dict[str, str]], runtime: Path
) -> None:
    _alice, env = person
    run(env, "whoami")
    warm_process(runtime)
    shell = pexpect.spawn(
        HOOPCTL, ["exec", "dev-shell", "--", "echo", "on-a-tty"], env=env, timeout=30
    )
    shell.expect("on-a-tty")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 0


def test_it_goes_away_when_idle_and_a_dead_one_is_replaced(
    person: tuple[User, dict[str, str]], runtime: Path
) -> None:
    _alice, env = person
    short = {**env, "HOOPCTL_PERSIST": "2s"}
    run(short, "whoami")
    sock, pid = warm_process(runtime)
    assert run(short, "whoami").returncode == 0  # a command resets its idle time
    deadline = time.monotonic() + 20
    while warm_pids(sock) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not warm_pids(sock), "the warm process outlived HOOPCTL_PERSIST"
    assert not sock.exists(), "it left its socket behind"
    # One that was killed leaves a socket nobody answers: the next run starts cold and a new
    # warm process takes the socket over.
    run(env, "whoami")
    sock, pid = warm_process(runtime)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert sock.exists()
    again = run(env, "whoami")
    assert again.returncode == 0, again.stderr
    _sock, new_pid = warm_process(runtime)
    assert new_pid != pid


def test_only_its_own_user_is_served(person: tuple[User, dict[str, str]], runtime: Path) -> None:
    """The socket's directory is the user's alone; and were it reachable, another uid is
    turned away by the warm process itself (SO_PEERCRED)."""
    _alice, env = person
    run(env, "whoami")
    sock, _pid = warm_process(runtime)
    assert (sock.parent.stat().st_mode & 0o777) == 0o700
    # Opened up (as a careless chmod would), another user reaches the socket...
    sock.parent.chmod(0o711)
    runtime.chmod(0o711)
    sock.chmod(0o777)
    probe = (
        "import json, socket, struct\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect({str(sock)!r})\n"
        "body = json.dumps({'argv': ['whoami'], 'env': {}, 'cwd': '/'}).encode()\n"
        "s.settimeout(10)\n"
        "try:\n"
        # Refused at once (peer credentials are read on accept): the send may already fail.
        "    socket.send_fds(s, [struct.pack('!I', len(body)) + body], [0, 1, 2])\n"
        "    data = s.recv(100)\n"
        "except (ConnectionResetError, BrokenPipeError):\n"
        "    data = b''\n"
        "print('closed' if data == b'' else 'answered')\n"
    )
    other = subprocess.run(
        [
            "setpriv",
            f"--reuid={TARGET_USER}",
            f"--regid={TARGET_USER}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert other.stdout.strip() == "closed", other.stdout + other.stderr
    # ...and hoopctl itself no longer trusts a directory others can enter: it runs cold.
    from hoopctl import warm

    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        assert warm.socket_path() is None
    finally:
        del os.environ["XDG_RUNTIME_DIR"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("10m", 600.0), ("45", 45.0), ("1h", 3600.0), ("0", None), ("no", None), ("", None)],
)
def test_persist_values(value: str, seconds: float | None) -> None:
    from hoopctl.warm import persist_seconds

    assert persist_seconds(value) == seconds
