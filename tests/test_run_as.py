"""Local targets run as an OS user of their own (`run_as`), never as the broker's: the broker's
keys, store, environment and /proc entries are out of their reach, and the session environment
is built fresh. Against a real broker, through `hoopctl exec` and `hoopctl connect`."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    HOOP_BROKER,
    HOOPCTL,
    TARGET_USER,
    TARGET_USER2,
    BrokerProcess,
    User,
    dev_config,
    free_port,
    start_broker,
)
from tests.terminal_helpers import PROMPT, SESSION_ID, close_shell, run_line

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting run_as users needs root")

LEAK = "leak-7f3a9c1e-never-on-a-target"  # in the broker's environment, for nobody
OTHER_SECRET = "other-5b2d8e40-for-target-other-only"  # the `other` target's credential
OPEN_POLICY = """
[policies.open]
default = "allow"
on_unknown = "allow"
"""
TARGETS = f"""
[[targets]]
name = "shell"
type = "local"
run_as = "{TARGET_USER}"
command = ["bash", "--noprofile", "--norc"]
allowed_groups = ["engineers"]
policy = "open"

[[targets]]
name = "other"
type = "local"
run_as = "{TARGET_USER2}"
command = ["bash", "--noprofile", "--norc"]
env = {{ OTHER_TOKEN = "env:HOOP_OTHER_SECRET" }}
allowed_groups = ["engineers"]
policy = "open"

