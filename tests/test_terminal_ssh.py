"""`hoopctl connect` to an `ssh` target: a real OpenSSH sshd, the broker holding the key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pexpect
import pytest

from broker.recording import read_events
from tests.helpers import BrokerProcess, User, free_port
from tests.sshd_harness import SshdServer, sshd_available, start_sshd
from tests.terminal_helpers import PROMPT, open_shell, run_line, start_terminal_broker

pytestmark = pytest.mark.skipif(not sshd_available(), reason="OpenSSH sshd is not installed")


def ssh_target(
    name: str,
    sshd: SshdServer,
    *,
    known_host: str | None = None,
    address: str | None = None,
    credential: str | None = None,
    guard: str = "screen",
) -> str:
    return f"""
[[targets]]
name = "{name}"
type = "ssh"
guard = "{guard}"
address = "{address or f"{sshd.host}:{sshd.port}"}"
user = "{sshd.user}"
credential = "{credential or f"file:{sshd.client_key_path}"}"
known_host = "{known_host or sshd.host_key_line}"
allowed_groups = ["engineers"]
policy = "shell"
"""


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd: SshdServer) -> Iterator[BrokerProcess]:
    other_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    targets = (
        ssh_target("web", sshd)
        + ssh_target("web-changed-key", sshd, known_host=other_key)
        + ssh_target("web-down", sshd, address=f"127.0.0.1:{free_port()}")
        + ssh_target("web-no-secret", sshd, credential="env:HOOP_TEST_MISSING_SECRET")
    )
    process = start_terminal_broker(tmp_path_factory.mktemp("sshbroker"), targets)
    yield process
    process.stop()


@pytest.fixture
def user(broker: BrokerProcess, alice: User) -> User:
    assert alice.login(broker).returncode == 0
    return alice


def test_interactive_session_on_real_sshd(
    user: User, sshd: SshdServer, broker: BrokerProcess
) -> None:
    child = open_shell(user, "web")
    assert f"user={sshd.user}" in run_line(child, "echo user=$(id -un)")
    child.send("exit 4\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4
    _, events = read_events(broker.data_dir / "recordings" / f"{child.session_id}.cast")
    assert any(kind == "m" and data == "command: echo user=$(id -un)" for _, kind, data in events)


@pytest.mark.parametrize(
    "line",
    ["rm -rf {v}; touch {p}", "ls && sudo rm -rf {v}; touch {p}", "echo $(rm -rf {v}); touch {p}"],
)
def test_denied_command_never_reaches_the_ssh_target(user: User, tmp_path: Path, line: str) -> None:
    victim, proof = tmp_path / "victim", tmp_path / "proof"
    victim.mkdir()
    child = open_shell(user, "web")
    child.send(line.format(v=victim, p=proof) + "\r")
    child.expect("denied by rule no-recursive-rm")
    child.expect(PROMPT)
    child.send("exit\r")
    child.expect(pexpect.EOF)
    assert victim.exists() and not proof.exists()


def test_one_off_command_on_ssh_target(user: User) -> None:
    child = user.spawn("connect", "web", "--", "sh", "-c", "tty; exit 6")
    child.expect("/dev/pts/")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 6


def test_changed_target_host_key_refuses_the_session(user: User, broker: BrokerProcess) -> None:
    result = user.run("connect", "web-changed-key", "--", "true")
    assert result.returncode == 1
    assert "host key does not match" in result.stderr
    assert "Traceback" not in result.stderr
    ends = broker.audit_events("session.end")
    assert ends[-1]["target"] == "web-changed-key" and ends[-1]["details"]["state"] == "failed"


def test_unreachable_target_is_a_clear_error(user: User) -> None:
    result = user.run("connect", "web-down", "--", "true")
    assert result.returncode == 1
    assert "target web-down unreachable" in result.stderr


def test_missing_credential_names_the_reference_not_a_secret(user: User) -> None:
    result = user.run("connect", "web-no-secret", "--", "true")
    assert result.returncode == 1
    assert "HOOP_TEST_MISSING_SECRET is not set" in result.stderr


def test_client_disconnect_hangs_up_the_target(
    user: User, tmp_path: Path, broker: BrokerProcess
) -> None:
    hupped = tmp_path / "hupped"
    child = open_shell(user, "web")
    child.send(f"trap 'touch {hupped}; exit' HUP; sleep 300 & wait\r")
    time.sleep(1)
    child.terminate(force=True)
    deadline = time.monotonic() + 15
    while not hupped.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hupped.exists()
    deadline = time.monotonic() + 15
    while not broker.audit_events("session.end") and time.monotonic() < deadline:
        time.sleep(0.1)
    end = broker.audit_events("session.end")[-1]
    assert end["session"] == child.session_id
    header, events = read_events(broker.data_dir / "recordings" / f"{child.session_id}.cast")
    assert header["hoop"]["target"] == "web" and events


def test_exec_on_ssh_target_carries_the_exit_status(user: User) -> None:
    result = user.run("exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert result.returncode == 5
    assert result.stdout.strip() == "out"
    assert "err" in result.stderr
