"""The broker's TOML configuration: typed models, validation, and problems reported by key path."""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import pwd
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

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

from broker.audit.config import AuditSection
from broker.durations import parse_duration
from broker.errors import ConfigError
from broker.masking.config import MaskingConfig
from broker.windows import Window


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
    # This machine's name among the brokers sharing a PostgreSQL store (default: its host
    # name): sessions are marked as served by it, and it closes only its own after a crash.
    node: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    data_dir: Path = Path("/var/lib/hoop-broker")
    certificate_ttl: Duration = Field(default=8 * 3600, gt=0)
    audit_stdout: bool = True
    login_timeout: Duration = Field(default=60, gt=0)


def _loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OidcSection(_Strict):
    issuer: str
    client_id: str = Field(min_length=1)
    audience: str | None = None
    groups_claim: str = "groups"
    username_claim: str = "preferred_username"
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email", "groups", "offline_access"]
    )
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    jwks_cache_ttl: Duration = Field(default=600, ge=0)
    leeway: Duration = Field(default=30, ge=0, le=300)
    ca_file: Path | None = None
    # Who is an agent (kind "agent": rules with actor_kind = "agent", the agent budget): a
    # token whose AGENT_CLAIM is true (or "agent"), one issued to a client in AGENT_CLIENTS,
    # and any token a client got for itself (client credentials: see identity/tokens.py).
    agent_claim: str | None = Field(default=None, min_length=1)
    agent_clients: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("issuer must be an http(s) URL")
        if not value.startswith("https://") and not _loopback_url(value):
            # Discovery, the JWKS and tokens would travel in clear text: anyone on the path
            # could swap the keys the broker trusts.
            raise ValueError("issuer must use https (plain http only on a loopback address)")
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
# What a statement can do (broker.policy.sql classifies every statement by these).
SqlEffect = Literal["destroys", "writes", "reads", "session", "code"]


class ChangeWindow(_Strict):
    """`when` on a rule: it applies only inside these hours (or, with outside, only outside)."""

    hours: str
    tz: str = "UTC"
    outside: bool = False

    @model_validator(mode="after")
    def _parses(self) -> ChangeWindow:
        window_of(self.hours, self.tz)  # ValueError names what is wrong
        return self

    def applies(self, now: float) -> bool:
        return window_of(self.hours, self.tz).contains(now) != self.outside


@functools.lru_cache(maxsize=256)
def window_of(hours: str, tz: str) -> Window:
    return Window.parse(hours, tz)


class Rule(_Strict):
    name: str | None = None
    action: Action
    # Shell matching: program names and argument patterns, tokenised as the shell would.
    program: list[str] | None = None
    args: list[str] | None = None
    # SQL matching: statement kinds, effects, tables, and DML without a WHERE clause.
    statement: list[str] | None = None
    effect: list[SqlEffect] | None = None
    tables: list[str] | None = None
    without_where: bool | None = None
    # Fallback for anything the parsers do not cover.
    regex: Regex = None
    # Whom the rule is for: people or agents (see [oidc] agent settings); both when unset.
    actor_kind: Literal["person", "agent"] | None = None
    # When the rule is in force: inside (or outside) a change window; always when unset.
    when: ChangeWindow | None = None
    approvers: list[str] = Field(default_factory=list)
    approvals: int = Field(default=1, ge=1)
    timeout: Duration = Field(default=900, gt=0)
    reason_required: bool = False
    # Bulk reads: the rule acts on a result that holds more than this many rows of masked
    # columns (review: held for approval before any row is sent; deny: stopped at the limit),
    # never on the statement itself.
    rows_over: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _rows_over_action(self) -> Rule:
        if self.rows_over is not None:
            if self.action == "allow":
                raise ValueError(
                    'rows_over needs action "review" (hold the result for approval) or '
                    '"deny" (stop at the limit)'
                )
            if self.program is not None or self.args is not None:
                raise ValueError("rows_over is for SQL results: a rule with it names no program")
        return self


