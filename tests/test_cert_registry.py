"""Certificates the broker did not issue are refused, even when signed by its own CA.

The broker records every certificate it signs (serial, key id, user, key, CA) and admits only
those, unrevoked. Against a real broker process: certificates forged with the CA key read from
the broker's data dir, `hoop-broker revoke USER|SERIAL` and `hoop-broker rotate-ca` while the
broker runs, and what hoopctl users see afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shlex
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import asyncssh
import pytest

from broker.identity.certificates import issue_certificate, read_presented_certificate
from broker.identity.registry import CertificateRegistry
from broker.identity.tokens import Identity
from broker.keys import UserCA, load_or_create_keys
from tests.helpers import HOOP_BROKER, BrokerProcess, User, assert_one_line_error
from tests.test_approvals_helpers import Person, start_approvals_broker

REQUEST_ID = re.compile(r"request ([0-9a-f]{10}) ")


# -- helpers ----------------------------------------------------------------------------------


def hoop_broker(broker: BrokerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HOOP_BROKER, *args, "--config", str(broker.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_broker_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hoop-broker: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr
    assert result.stdout == "", result.stdout


def listing(cert: asyncssh.SSHCertificate, workdir: Path) -> dict[str, str]:
    """Serial, key id and signing CA of CERT, read the way OpenSSH does (ssh-keygen -L)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"cert-{secrets.token_hex(4)}-cert.pub"
    path.write_bytes(cert.export_certificate())
    text = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    serial = re.search(r"Serial: (\d+)", text)
    key_id = re.search(r'Key ID: "([^"]*)"', text)
    ca = re.search(r"Signing CA: \S+ (SHA256:\S+)", text)
    assert serial and key_id and ca, text
    return {"serial": serial.group(1), "key_id": key_id.group(1), "ca": ca.group(1)}


def forge(
    ca: asyncssh.SSHKey,
    key: asyncssh.SSHKey,
    principal: str,
    *,
    key_id: str,
    serial: int,
) -> asyncssh.SSHCertificate:
    """What an attacker holding the CA key can make: any key, principal, key id and serial."""
    now = int(time.time())
    return ca.generate_user_certificate(
        key,
        key_id=key_id,
        serial=serial,
        principals=[principal],
        valid_after=now - 60,
        valid_before=now + 3600,
    )


def connect(broker: BrokerProcess, username: str, key: asyncssh.SSHKey, cert: Any) -> Any:
    host, port = broker.address.rsplit(":", 1)
    return asyncssh.connect(
        host,
        int(port),
        username=username,
        known_hosts=([asyncssh.read_public_key(broker.data_dir / "host_key.pub")], [], []),
        client_keys=[(key, cert)],
        agent_path=None,
        config=None,
        password_auth=False,
        kbdint_auth=False,
    )


async def refused(broker: BrokerProcess, username: str, key: asyncssh.SSHKey, cert: Any) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(broker, username, key, cert):
            pass


def profile_cert(user: User) -> asyncssh.SSHCertificate:
    (path,) = (user.config_dir / "profiles").glob("*.json")
    return asyncssh.import_certificate(json.loads(path.read_text())["certificate"])


def store_events(broker: BrokerProcess, event_type: str) -> list[dict[str, Any]]:
    """Audit events from the chain in the store (also those written by hoop-broker commands)."""
    with contextlib.closing(sqlite3.connect(broker.data_dir / "hoop.db", timeout=10)) as db:
        rows = db.execute(
            "SELECT event FROM audit_events WHERE type = ? ORDER BY seq", (event_type,)
        ).fetchall()
    return [json.loads(row[0]) for row in rows]


def assert_refused_with_log_in_again(result: subprocess.CompletedProcess[str]) -> None:
    assert_one_line_error(result, "refused your certificate", "log in again")
    assert result.returncode == 1
    assert result.stdout == ""


def wait_for_events(
    broker: BrokerProcess, event_type: str, seen: int, timeout: float = 10
) -> list[dict[str, Any]]:
    """The EVENT_TYPE events on the broker's stdout after the first SEEN (at least one)."""
    deadline = time.monotonic() + timeout
    while True:
        events = broker.audit_events(event_type)[seen:]
        if events or time.monotonic() > deadline:
            assert events, f"no new {event_type} event"
            return events
        time.sleep(0.05)


