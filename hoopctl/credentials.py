"""Login state per broker: secrets (private key, refresh token) in the OS keyring, the rest
(certificate, user, groups, expiry, IdP endpoints) in a profile file that holds nothing secret."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncssh
import keyring
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


def _usable_backend() -> KeyringBackend:
    backend = keyring.get_keyring()
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    if backend.priority <= 0 or name.startswith("keyring.backends.fail"):
        raise CredentialStoreError(
            f"no usable keyring backend ({name}); install an OS keyring service or keyrings.alt"
        )
    return backend


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


class CredentialStore:
    def __init__(self, address: BrokerAddress) -> None:
        self.address = address
        self._profile_path: Path = profiles_dir() / f"{address.slug}.json"

    def _key(self, item: str) -> str:
        return f"{self.address}:{item}"

    def _set_secret(self, item: str, value: str) -> None:
        backend = _usable_backend()
        try:
            backend.set_password(SERVICE, self._key(item), value)
        except keyring.errors.KeyringError as exc:
            raise CredentialStoreError(f"cannot write to the keyring: {exc}") from None
        _secure_backend_file(backend)

    def _get_secret(self, item: str) -> str | None:
        backend = _usable_backend()
        try:
            return backend.get_password(SERVICE, self._key(item))
        except keyring.errors.KeyringError as exc:
            raise CredentialStoreError(f"cannot read the keyring: {exc}") from None

    def _delete_secret(self, item: str) -> None:
        try:
            _usable_backend().delete_password(SERVICE, self._key(item))
        except keyring.errors.PasswordDeleteError:
            pass
        except keyring.errors.KeyringError as exc:
            raise CredentialStoreError(f"cannot clear the keyring: {exc}") from None

    def check_usable(self) -> None:
        _usable_backend()

    def save(
        self, profile: Profile, private_key: asyncssh.SSHKey, refresh_token: str | None
    ) -> None:
        self._set_secret("private_key", private_key.export_private_key().decode())
        if refresh_token:
            self._set_secret("refresh_token", refresh_token)
        else:
            self._delete_secret("refresh_token")
        write_private(self._profile_path, json.dumps(asdict(profile), indent=2) + "\n")

    def update_profile(self, profile: Profile) -> None:
        write_private(self._profile_path, json.dumps(asdict(profile), indent=2) + "\n")

    def profile(self) -> Profile:
        if not self._profile_path.exists():
            raise NotLoggedIn(
                f"not logged in to {self.address}: run hoopctl login --broker {self.address}"
            )
        try:
            return Profile(**json.loads(self._profile_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise NotLoggedIn(
                f"login state for {self.address} is unreadable ({exc}): "
                f"run hoopctl login --broker {self.address}"
            ) from None

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
