"""Short-lived OpenSSH user certificates signed by the broker's user CA.

Each certificate gets a random 64-bit serial and a key id of its own (`USER:NONCE`, the nonce
random too): the pair names one issued certificate in the broker's registry
(broker/identity/registry.py), which admits nothing else.
"""

from __future__ import annotations

import base64
import secrets
import struct
import time
from dataclasses import dataclass

import asyncssh

from broker.errors import AuthError
from broker.identity.tokens import Identity

_MIN_LIFETIME = 10
_KEY_ID_NONCE_BYTES = 6
# Backdating covers small clock differences between broker and client hosts.
_BACKDATE = 60


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: asyncssh.SSHOpenSSHCertificate
    serial: int
    key_id: str
    principals: tuple[str, ...]
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
    serial = new_serial()
    key_id = f"{identity.user}:{secrets.token_hex(_KEY_ID_NONCE_BYTES)}"
    valid_after = current - _BACKDATE
    cert = ca.generate_user_certificate(
        public_key,
        key_id=key_id,
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
        key_id=key_id,
        principals=(identity.user,),
        valid_after=valid_after,
        valid_before=valid_before,
        key_fingerprint=public_key.get_fingerprint("sha256"),
    )


def new_serial() -> int:
    """A random, non-zero 64-bit serial (OpenSSH serials are unsigned 64-bit numbers)."""
    while True:
        serial = secrets.randbits(64)
        if serial:
            return serial


@dataclass(frozen=True)
class PresentedCertificate:
    """What a client's certificate says about itself, read from the bytes it sent."""

    serial: int
    key_id: str
    key_fingerprint: str


# The public-key fields of each certificate type, between the nonce and the serial
# (PROTOCOL.certkeys); each is a length-prefixed string or mpint.
_KEY_FIELDS = {
    b"ssh-ed25519-cert-v01@openssh.com": 1,
    b"ssh-rsa-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    b"sk-ssh-ed25519-cert-v01@openssh.com": 2,
    b"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": 3,
    b"ssh-dss-cert-v01@openssh.com": 4,
}


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise ValueError("truncated")
    (size,) = struct.unpack_from(">I", data, pos)
    end = pos + 4 + size
    if end > len(data):
        raise ValueError("truncated")
    return data[pos + 4 : end], end


def read_presented_certificate(blob: bytes) -> PresentedCertificate:
    """Serial, key id and key fingerprint of the OpenSSH certificate BLOB (the wire form).

    asyncssh checks the signature, validity and principals itself but keeps serial and key id
    to itself, so they are read here. Raises AuthError for anything that is not a certificate
    of a known type.
    """
    try:
        algorithm, pos = _string(blob, 0)
        fields = _KEY_FIELDS.get(algorithm)
        if fields is None:
            raise ValueError("not an OpenSSH certificate type")
        _nonce, pos = _string(blob, pos)
        for _ in range(fields):
            _field, pos = _string(blob, pos)
        if pos + 12 > len(blob):
            raise ValueError("truncated")
        (serial,) = struct.unpack_from(">Q", blob, pos)
        key_id, _ = _string(blob, pos + 12)
        cert = asyncssh.import_certificate(algorithm + b" " + base64.b64encode(blob))
        return PresentedCertificate(
            serial=serial,
            key_id=key_id.decode("utf-8", "replace"),
            key_fingerprint=cert.key.get_fingerprint("sha256"),
        )
    except (ValueError, struct.error, asyncssh.KeyImportError):
        raise AuthError("the certificate cannot be read") from None
