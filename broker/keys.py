"""The broker's own keys in its data dir: the SSH host key and the user certificate authority."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from broker.errors import BrokerError

HOST_KEY_FILE = "host_key"
USER_CA_FILE = "user_ca"


@dataclass(frozen=True)
class BrokerKeys:
    host_key: asyncssh.SSHKey
    user_ca: asyncssh.SSHKey

    @property
    def host_fingerprint(self) -> str:
        return self.host_key.get_fingerprint("sha256")


def ensure_data_dir(data_dir: Path) -> None:
    """Create the data dir readable only by the broker's user."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(f"cannot create data dir {data_dir}: {exc.strerror}") from None


def _load_or_create(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise BrokerError(
                f"{path} is accessible by other users (mode {mode:o}); run: chmod 600 {path}"
            )
        try:
            return asyncssh.read_private_key(path)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise BrokerError(f"cannot read key {path}: {exc}") from None
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"hoop-broker {path.name}")
    # Write to a temp name first so a crash never leaves a half-written key behind.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    os.replace(tmp, path)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    return key


def load_or_create_keys(data_dir: Path) -> BrokerKeys:
    ensure_data_dir(data_dir)
    return BrokerKeys(
        host_key=_load_or_create(data_dir / HOST_KEY_FILE),
        user_ca=_load_or_create(data_dir / USER_CA_FILE),
    )


def load_or_create_secret(data_dir: Path, name: str, size: int = 32) -> bytes:
    """A random secret the broker keeps in its data dir (mode 0600), e.g. the masking hash key."""
    path = data_dir / name
    if path.exists():
        return path.read_bytes()
    ensure_data_dir(data_dir)
    secret = os.urandom(size)
    tmp = path.with_name(f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    os.replace(tmp, path)
    return secret
