"""The private OpenSSH sshd harness works with the real ``ssh`` client and with asyncssh."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.sshd_harness import SshdServer, current_user, sshd_available, start_sshd

pytestmark = pytest.mark.skipif(
    not sshd_available(), reason="OpenSSH server (sshd) is not installed"
)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def _connect_kwargs(server: SshdServer, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "port": server.port,
        "username": server.user,
        "known_hosts": ([asyncssh.import_public_key(server.host_key_line)], [], []),
        "client_keys": [str(server.client_key_path)],
        "agent_path": None,
        "config": None,
        "password": None,
        "connect_timeout": 10,
    }
    kwargs.update(overrides)
    return kwargs


def test_server_details(sshd: SshdServer) -> None:
    assert sshd.host == "127.0.0.1"
    assert sshd.user == current_user()
    assert sshd.password is None
    assert sshd.host_key_line.startswith("ssh-ed25519 AAAA")
    assert len(sshd.host_key_line.split()) == 2
    assert sshd.known_hosts_entry() == f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}"
    assert stat.S_IMODE(sshd.client_key_path.stat().st_mode) == 0o600
    assert "Server listening on 127.0.0.1 port" in sshd.logs()


def test_real_ssh_client_runs_command(sshd: SshdServer) -> None:
    result = subprocess.run(
        sshd.ssh_command("echo", "hello"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr + sshd.logs()
    assert result.stdout == "hello\n"
    assert f"Accepted publickey for {sshd.user}" in sshd.logs()


def test_sessions_get_private_home(sshd: SshdServer) -> None:
    result = subprocess.run(
        sshd.ssh_command("echo", "$HOME", "$USER"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(sshd.workdir / "home"), sshd.user]


def test_real_ssh_client_exit_status_propagates(sshd: SshdServer) -> None:
    result = subprocess.run(sshd.ssh_command("exit 3"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr


def test_real_ssh_client_checks_host_key(sshd: SshdServer, tmp_path: Path) -> None:
    other = tmp_path / "other_known_hosts"
    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    other.write_text(f"[127.0.0.1]:{sshd.port} {wrong}")
    argv = [arg.replace(str(sshd.known_hosts_path), str(other)) for arg in sshd.ssh_command("true")]
    assert argv != sshd.ssh_command("true")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


async def test_asyncssh_pty_session(sshd: SshdServer) -> None:
    async with asyncssh.connect(sshd.host, **_connect_kwargs(sshd)) as conn:
        result = await conn.run("tput cols", term_type="xterm", term_size=(80, 24), timeout=30)
        assert result.exit_status == 0, result.stderr
        assert str(result.stdout).strip() == "80"
        result = await conn.run("stty size", term_type="xterm", term_size=(100, 30), timeout=30)
        assert str(result.stdout).strip() == "30 100"
        plain = await conn.run("echo $HOOP_MARK", env={"HOOP_MARK": "passed"}, timeout=30)
        assert str(plain.stdout).strip() == "passed"


async def test_asyncssh_rejects_wrong_host_key(sshd: SshdServer) -> None:
    wrong = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(sshd.host, **_connect_kwargs(sshd, known_hosts=([wrong], [], [])))


async def test_asyncssh_rejects_unauthorised_key(sshd: SshdServer) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(sshd.host, **_connect_kwargs(sshd, client_keys=[stranger]))


def test_password_auth_is_not_supported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="password"):
        start_sshd(tmp_path, password="secret")


def _sleep_pids(marker: str) -> list[int]:
    """PIDs of running ``sleep`` processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if comm == "sleep" and marker in cmdline:
            found.append(int(entry.name))
    return found


def _port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_stop_closes_port_and_kills_sessions(tmp_path: Path) -> None:
    server = start_sshd(tmp_path / "sshd")
    marker = f"{3000 + os.getpid() % 1000}.{server.port}"  # seconds; unique to this run
    client = subprocess.Popen(
        server.ssh_command("sleep", marker),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not _sleep_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sleep_pids(marker), server.logs()

        server.stop()
        server.stop()  # idempotent

        assert _port_refuses(server.port)
        deadline = time.monotonic() + 5
        while _sleep_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _sleep_pids(marker)
        assert client.wait(timeout=10) == 255  # "Connection ... closed by remote host"
    finally:
        server.stop()
        if client.poll() is None:
            client.kill()
            client.wait()


async def test_asyncssh_refused_after_stop(tmp_path: Path) -> None:
    server = start_sshd(tmp_path / "sshd")
    try:
        async with asyncssh.connect(server.host, **_connect_kwargs(server)) as conn:
            assert (await conn.run("echo up", timeout=30)).stdout == "up\n"
        server.stop()
        with pytest.raises(OSError):
            await asyncssh.connect(server.host, **_connect_kwargs(server))
    finally:
        server.stop()
