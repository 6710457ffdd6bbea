"""Test helpers: run the real console scripts, start a real broker process, isolate each user."""

from __future__ import annotations

import functools
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pexpect

BIN = Path(sys.executable).parent
HOOPCTL = str(BIN / "hoopctl")
HOOP_BROKER = str(BIN / "hoop-broker")
REPO = Path(__file__).resolve().parent.parent
# hoopctl prints the code in bold on a terminal: allow colour codes before it.
USER_CODE = r"enter the code (?:\x1b\[[0-9;]*m)*(\w{4}-\w{4})"


# The OS users local targets run as (`run_as`): scripts/install-system-deps.sh creates them, and
# so does ensure_os_users() when the tests run as root.
TARGET_USER = "hoop-target"
TARGET_USER2 = "hoop-target2"


def ensure_os_users(*names: str) -> None:
    """Create the OS users NAMES (default: both test users) when missing; needs root."""
    for name in names or (TARGET_USER, TARGET_USER2):
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        if os.geteuid() != 0:
            raise RuntimeError(
                f"OS user {name} is missing: run scripts/install-system-deps.sh as root "
                f"(or useradd -m -s /bin/bash {name})"
            )
        group = ["-g", name] if _group_exists(name) else []
        subprocess.run(
            ["useradd", "-m", "-s", "/bin/bash", *group, name], check=True, capture_output=True
        )


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def give_to(path: Path, user: str = TARGET_USER) -> Path:
    """Make PATH (and everything under it) USER's, so a local target running as USER can use it."""
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def make_target_dir(prefix: str = "hoop-target-", user: str = TARGET_USER) -> Path:
    """A fresh directory USER owns and can reach (pytest's tmp_path is root's alone, mode 0700):
    for the files a local target must read or write, such as a sentinel that must survive."""
    return give_to(Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")), user)


def remove_target_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


_PORT_SLICE = 4000
# Ports handed out lately: not handed out again while a test may still be about to bind one.
_RECENT: deque[int] = deque(maxlen=1000)
_next_port: list[int] = []  # where the next search in this process's slice starts


@functools.cache
def _listen_port_range() -> tuple[int, int]:
    """This process's slice of the ports below the kernel's ephemeral range: no outgoing
    connection is ever given one of those, and each xdist worker has a slice of its own."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 0
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    low = ephemeral - workers * _PORT_SLICE
    if low < 10_000:
        return (0, 0)  # no room below it: the kernel's choice, as bind(0) gives
    return (low + index * _PORT_SLICE, low + (index + 1) * _PORT_SLICE)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback TCP port that nothing listens on now and that this process has not handed
    out lately. bind(0) once gave one test's two servers the same port, and it can give another
    xdist worker's test a port this one is about to bind."""
    low, high = _listen_port_range()
    if high:
        if not _next_port:
            _next_port.append(low + os.getpid() % (high - low))
        for _step in range(high - low):
            port = _next_port[0]
            _next_port[0] = low + (port + 1 - low) % (high - low)
            if port not in _RECENT and _bindable(port):
                _RECENT.append(port)
                return port
    for _attempt in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _RECENT:
            _RECENT.append(port)
            return port
    raise RuntimeError("no free loopback port found")


def dev_config(
    data_dir: Path,
    *,
    port: int,
    dev_port: int,
    auto_approve: str | None = "alice",
    id_token_ttl: str = "1h",
    certificate_ttl: str = "8h",
    targets: str = "",
) -> str:
    """A broker config for --dev: alice (engineers, dba), bob (engineers, approvers), carol."""
    approve = f'auto_approve = "{auto_approve}"\n' if auto_approve else ""
    return f"""
[broker]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"
certificate_ttl = "{certificate_ttl}"

[dev]
listen = "127.0.0.1:{dev_port}"
id_token_ttl = "{id_token_ttl}"
{approve}
[dev.users.alice]
groups = ["engineers", "dba"]

[dev.users.bob]
groups = ["engineers", "approvers"]

[dev.users.carol]
groups = ["contractors"]

[[targets]]
name = "dev-shell"
type = "local"
guard = "screen"
run_as = "{TARGET_USER}"
description = "bash on the broker host"
allowed_groups = ["engineers"]
policy = "guardrails"

[[targets]]
name = "prod-db"
type = "postgres"
address = "127.0.0.1:5432"
database = "prod"
user = "app"
credential = "env:PROD_DB_PASSWORD"
description = "production database"
allowed_groups = ["dba"]
# No policy: unknown input goes to review by these (check-config wants a group). No test user
# is in "leads", so such input does not run: nobody may approve it.
access_approvers = ["leads"]

[policies.guardrails]
default = "allow"
on_unknown = "review"
unknown_approvers = ["leads"]  # no test user is in it: unknown input does not run

[[policies.guardrails.rules]]
name = "no-rm"
action = "deny"
program = ["rm"]
{targets}
"""


def oidc_config(
    data_dir: Path, *, port: int, issuer: str, extra_oidc: str = "", targets: str = ""
) -> str:
    return f"""
[broker]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"

[oidc]
issuer = "{issuer}"
client_id = "hoopctl"
scopes = ["openid", "profile", "email", "groups", "offline_access"]
{extra_oidc}

[[targets]]
name = "dev-shell"
type = "local"
guard = "screen"
run_as = "{TARGET_USER}"
description = "bash on the broker host"
allowed_groups = ["engineers"]
access_approvers = ["leads"]

[[targets]]
name = "contractor-box"
type = "local"
guard = "screen"
run_as = "{TARGET_USER2}"
allowed_groups = ["contractors"]
access_approvers = ["leads"]
{targets}
"""


def _limit_file_size(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@dataclass
class BrokerProcess:
    config_path: Path
    data_dir: Path
    dev: bool = True
    process: subprocess.Popen[bytes] | None = None
    address: str = ""
    host_fingerprint: str = ""
    dev_issuer: str | None = None
    stdout_path: Path = field(default_factory=Path)
    stderr_path: Path = field(default_factory=Path)
    # Added to the broker's environment (e.g. the variables env: credentials name).
    env: dict[str, str] = field(default_factory=dict)
    # Runs the broker through this command, e.g. ["setpriv", "--bounding-set=-setuid", "--"].
    prefix: list[str] = field(default_factory=list)
    # `serve --workers N`: one process unless a test is about workers (the default is cores).
    workers: int = 1

    def start(self, timeout: float = 20.0, *, file_size_limit: int | None = None) -> BrokerProcess:
        """Start the broker; FILE_SIZE_LIMIT (bytes, RLIMIT_FSIZE) makes large writes fail for real."""
        workdir = self.config_path.parent
        self.stdout_path = workdir / f"{self.config_path.stem}.stdout"
        self.stderr_path = workdir / f"{self.config_path.stem}.stderr"
        args = [*self.prefix, HOOP_BROKER, "serve", "--config", str(self.config_path)]
        args += ["--workers", str(self.workers)]
        if self.dev:
            args.append("--dev")
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            offset = self.stderr_path.stat().st_size
            self.process = subprocess.Popen(
                args,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env={**os.environ, **self.env},
                preexec_fn=(lambda: _limit_file_size(file_size_limit)) if file_size_limit else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr_path.read_bytes()[offset:].decode(errors="replace")
            match = re.search(r"listening on (\S+) \(host key (SHA256:\S+)\)", text)
            if match:
                self.address, self.host_fingerprint = match.group(1), match.group(2)
                issuer = re.search(r"OIDC issuer at (http://\S+)", text)
                self.dev_issuer = issuer.group(1) if issuer else None
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("broker did not start in time")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def audit_events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        events = []
        for line in self.stdout_path.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event_type is None or event.get("type") == event_type:
                    events.append(event)
        return events

    def approve_dev_login(self, user_code: str, username: str, action: str = "approve") -> None:
        """Play the human at the dev issuer's verification page."""
        assert self.dev_issuer
        response = httpx.post(
            f"{self.dev_issuer}/device",
            data={"user_code": user_code, "username": username, "action": action},
            timeout=10,
        )
        assert response.status_code == 200, response.text


STORE_ENV = "HOOP_TEST_STORE"
"""`postgres`: every broker a test starts keeps its state in a fresh PostgreSQL database of
the machine's (`make test-postgres` runs the store-neutral modules that way)."""
_ADMIN_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
_made_databases: list[str] = []


def _drop_made_databases() -> None:
    import psycopg

    with psycopg.connect(_ADMIN_DB, autocommit=True) as conn:
        for name in _made_databases:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def with_test_store(config_text: str) -> str:
    """CONFIG_TEXT, on a fresh PostgreSQL database when HOOP_TEST_STORE=postgres (and the
    config names no store of its own)."""
    if os.environ.get(STORE_ENV) != "postgres" or "[store]" in config_text:
        return config_text
    import atexit
    import secrets

    import psycopg

    name = f"hoop_test_{secrets.token_hex(5)}"
    with psycopg.connect(_ADMIN_DB, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    if not _made_databases:
        atexit.register(_drop_made_databases)
    _made_databases.append(name)
    return config_text + f'\n[store]\nurl = "postgresql://postgres@127.0.0.1:5432/{name}"\n'


def start_broker(
    tmp_path: Path,
    config_text: str,
    *,
    dev: bool = True,
    name: str = "broker",
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    workers: int = 1,
) -> BrokerProcess:
    config_path = tmp_path / f"{name}.toml"
    config_text = with_test_store(config_text)
    config_path.write_text(config_text)
    data_dir = Path(re.search(r'data_dir = "([^"]+)"', config_text).group(1))  # type: ignore[union-attr]
    return BrokerProcess(
        config_path=config_path,
        data_dir=data_dir,
        dev=dev,
        env=dict(env or {}),
        prefix=list(prefix or []),
        workers=workers,
    ).start()


@dataclass
class User:
    """One person's machine: their own HOME, config dir and keyring file."""

    home: Path

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("HOOP_", "XDG_", "PYTHON_KEYRING"))
        }
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring",
            TERM="xterm-256color",
            COLUMNS="200",
        )
        return env

    @property
    def config_dir(self) -> Path:
        return self.home / ".config" / "hoopctl"

    def run(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HOOPCTL, *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )

    def spawn(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 30
    ) -> pexpect.spawn:
        return pexpect.spawn(
            HOOPCTL,
            list(args),
            env={**self.env, **(env or {})},
            encoding="utf-8",
            timeout=timeout,
            dimensions=(40, 200),
            # As from a terminal, a hang-up ends hoopctl: a test run started under nohup would
            # pass SIGHUP's "ignore" on, and a dropped client would then leave by SIGINT,
            # with an orderly end of input instead of a dropped connection.
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
        )

    def login(self, broker: BrokerProcess, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "login",
            "--broker",
            broker.address,
            "--accept-host-key",
            broker.host_fingerprint,
            "--no-browser",
            *extra,
        )

    def login_as(self, broker: BrokerProcess, username: str) -> str:
        """Log in through a dev issuer without auto-approval, approving as USERNAME; return stderr."""
        child = self.spawn(
            "login",
            "--broker",
            broker.address,
            "--accept-host-key",
            broker.host_fingerprint,
            "--no-browser",
        )
        child.expect(USER_CODE)
        broker.approve_dev_login(child.match.group(1), username)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        return str(child.before)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A failure a user sees: non-zero exit, no traceback, one 'hoopctl:' line naming the problem."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hoopctl: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
