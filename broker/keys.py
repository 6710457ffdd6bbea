"""The broker's own keys in its data dir: the SSH host key, the user certificate authority and
the audit signing key (recording signatures, prune checkpoints, the signed chain head)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from broker.errors import BrokerError

HOST_KEY_FILE = "host_key"
USER_CA_FILE = "user_ca"
# `hoop-broker rotate-ca` keeps the replaced CA as user_ca.retired-YYYYMMDDTHHMMSSZ: never trusted.
RETIRED_CA_PREFIX = f"{USER_CA_FILE}.retired-"
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


def _read_key(path: Path) -> asyncssh.SSHKey:
    """A private key file of the broker's; refused when other users can read it."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise BrokerError(f"cannot read key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise BrokerError(
            f"{path} is accessible by other users (mode {mode:o}); run: chmod 600 {path}"
        )
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise BrokerError(f"cannot read key {path}: {exc}") from None


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # Write to a temp name first so a crash never leaves a half-written file behind.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _write_key(path: Path, key: asyncssh.SSHKey) -> None:
    """KEY as PATH (0600) and PATH.pub."""
    _write_file(path, key.export_private_key(), 0o600)
    _write_file(path.with_name(path.name + ".pub"), key.export_public_key(), 0o644)


def _load_or_create(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return _read_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"hoop-broker {path.name}")
    _write_key(path, key)
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


class UserCA:
    """The user CA key as the data dir holds it now.

    `hoop-broker rotate-ca` replaces the file while the broker runs, so every use checks it
    (one stat) and reloads it when it changed: the broker signs with, and trusts, only the
    current key. A missing or unreadable file is a BrokerError (no certificate is accepted or
    issued then), never a new CA made behind the operator's back.
    """

    def __init__(self, data_dir: Path, key: asyncssh.SSHKey | None = None) -> None:
        self.path = data_dir / USER_CA_FILE
        self._key = key
        self._stamp: tuple[int, int, int] | None = self._stat() if key is not None else None

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise BrokerError(f"cannot read the user CA {self.path}: {exc.strerror}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> asyncssh.SSHKey:
        stamp = self._stat()
        if self._key is None or stamp != self._stamp:
            self._key = _read_key(self.path)
            self._stamp = stamp
        return self._key

    def retired_fingerprints(self) -> set[str]:
        """SHA256 fingerprints of the CAs that rotate-ca retired (for the audit trail's reason)."""
        found = set()
        for pub in self.path.parent.glob(f"{RETIRED_CA_PREFIX}*.pub"):
            try:
                found.add(asyncssh.read_public_key(pub).get_fingerprint("sha256"))
            except (OSError, asyncssh.KeyImportError):
                continue
        return found


@dataclass(frozen=True)
class RotatedCA:
    previous: asyncssh.SSHKey
    current: asyncssh.SSHKey
    retired_path: Path


def rotate_user_ca(data_dir: Path, now: float | None = None) -> RotatedCA:
    """Replace the user CA with a new key; keep the old one as user_ca.retired-STAMP (0600).

    The retired key is kept for the record only: nothing trusts it any more. Revoking the
    certificates it signed is the caller's part (the certificate registry).
    """
    path = data_dir / USER_CA_FILE
    if not path.exists():
        raise BrokerError(f"no user CA {path}: start the broker once with this data dir first")
    previous = _read_key(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    retired = data_dir / f"{RETIRED_CA_PREFIX}{stamp}"
    counter = 1
    while retired.exists():
        counter += 1
        retired = data_dir / f"{RETIRED_CA_PREFIX}{stamp}-{counter}"
    _write_key(retired, previous)
    current = asyncssh.generate_private_key("ssh-ed25519", comment=f"hoop-broker {USER_CA_FILE}")
    _write_key(path, current)
    return RotatedCA(previous=previous, current=current, retired_path=retired)
