"""Target credentials: resolved from references (env:, file:, keyring:) only inside the broker."""

from __future__ import annotations

import os
from pathlib import Path

from broker.errors import BrokerError


class CredentialError(BrokerError):
    """A credential reference could not be resolved. The message never contains the secret."""


def resolve_credential(reference: str, *, target: str) -> str:
    kind, _, rest = reference.partition(":")
    if kind == "env":
        value = os.environ.get(rest)
        if value is None:
            raise CredentialError(
                f"target {target}: credential env var {rest} is not set on the broker"
            )
        return value
    if kind == "file":
        try:
            return Path(rest).read_text(encoding="utf-8")
        except OSError as exc:
            raise CredentialError(
                f"target {target}: cannot read credential file {rest}: {exc.strerror}"
            ) from None
    if kind == "keyring":
        import keyring
        import keyring.errors

        service, _, user = rest.partition("/")
        try:
            value = keyring.get_password(service, user)
        except keyring.errors.KeyringError as exc:
            raise CredentialError(f"target {target}: keyring error: {exc}") from None
        if value is None:
            raise CredentialError(f"target {target}: no keyring entry {service}/{user}")
        return value
    raise CredentialError(f"target {target}: unsupported credential reference kind {kind!r}")
