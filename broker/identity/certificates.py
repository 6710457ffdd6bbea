"""Short-lived OpenSSH user certificates signed by the broker's user CA."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import asyncssh

from broker.errors import AuthError
from broker.identity.tokens import Identity

_MIN_LIFETIME = 10
# Backdating covers small clock differences between broker and client hosts.
_BACKDATE = 60


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: asyncssh.SSHOpenSSHCertificate
    serial: int
    valid_after: int
    valid_before: int
    key_fingerprint: str

    def openssh(self) -> str:
        return self.certificate.export_certificate().decode()


def parse_public_key(text: str) -> asyncssh.SSHKey:
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        raise AuthError("public key is not an OpenSSH public key") from None
    if key.algorithm not in (b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ssh-rsa"):
        raise AuthError(f"public key type {key.algorithm.decode()} is not accepted")
    return key


def issue_certificate(
    ca: asyncssh.SSHKey,
    public_key: asyncssh.SSHKey,
    identity: Identity,
    *,
    max_ttl: int,
    now: float | None = None,
) -> IssuedCertificate:
    """Sign PUBLIC_KEY for IDENTITY; lifetime = min(token lifetime, MAX_TTL)."""
    current = int(now if now is not None else time.time())
    valid_before = min(identity.expires_at, current + max_ttl)
    if valid_before - current < _MIN_LIFETIME:
        raise AuthError("token expires too soon to issue a certificate; log in again")
    serial = secrets.randbits(63)
    valid_after = current - _BACKDATE
    cert = ca.generate_user_certificate(
        public_key,
        key_id=identity.user,
        serial=serial,
        principals=[identity.user],
        valid_after=valid_after,
        valid_before=valid_before,
        permit_x11_forwarding=False,
        permit_agent_forwarding=False,
        permit_user_rc=False,
        comment=f"hoop {identity.user}",
    )
    return IssuedCertificate(
        certificate=cert,
        serial=serial,
        valid_after=valid_after,
        valid_before=valid_before,
        key_fingerprint=public_key.get_fingerprint("sha256"),
    )