# What the broker notices (docs/policy.md, "Signals"): each is a `signal.NAME` audit event.
SIGNAL_NAMES = (
    "first-time",
    "off-hours",
    "volume-spike",
    "repeated-denials",
    "self-approval",
    "approval-overridden",
    "long-session",
)
SIGNAL_ACTIONS = ("log", "review", "deny", "end")


def _signal_actions(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for name, action in value.items():
        if name not in SIGNAL_NAMES:
            raise ValueError(
                f"unknown signal {name!r}{_did_you_mean(str(name), SIGNAL_NAMES)} "
                f"(signals: {', '.join(SIGNAL_NAMES)})"
            )
        if not isinstance(action, str):
            raise ValueError(f"on_signal.{name}: an action is text")
        if action.startswith("lock:"):
            try:
                _duration(action[5:])
            except ValueError as exc:
                raise ValueError(f"{name} = {action!r}: {exc}") from None
        elif action not in SIGNAL_ACTIONS:
            raise ValueError(
                f"on_signal.{name}: unknown action {action!r} "
                f"(log, review, deny, end or lock:DURATION)"
            )
    return value


class Policy(_Strict):
    default: Action = "allow"
    on_unknown: Action = "review"
    # Who decides input the broker cannot classify (on_unknown = "review"): a typo such as
    # `selec 1;` included. Without it, the target's access_approvers; with neither, nobody
    # can, which check-config reports (review_problems).
    unknown_approvers: list[str] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    # What a session does once a signal fires in it: log (the default), review or deny what
    # it would have allowed, end it, or end it and lock the user out of the target for a while.
    on_signal: Annotated[dict[str, str], BeforeValidator(_signal_actions)] = Field(
        default_factory=dict
    )

    def escalated(self, action: str, approvers: list[str], because: str = "a signal") -> Policy:
        """This policy made stricter after a signal (BECAUSE names it): what it would allow
        needs review (by APPROVERS, unless its rule names others) or is denied; what it
        denies stays denied."""
        stricter = {"allow": action} if action == "review" else {"allow": "deny", "review": "deny"}
        rules = [
            rule.model_copy(
                update={
                    "action": stricter[rule.action],
                    "approvers": rule.approvers or approvers,
                    "name": f"{rule.name or 'a rule'} (after {because})",
                }
            )
            if rule.action in stricter
            else rule
            for rule in self.rules
        ]
        if self.default in stricter:
            # What no rule matched: a last rule that matches everything, named for the signal.
            rules.append(Rule(name=because, action=stricter[self.default], approvers=approvers))
        return self.model_copy(
            update={
                "rules": rules,
                "on_unknown": stricter.get(self.on_unknown, self.on_unknown),
            }
        )

    def for_actor(self, kind: str) -> Policy:
        """The policy as it applies to an actor of KIND: rules for the other kind left out."""
        kept = [rule for rule in self.rules if rule.actor_kind in (None, kind)]
        if len(kept) == len(self.rules):
            return self
        return self.model_copy(update={"rules": kept})

    def at(self, now: float) -> Policy:
        """The policy in force at NOW: rules whose change window excludes NOW left out."""
        if not any(rule.when is not None for rule in self.rules):
            return self
        kept = [rule for rule in self.rules if rule.when is None or rule.when.applies(now)]
        if len(kept) == len(self.rules):
            return self
        return self.model_copy(update={"rules": kept})

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
    # An interactive session on the target is closed after this long (warned a minute before).
    session_max: Duration | None = Field(default=None, gt=0)

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
    # "strict": the broker owns the command line; "screen": the older reconstruction from the
    # screen, a declared weaker grade (docs/configuration.md, docs/sessions.md).
    guard: Literal["strict", "screen"] = "strict"
    # What plain scp, sftp and rsync may move (docs/native-clients.md): "download" is from the
    # target to the client, "upload" the other way. Nothing unless the config says so.
    transfer: Literal["none", "download", "upload", "both"] = "none"


class SshTarget(_TerminalTarget):
    type: Literal["ssh"]
    address: HostPort
    user: str = Field(min_length=1)
    credential: CredentialRef = None
    known_host: str | None = None


def _run_as_user(value: str) -> str:
    """An OS user of its own: it exists here, and it is neither root nor the broker's user."""
    try:
        entry = pwd.getpwnam(value)
    except KeyError:
        raise ValueError(
            f"no OS user named {value!r} on this host (create it, e.g. useradd -m {value})"
        ) from None
    if entry.pw_uid == 0:
        raise ValueError(f"{value!r} is root (uid 0); local targets never run as root")
    if entry.pw_uid in (os.getuid(), os.geteuid()):
        raise ValueError(
            f"{value!r} is the broker's own OS user (uid {entry.pw_uid}); a local target "
            "needs a user of its own, or it could read the broker's keys and store"
        )
    return value


class LocalTarget(_TerminalTarget):
    type: Literal["local"]
    # The OS user the target's processes run as; required (see broker/protocols/local_user.py).
    run_as: Annotated[str, Field(min_length=1), AfterValidator(_run_as_user)]
    command: list[str] = Field(default_factory=lambda: ["bash", "-l"], min_length=1)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("transfer")
    @classmethod
    def _no_transfers(cls, value: str) -> str:
        if value != "none":
            raise ValueError(
                'local targets take no file transfers (only ssh targets do): use transfer = "none"'
            )
        return value


def _byte_count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 65536, 64KB or 10MB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*", value)
        if match:
            unit = match.group(2) or "B"
            scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}.get(unit)
            return int(match.group(1)) * (scale or 1024 ** ("BKMG".index(unit[0])))
    raise ValueError("expected a size such as 65536, 64KB or 10MB")


