"""Broker addresses: HOST[:PORT], default port 2222, from --broker, HOOP_BROKER or the config."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

from hoopctl.errors import UsageError
from hoopctl.paths import config_dir, write_private

DEFAULT_PORT = 2222


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        value = text.strip()
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif value.count(":") == 1:
            host, _, port_text = value.partition(":")
        else:
            host, port_text = value, ""
        if not host or (port_text and not port_text.isdigit()):
            raise UsageError(f"not a broker address: {text!r} (expected HOST or HOST:PORT)")
        port = int(port_text) if port_text else DEFAULT_PORT
        if not 0 < port < 65536:
            raise UsageError(f"port out of range in broker address {text!r}")
        return cls(host=host, port=port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host name as OpenSSH writes it in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def slug(self) -> str:
        return f"{self.host}_{self.port}".replace(":", "_").replace("/", "_")


def saved_default() -> str | None:
    path = config_dir() / "config.toml"
    if not path.exists():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    value = data.get("broker")
    return value if isinstance(value, str) else None


def save_default(address: BrokerAddress) -> None:
    write_private(config_dir() / "config.toml", f'broker = "{address}"\n')


def resolve(flag: str | None) -> BrokerAddress:
    """--broker beats HOOP_BROKER beats the broker saved by the last login."""
    text = flag or os.environ.get("HOOP_BROKER") or saved_default()
    if not text:
        raise UsageError("no broker given: use --broker HOST:PORT or set HOOP_BROKER")
    return BrokerAddress.parse(text)
