"""The broker's own keys in its data dir: the SSH host key, the user certificate authority and
the audit signing key (recording signatures, prune checkpoints, the signed chain head)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from broker.errors import BrokerError

HOST_KEY_FILE = "host_key"
USER_CA_FILE = "user_ca"
AUDIT_KEY_FILE = "audit_key"


@dataclass(frozen=True)
class BrokerKeys:
    host_key: asyncssh.SSHKey
    user_ca: asyncssh.SSHKey
    audit_key: asyncssh.SSHKey

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
        audit_key=_load_or_create(data_dir / AUDIT_KEY_FILE),
    )


def load_or_create_audit_key(data_dir: Path) -> asyncssh.SSHKey:
    """The Ed25519 key that signs recordings and audit checkpoints (0600, created when missing)."""
    ensure_data_dir(data_dir)
    return _load_or_create(data_dir / AUDIT_KEY_FILE)


def load_audit_key(data_dir: Path) -> asyncssh.SSHKey:
    """The audit signing key of a broker that has run before; never creates one."""
    path = data_dir / AUDIT_KEY_FILE
    if not path.exists():
        raise BrokerError(
            f"no audit signing key {path}: start the broker once with this data dir first"
        )
    return _load_or_create(path)


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