ByteCount = Annotated[int, BeforeValidator(_byte_count)]


class BudgetLimits(_Strict):
    """What one statement may take (rows, bytes of output, time) and how many statements a
    user may run on the target in a minute. Unset: no limit of that kind."""

    max_rows: int | None = Field(default=None, gt=0)
    max_bytes: ByteCount | None = Field(default=None, gt=0)
    statement_timeout: Duration | None = Field(default=None, gt=0)
    max_statements_per_minute: int | None = Field(default=None, gt=0)


class Budget(BudgetLimits):
    """A target's budget for everyone; `person` and `agent` replace single limits for that
    kind of actor (``[targets.budget.agent] max_rows = 1000``)."""

    person: BudgetLimits | None = None
    agent: BudgetLimits | None = None

    def for_actor(self, kind: str) -> BudgetLimits:
        special = self.person if kind == "person" else self.agent if kind == "agent" else None
        values = self.model_dump(exclude={"person", "agent"})
        if special is not None:
            values.update(special.model_dump(exclude_none=True))
        return BudgetLimits(**values)


class _DatabaseTarget(_TargetBase):
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    # Any statement running longer is cancelled (by PostgreSQL and MariaDB; for SQLite, by the
    # broker's progress handler).
    statement_timeout: Duration | None = Field(default=None, gt=0)
    budget: Budget = Field(default_factory=Budget)

    def for_actor(self, kind: str) -> Self:
        """The target as one actor's sessions see it: the shorter statement timeout of the
        target's and of the actor's budget."""
        timeout = self.budget.for_actor(kind).statement_timeout
        if timeout is None or (self.statement_timeout and self.statement_timeout <= timeout):
            return self
        return self.model_copy(update={"statement_timeout": timeout})


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


DatabaseTarget = PostgresTarget | MysqlTarget | SqliteTarget
Target = Annotated[
    SshTarget | LocalTarget | PostgresTarget | MysqlTarget | SqliteTarget,
    Field(discriminator="type"),
]


