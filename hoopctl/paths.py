"""Where hoopctl keeps its (non-secret) files: XDG config dir, mode 0700."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    path = Path(base) / "hoopctl"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def known_hosts_file() -> Path:
    return config_dir() / "known_hosts"


def profiles_dir() -> Path:
    path = config_dir() / "profiles"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def ssh_dir() -> Path:
    path = config_dir() / "ssh"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def write_private(path: Path, data: str) -> None:
    """Write DATA to PATH with mode 0600, atomically, so a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data)
    os.replace(tmp, path)
