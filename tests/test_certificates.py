"""Who gets in: only certificates from the broker's own CA, for the right user, still valid.

Most checks use the real OpenSSH client so the broker is judged by what any SSH client can do,
not only by what hoopctl happens to send.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pytest

from tests.helpers import (
    BrokerProcess,
    User,
    assert_one_line_error,
    dev_config,
    free_port,
    start_broker,
)

WHOAMI = '{"id":1,"method":"whoami"}\n'


def broker_port(broker: BrokerProcess) -> int:
    return int(broker.address.rpartition(":")[2])


def write_known_hosts(broker: BrokerProcess, path: Path) -> Path:
    """Pin the broker's host key the way OpenSSH writes a non-22 port: [127.0.0.1]:PORT."""
    key_type, blob = (broker.data_dir / "host_key.pub").read_text().split()[:2]
    path.write_text(f"[127.0.0.1]:{broker_port(broker)} {key_type} {blob}\n")
    return path


def ssh(
    broker: BrokerProcess,
    user: str,
    workdir: Path,
    *,
    key: Path | None = None,
    cert: Path | None = None,
    subsystem: bool = True,
    command: list[str] | None = None,
    input: str = WHOAMI,
) -> subprocess.CompletedProcess[str]:
    """Run the real `ssh` against the broker, isolated from the runner's own SSH setup."""
    known_hosts = write_known_hosts(broker, workdir / "known_hosts")
    args = [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "KbdInteractiveAuthentication=no",
        "-o",
        "ConnectTimeout=10",
        "-p",
        str(broker_port(broker)),
    ]
    if key is not None:
        args += ["-i", str(key)]
    else:
        args += ["-o", "PubkeyAuthentication=no"]
    if cert is not None:
        args += ["-o", f"CertificateFile={cert}"]
    args.append(f"{user}@127.0.0.1")
    if subsystem:
        args += ["-s", "hoop-api"]
    args += command or []
    env = {**os.environ, "HOME": str(workdir)}
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run(args, input=input, capture_output=True, text=True, env=env, timeout=60)