class StoreSection(_Strict):
    """Where the broker's state is: SQLite in the data dir (the default, one machine), or a
    PostgreSQL database shared by every broker process and node."""

    url: str | None = None  # postgresql://USER@HOST:PORT/DATABASE, no password in it
    password: CredentialRef = None  # env:, file:, keyring: (or libpq's PGPASSWORD, ~/.pgpass)
    # A node not heard from for this long is taken for dead: another ends its sessions.
    node_timeout: Duration = Field(default=30, gt=0)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError(
                f"expected postgresql://USER@HOST:PORT/DATABASE, got {parts.scheme}://…"
            )
        if parts.password:
            raise ValueError(
                'the URL holds a password: give it with password = "env:NAME" (or PGPASSWORD)'
            )
        return value

    @model_validator(mode="after")
    def _password_needs_url(self) -> StoreSection:
        if self.password is not None and self.url is None:
            raise ValueError('password needs url = "postgresql://…"')
        return self

    def conninfo(self) -> str | None:
        """The URL to connect with, its password resolved (never logged or shown)."""
        if self.url is None:
            return None
        if self.password is None:
            return self.url
        from psycopg.conninfo import make_conninfo

        from broker.credentials import resolve_credential

        return make_conninfo(self.url, password=resolve_credential(self.password, target="store"))


def split_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; the prefix ends in "/" unless empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"expected s3://BUCKET/PREFIX, got {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class RecordingsSection(_Strict):
    """Where recordings go besides the data dir: an S3-compatible bucket (none by default)."""

    url: str | None = None  # s3://bucket/prefix
    endpoint_url: str | None = None  # MinIO, Ceph, moto...; AWS when unset
    region: str = "us-east-1"
    # References (env:NAME, file:PATH, keyring:SERVICE/USER); unset: boto3's own chain
    # (AWS_ACCESS_KEY_ID, the instance role, ~/.aws).
    access_key_id: CredentialRef = None
    secret_access_key: CredentialRef = None
    ship_interval: float = Field(default=0.5, gt=0, le=1)

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None:
            split_s3_url(value)
        return value

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> RecordingsSection:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        if self.url is None and self.endpoint_url is not None:
            raise ValueError('endpoint_url needs url = "s3://BUCKET/PREFIX"')
        return self


class SignalsSection(_Strict):
    """[signals]: the baselines the broker keeps per user and target, and when it speaks."""

    enabled: bool = True
    history: Duration = Field(default=30 * 86400, gt=0)  # how far back baselines look
    # A user's baseline on a target counts once it holds this many earlier sessions
    # (first-time, off-hours, long-session) or this many statements (volume-spike).
    min_sessions: int = Field(default=5, ge=1)
    min_samples: int = Field(default=20, ge=1)
    volume_factor: float = Field(default=10.0, gt=1)  # rows over N x the 30-day p95
    denials: int = Field(default=3, ge=2)
    denial_window: Duration = Field(default=600, gt=0)
    long_factor: float = Field(default=2.0, gt=1)  # a session past N x its usual p95 length
    long_min: Duration = Field(default=60, gt=0)  # ...and at least this long
    tz: str = "UTC"  # the time zone of usual hours

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class BrokerConfig(_Strict):
    broker: BrokerSection = Field(default_factory=BrokerSection)
    oidc: OidcSection | None = None
    dev: DevSection | None = None
    targets: list[Target] = Field(default_factory=list)
    policies: dict[str, Policy] = Field(default_factory=dict)
    audit: AuditSection = Field(default_factory=AuditSection)
    recordings: RecordingsSection = Field(default_factory=RecordingsSection)
    store: StoreSection = Field(default_factory=StoreSection)
    signals: SignalsSection = Field(default_factory=SignalsSection)

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
            item = node[part] if isinstance(node, list) and part < len(node) else None
            path += f"[{_name_or_index(item, part)}]"
            node = item
            continue
        # Discriminated unions add the tag ("ssh", "postgres") as a location step; it is not a key.
        if isinstance(node, dict) and part not in node and part in _TARGET_TYPES:
            continue
        path += f".{part}" if path else str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return path or "(top level)"


_TARGET_TYPES = {"ssh", "local", "postgres", "mysql", "sqlite"}


def _name_or_index(item: Any, index: int) -> str:
    """How a list entry is named in messages: by its `name` (targets[prod-db]), else its index."""
    name = item.get("name") if isinstance(item, dict) else getattr(item, "name", None)
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        return name
    return str(index)


