"""What the network database units share when they connect: address, held password, TLS."""

from __future__ import annotations

import os
import ssl
from typing import Any

from broker.credentials import resolve_credential
from broker.protocols.base import TargetError


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def held_password(target: Any) -> str | None:
    """The broker's credential for TARGET (never shown to the caller)."""
    if target.credential is None:
        return None
    return resolve_credential(target.credential, target=target.name).rstrip("\n")


def ca_file(target: Any) -> str | None:
    """The CA bundle that verify-full checks the server against: tls_ca, else the system's."""
    if target.tls_ca is None:
        return ssl.get_default_verify_paths().cafile
    if not os.access(target.tls_ca, os.R_OK):
        raise TargetError(f"target {target.name}: cannot read the CA bundle {target.tls_ca}")
    return str(target.tls_ca)


def tls_unavailable(target: Any) -> TargetError:
    return TargetError(
        f"target {target.name}: TLS is unavailable: the server does not offer TLS "
        f'and tls = "{target.tls}" requires it'
    )
