"""The broker's host key, pinned at first login in hoopctl's own known_hosts file."""

from __future__ import annotations

import asyncssh

from hoopctl.address import BrokerAddress
from hoopctl.paths import known_hosts_file, write_private


def pinned_key(address: BrokerAddress) -> asyncssh.SSHKey | None:
    path = known_hosts_file()
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == address.known_hosts_name:
            try:
                return asyncssh.import_public_key(f"{parts[1]} {parts[2]}")
            except asyncssh.KeyImportError:
                continue
    return None


def known_hosts_line(address: BrokerAddress, key: asyncssh.SSHKey) -> str:
    algorithm, blob = key.export_public_key().decode().split()[:2]
    return f"{address.known_hosts_name} {algorithm} {blob}"


def pin(address: BrokerAddress, key: asyncssh.SSHKey) -> None:
    path = known_hosts_file()
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line for line in lines if line.split(" ", 1)[0] != address.known_hosts_name]
    kept.append(known_hosts_line(address, key))
    write_private(path, "\n".join(kept) + "\n")


def forget(address: BrokerAddress) -> bool:
    path = known_hosts_file()
    if not path.exists():
        return False
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.split(" ", 1)[0] != address.known_hosts_name]
    write_private(path, "\n".join(kept) + ("\n" if kept else ""))
    return len(kept) != len(lines)


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")