def _known_keys() -> set[str]:
    """Every key the configuration file takes, for "did you mean" suggestions."""
    keys: set[str] = set()
    models: list[Any] = [BrokerConfig]
    seen: set[Any] = set()
    while models:
        model = models.pop()
        if model in seen or not hasattr(model, "model_fields"):
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            keys.add(field.alias or name)
            for inner in _models_in(field.annotation):
                models.append(inner)
    return keys


def _models_in(annotation: Any) -> list[Any]:
    found = []
    if hasattr(annotation, "model_fields"):
        found.append(annotation)
    for arg in getattr(annotation, "__args__", ()) or ():
        found += _models_in(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and hasattr(origin, "model_fields"):
        found.append(origin)
    metadata = getattr(annotation, "__metadata__", None)
    if metadata is not None:
        found += _models_in(getattr(annotation, "__origin__", None))
    return found


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


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
            ref = _name_or_index(target, index)
            problems.append(
                f"targets[{ref}].policy: no policy named {policy!r} in [policies]"
                + _did_you_mean(policy, policy_names)
            )
    if "oidc" not in data and "dev" not in data:
        problems.append("oidc: missing; configure an [oidc] issuer (or a [dev] section for --dev)")
    return problems


def review_problems(config: BrokerConfig) -> list[str]:
    """Targets where unknown input goes to review that no approver group can decide.

    `hoop-broker check-config` reports these as errors; `serve` starts anyway and warns, and
    such input is refused at once with a message naming the same key."""
    problems = []
    unserved: dict[str, list[str]] = {}
    for target in config.targets:
        policy = config.policy_for(target)
        if policy.on_unknown != "review" or policy.unknown_approvers or target.access_approvers:
            continue
        if target.policy is None:
            problems.append(
                f"targets[{target.name}].policy: missing: target {target.name} has no policy, "
                "so input "
                'the broker cannot parse (such as "selec 1;") goes to review (the default '
                "on_unknown), but no group may approve it; set policy to one with "
                'unknown_approvers = ["GROUP"] (or on_unknown = "deny")'
            )
        else:
            unserved.setdefault(target.policy, []).append(target.name)
    for name, targets in unserved.items():
        on = ", ".join(targets)
        problems.append(
            f'policies.{name}.unknown_approvers: missing: on_unknown = "review" sends input '
            'the broker cannot parse (such as "selec 1;") to approvers, but no group may '
            f"approve it on target{'s' if len(targets) > 1 else ''} {on}; set "
            'unknown_approvers = ["GROUP"] (or on_unknown = "deny")'
        )
    return problems


def parse_config(text: str, *, base_dir: Path, source: str = "config") -> BrokerConfig:
    """Parse and validate TOML text; raise ConfigError listing every problem with its key path."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
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
        return "unknown key" + _did_you_mean(str(tuple(error["loc"])[-1]), _known_keys())
    if kind == "missing":
        if tuple(error["loc"])[-1:] == ("run_as",):
            return (
                "required key is missing: a local target runs as an OS user of its own "
                '(run_as = "USER"; not root, not the broker\'s user)'
            )
        return "required key is missing"
    if kind == "union_tag_invalid":
        given = str((error.get("ctx") or {}).get("tag", ""))
        return (
            f"unknown target type {given!r}; expected one of {', '.join(sorted(_TARGET_TYPES))}"
            + _did_you_mean(given, _TARGET_TYPES)
        )
    if kind == "union_tag_not_found":
        return "missing key 'type'"
    ours = _OUR_WORDS.get(kind)
    if ours is not None:
        return ours.format(**{k: _plain(v) for k, v in (error.get("ctx") or {}).items()})
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


# Pydantic's messages ("Input should be a valid list") in the words of a TOML file.
_OUR_WORDS = {
    "list_type": 'must be a list, such as ["a", "b"]',
    "string_type": 'must be text in quotes, such as "value"',
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a table ([section] or { key = value })",
    "model_type": "must be a table ([section] or { key = value })",
    "literal_error": "must be one of {expected}",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "is not allowed here: use letters, digits, '.', '_' and '-'",
}


def _plain(value: Any) -> str:
    return str(value).replace("'", "")


def load_config(path: Path) -> BrokerConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(text, base_dir=path.parent.resolve(), source=str(path))