[[targets]]
name = "screen-shell"
type = "local"
run_as = "{TARGET_USER}"
guard = "screen"
command = ["bash", "--noprofile", "--norc", "-i"]
env = {{ PS1 = "$ " }}
allowed_groups = ["engineers"]
policy = "open"
{OPEN_POLICY}
"""
BROKER_ENV = {"HOOP_TEST_LEAK": LEAK, "HOOP_OTHER_SECRET": OTHER_SECRET}
# What a fresh session environment may hold: ours, and what bash itself adds.
SESSION_KEYS = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "HOOP_TARGET", "LESSSECURE"}
SESSION_KEYS |= {"LANG", "LC_ALL", "TZ", "PWD", "SHLVL", "_"}


@pytest.fixture(scope="module")
def reachable() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is root's alone, mode 0700): the
    broker's data dir inside it is then reachable, and only its own mode keeps targets out."""
    path = Path(tempfile.mkdtemp(prefix="hoop-run-as-", dir="/tmp"))
    path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def broker(reachable: Path) -> Iterator[BrokerProcess]:
    config = dev_config(
        reachable / "broker-data",
        port=free_port(),
        dev_port=free_port(),
        targets=TARGETS,
    )
    process = start_broker(reachable, config, env=BROKER_ENV)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def user(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> User:
    alice = User(tmp_path_factory.mktemp("alice"))
    assert alice.login(broker).returncode == 0
    return alice


def run(user: User, target: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return user.run("exec", target, "--", *argv)


def test_exec_runs_as_the_run_as_user(user: User) -> None:
    result = run(user, "shell", "id", "-un")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{TARGET_USER}\n"
    ids = run(user, "shell", "id")
    entry = pwd.getpwnam(TARGET_USER)
    assert f"uid={entry.pw_uid}({TARGET_USER}) gid={entry.pw_gid}" in ids.stdout
    assert "uid=0" not in ids.stdout and "(root)" not in ids.stdout
    assert run(user, "other", "id", "-un").stdout == f"{TARGET_USER2}\n"


def test_working_directory_is_the_users_home(user: User) -> None:
    home = pwd.getpwnam(TARGET_USER).pw_dir
    result = run(user, "shell", "pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{home}\n"


def test_target_cannot_read_the_brokers_keys_or_store(user: User, broker: BrokerProcess) -> None:
    data = broker.data_dir
    files = [data / name for name in ("user_ca", "host_key", "audit_key", "hoop.db")]
    # The broker made them so: the data dir 0700, keys and store 0600, all the broker's.
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert path.stat().st_uid == os.geteuid(), path
    # The data dir itself is reachable by name (its parent is open to all) …
    seen = run(user, "shell", "stat", "-c", "%a %U", str(data))
    assert seen.stdout == "700 root\n", seen.stderr
    # … but nothing in it can be read or listed.
    result = run(user, "shell", "cat", *map(str, files))
    assert result.returncode != 0
    assert result.stderr.count("Permission denied") == len(files), result.stderr
    listing = run(user, "shell", "ls", "-la", str(data))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    output = (result.stdout + result.stderr + listing.stdout).encode()
    for path in files[:3]:
        secret = path.read_bytes()
        assert secret not in output
        body = b"".join(secret.splitlines()[1:-1])[:40]  # the base64 of the private key
        assert body and body not in output.replace(b"\n", b"")
    assert b"BEGIN OPENSSH PRIVATE KEY" not in output


def test_brokers_proc_entries_are_unreadable(user: User, broker: BrokerProcess) -> None:
    assert broker.process is not None
    pid = broker.process.pid
    proc = f"/proc/{pid}"
    assert LEAK.encode() in Path(proc, "environ").read_bytes()  # root sees it: the check is real
    for entry in ("environ", "mem", "maps", "auxv"):
        result = run(user, "shell", "cat", f"{proc}/{entry}")
        assert result.returncode != 0, entry
        assert "Permission denied" in result.stderr, (entry, result.stderr)
        assert LEAK not in result.stdout and OTHER_SECRET not in result.stdout
    fds = run(user, "shell", "ls", f"{proc}/fd")
    assert fds.returncode != 0 and "Permission denied" in fds.stderr
    cwd = run(user, "shell", "ls", f"{proc}/cwd/")
    assert cwd.returncode != 0


def test_another_targets_secret_stays_with_it(user: User, broker: BrokerProcess) -> None:
    # The other target does get its credential …
    assert run(user, "other", "printenv", "OTHER_TOKEN").stdout == f"{OTHER_SECRET}\n"
    # … and this one sees it nowhere: not in its environment, not in the broker's.
    assert broker.process is not None
    for argv in (("env",), ("cat", f"/proc/{broker.process.pid}/environ")):
        result = run(user, "shell", *argv)
        assert OTHER_SECRET not in result.stdout + result.stderr, argv
        assert LEAK not in result.stdout + result.stderr, argv
    # Nor in the other target's running session: another OS user's processes.
    waiting = subprocess.Popen(
        [HOOPCTL, "exec", "other", "--", "sleep", "20"],
        env=user.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pid = _wait_for_process(TARGET_USER2, "sleep")
        result = run(user, "shell", "cat", f"/proc/{pid}/environ")
        assert result.returncode != 0 and "Permission denied" in result.stderr
        assert OTHER_SECRET not in result.stdout
        assert OTHER_SECRET.encode() in Path(f"/proc/{pid}/environ").read_bytes()  # it is there
    finally:
        waiting.terminate()
        waiting.wait(10)


def _wait_for_process(user: str, program: str, timeout: float = 20) -> int:
    uid = pwd.getpwnam(user).pw_uid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and Path(argv[0].decode()).name == program:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no {program} process of {user}")


def test_session_environment_is_fresh(user: User) -> None:
    result = run(user, "shell", "env")
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert "HOOP_TEST_LEAK" not in env and LEAK not in result.stdout
    assert set(env) <= SESSION_KEYS, set(env) - SESSION_KEYS
    entry = pwd.getpwnam(TARGET_USER)
    assert env["HOME"] == entry.pw_dir
    assert env["USER"] == env["LOGNAME"] == TARGET_USER
    assert env["SHELL"] == entry.pw_shell
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["HOOP_TARGET"] == "shell"
    assert env["LESSSECURE"] == "1"
    assert env["TERM"] == "dumb"


def test_interactive_session_runs_as_the_user_in_its_home(user: User) -> None:
    """A PTY session (guard = "screen", started by the broker's LocalPty) as well."""
    child = user.spawn("connect", "screen-shell", timeout=20)
    child.expect(SESSION_ID)
    child.expect(PROMPT)
    assert TARGET_USER in run_line(child, "id -un")
    assert pwd.getpwnam(TARGET_USER).pw_dir in run_line(child, "pwd")
    shown = run_line(child, "env")
    assert LEAK not in shown and OTHER_SECRET not in shown
    assert "LESSSECURE=1" in shown
    assert close_shell(child) == 0


# -- the configuration ---------------------------------------------------------------------
CHECKED = """
[broker]
data_dir = "data"

[oidc]
issuer = "https://idp.example.com"
client_id = "hoopctl"

[[targets]]
name = "web-1"
type = "ssh"
address = "10.0.0.5:22"
user = "deploy"
access_approvers = ["leads"]

[[targets]]
name = "box"
type = "local"
access_approvers = ["leads"]
{key}
"""


def check(tmp_path: Path, key: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "broker.toml"
    path.write_text(CHECKED.format(key=key))
    return subprocess.run(
        [HOOP_BROKER, "check-config", str(path)], capture_output=True, text=True, timeout=30
    )


def test_check_config_accepts_a_local_target_with_its_own_user(tmp_path: Path) -> None:
    result = check(tmp_path, f'run_as = "{TARGET_USER}"\nguard = "screen"')
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("", "targets[box].run_as: required key is missing"),
        ('run_as = "hoop-nobody-x9"', "targets[box].run_as: no OS user named 'hoop-nobody-x9'"),
        ('run_as = ""', "targets[box].run_as:"),
        ('run_as = "root"', "targets[box].run_as: 'root' is root"),
        ('run_as = "hoop-target"\nguard = "loose"', "targets[box].guard:"),
    ],
)
def test_check_config_refuses_a_local_target_without_a_user_of_its_own(
    tmp_path: Path, key: str, expected: str
) -> None:
    result = check(tmp_path, key)
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_refuses_the_brokers_own_user(tmp_path: Path) -> None:
    """Whoever runs the broker: a target as that user could read its keys. (As root, that is
    root; as another user, `run_as = "$USER"`.)"""
    me = pwd.getpwuid(os.geteuid()).pw_name
    result = check(tmp_path, f'run_as = "{me}"')
    assert result.returncode == 2
    assert "targets[box].run_as:" in result.stderr


# -- the broker process --------------------------------------------------------------------
def test_broker_without_setuid_refuses_local_sessions(tmp_path: Path) -> None:
    """Root without CAP_SETUID/CAP_SETGID cannot switch users: one line, and nothing runs."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    config = dev_config(tmp_path / "data", port=free_port(), dev_port=free_port(), targets=TARGETS)
    broker = start_broker(
        tmp_path, config, prefix=["setpriv", "--bounding-set=-setuid,-setgid", "--"]
    )
    try:
        alice = User(tmp_path / "alice")
        assert alice.login(broker).returncode == 0
        result = run(alice, "shell", "id", "-un")
        assert result.returncode != 0
        assert result.stdout == ""
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert (
            "the broker must run as root (or with CAP_SETUID/CAP_SETGID) to start local "
            "targets as run_as users"
        ) in lines[0]
        assert "Traceback" not in result.stderr
    finally:
        broker.stop()


def test_broker_process_is_not_dumpable(tmp_path: Path) -> None:
    """Broker.start makes the process non-dumpable (PR_GET_DUMPABLE reads 0 afterwards)."""
    config = dev_config(tmp_path / "data", port=free_port(), dev_port=free_port())
    script = textwrap.dedent(
        f"""
        import asyncio, ctypes, pathlib
        from broker.app import Broker
        from broker.config import parse_config

        async def main():
            libc = ctypes.CDLL(None)
            before = libc.prctl(3, 0, 0, 0, 0)
            config = parse_config({config!r}, base_dir=pathlib.Path("/"))
            broker = Broker(config, dev_mode=True)
            await broker.start()
            try:
                print("dumpable", before, libc.prctl(3, 0, 0, 0, 0))
            finally:
                await broker.stop()

        asyncio.run(main())
        """
    )
    python = Path(HOOP_BROKER).with_name("python")
    result = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "dumpable 1 0" in result.stdout


def test_loose_data_dir_is_tightened_and_a_foreign_one_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    config = dev_config(data, port=free_port(), dev_port=free_port())
    broker = start_broker(tmp_path, config)
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert "was mode 755" in broker.stderr_path.read_text()
    finally:
        broker.stop()
    entry = pwd.getpwnam(TARGET_USER)
    os.chown(data, entry.pw_uid, entry.pw_gid)
    with pytest.raises(RuntimeError, match="not the broker's user"):
        start_broker(tmp_path, config, name="foreign")
    os.chown(data, 0, 0)
