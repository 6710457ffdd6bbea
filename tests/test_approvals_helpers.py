"""Shared set-up for the approval tests: a broker with review rules and several real users.

Each person logs in with the real `hoopctl login` (device flow against the broker's dev issuer
or the third-party test IdP); their key and certificate are then read from their own keyring
file and used for SSH connections exactly as hoopctl makes them (session channels with the
documented session command, and the hoop-api subsystem through hoopctl's ApiClient). No test
in this module: it holds helpers only; the fixtures built on them (a module's broker with its
people logged in) are in tests/fixtures/approvals.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from hoopctl.transport import ApiClient
from tests.helpers import TARGET_USER, BrokerProcess, User, free_port, start_broker

SHELL_RULES = """
[policies.shell]
default = "allow"
on_unknown = "review"

[[policies.shell.rules]]
name = "reboots-need-review"
action = "review"
program = ["reboot", "shutdown"]
approvers = ["approvers"]

[[policies.shell.rules]]
name = "touch-needs-review"
action = "review"
program = ["touch"]
approvers = ["approvers"]
timeout = "{timeout}"

[[policies.shell.rules]]
name = "needs-a-reason"
action = "review"
program = ["wall"]
approvers = ["approvers"]
reason_required = true

[[policies.shell.rules]]
name = "two-person"
action = "review"
program = ["mkdir"]
approvers = ["approvers"]
approvals = 2

[[policies.shell.rules]]
name = "short-lived"
action = "review"
program = ["hostname"]
approvers = ["approvers"]
timeout = "2s"

[[policies.shell.rules]]
name = "no-rm"
action = "deny"
program = ["rm"]
"""

SQL_RULES = """
[policies.sql]
default = "allow"
on_unknown = "review"

[[policies.sql.rules]]
name = "unbounded-writes"
action = "review"
statement = ["UPDATE", "DELETE"]
without_where = true
approvers = ["dba-leads"]
"""


def shell_target(name: str, extra: str = "", *, policy: str = "shell") -> str:
    """A local bash target under POLICY; lines the broker cannot read with certainty go to
    `approvers`."""
    return f"""
[[targets]]
name = "{name}"
type = "local"
guard = "screen"
run_as = "{TARGET_USER}"
command = ["bash", "--noprofile", "--norc", "-i"]
env = {{ PS1 = "$ " }}
allowed_groups = ["engineers"]
policy = "{policy}"
access_approvers = ["approvers"]
{extra}
"""


def printf_review_target(name: str) -> str:
    """A local bash target NAME whose policy (also NAME) sends `printf` to review by
    `approvers` and allows the rest: a command whose output shows whether it ran."""
    return f"""
[[targets]]
name = "{name}"
type = "local"
guard = "screen"
run_as = "{TARGET_USER}"
command = ["bash", "--noprofile", "--norc"]
allowed_groups = ["engineers"]
policy = "{name}"

[policies.{name}]
default = "allow"
on_unknown = "deny"

[[policies.{name}.rules]]
name = "printf-needs-review"
action = "review"
program = ["printf"]
approvers = ["approvers"]
timeout = "10m"
"""


def approvals_config(
    data_dir: Path, *, port: int, dev_port: int, targets: str = "", timeout: str = "15m"
) -> str:
    """--dev: alice requests; bob and dave approve (bob is also an engineer); carol is outside."""
    return f"""
[broker]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"

[dev]
listen = "127.0.0.1:{dev_port}"

[dev.users.alice]
groups = ["engineers", "dba"]

[dev.users.bob]
groups = ["engineers", "approvers", "dba-leads"]

[dev.users.dave]
groups = ["approvers", "dba-leads"]

[dev.users.carol]
groups = ["contractors", "engineers"]

{shell_target("shell")}
{targets}
{SHELL_RULES.replace("{timeout}", timeout)}
{SQL_RULES}
"""


def start_approvals_broker(
    tmp_path: Path, *, targets: str = "", timeout: str = "15m", name: str = "broker"
) -> BrokerProcess:
    config = approvals_config(
        tmp_path / f"{name}-data",
        port=free_port(),
        dev_port=free_port(),
        targets=targets,
        timeout=timeout,
    )
    return start_broker(tmp_path, config, name=name)


_EXPORT = """
import json, sys
from hoopctl.address import BrokerAddress
from hoopctl.credentials import CredentialStore
store = CredentialStore(BrokerAddress.parse(sys.argv[1]))
profile = store.profile()
key = store.private_key().export_private_key().decode()
print(json.dumps({"user": profile.user, "key": key, "cert": profile.certificate}))
"""


@dataclass
class Ran:
    status: int | None
    stdout: str
    stderr: str


@dataclass
class Person:
    """A logged-in user, connecting to the broker the way hoopctl does."""

    name: str
    user: User
    broker: BrokerProcess
    key: asyncssh.SSHKey
    cert: asyncssh.SSHCertificate

    @classmethod
    def login(cls, broker: BrokerProcess, home: Path, name: str) -> Person:
        """Log NAME in through the broker's dev issuer."""
        user = User(home / name)
        user.login_as(broker, name)
        return cls.of(broker, user, name)

    @classmethod
    def of(cls, broker: BrokerProcess, user: User, name: str) -> Person:
        """The person behind USER, who has logged in to BROKER (any way)."""
        exported = subprocess.run(
            [sys.executable, "-c", _EXPORT, broker.address],
            env=user.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        data = json.loads(exported.stdout)
        assert data["user"] == name
        return cls(
            name=name,
            user=user,
            broker=broker,
            key=asyncssh.import_private_key(data["key"]),
            cert=asyncssh.import_certificate(data["cert"]),
        )

    async def connect(self) -> asyncssh.SSHClientConnection:
        host, port = self.broker.address.rsplit(":", 1)
        host_key = asyncssh.read_public_key(self.broker.data_dir / "host_key.pub")
        return await asyncssh.connect(
            host,
            int(port),
            username=self.name,
            known_hosts=([host_key], [], []),
            client_keys=[(self.key, self.cert)],
            agent_path=None,
            config=None,
            password_auth=False,
            kbdint_auth=False,
        )

    async def api(self) -> ApiClient:
        return ApiClient(await self.connect())

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        async with await self.api() as api:
            return await api.call(method, params or {})

    async def run(self, command: str, stdin: str = "", *, timeout: float = 60) -> Ran:
        """One session command (`exec ...`) without a PTY, as `hoopctl exec` sends it."""
        async with await self.connect() as conn:
            process = await conn.create_process(command, encoding=None)
            # The broker may answer (and close) before it reads anything, as with --no-wait.
            with contextlib.suppress(BrokenPipeError, asyncssh.Error):
                process.stdin.write(stdin.encode())
                process.stdin.write_eof()
            completed = await asyncio.wait_for(process.wait(check=False), timeout)
        return Ran(
            completed.exit_status,
            (completed.stdout or b"").decode(errors="replace"),
            (completed.stderr or b"").decode(errors="replace"),
        )


async def next_event(stream: Any, timeout: float = 10) -> dict[str, Any]:
    return await asyncio.wait_for(anext(stream), timeout)


async def wait_for_request(
    person: Person, predicate: Any, *, timeout: float = 20
) -> dict[str, Any]:
    """The first request PERSON can see that matches PREDICATE (polls approvals.list)."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with await person.api() as api:
        while True:
            for record in await api.call("approvals.list", {"scope": "all"}):
                if predicate(record):
                    return record
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("no matching request appeared")
            await asyncio.sleep(0.1)
