"""`hoopctl ssh-config`: key and certificate files plus a Host block for plain OpenSSH."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncssh

from hoopctl.address import BrokerAddress
from hoopctl.credentials import Profile
from hoopctl.paths import known_hosts_file, ssh_dir, write_private


def _export_dir(address: BrokerAddress) -> Path:
    return ssh_dir() / address.slug


def refresh_exported_certificate(address: BrokerAddress, profile: Profile) -> None:
    """After a renewal, keep the certificate OpenSSH uses current, if one was exported."""
    cert_path = _export_dir(address) / "id_ed25519-cert.pub"
    if cert_path.exists():
        write_private(cert_path, profile.certificate.strip() + "\n")


# The target type that gets a Host block: plain OpenSSH reaches it through the broker
# (SetEnv HOOP_TARGET, docs/native-clients.md).
SSH_TYPE = "ssh"
TARGET_SUFFIX = ".hoop"


def write_ssh_config(
    address: BrokerAddress,
    profile: Profile,
    key: asyncssh.SSHKey,
    *,
    alias: str | None = None,
    targets: Sequence[str] = (),
) -> tuple[str, Path]:
    """OpenSSH reads keys only from files (or an agent), so export them 0600 on request.

    The block for the broker itself (hoop-HOST, or ALIAS) comes first; then one per target
    in TARGETS, `Host NAME.hoop`, the same but for `SetEnv HOOP_TARGET=NAME`, which makes
    the broker serve that target's shell, commands, sftp, scp and rsync."""
    folder = _export_dir(address)
    folder.mkdir(mode=0o700, exist_ok=True)
    key_path = folder / "id_ed25519"
    cert_path = folder / "id_ed25519-cert.pub"
    write_private(key_path, key.export_private_key().decode())
    write_private(cert_path, profile.certificate.strip() + "\n")
    common = (
        f"    HostName {address.host}\n"
        f"    Port {address.port}\n"
        f"    User {profile.user}\n"
        f"    IdentityFile {_quote(key_path)}\n"
        f"    CertificateFile {_quote(cert_path)}\n"
        f"    IdentitiesOnly yes\n"
        f"    IdentityAgent none\n"
        f"    UserKnownHostsFile {_quote(known_hosts_file())}\n"
        f"    StrictHostKeyChecking yes\n"
        f"    PasswordAuthentication no\n"
        f"    KbdInteractiveAuthentication no\n"
    )
    name = alias or f"hoop-{address.host}"
    blocks = [f"Host {name}\n{common}"]
    for target in targets:
        # OpenSSH 7.8 or later sends it; the broker reads the channel as a session on it.
        blocks.append(f"Host {target}{TARGET_SUFFIX}\n{common}    SetEnv HOOP_TARGET={target}\n")
    return "\n".join(blocks), key_path


def _quote(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if " " in text else text
