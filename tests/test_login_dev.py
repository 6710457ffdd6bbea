"""Login through the broker's built-in dev issuer, then the commands that use the certificate."""

from __future__ import annotations

import json
import stat
import time

import pexpect

from tests.helpers import USER_CODE, BrokerProcess, User, assert_one_line_error


def test_login_then_whoami_shows_user_groups_broker_and_expiry(
    dev_broker: BrokerProcess, alice: User
) -> None:
    result = alice.login(dev_broker)
    assert result.returncode == 0, result.stderr
    assert "Logged in" in result.stderr and "alice" in result.stderr

    whoami = alice.run("whoami", "--output", "json")
    assert whoami.returncode == 0, whoami.stderr
    me = json.loads(whoami.stdout)
    assert me["user"] == "alice"
    assert me["groups"] == ["dba", "engineers"]
    assert me["broker"] == dev_broker.address
    # Certificate lifetime = min(token lifetime 1h, broker max 8h).
    assert 3000 < me["certificate_expires_in"] <= 3600


def test_login_remembers_the_broker_for_later_commands(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0
    table = alice.run("whoami")
    assert table.returncode == 0
    assert "alice" in table.stdout and dev_broker.address in table.stdout


def test_targets_lists_only_what_the_users_groups_allow(
    manual_dev_broker: BrokerProcess, alice: User, bob: User
) -> None:
    alice.login_as(manual_dev_broker, "alice")
    rows = json.loads(alice.run("targets", "-o", "json").stdout)
    assert {row["name"] for row in rows} == {"dev-shell", "prod-db"}
    shell = next(row for row in rows if row["name"] == "dev-shell")
    assert shell["type"] == "local"
    assert "1 rule" in shell["policy"] and "1 deny" in shell["policy"]

    # bob is an engineer but not a dba: no prod-db for him.
    bob.login_as(manual_dev_broker, "bob")
    bob_rows = json.loads(bob.run("targets", "--output", "json").stdout)
    assert [row["name"] for row in bob_rows] == ["dev-shell"]
    table = bob.run("targets")
    assert "dev-shell" in table.stdout and "prod-db" not in table.stdout


def test_user_with_no_matching_groups_sees_no_targets(
    manual_dev_broker: BrokerProcess, tmp_path
) -> None:
    carol = User(tmp_path / "carol")
    carol.login_as(manual_dev_broker, "carol")
    result = carol.run("targets", "-o", "json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == []


def test_denied_device_login_is_a_one_line_error(
    manual_dev_broker: BrokerProcess, alice: User
) -> None:
    child = alice.spawn(
        "login",
        "--broker",
        manual_dev_broker.address,
        "--accept-host-key",
        manual_dev_broker.host_fingerprint,
        "--no-browser",
    )
    child.expect(USER_CODE)
    manual_dev_broker.approve_dev_login(child.match.group(1), "alice", action="deny")
    child.expect("hoopctl: login was denied at the identity provider")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert not (alice.config_dir / "profiles").exists() or not any(
        (alice.config_dir / "profiles").iterdir()
    )


def test_login_and_failures_are_audit_events(dev_broker: BrokerProcess, alice: User) -> None:
    assert alice.login(dev_broker).returncode == 0
    events = dev_broker.audit_events("auth.login")
    assert events and events[-1]["actor"] == "alice"
    assert events[-1]["groups"] == ["dba", "engineers"]
    assert "certificate_serial" in events[-1]["details"]


def test_secrets_are_in_the_keyring_not_in_config_files(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0
    files = [path for path in alice.config_dir.rglob("*") if path.is_file()]
    assert files
    for path in files:
        text = path.read_text()
        assert "PRIVATE KEY" not in text, path
        assert "refresh_token" not in text, path
    keyring_file = alice.home / ".local/share/python_keyring/keyring_pass.cfg"
    assert keyring_file.exists()
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600


def test_broker_keys_are_created_private_and_reused(dev_broker: BrokerProcess, tmp_path) -> None:
    for name in ("host_key", "user_ca"):
        assert stat.S_IMODE((dev_broker.data_dir / name).stat().st_mode) == 0o600
    fingerprint = dev_broker.host_fingerprint
    dev_broker.stop()
    dev_broker.start()
    assert dev_broker.host_fingerprint == fingerprint


def test_logout_removes_the_login(dev_broker: BrokerProcess, alice: User) -> None:
    assert alice.login(dev_broker).returncode == 0
    assert alice.run("logout").returncode == 0
    result = alice.run("whoami")
    # The way back in is the whole command, ready to paste.
    assert_one_line_error(
        result, "not logged in", f"run hoopctl login --broker {dev_broker.address}"
    )


def test_unreachable_broker_is_one_line_error(alice: User) -> None:
    from tests.helpers import free_port

    result = alice.run("login", "--broker", f"127.0.0.1:{free_port()}", "--no-browser")
    assert_one_line_error(result, "cannot reach broker")
    assert not (alice.config_dir / "known_hosts").exists()


def test_no_broker_given_is_a_usage_error(alice: User) -> None:
    result = alice.run("whoami")
    assert result.returncode == 2
    assert_one_line_error(result, "no broker given")


def test_unknown_host_key_declined_saves_nothing(dev_broker: BrokerProcess, alice: User) -> None:
    child = alice.spawn("login", "--broker", dev_broker.address, "--no-browser")
    child.expect("host key fingerprint is (SHA256:\\S+)\\.")
    assert child.match.group(1) == dev_broker.host_fingerprint
    child.expect("Trust this broker")
    child.sendline("n")
    child.expect("not accepted")
    child.wait()
    child.close()
    assert child.exitstatus != 0
    assert not (alice.config_dir / "known_hosts").exists()
    assert not (alice.config_dir / "profiles").exists() or not any(
        (alice.config_dir / "profiles").iterdir()
    )


def test_unknown_host_key_without_terminal_asks_for_the_fingerprint(
    dev_broker: BrokerProcess, alice: User
) -> None:
    result = alice.run("login", "--broker", dev_broker.address, "--no-browser")
    assert_one_line_error(result, "--accept-host-key", dev_broker.host_fingerprint)


def test_wrong_expected_fingerprint_is_refused(dev_broker: BrokerProcess, alice: User) -> None:
    result = alice.run("login", "--broker", dev_broker.address, "--accept-host-key", "SHA256:AAAA")
    assert_one_line_error(result, "not the expected")


def test_changed_broker_host_key_is_a_hard_error_naming_both(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0
    old = dev_broker.host_fingerprint
    dev_broker.stop()
    (dev_broker.data_dir / "host_key").unlink()
    (dev_broker.data_dir / "host_key.pub").unlink()
    dev_broker.start()
    assert dev_broker.host_fingerprint != old
    result = alice.run("whoami")
    assert_one_line_error(result, "host key changed", old, dev_broker.host_fingerprint)
    again = alice.login(dev_broker)
    assert_one_line_error(again, "host key changed")


def test_expired_certificate_without_refresh_token_asks_to_log_in(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0
    profile_path = next((alice.config_dir / "profiles").iterdir())
    profile = json.loads(profile_path.read_text())
    profile["valid_before"] = int(time.time()) - 10
    profile["token_endpoint"] = None
    profile_path.write_text(json.dumps(profile))
    assert_one_line_error(alice.run("whoami"), "expired", "hoopctl login")


# -- any dev user: hoopctl login --dev-user NAME ---------------------------------------------


def test_dev_user_logs_in_as_that_user_even_where_alice_is_auto_approved(
    dev_broker: BrokerProcess, alice: User, bob: User
) -> None:
    result = bob.login(dev_broker, "--dev-user", "bob")
    assert result.returncode == 0, result.stderr
    assert "Logging in as bob" in result.stderr and "enter the code" not in result.stderr
    assert "Logged in" in result.stderr and "as bob" in result.stderr
    me = json.loads(bob.run("whoami", "-o", "json").stdout)
    assert (me["user"], me["groups"]) == ("bob", ["approvers", "engineers"])

    # A name that is not in [dev.users]: one line that names those who are.
    wrong = alice.login(dev_broker, "--dev-user", "mallory")
    assert wrong.returncode == 1
    assert_one_line_error(wrong, "no dev user named 'mallory'", "alice, bob, carol")
    assert_one_line_error(alice.run("whoami", "--broker", dev_broker.address), "not logged in")


def test_dev_user_is_refused_by_a_broker_with_a_real_identity_provider(
    tmp_path, alice: User
) -> None:
    from tests.helpers import free_port, oidc_config, start_broker

    # The broker names its issuer without reaching it; --dev-user stops before the IdP.
    broker = start_broker(
        tmp_path,
        oidc_config(tmp_path / "oidc-data", port=free_port(), issuer="http://127.0.0.1:9"),
        dev=False,
        name="oidc-broker",
    )
    try:
        result = alice.login(broker, "--dev-user", "bob")
    finally:
        broker.stop()
    assert result.returncode == 2
    assert_one_line_error(result, "--dev-user works only with", "hoop-broker serve --dev")


# -- dev-issuer refresh tokens outlive a broker restart ------------------------------------


def _refresh_token(user: User, broker: BrokerProcess) -> str:
    """The refresh token hoopctl keeps in USER's keyring (read as hoopctl reads it)."""
    import subprocess
    import sys

    code = (
        "import sys; from hoopctl.address import BrokerAddress; "
        "from hoopctl.credentials import CredentialStore; "
        "print(CredentialStore(BrokerAddress.parse(sys.argv[1])).refresh_token())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, broker.address],
        env=user.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_refresh_after_a_broker_restart_renews_the_login(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0
    token = _refresh_token(alice, dev_broker)
    assert len(token) > 20
    saved = dev_broker.data_dir / "dev_issuer_refresh.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    dev_broker.stop()
    dev_broker.start()
    # The certificate has run out: the next command renews it with the refresh token,
    # which the restarted issuer still knows.
    profile_path = next((alice.config_dir / "profiles").iterdir())
    profile = json.loads(profile_path.read_text())
    profile["valid_before"] = int(time.time()) - 10
    profile_path.write_text(json.dumps(profile))
    whoami = alice.run("whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["user"] == "alice"
    assert json.loads(profile_path.read_text())["valid_before"] > time.time()
    rotated = _refresh_token(alice, dev_broker)
    assert rotated != token

    # No usable token is written anywhere by the broker: the file holds digests only.
    for path in (saved, dev_broker.stdout_path, dev_broker.stderr_path):
        text = path.read_text()
        assert token not in text and rotated not in text, path
    grants = json.loads(saved.read_text())["grants"]
    assert all(len(digest) == 64 for digest in grants)
    assert {grant["username"] for grant in grants.values()} == {"alice"}
