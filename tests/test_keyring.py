"""Where hoopctl keeps secrets: the keyring, refusing to run without one, saying so if it is a file."""

from __future__ import annotations

import base64
import configparser
import re
import stat
import subprocess
import sys
from pathlib import Path

from keyrings.alt.escape import unescape

from tests.helpers import HOOPCTL, BrokerProcess, User, assert_one_line_error

FAIL_BACKEND = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
PRIVATE_KEY = "BEGIN OPENSSH PRIVATE KEY"


def keyring_file(user: User) -> Path:
    """Where keyrings.alt's PlaintextKeyring keeps its file under the user's XDG data dir."""
    return user.home / ".local" / "share" / "python_keyring" / "keyring_pass.cfg"


def keyring_entries(user: User) -> dict[str, str]:
    """The hoopctl section of the keyring file: unescaped username -> decoded secret."""
    parser = configparser.RawConfigParser()
    parser.read(keyring_file(user), encoding="utf-8")
    if not parser.has_section("hoopctl"):
        return {}
    return {
        unescape(name): base64.b64decode(value).decode() for name, value in parser.items("hoopctl")
    }


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


def test_login_without_a_usable_keyring_is_one_line_error_and_saves_nothing(
    dev_broker: BrokerProcess, alice: User
) -> None:
    result = alice.run(
        "login",
        "--broker",
        dev_broker.address,
        "--accept-host-key",
        dev_broker.host_fingerprint,
        "--no-browser",
        env=FAIL_BACKEND,
    )

    assert_one_line_error(result, "no usable keyring backend")
    assert files_under(alice.config_dir) == []
    assert not (alice.config_dir / "known_hosts").exists()
    assert not keyring_file(alice).exists()
    # It stopped before asking the broker for anything.
    assert dev_broker.audit_events("auth.login") == []


def test_commands_without_a_usable_keyring_after_login_are_one_line_errors(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0

    whoami = alice.run("whoami", env=FAIL_BACKEND)
    assert_one_line_error(whoami, "no usable keyring backend")
    assert whoami.stdout == ""
    ssh_config = alice.run("ssh-config", env=FAIL_BACKEND)
    assert_one_line_error(ssh_config, "no usable keyring backend")
    assert ssh_config.stdout == ""

    # The login itself is intact: with the keyring back, it works again.
    assert alice.run("whoami").returncode == 0


def test_login_announces_the_file_keyring_and_keeps_the_key_out_of_the_config_dir(
    dev_broker: BrokerProcess, alice: User
) -> None:
    result = alice.login(dev_broker)

    assert result.returncode == 0, result.stderr
    path = keyring_file(alice)
    announced = [line for line in result.stderr.splitlines() if "keyrings.alt" in line]
    assert len(announced) == 1, result.stderr
    assert str(path) in announced[0]
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # keyrings.alt stores values base64-encoded: the PEM text never appears as such...
    assert PRIVATE_KEY not in path.read_text()
    # ...but the key is in there, under this broker's name.
    entries = keyring_entries(alice)
    assert PRIVATE_KEY in entries[f"{dev_broker.address}:private_key"]
    assert entries[f"{dev_broker.address}:refresh_token"]
    # And nowhere in hoopctl's own config dir.
    files = files_under(alice.config_dir)
    assert files
    for file in files:
        text = file.read_text(errors="replace")
        assert PRIVATE_KEY not in text, file
        assert entries[f"{dev_broker.address}:refresh_token"] not in text, file


def test_logout_removes_the_secrets_from_the_keyring(
    dev_broker: BrokerProcess, alice: User
) -> None:
    assert alice.login(dev_broker).returncode == 0
    broker_entries = [
        name for name in keyring_entries(alice) if name.startswith(f"{dev_broker.address}:")
    ]
    assert {re.sub(r"^.*:", "", name) for name in broker_entries} == {
        "private_key",
        "refresh_token",
    }

    logout = alice.run("logout")

    assert logout.returncode == 0, logout.stderr
    assert keyring_entries(alice) == {}
    assert stat.S_IMODE(keyring_file(alice).stat().st_mode) == 0o600
    assert_one_line_error(alice.run("whoami"), "not logged in")
    # Logging out twice is harmless.
    again = alice.run("logout")
    assert again.returncode == 0, again.stderr
    assert "Not logged in" in again.stderr


# A keyring backend that keyring itself would pick over the file one (higher priority), holding
# nothing: installed for one command through an entry point, as a package would install it.
FAKE_BACKEND = """
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError, PasswordSetError


class Keyring(KeyringBackend):
    priority = 50

    def get_password(self, service, username):
        return None

    def set_password(self, service, username, password):
        raise PasswordSetError("the test's empty keyring keeps nothing")

    def delete_password(self, service, username):
        raise PasswordDeleteError("nothing here")
"""


def _with_an_emptier_keyring_installed(user: User, tmp_path: Path) -> dict[str, str]:
    """USER's environment without PYTHON_KEYRING_BACKEND (keyring picks a backend itself, as on
    a user's machine), where an installed backend outranks the file one the login used."""
    site = tmp_path / "site"
    info = site / "emptyring-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "emptyring.py").write_text(FAKE_BACKEND)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: emptyring\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[keyring.backends]\nempty = emptyring\n")
    env = {key: value for key, value in user.env.items() if key != "PYTHON_KEYRING_BACKEND"}
    env["PYTHONPATH"] = str(site)
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOOPCTL), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_secrets_are_read_from_the_keyring_the_login_stored_them_in(
    dev_broker: BrokerProcess, alice: User, tmp_path: Path
) -> None:
    assert alice.login(dev_broker).returncode == 0  # into the file keyring
    env = _with_an_emptier_keyring_installed(alice, tmp_path)
    picked = subprocess.run(
        [sys.executable, "-c", "import keyring; print(type(keyring.get_keyring()).__module__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert picked.stdout.strip() == "emptyring"  # keyring's own pick now is the empty one

    whoami = _run(env, "whoami")
    assert whoami.returncode == 0, whoami.stderr
    assert "alice" in whoami.stdout

    # A backend the user names still wins: for the command, or in keyring's own config file.
    chosen = _run({**env, "PYTHON_KEYRING_BACKEND": "emptyring.Keyring"}, "whoami")
    assert_one_line_error(chosen, "no key")
    root = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keyring.util import platform_; print(platform_.config_root())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert Path(root).is_relative_to(alice.home)  # alice's own config, not this machine's
    config = Path(root) / "keyringrc.cfg"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[backend]\ndefault-keyring = emptyring.Keyring\n")
    assert_one_line_error(_run(env, "whoami"), "no key")
    config.unlink()

    # Logging out clears the keyring the login used.
    assert _run(env, "logout").returncode == 0
    assert keyring_entries(alice) == {}
