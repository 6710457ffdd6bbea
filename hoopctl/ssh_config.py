"""`hoopctl ssh-config`: key and certificate files plus a Host block for plain OpenSSH."""

from __future__ import annotations

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


def write_ssh_config(
    address: BrokerAddress, profile: Profile, key: asyncssh.SSHKey, *, alias: str | None = None
) -> tuple[str, Path]:
    """OpenSSH reads keys only from files (or an agent), so export them 0600 on request."""
    folder = _export_dir(address)
    folder.mkdir(mode=0o700, exist_ok=True)
    key_path = folder / "id_ed25519"
    cert_path = folder / "id_ed25519-cert.pub"
    write_private(key_path, key.export_private_key().decode())
    write_private(cert_path, profile.certificate.strip() + "\n")
    name = alias or f"hoop-{address.host}"
    block = (
        f"Host {name}\n"
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
    return block, key_path


def _quote(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if " " in text else text
