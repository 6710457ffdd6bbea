"""`hoopctl ssh-config`: a Host block with which the real OpenSSH client reaches the broker."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from tests.helpers import BrokerProcess, User, assert_one_line_error

WHOAMI = '{"id":1,"method":"whoami"}\n'


def ssh_config(user: User, *args: str) -> tuple[str, dict[str, str]]:
    """Run `hoopctl ssh-config`; return the block and its options by lower-cased keyword."""
    result = user.run("ssh-config", *args)
    assert result.returncode == 0, result.stderr
    block = result.stdout
    lines = block.splitlines()
    assert lines[0].startswith("Host "), block
    options = {"host": lines[0].split(None, 1)[1]}
    for line in lines[1:]:
        keyword, _, value = line.strip().partition(" ")
        options[keyword.lower()] = value.strip().strip('"')
    return block, options


def openssh(
    config: Path, host: str, workdir: Path, *, input: str = WHOAMI
) -> subprocess.CompletedProcess[str]:
    """The real ssh client, reading only CONFIG (BatchMode so it can never stop to ask)."""
    env = {**os.environ, "HOME": str(workdir)}
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-s", host, "hoop-api"],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_ssh_config_block_lets_plain_openssh_call_the_api(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0

    block, options = ssh_config(alice)
    config = tmp_path / "ssh_config"
    config.write_text(block)
    result = openssh(config, options["host"], tmp_path)

    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["result"].pop("served_by")  # the broker process serving it
    assert response == {
        "id": 1,
        "result": {"user": "alice", "groups": ["dba", "engineers"], "kind": "person"},
    }
    assert options["host"] == "hoop-127.0.0.1"
    assert options["user"] == "alice"
    assert options["port"] == dev_broker.address.rpartition(":")[2]
    # The key and certificate it exported are private files in hoopctl's config dir.
    key_path = Path(options["identityfile"])
    cert_path = Path(options["certificatefile"])
    assert key_path.is_relative_to(alice.config_dir)
    for path in (key_path, cert_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    assert "BEGIN OPENSSH PRIVATE KEY" in key_path.read_text()
    assert cert_path.read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    # No agent, no other keys, no passwords: only this certificate.
    assert options["identitiesonly"] == "yes"
    assert options["identityagent"] == "none"


def test_ssh_config_alias_names_the_host(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0

    block, options = ssh_config(alice, "--alias", "myhoop")
    assert block.startswith("Host myhoop\n")
    assert options["hostname"] == "127.0.0.1"
    config = tmp_path / "ssh_config"
    config.write_text(block)
    result = openssh(config, "myhoop", tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"]["user"] == "alice"


def test_ssh_config_pins_the_broker_host_key(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0
    block, options = ssh_config(alice)
    assert options["stricthostkeychecking"] == "yes"
    known_hosts = Path(options["userknownhostsfile"])
    assert known_hosts == alice.config_dir / "known_hosts"
    port = dev_broker.address.rpartition(":")[2]
    assert known_hosts.read_text().startswith(f"[127.0.0.1]:{port} ssh-ed25519 ")
    config = tmp_path / "ssh_config"
    config.write_text(block)
    assert openssh(config, options["host"], tmp_path).returncode == 0

    # The broker comes back on the same address with a new host key.
    pinned = known_hosts.read_text()
    dev_broker.stop()
    for path in dev_broker.data_dir.glob("host_key*"):
        path.unlink()
    old_fingerprint = dev_broker.host_fingerprint
    dev_broker.start()
    assert dev_broker.host_fingerprint != old_fingerprint

    result = openssh(config, options["host"], tmp_path)

    assert result.returncode == 255, result
    assert result.stdout == ""
    assert (
        "HOST IDENTIFICATION HAS CHANGED" in result.stderr
        or "Host key verification failed" in result.stderr
    ), result.stderr
    # ssh must not have re-pinned the new key behind the user's back.
    assert known_hosts.read_text() == pinned
    # hoopctl itself refuses the same way.
    assert_one_line_error(alice.run("whoami"), "host key changed")


def test_ssh_config_when_not_logged_in_is_a_one_line_error(
    dev_broker: BrokerProcess, alice: User
) -> None:
    result = alice.run("ssh-config", "--broker", dev_broker.address)

    assert_one_line_error(result, "not logged in")
    assert result.stdout == ""
    ssh_dir = alice.config_dir / "ssh"
    assert not ssh_dir.exists() or not any(ssh_dir.rglob("*"))


def test_ssh_config_with_no_broker_at_all_is_a_usage_error(alice: User) -> None:
    result = alice.run("ssh-config")

    assert result.returncode == 2
    assert_one_line_error(result, "no broker given")
    assert result.stdout == ""
