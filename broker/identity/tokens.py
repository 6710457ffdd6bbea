"""Validation of OIDC ID tokens against the issuer's published keys (JWKS), with key rotation."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from broker.config import OidcSection
from broker.errors import AuthError

# Principals end up in SSH certificates and file names: keep them to a safe alphabet.
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
RESERVED_USERS = frozenset({"hoop-login", "root"})
_MIN_REFETCH_SECONDS = 1.0


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]
    expires_at: int
    subject: str
    issuer: str
    kind: str = "person"  # "person" or "agent" (see OidcSection's agent settings)


class TokenValidator:
    """Checks signature (JWKS), algorithm allow-list, iss, aud, exp and nbf, then maps claims."""

    def __init__(self, oidc: OidcSection, *, clock: Callable[[], float] = time.time) -> None:
        self._oidc = oidc
        self._clock = clock
        self._keys: KeySet | None = None
        self._jwks_uri: str | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def _http(self) -> httpx.AsyncClient:
        verify: Any = str(self._oidc.ca_file) if self._oidc.ca_file else True
        return httpx.AsyncClient(timeout=10.0, verify=verify, follow_redirects=False)

    async def discovery(self) -> dict[str, Any]:
        url = f"{self._oidc.issuer}/.well-known/openid-configuration"
        try:
            async with self._http() as client:
                response = await client.get(url)
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AuthError(f"cannot reach the identity provider at {url}: {exc}") from None
        if (
            not isinstance(document, dict)
            or document.get("issuer", "").rstrip("/") != self._oidc.issuer
        ):
            raise AuthError(f"identity provider at {url} names a different issuer")
        return document

    async def _refresh_keys(self) -> KeySet:
        async with self._lock:
            if self._keys is not None and self._clock() - self._fetched_at < _MIN_REFETCH_SECONDS:
                return self._keys
            if self._jwks_uri is None:
                document = await self.discovery()
                jwks_uri = document.get("jwks_uri")
                if not isinstance(jwks_uri, str):
                    raise AuthError("identity provider publishes no jwks_uri")
                self._jwks_uri = jwks_uri
            try:
                async with self._http() as client:
                    response = await client.get(self._jwks_uri)
                    response.raise_for_status()
                    self._keys = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError, JoseError) as exc:
                raise AuthError(f"cannot load the identity provider's keys: {exc}") from None
            self._fetched_at = self._clock()
            return self._keys

    async def _key_set_for(self, kid: str | None) -> KeySet:
        keys = self._keys
        stale = self._clock() - self._fetched_at > self._oidc.jwks_cache_ttl
        if keys is None or stale or (kid is not None and not _has_kid(keys, kid)):
            keys = await self._refresh_keys()
        if kid is not None and not _has_kid(keys, kid):
            raise AuthError(f"token signed with key {kid!r}, which the issuer does not publish")
        return keys

    async def validate(self, token: str) -> Identity:
        header = _header(token)
        alg = header.get("alg")
        if alg not in self._oidc.algorithms:
            raise AuthError(
                f"token algorithm {alg!r} is not allowed (allowed: {', '.join(self._oidc.algorithms)})"
            )
        kid = header.get("kid")
        keys = await self._key_set_for(kid if isinstance(kid, str) else None)
        try:
            decoded = jwt.decode(token, keys, algorithms=self._oidc.algorithms)
        except BadSignatureError:
            raise AuthError("token signature is invalid") from None
        except JoseError as exc:
            raise AuthError(f"token rejected: {exc.description or exc.error}") from None
        claims = decoded.claims
        self._check_claims(claims)
        return self._identity(claims)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = int(self._clock())
        leeway = self._oidc.leeway
        iss = claims.get("iss")
        if iss != self._oidc.issuer:
            raise AuthError(
                f"token issuer {iss!r} is not the configured issuer {self._oidc.issuer!r}"
            )
        audience = self._oidc.expected_audience
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if audience not in audiences:
            raise AuthError(f"token audience {aud!r} does not include {audience!r}")
        registry = jwt.JWTClaimsRegistry(
            now=now, leeway=leeway, exp={"essential": True}, iat={"essential": False}
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise AuthError("token has expired; log in again") from None
        except InvalidClaimError as exc:
            if exc.claim in ("nbf", "iat") and "NumericDate" not in (exc.description or ""):
                raise AuthError(
                    "token is not valid yet (nbf/iat in the future); check clocks"
                ) from None
            raise AuthError(f"token rejected: {exc.description}") from None
        except MissingClaimError as exc:
            raise AuthError(f"token rejected: {exc.description}") from None

    def _kind(self, claims: dict[str, Any]) -> str:
        """ "agent" or "person". A client's own token (no person behind it) is always an
        agent's. Rules for agents are the stricter ones (their writes go to review), so every
        sign of an agent counts and only a token with none of them is a person's."""
        subject = claims.get("sub")
        if _clients_own(claims) or not isinstance(subject, str) or not subject:
            return "agent"  # no subject names no person either
        clients = (claims.get("client_id"), claims.get("azp"))
        if any(isinstance(c, str) and c in self._oidc.agent_clients for c in clients):
            return "agent"
        claim = self._oidc.agent_claim
        if claim is not None and _marks_agent(claims.get(claim)):
            return "agent"
        return "person"

    def _user(self, claims: dict[str, Any]) -> str:
        user = claims.get(self._oidc.username_claim)
        if user is None and _clients_own(claims):
            # Only a client's own token falls back to the client: a person's token without
            # the username claim must not become the (shared) client's name.
            user = _client(claims) or claims.get("sub")
        if not isinstance(user, str) or not user:
            raise AuthError(f"token has no {self._oidc.username_claim!r} claim to name the user")
        if not _PRINCIPAL.match(user) or user in RESERVED_USERS:
            raise AuthError(f"user name {user!r} cannot be used as an SSH principal")
        return user

    def _identity(self, claims: dict[str, Any]) -> Identity:
        user = self._user(claims)
        raw_groups = claims.get(self._oidc.groups_claim, [])
        if isinstance(raw_groups, str):
            raw_groups = raw_groups.split()
        if not isinstance(raw_groups, list) or not all(isinstance(g, str) for g in raw_groups):
            raise AuthError(f"token claim {self._oidc.groups_claim!r} is not a list of group names")
        return Identity(
            user=user,
            groups=tuple(sorted(set(raw_groups))),
            expires_at=int(claims["exp"]),
            subject=str(claims.get("sub", user)),
            issuer=str(claims["iss"]),
            kind=self._kind(claims),
        )


def _client(claims: dict[str, Any]) -> str | None:
    """The OAuth client the token was issued to (RFC 9068 client_id, else OIDC azp)."""
    for name in ("client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _clients_own(claims: dict[str, Any]) -> bool:
    """A token a client got for itself (the client credentials grant): no person behind it.
    Providers say so differently: the subject is the client (RFC 9068, oidc-provider, Okta),
    Auth0's gty, Microsoft Entra's idtyp."""
    if claims.get("gty") == "client-credentials" or claims.get("idtyp") == "app":
        return True
    subject = claims.get("sub")
    return isinstance(subject, str) and subject in (claims.get("client_id"), claims.get("azp"))


def _marks_agent(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "agent"))


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


def _header(token: str) -> dict[str, Any]:
    if not isinstance(token, str) or token.count(".") != 2:
        raise AuthError("not a signed JWT (expected three dot-separated parts)")
    try:
        return dict(jws.extract_compact(token.encode()).protected)
    except (JoseError, ValueError) as exc:
        raise AuthError(f"token is malformed: {exc}") from None
