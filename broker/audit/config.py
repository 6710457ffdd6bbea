"""The `[audit]` section of the broker config: where audit events go and who may review sessions.

Sinks are one flat table type (`[[audit.sinks]]` with a `type` key) rather than a tagged
union, so that a problem is reported at the key path a person wrote
(`audit.sinks[1].url`), and a key that belongs to another type of sink is named as such.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from broker.durations import parse_duration

SinkType = Literal["file", "stdout", "syslog", "webhook"]
Format = Literal["native", "ecs"]

# RFC 5424 section 6.2.1 facility codes, by the names syslog.conf uses.
FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
Facility = Literal[
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
]

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: Any) -> int:
    """Bytes from 1048576, "512KiB", "100MB", "1G" (every unit a power of 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 100MiB or 1GiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError("expected a size such as 512KiB, 100MiB or 1GiB")


def parse_seconds(value: Any) -> float:
    """Seconds from 0.5, 30, "250ms", "30s", "2m"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s or 2m")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text.endswith("ms") and text[:-2].isdigit():
            return int(text[:-2]) / 1000
        return float(parse_duration(text))
    raise ValueError("expected a duration such as 500ms, 30s or 2m")


Size = Annotated[int, BeforeValidator(parse_size)]
Seconds = Annotated[float, BeforeValidator(parse_seconds)]

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_CREDENTIAL_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|keyring:[^/]+/.+)$")


def _host_port(value: Any) -> Any:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _url(value: Any) -> Any:
    if isinstance(value, str) and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _credential(value: Any) -> Any:
    if isinstance(value, str) and not _CREDENTIAL_REF.match(value):
        raise ValueError(
            "must be a reference: env:NAME, file:PATH or keyring:SERVICE/USER (never the secret)"
        )
    return value


# The keys each type of sink takes besides the common ones (type, name, format, queue_size).
SINK_KEYS: dict[str, frozenset[str]] = {
    "file": frozenset({"path", "max_size", "keep"}),
    "stdout": frozenset(),
    "syslog": frozenset({"address", "transport", "facility", "max_message_size", "retry_max"}),
    "webhook": frozenset(
        {
            "url",
            "authorization",
            "headers",
            "batch_size",
            "timeout",
            "retry_initial",
            "retry_max",
            "spool_max_size",
            "tls_ca",
        }
    ),
}
_REQUIRED = {"file": "path", "syslog": "address", "webhook": "url"}


class SinkConfig(BaseModel):
    """One `[[audit.sinks]]` table; see docs/configuration.md for what each key does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: SinkType
    name: str | None = Field(default=None, pattern=_NAME)
    format: Format = "native"
    queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    # file
    path: Path | None = None
    max_size: Size = Field(default=100 << 20, ge=4096)
    keep: int = Field(default=5, ge=0, le=1000)
    # syslog
    address: Annotated[str | None, BeforeValidator(_host_port)] = None
    transport: Literal["udp", "tcp"] = "udp"
    facility: Facility = "auth"
    max_message_size: Size = Field(default=8192, ge=480, le=65_000)
    # webhook
    url: Annotated[str | None, BeforeValidator(_url)] = None
    authorization: Annotated[str | None, BeforeValidator(_credential)] = None
    headers: dict[str, str] = Field(default_factory=dict)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    timeout: Seconds = Field(default=10.0, gt=0)
    retry_initial: Seconds = Field(default=1.0, gt=0)
    retry_max: Seconds = Field(default=60.0, gt=0)
    spool_max_size: Size = Field(default=1 << 30, ge=1 << 20)
    tls_ca: Path | None = None

    @model_validator(mode="after")
    def _keys_fit_the_type(self) -> SinkConfig:
        problems = []
        required = _REQUIRED.get(self.type)
        if required and getattr(self, required) is None:
            problems.append(f"a {self.type} sink needs `{required}`")
        common = {"type", "name", "format", "queue_size"}
        foreign = sorted(self.model_fields_set - common - SINK_KEYS[self.type])
        if foreign:
            problems.append(f"not keys of a {self.type} sink: {', '.join(foreign)}")
        if self.type == "webhook" and self.retry_initial > self.retry_max:
            problems.append("retry_initial is longer than retry_max")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def label(self) -> str:
        """The sink's name: `name`, or its type when it has none."""
        return self.name or self.type

    @property
    def facility_code(self) -> int:
        return FACILITIES[self.facility]


class AuditSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Members of these groups may list, search and replay every session.
    auditors: list[str] = Field(default_factory=list)
    # A user may replay their own sessions unless this is false.
    replay_own: bool = True
    # Refuse new sessions while an audit destination that must not lose events (the store,
    # a file sink, a webhook spool) cannot be written.
    strict: bool = False
    # Where audit events go besides the store (and stdout, see [broker] audit_stdout).
    sinks: list[SinkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> AuditSection:
        seen: set[str] = set()
        for sink in self.sinks:
            if sink.label in seen:
                raise ValueError(
                    f"two sinks are named {sink.label!r}: give each a distinct `name` "
                    "(it names the sink in the log and its spool directory)"
                )
            seen.add(sink.label)
        return self
