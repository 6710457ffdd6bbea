"""Login state per broker: secrets (private key, refresh token) in the OS keyring, the rest
(certificate, user, groups, expiry, IdP endpoints) in a profile file that holds nothing secret."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import asyncssh
import keyring
import keyring.core
import keyring.errors
from keyring.backend import KeyringBackend

from hoopctl.address import BrokerAddress
from hoopctl.errors import CredentialStoreError, NotLoggedIn
from hoopctl.paths import profiles_dir, write_private

SERVICE = "hoopctl"


@dataclass
class Profile:
    broker: str
    user: str
    groups: list[str]
    certificate: str
    valid_before: int
    issuer: str
    client_id: str
    token_endpoint: str | None = None

    def cert(self) -> asyncssh.SSHCertificate:
        return asyncssh.import_certificate(self.certificate)


PROFILE_KEYS = tuple(field.name for field in fields(Profile))


def _backend_name(backend: KeyringBackend) -> str:
    return f"{type(backend).__module__}.{type(backend).__name__}"


def _usable_backend(used_at_login: str | None = None) -> KeyringBackend:
    """The keyring backend to use: the one keyring is told to use (PYTHON_KEYRING_BACKEND, or
    its keyringrc.cfg), else the one the login stored the secrets in (USED_AT_LOGIN, where it
    still works here), else the one keyring picks. Picking loads and asks every installed
    backend (about 35 ms of every command); and the secrets are where the login put them."""
    backend: KeyringBackend | None = None
    if used_at_login and not os.environ.get("PYTHON_KEYRING_BACKEND"):
        backend = keyring.core.load_config() or _working(used_at_login)
    if backend is None:
        backend = keyring.get_keyring()
    name = _backend_name(backend)
    if backend.priority <= 0 or name.startswith("keyring.backends.fail"):
        raise CredentialStoreError(
            f"no usable keyring backend ({name}); install an OS keyring service or keyrings.alt"
        )
    return backend


def _working(name: str) -> KeyringBackend | None:
    """Backend NAME (module.Class), where it loads and can work in this environment."""
    try:
        backend = keyring.core.load_keyring(name)
        return backend if backend.priority > 0 else None
    except Exception:  # not installed any more, or not usable here (no D-Bus session…)
        return None


def announce_backend() -> None:
    """Say plainly where secrets go when there is no OS keyring, only a file."""
    backend = _usable_backend()
    file_path = getattr(backend, "file_path", None)
    if file_path:
        print(
            f"note: no OS keyring here; secrets go to {file_path} (keyrings.alt, mode 0600)",
            file=sys.stderr,
        )


def _secure_backend_file(backend: KeyringBackend) -> None:
    file_path = getattr(backend, "file_path", None)
    if file_path and os.path.exists(file_path):
        os.chmod(file_path, 0o600)


# The profile file's key naming the keyring backend the login stored the secrets in.
BACKEND_KEY = "keyring_backend"


class CredentialStore:
    def __init__(self, address: BrokerAddress) -> None:
        self.address = address
        self._profile_path: Path = profiles_dir() / f"{address.slug}.json"
        self._used_at_login: str | None = None
        self._profile_read = False

    def _key(self, item: str) -> str:
        return f"{self.address}:{item}"

    def _read_login_state(self) -> None:
        """Which backend the login used, from the profile (once; none where it is unreadable)."""
        if not self._profile_read:
            with contextlib.suppress(NotLoggedIn):
                self.profile()

    def _backend(self) -> KeyringBackend:
        self._read_login_state()
        return _usable_backend(self._used_at_login)

    def _set_secret(self, item: str, value: str, backend: KeyringBackend | None = None) -> None:
        backend = backend or self._backend()
        try:
            backend.set_password(SERVICE, self._key(item), value)
        except keyring.errors.KeyringError as exc:
            raise CredentialStoreError(f"cannot write to the keyring: {exc}") from None
        _secure_backend_file(backend)

    def _get_secret(self, item: str) -> str | None:
        backend = self._backend()
        try:
            return backend.get_password(SERVICE, self._key(item))
        except keyring.errors.KeyringError as exc:
            raise CredentialStoreError(f"cannot read the keyring: {exc}") from None

    def _delete_secret(self, item: str, backend: KeyringBackend | None = None) -> None:
        try:
            (backend or self._backend()).delete_password(SERVICE, self._key(item))
        except keyring.errors.PasswordDeleteError:
            pass
        except keyring.errors.KeyringError as exc:
            raise CredentialStoreError(f"cannot clear the keyring: {exc}") from None

    def check_usable(self) -> None:
        _usable_backend()

    def save(
        self, profile: Profile, private_key: asyncssh.SSHKey, refresh_token: str | None
    ) -> None:
        """A login: the secrets go to the backend keyring uses now, which the profile names."""
        backend = _usable_backend()
        self._set_secret("private_key", private_key.export_private_key().decode(), backend)
        if refresh_token:
            self._set_secret("refresh_token", refresh_token, backend)
        else:
            self._delete_secret("refresh_token", backend)
        self._used_at_login, self._profile_read = _backend_name(backend), True
        self._write_profile(profile)

    def update_profile(self, profile: Profile) -> None:
        self._read_login_state()
        self._write_profile(profile)

    def _write_profile(self, profile: Profile) -> None:
        data: dict[str, object] = dict(asdict(profile))
        if self._used_at_login:
            data[BACKEND_KEY] = self._used_at_login
        write_private(self._profile_path, json.dumps(data, indent=2) + "\n")

    def profile(self) -> Profile:
        if not self._profile_path.exists():
            raise NotLoggedIn(
                f"not logged in to {self.address}: run hoopctl login --broker {self.address}"
            )
        try:
            data = json.loads(self._profile_path.read_text(encoding="utf-8"))
            used_at_login = data.get(BACKEND_KEY)
            # Keys a later hoopctl may add are left for it.
            profile = Profile(**{key: data[key] for key in PROFILE_KEYS if key in data})
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise NotLoggedIn(
                f"login state for {self.address} is unreadable ({exc}): "
                f"run hoopctl login --broker {self.address}"
            ) from None
        self._used_at_login = used_at_login if isinstance(used_at_login, str) else None
        self._profile_read = True
        return profile

    def private_key(self) -> asyncssh.SSHKey:
        text = self._get_secret("private_key")
        if not text:
            raise NotLoggedIn(
                f"no key for {self.address} in the keyring: run hoopctl login --broker {self.address}"
            )
        try:
            return asyncssh.import_private_key(text)
        except asyncssh.KeyImportError:
            raise NotLoggedIn(
                f"the key in the keyring is damaged: run hoopctl login --broker {self.address}"
            ) from None

    def refresh_token(self) -> str | None:
        return self._get_secret("refresh_token")

    def set_refresh_token(self, token: str) -> None:
        self._set_secret("refresh_token", token)

    def clear(self) -> bool:
        """Secrets first: if the keyring fails, the profile stays and logout can be retried."""
        existed = self._profile_path.exists()
        self._delete_secret("private_key")
        self._delete_secret("refresh_token")
        self._profile_path.unlink(missing_ok=True)
        return existed