def rejected_for(broker: BrokerProcess, serial: int | str) -> list[dict[str, Any]]:
    return [
        event
        for event in broker.audit_events("auth.rejected")
        if event.get("details", {}).get("certificate_serial") == str(serial)
    ]


# -- a stolen CA key gives nothing --------------------------------------------------------------


@pytest.fixture
def approvals(tmp_path: Path) -> Iterator[dict[str, Any]]:
    broker = start_approvals_broker(tmp_path)
    try:
        people = {name: Person.login(broker, tmp_path, name) for name in ("alice", "bob")}
        yield {"broker": broker, **people}
    finally:
        broker.stop()


def test_certificate_signed_with_the_broker_ca_but_not_issued_is_refused(
    approvals: dict[str, Any], tmp_path: Path
) -> None:
    broker: BrokerProcess = approvals["broker"]
    alice: Person = approvals["alice"]
    bob: Person = approvals["bob"]
    sentinel = tmp_path / "made-by-approval"
    ran = asyncio.run(
        alice.run(shlex.join(["exec", "--no-wait", "shell", "--", "touch", str(sentinel)]))
    )
    assert ran.status == 4, ran
    match = REQUEST_ID.search(ran.stderr)
    assert match, ran.stderr
    request_id = match.group(1)

    # The attacker: alice, who has read the broker's CA key (e.g. from a local target).
    ca = asyncssh.read_private_key(broker.data_dir / "user_ca")
    real = listing(bob.cert, tmp_path / "listing")
    assert real["ca"] == ca.get_fingerprint("sha256")
    fresh = asyncssh.generate_private_key("ssh-ed25519")
    forgeries = {
        # A certificate for the approver bob, with a serial the broker never issued.
        "unknown serial": (fresh, forge(ca, fresh, "bob", key_id="bob", serial=1 << 40)),
        # bob's real serial and key id (serials are in audit events), on another key.
        "another key": (
            fresh,
            forge(ca, fresh, "bob", key_id=real["key_id"], serial=int(real["serial"])),
        ),
        # bob's real serial on bob's own key, but another key id.
        "another key id": (
            bob.key,
            forge(ca, bob.key, "bob", key_id="bob", serial=int(real["serial"])),
        ),
        # bob's key and key id with a serial of the attacker's choosing.
        "another serial": (
            bob.key,
            forge(ca, bob.key, "bob", key_id=real["key_id"], serial=secrets.randbits(64)),
        ),
    }
    serials, reasons = {}, {}
    for name, (key, cert) in forgeries.items():
        serials[name] = listing(cert, tmp_path / "listing")["serial"]
        seen = len(broker.audit_events("auth.rejected"))
        asyncio.run(refused(broker, "bob", key, cert))
        # Each refusal is an audit event naming the serial.
        new = wait_for_events(broker, "auth.rejected", seen)
        assert all(e["details"]["certificate_serial"] == serials[name] for e in new), new
        assert all(e["actor"] == "bob" and e["outcome"] == "failure" for e in new), new
        reasons[name] = new[0]["reason"]

    # Through hoopctl too: bob's login with the forged certificate cannot approve.
    (profile_path,) = (bob.user.config_dir / "profiles").glob("*.json")
    profile = json.loads(profile_path.read_text())
    profile["certificate"] = forgeries["another key id"][1].export_certificate().decode()
    profile_path.write_text(json.dumps(profile, indent=2) + "\n")
    approve = bob.user.run("approve", request_id)
    assert_refused_with_log_in_again(approve)

    # Nothing was done: the request still waits, nobody decided, nothing ran.
    record = asyncio.run(alice.call("approvals.get", {"id": request_id}))
    assert record["state"] == "pending"
    assert not broker.audit_events("approval.approved")
    assert not broker.audit_events("approval.executed")
    assert not sentinel.exists()

    # The refusals say why; the log lines name the serial, and no key.
    assert "unknown serial" in reasons["unknown serial"]
    assert "unknown serial" in reasons["another serial"]
    assert "key does not match" in reasons["another key"]
    assert "key id does not match" in reasons["another key id"]
    log = broker.stderr_path.read_text()
    for serial in serials.values():
        assert re.search(rf"refused certificate serial {serial} for user 'bob'", log), log
    for key, cert in forgeries.values():
        blob = cert.export_certificate().split()[1].decode()
        assert blob not in log
        assert key.export_public_key().split()[1].decode() not in log
    assert "PRIVATE KEY" not in log

    # The certificate the broker did issue to bob still works.
    assert asyncio.run(bob.call("whoami"))["user"] == "bob"


