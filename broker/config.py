"""The broker's TOML configuration: typed models, validation, and problems reported by key path."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from broker.audit_config import AuditSection
from broker.durations import parse_duration
from broker.errors import ConfigError
from broker.masking import MaskingConfig


def _duration(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15m or 8h")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("expected a duration such as 15m or 8h")


Duration = Annotated[int, BeforeValidator(_duration)]

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_CREDENTIAL_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|keyring:[^/]+/.+)$")
# Symmetric and unsigned algorithms are never acceptable for tokens verified with a public JWKS.
_SAFE_ALGORITHMS = {
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
}


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


HostPort = Annotated[str, BeforeValidator(lambda v: _host_port(v) if isinstance(v, str) else v)]


def _compiles(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
    return value


Regex = Annotated[str | None, BeforeValidator(_compiles)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSection(_Strict):
    listen: HostPort = "127.0.0.1:2222"
    data_dir: Path = Path("/var/lib/hoop-broker")
    certificate_ttl: Duration = Field(default=8 * 3600, gt=0)
    audit_stdout: bool = True
    login_timeout: Duration = Field(default=60, gt=0)


class OidcSection(_Strict):
    issuer: str
    client_id: str = Field(min_length=1)
    audience: str | None = None
    groups_claim: str = "groups"
    username_claim: str = "preferred_username"
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email", "offline_access"]
    )
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    jwks_cache_ttl: Duration = Field(default=600, ge=0)
    leeway: Duration = Field(default=30, ge=0, le=300)
    ca_file: Path | None = None

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("issuer must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("algorithms")
    @classmethod
    def _only_asymmetric(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one algorithm is required")
        bad = [alg for alg in value if alg not in _SAFE_ALGORITHMS]
        if bad:
            raise ValueError(
                f"algorithm(s) {', '.join(bad)} not allowed; choose from {sorted(_SAFE_ALGORITHMS)}"
            )
        return value

    @property
    def expected_audience(self) -> str:
        return self.audience or self.client_id


class DevUser(_Strict):
    groups: list[str] = Field(default_factory=list)
    email: str | None = None


class DevSection(_Strict):
    listen: HostPort = "127.0.0.1:2280"
    auto_approve: str | None = None
    id_token_ttl: Duration = Field(default=3600, gt=0)
    users: dict[str, DevUser] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _auto_approve_is_a_user(self) -> DevSection:
        if self.auto_approve is not None and self.auto_approve not in self.users:
            raise ValueError(f"auto_approve names {self.auto_approve!r}, which is not in dev.users")
        return self


Action = Literal["allow", "deny", "review"]


class Rule(_Strict):
    name: str | None = None
    action: Action
    # Shell matching: program names and argument patterns, tokenised as the shell would.
    program: list[str] | None = None
    args: list[str] | None = None
    # SQL matching: statement kinds, tables, and DML without a WHERE clause.
    statement: list[str] | None = None
    tables: list[str] | None = None
    without_where: bool | None = None
    # Fallback for anything the parsers do not cover.
    regex: Regex = None
    approvers: list[str] = Field(default_factory=list)
    approvals: int = Field(default=1, ge=1)
    timeout: Duration = Field(default=900, gt=0)
    reason_required: bool = False


class Policy(_Strict):
    default: Action = "allow"
    on_unknown: Action = "review"
    rules: list[Rule] = Field(default_factory=list)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for rule in self.rules:
            counts[rule.action] = counts.get(rule.action, 0) + 1
        parts = [f"{n} {action}" for action, n in sorted(counts.items())]
        rules = f"{len(self.rules)} rule{'s' if len(self.rules) != 1 else ''}"
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"default {self.default}, unknown {self.on_unknown}; {rules}{detail}"


class _TargetBase(_Strict):
    name: str = Field(pattern=_NAME)
    description: str = ""
    allowed_groups: list[str] = Field(default_factory=list)
    policy: str | None = None
    recording: Literal["strict", "best-effort"] = "strict"
    # "request": `connect` needs a time-boxed grant (`hoopctl request`) approved by access_approvers.
    access: Literal["open", "request"] = "open"
    access_approvers: list[str] = Field(default_factory=list)
    access_approvals: int = Field(default=1, ge=1)
    access_max: Duration = Field(default=8 * 3600, gt=0)

    def credential_ref(self) -> str | None:
        return getattr(self, "credential", None)


def _credential_ref(value: str | None) -> str | None:
    if value is not None and not _CREDENTIAL_REF.match(value):
        raise ValueError(
            "credential must be a reference: env:NAME, file:PATH or keyring:SERVICE/USER"
        )
    return value


CredentialRef = Annotated[str | None, BeforeValidator(_credential_ref)]


class _TerminalTarget(_TargetBase):
    # Where the shell cannot be given prompt marks: the prompt as a regex on the cursor line.
    prompt_pattern: Regex = None


class SshTarget(_TerminalTarget):
    type: Literal["ssh"]
    address: HostPort
    user: str = Field(min_length=1)
    credential: CredentialRef = None
    known_host: str | None = None


class LocalTarget(_TerminalTarget):
    type: Literal["local"]
    command: list[str] = Field(default_factory=lambda: ["bash", "-l"], min_length=1)
    env: dict[str, str] = Field(default_factory=dict)


class _DatabaseTarget(_TargetBase):
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    # Any statement running longer is cancelled (by PostgreSQL and MariaDB; for SQLite, by the
    # broker's progress handler).
    statement_timeout: Duration | None = Field(default=None, gt=0)


TlsMode = Literal["disable", "prefer", "require", "verify-full"]


def _tls_ca(value: Path | None, info: ValidationInfo) -> Path | None:
    # Only verify-full checks the certificate; a CA bundle elsewhere would suggest it is checked.
    if value is not None and info.data.get("tls") != "verify-full":
        raise ValueError('tls_ca applies only with tls = "verify-full"')
    return value


TlsCa = Annotated[Path | None, AfterValidator(_tls_ca)]


class PostgresTarget(_DatabaseTarget):
    type: Literal["postgres"]
    address: HostPort
    database: str = Field(min_length=1)
    user: str = Field(min_length=1)
    credential: CredentialRef = None
    tls: TlsMode = "prefer"
    tls_ca: TlsCa = None


class MysqlTarget(_DatabaseTarget):
    type: Literal["mysql"]
    address: HostPort
    database: str = Field(min_length=1)
    user: str = Field(min_length=1)
    credential: CredentialRef = None
    tls: TlsMode = "prefer"
    tls_ca: TlsCa = None


class SqliteTarget(_DatabaseTarget):
    type: Literal["sqlite"]
    path: Path


Target = Annotated[
    SshTarget | LocalTarget | PostgresTarget | MysqlTarget | SqliteTarget,
    Field(discriminator="type"),
]


class BrokerConfig(_Strict):
    broker: BrokerSection = Field(default_factory=BrokerSection)
    oidc: OidcSection | None = None
    dev: DevSection | None = None
    targets: list[Target] = Field(default_factory=list)
    policies: dict[str, Policy] = Field(default_factory=dict)
    audit: AuditSection = Field(default_factory=AuditSection)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def policy_for(self, target: Target) -> Policy:
        return self.policies[target.policy] if target.policy else Policy()


def _location(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """Turn a pydantic error location into the key path a person wrote in the TOML file."""
    path = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        # Discriminated unions add the tag ("ssh", "postgres") as a location step; it is not a key.
        if isinstance(node, dict) and part not in node and part in _TARGET_TYPES:
            continue
        path += f".{part}" if path else str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return path or "(top level)"


_TARGET_TYPES = {"ssh", "local", "postgres", "mysql", "sqlite"}


def _cross_checks(data: dict[str, Any]) -> list[str]:
    """Checks that span several keys; run on the raw data so they report beside type errors."""
    problems = []
    targets = data.get("targets")
    policies = data.get("policies")
    policy_names = set(policies) if isinstance(policies, dict) else set()
    seen: dict[str, int] = {}
    for index, target in enumerate(targets if isinstance(targets, list) else []):
        if not isinstance(target, dict):
            continue
        name = target.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    f"targets[{index}].name: duplicate target name {name!r} "
                    f"(first defined at targets[{seen[name]}])"
                )
            else:
                seen[name] = index
        policy = target.get("policy")
        if isinstance(policy, str) and policy not in policy_names:
            problems.append(f"targets[{index}].policy: no policy named {policy!r} in [policies]")
    if "oidc" not in data and "dev" not in data:
        problems.append("oidc: missing; configure an [oidc] issuer (or a [dev] section for --dev)")
    return problems


def parse_config(text: str, *, base_dir: Path, source: str = "config") -> BrokerConfig:
    """Parse and validate TOML text; raise ConfigError listing every problem with its key path."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", [f"(syntax): {exc}"]) from None
    problems: list[str] = []
    try:
        config = BrokerConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{_location(tuple(err['loc']), data)}: {_message(err)}" for err in exc.errors()
        ]
    problems += _cross_checks(data)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s)", problems)
    data_dir = config.broker.data_dir
    if not data_dir.is_absolute():
        broker = config.broker.model_copy(update={"data_dir": (base_dir / data_dir).resolve()})
        config = config.model_copy(update={"broker": broker})
    return config


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown target type; expected one of {', '.join(sorted(_TARGET_TYPES))}"
    if kind == "union_tag_not_found":
        return "missing key 'type'"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def load_config(path: Path) -> BrokerConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(text, base_dir=path.parent.resolve(), source=str(path))