def responses(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def new_key(folder: Path, name: str = "id_ed25519") -> tuple[asyncssh.SSHKey, Path]:
    """A fresh ed25519 key written as OpenSSH files (private 0600, plus .pub)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    path.with_name(name + ".pub").write_bytes(key.export_public_key())
    return key, path


def sign_with_broker_ca(
    broker: BrokerProcess,
    key: asyncssh.SSHKey,
    principal: str,
    cert_path: Path,
    *,
    valid_after: int | None = None,
    valid_before: int | None = None,
) -> Path:
    """Sign KEY with the broker's CA and record it in the broker's certificate registry, as
    the broker does when it issues one, so that only the check under test can refuse it.
    (Signed and not recorded, it is refused: tests/test_cert_registry.py.)"""
    ca = asyncssh.read_private_key(broker.data_dir / "user_ca")
    now = int(time.time())
    serial = secrets.randbits(63) + 1
    valid_after = now - 60 if valid_after is None else valid_after
    valid_before = now + 3600 if valid_before is None else valid_before
    cert = ca.generate_user_certificate(
        key,
        key_id=principal,
        serial=serial,
        principals=[principal],
        valid_after=valid_after,
        valid_before=valid_before,
    )
    with contextlib.closing(sqlite3.connect(broker.data_dir / "hoop.db", timeout=10)) as db:
        db.execute(
            "INSERT INTO issued_certificates(serial, key_id, user, principals, key_fingerprint, "
            "ca_fingerprint, valid_after, valid_before, issued_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                str(serial),
                principal,
                principal,
                json.dumps([principal]),
                key.get_fingerprint("sha256"),
                ca.get_fingerprint("sha256"),
                valid_after,
                valid_before,
                time.time(),
            ),
        )
        db.commit()
    cert_path.write_bytes(cert.export_certificate())
    return cert_path


def sign_with_other_ca(key_path: Path, principal: str) -> Path:
    """Sign KEY_PATH.pub with a CA the broker has never heard of, using ssh-keygen."""
    ca_path = key_path.parent / "other_ca"
    if not ca_path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "other ca", "-f", str(ca_path)],
            check=True,
            capture_output=True,
        )
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(ca_path),
            "-I",
            principal,
            "-n",
            principal,
            "-V",
            "-5m:+1h",
            f"{key_path}.pub",
        ],
        check=True,
        capture_output=True,
    )
    return key_path.with_name(key_path.name + "-cert.pub")


def assert_refused(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 255, result
    assert "Permission denied" in result.stderr, result.stderr
    assert result.stdout == "", result.stdout


def test_certificate_from_the_broker_ca_lets_plain_ssh_in(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    # The broker only admits users it has seen log in.
    assert alice.login(dev_broker).returncode == 0
    key, key_path = new_key(tmp_path / "control")
    cert = sign_with_broker_ca(dev_broker, key, "alice", tmp_path / "control" / "cert.pub")

    result = ssh(dev_broker, "alice", tmp_path / "control", key=key_path, cert=cert)

    assert result.returncode == 0, result.stderr
    (response,) = responses(result)
    served_by = response["result"].pop("served_by")
    assert response == {
        "id": 1,
        "result": {"user": "alice", "groups": ["dba", "engineers"], "kind": "person"},
    }
    assert served_by.endswith(f"/{dev_broker.process.pid}")  # type: ignore[union-attr]


def test_certificate_from_another_ca_is_refused_and_audited(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0
    _, key_path = new_key(tmp_path / "other")
    cert = sign_with_other_ca(key_path, "alice")
    assert (
        "Signing CA"
        in subprocess.run(
            ["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True
        ).stdout
    )

    result = ssh(dev_broker, "alice", tmp_path / "other", key=key_path, cert=cert)

    assert_refused(result)
    rejected = dev_broker.audit_events("auth.rejected")
    assert rejected, "no auth.rejected audit event"
    assert rejected[-1]["actor"] == "alice"
    assert rejected[-1]["outcome"] == "failure"
    assert "CA" in rejected[-1]["reason"]
    assert rejected[-1]["remote"].startswith("127.0.0.1:")


def test_expired_certificate_from_the_broker_ca_is_refused(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0
    key, key_path = new_key(tmp_path / "expired")
    now = int(time.time())
    cert = sign_with_broker_ca(
        dev_broker,
        key,
        "alice",
        tmp_path / "expired" / "cert.pub",
        valid_after=now - 7200,
        valid_before=now - 600,
    )

    assert_refused(ssh(dev_broker, "alice", tmp_path / "expired", key=key_path, cert=cert))


def test_certificate_not_yet_valid_is_refused(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0
    key, key_path = new_key(tmp_path / "future")
    now = int(time.time())
    cert = sign_with_broker_ca(
        dev_broker,
        key,
        "alice",
        tmp_path / "future" / "cert.pub",
        valid_after=now + 3600,
        valid_before=now + 7200,
    )

    assert_refused(ssh(dev_broker, "alice", tmp_path / "future", key=key_path, cert=cert))


def test_certificate_for_another_principal_is_refused(
    manual_dev_broker: BrokerProcess, alice: User, bob: User, tmp_path: Path
) -> None:
    # Both users are known to the broker and both certificates are in its registry, so only
    # the principal (and the registry's user) check can refuse.
    alice.login_as(manual_dev_broker, "alice")
    bob.login_as(manual_dev_broker, "bob")
    alice_key, alice_key_path = new_key(tmp_path / "a")
    bob_key, bob_key_path = new_key(tmp_path / "b")
    alice_cert = sign_with_broker_ca(manual_dev_broker, alice_key, "alice", tmp_path / "a" / "c")
    bob_cert = sign_with_broker_ca(manual_dev_broker, bob_key, "bob", tmp_path / "b" / "c")

    # Each certificate works for its own user...
    own = ssh(manual_dev_broker, "bob", tmp_path / "b", key=bob_key_path, cert=bob_cert)
    assert own.returncode == 0, own.stderr
    assert responses(own)[0]["result"]["user"] == "bob"
    own = ssh(manual_dev_broker, "alice", tmp_path / "a", key=alice_key_path, cert=alice_cert)
    assert own.returncode == 0, own.stderr
    assert responses(own)[0]["result"]["user"] == "alice"

    # ...and for nobody else.
    assert_refused(ssh(manual_dev_broker, "alice", tmp_path / "b", key=bob_key_path, cert=bob_cert))
    assert_refused(
        ssh(manual_dev_broker, "bob", tmp_path / "a", key=alice_key_path, cert=alice_cert)
    )


def test_plain_key_without_certificate_is_refused(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0
    _, key_path = new_key(tmp_path / "plain")
    assert not list((tmp_path / "plain").glob("*-cert.pub"))

    assert_refused(ssh(dev_broker, "alice", tmp_path / "plain", key=key_path))


def test_hoopctl_with_a_certificate_from_another_ca_is_a_one_line_error(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0
    profiles = list((alice.config_dir / "profiles").glob("*.json"))
    assert len(profiles) == 1
    profile = json.loads(profiles[0].read_text())
    real = asyncssh.import_certificate(profile["certificate"])
    # Same key, same principal, still valid, but signed by a CA the broker does not trust.
    forger = asyncssh.generate_private_key("ssh-ed25519")
    forged = forger.generate_user_certificate(
        real.key,
        key_id="alice",
        principals=["alice"],
        valid_after=int(time.time()) - 60,
        valid_before=profile["valid_before"],
    )
    profile["certificate"] = forged.export_certificate().decode()
    assert profile["valid_before"] > time.time() + 600
    profiles[0].write_text(json.dumps(profile, indent=2) + "\n")

    result = alice.run("whoami")

    assert_one_line_error(result, "refused your certificate")
    assert result.stdout == ""
    assert dev_broker.audit_events("auth.rejected")


def test_anonymous_login_user_may_only_call_login_methods(
    dev_broker: BrokerProcess, tmp_path: Path
) -> None:
    workdir = tmp_path / "anon"
    workdir.mkdir()
    requests = (
        '{"id":1,"method":"whoami"}\n'
        '{"id":2,"method":"targets.list"}\n'
        '{"id":3,"method":"auth.config"}\n'
    )

    result = ssh(dev_broker, "hoop-login", workdir, input=requests)

    assert result.returncode == 0, result.stderr
    replies = {reply["id"]: reply for reply in responses(result)}
    assert replies[1]["error"]["code"] == "unauthenticated"
    assert "result" not in replies[1]
    assert replies[2]["error"]["code"] == "unauthenticated"
    assert "result" not in replies[2]
    # The login methods stay open: that is how a client without a certificate gets one.
    assert replies[3]["result"]["dev"] is True

    command = ssh(
        dev_broker, "hoop-login", workdir, subsystem=False, command=["somecommand"], input=""
    )
    assert command.returncode != 0
    assert command.stdout == ""
    assert "log in first" in command.stderr
    shell = ssh(dev_broker, "hoop-login", workdir, subsystem=False, input="")
    assert shell.returncode != 0
    assert "log in first" in shell.stderr


@pytest.mark.parametrize(
    ("id_token_ttl", "certificate_ttl", "lifetime"),
    [("1h", "10m", 600), ("5m", "10m", 300)],
    ids=["capped-by-certificate-ttl", "capped-by-token-lifetime"],
)
def test_issued_certificate_names_the_user_and_lasts_the_shorter_lifetime(
    tmp_path: Path, alice: User, id_token_ttl: str, certificate_ttl: str, lifetime: int
) -> None:
    broker = start_broker(
        tmp_path,
        dev_config(
            tmp_path / "ttl-data",
            port=free_port(),
            dev_port=free_port(),
            id_token_ttl=id_token_ttl,
            certificate_ttl=certificate_ttl,
        ),
        name="ttl-broker",
    )
    try:
        before = time.time()
        assert alice.login(broker).returncode == 0
        after = time.time()
        (profile_path,) = (alice.config_dir / "profiles").glob("*.json")
        profile = json.loads(profile_path.read_text())
        cert = asyncssh.import_certificate(profile["certificate"])
        assert cert.principals == ["alice"]
        ca = asyncssh.read_public_key(broker.data_dir / "user_ca.pub")
        assert cert.signing_key.public_data == ca.public_data

        # asyncssh keeps key id and validity private: read them the way OpenSSH does.
        cert_file = tmp_path / "issued-cert.pub"
        cert_file.write_text(profile["certificate"].strip() + "\n")
        listing = subprocess.run(
            ["ssh-keygen", "-L", "-f", str(cert_file)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TZ": "UTC"},
        ).stdout
        assert "user certificate" in listing
        # One key id per certificate: the user, then a random nonce.
        assert re.search(r'Key ID: "alice:[0-9a-f]{12}"', listing), listing
        assert ca.get_fingerprint("sha256") in listing
        valid = re.search(r"Valid: from (\S+) to (\S+)", listing)
        assert valid, listing
        valid_after, valid_before = (
            int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
            for stamp in valid.groups()
        )
        assert valid_before == profile["valid_before"]
        assert before + lifetime - 5 <= valid_before <= after + lifetime + 1
        assert valid_after <= before
        assert re.search(r"Principals: \n\s+alice\n", listing), listing
        # No agent or X11 forwarding, no ~/.ssh/rc: only what a broker session needs.
        assert "permit-agent-forwarding" not in listing
        assert "permit-X11-forwarding" not in listing
        assert "permit-user-rc" not in listing
    finally:
        broker.stop()