# -- hoop-broker revoke -------------------------------------------------------------------------


def test_revoke_user_refuses_their_next_command_until_they_log_in_again(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0
    assert alice.run("whoami").returncode == 0
    serial = listing(profile_cert(alice), alice.home / "listing")["serial"]

    result = hoop_broker(dev_broker, "revoke", "alice")

    assert result.returncode == 0, result.stderr
    assert f"revoked serial {serial} of alice" in result.stdout
    assert "revoked 1 certificate of alice" in result.stdout
    # The running broker refuses it at once, and hoopctl says what to do.
    whoami = alice.run("whoami")
    assert_refused_with_log_in_again(whoami)
    assert f"hoopctl login --broker {dev_broker.address}" in whoami.stderr
    events = rejected_for(dev_broker, serial)
    assert events and "revoked" in events[-1]["reason"]
    (revoked,) = store_events(dev_broker, "auth.revoked")
    assert revoked["details"]["by"] == "user"
    assert revoked["details"]["subject"] == "alice"
    assert revoked["details"]["serials"] == [serial]

    # A fresh login works again, with a new certificate.
    assert alice.login(dev_broker).returncode == 0
    again = alice.run("whoami")
    assert again.returncode == 0, again.stderr
    assert listing(profile_cert(alice), alice.home / "listing")["serial"] != serial

    # A user with nothing active left: said so, exit 0.
    assert hoop_broker(dev_broker, "revoke", "alice").returncode == 0
    nothing = hoop_broker(dev_broker, "revoke", "alice")
    assert nothing.returncode == 0, nothing.stderr
    assert "no active certificates" in nothing.stdout


def test_revoke_serial_refuses_that_certificate_only(
    dev_broker: BrokerProcess, tmp_path: Path
) -> None:
    laptop, desktop = User(tmp_path / "alice-laptop"), User(tmp_path / "alice-desktop")
    assert laptop.login(dev_broker).returncode == 0
    assert desktop.login(dev_broker).returncode == 0
    serial = listing(profile_cert(laptop), tmp_path / "listing")["serial"]

    result = hoop_broker(dev_broker, "revoke", serial)

    assert result.returncode == 0, result.stderr
    assert f"revoked serial {serial} of alice" in result.stdout
    assert "revoked 1 certificate;" in result.stdout
    assert_refused_with_log_in_again(laptop.run("whoami"))
    assert desktop.run("whoami").returncode == 0
    (revoked,) = store_events(dev_broker, "auth.revoked")
    assert revoked["details"] | {"by": "serial", "serials": [serial]} == revoked["details"]

    again = hoop_broker(dev_broker, "revoke", serial)
    assert again.returncode == 0, again.stderr
    assert "revoked already" in again.stdout
    assert len(store_events(dev_broker, "auth.revoked")) == 1


def test_revoke_unknown_user_or_serial_is_a_one_line_error(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0

    assert_broker_one_line_error(hoop_broker(dev_broker, "revoke", "mallory"), "'mallory'")
    assert_broker_one_line_error(
        hoop_broker(dev_broker, "revoke", "12345"), "no certificate with serial 12345"
    )
    assert_broker_one_line_error(hoop_broker(dev_broker, "revoke", str(1 << 70)), "serial")
    assert not store_events(dev_broker, "auth.revoked")
    assert alice.run("whoami").returncode == 0


# -- hoop-broker rotate-ca ----------------------------------------------------------------------


def test_rotate_ca_revokes_old_certificates_and_stops_trusting_the_old_ca(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0
    old_ca = asyncssh.read_private_key(dev_broker.data_dir / "user_ca")
    old_serial = listing(profile_cert(alice), tmp_path / "listing")["serial"]

    result = hoop_broker(dev_broker, "rotate-ca")

    assert result.returncode == 0, result.stderr
    new_ca = asyncssh.read_public_key(dev_broker.data_dir / "user_ca.pub")
    assert new_ca.public_data != old_ca.public_data
    assert new_ca.get_fingerprint("sha256") in result.stdout
    assert "revoked 1 certificate of alice" in result.stdout
    (retired,) = dev_broker.data_dir.glob("user_ca.retired-*[0-9Z]")
    assert stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert stat.S_IMODE((dev_broker.data_dir / "user_ca").stat().st_mode) == 0o600
    assert asyncssh.read_private_key(retired).public_data == old_ca.public_data
    (rotated,) = store_events(dev_broker, "auth.ca_rotated")
    assert rotated["details"]["previous_ca"] == old_ca.get_fingerprint("sha256")
    assert rotated["details"]["ca"] == new_ca.get_fingerprint("sha256")

    # The old certificate is refused at the next command, with the way back in.
    assert_refused_with_log_in_again(alice.run("whoami"))
    assert rejected_for(dev_broker, old_serial)

    # A new login works, signed by the new CA.
    assert alice.login(dev_broker).returncode == 0
    assert alice.run("whoami").returncode == 0
    fresh = listing(profile_cert(alice), tmp_path / "listing")
    assert fresh["ca"] == new_ca.get_fingerprint("sha256")

    # The old CA is not trusted any more, even for a serial and key id that are active now.
    key = asyncssh.generate_private_key("ssh-ed25519")
    stale = forge(old_ca, key, "alice", key_id=fresh["key_id"], serial=int(fresh["serial"]))
    asyncio.run(refused(dev_broker, "alice", key, stale))
    assert any("retired CA" in e["reason"] for e in rejected_for(dev_broker, fresh["serial"]))

    # After a restart too: the broker loads the new CA.
    dev_broker.stop()
    dev_broker.start()
    assert alice.run("whoami").returncode == 0
    asyncio.run(refused(dev_broker, "alice", key, stale))


# -- the pieces ---------------------------------------------------------------------------------


def test_serials_are_random_64_bit_and_unique_and_key_ids_name_the_user() -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    key = asyncssh.generate_private_key("ssh-ed25519")
    identity = Identity(
        user="alice",
        groups=("engineers",),
        subject="alice",
        issuer="https://idp.example",
        expires_at=int(time.time()) + 3600,
    )
    issued = [issue_certificate(ca, key, identity, max_ttl=600) for _ in range(300)]
    serials = [cert.serial for cert in issued]
    assert len(set(serials)) == len(serials)
    assert all(0 < serial < 1 << 64 for serial in serials)
    assert max(serials) >= 1 << 63  # the top bit is used too (chance of failing: 2**-300)
    assert sorted(serials) != serials
    assert len({cert.key_id for cert in issued}) == len(issued)
    assert all(re.fullmatch(r"alice:[0-9a-f]{12}", cert.key_id) for cert in issued)


@pytest.mark.parametrize("algorithm", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
def test_serial_and_key_id_are_read_from_the_presented_certificate(algorithm: str) -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    key = asyncssh.generate_private_key(algorithm)
    cert = forge(ca, key, "alice", key_id="alice:0123456789ab", serial=(1 << 64) - 2)

    presented = read_presented_certificate(cert.public_data)

    assert presented.serial == (1 << 64) - 2
    assert presented.key_id == "alice:0123456789ab"
    assert presented.key_fingerprint == key.get_fingerprint("sha256")


def test_certificates_recorded_by_an_older_broker_are_adopted(tmp_path: Path) -> None:
    keys = load_or_create_keys(tmp_path)
    db_path = tmp_path / "hoop.db"
    now = int(time.time())
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute(
            "CREATE TABLE certificates (serial INTEGER PRIMARY KEY, user TEXT NOT NULL, "
            "key_fingerprint TEXT NOT NULL, groups TEXT NOT NULL, valid_after INTEGER NOT NULL, "
            "valid_before INTEGER NOT NULL, issued_at REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO certificates VALUES (?,?,?,?,?,?,?)",
            (4517306130405138821, "alice", "SHA256:x", '["dba"]', now - 60, now + 600, now),
        )
        db.execute(
            "INSERT INTO certificates VALUES (?,?,?,?,?,?,?)",
            (17, "alice", "SHA256:y", '["dba"]', now - 7200, now - 3600, now - 7200),
        )
        db.commit()

    async def adopt() -> tuple[Any, Any, list[Any]]:
        async with aiosqlite.connect(db_path) as db:
            registry = await CertificateRegistry.open(db, UserCA(tmp_path, keys.user_ca))
            tables = await (
                await db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ).fetchall()
            return await registry.lookup(4517306130405138821), await registry.lookup(17), tables

    valid, expired, tables = asyncio.run(adopt())
    assert valid is not None
    assert (valid.user, valid.key_id, valid.principals) == ("alice", "alice", ("alice",))
    assert valid.ca_fingerprint == keys.user_ca.get_fingerprint("sha256")
    assert expired is None
    assert ("certificates",) not in tables
