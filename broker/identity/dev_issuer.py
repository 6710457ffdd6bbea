"""Development-only OIDC issuer (device authorization grant, RFC 8628).

Used by ``hoop-broker serve --dev`` for demos and tests. It is deliberately
INSECURE: anyone who can reach the verification page can approve a login as
any configured user, without a password. For the same reason a device
authorization request may name the user to sign in as (``login_hint``, what
``hoopctl login --dev-user NAME`` sends): that login is approved at once.

Refresh tokens outlive a restart when ``refresh_path`` is given: the file (mode
0600) holds only the SHA-256 of each token with its grant, never a usable token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from joserfc import jwt
from joserfc.jwk import RSAKey

log = logging.getLogger("hoop.broker.dev_issuer")

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_TOKEN_GRANT = "refresh_token"  # noqa: S105 - grant type name, not a secret

# Consonants only, no vowels (no accidental words) and nothing easily confused (0/O, 1/I).
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
_SLOW_DOWN_STEP = 5  # RFC 8628 section 3.5
# Expired device codes are kept this long so pollers get expired_token, not invalid_grant.
_EXPIRED_RETENTION = 300.0
_MAX_DEVICE_GRANTS = 10_000
_MAX_REFRESH_TOKENS = 10_000

_SCOPES = ("openid", "profile", "email", "groups", "offline_access")
_CLAIMS = (
    "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "auth_time",
    "preferred_username", "email", "groups",
)  # fmt: skip
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_HTML_HEADERS = {
    **_NO_STORE,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}
_BANNER = "hoop-broker development issuer \u2014 INSECURE, for demos and tests only"


@dataclass(frozen=True)
class DevUser:
    name: str
    groups: tuple[str, ...]
    email: str | None = None


@dataclass
class _DeviceGrant:
    device_code: str
    user_code: str
    client_id: str
    scope: str
    expires_at: float  # time.monotonic()
    interval: int
    last_poll: float | None = None
    status: Literal["pending", "approved", "denied"] = "pending"
    username: str | None = None
    auth_time: int | None = None


@dataclass
class _RefreshGrant:
    username: str
    client_id: str
    scope: str
    auth_time: int
    expires_at: float  # time.time(): a grant may outlive the process (refresh_path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "client_id": self.client_id,
            "scope": self.scope,
            "auth_time": self.auth_time,
            "expires_at": self.expires_at,
        }


def _token_digest(token: str) -> str:
    """What the issuer keeps of a refresh token: its SHA-256, so a leaked file grants nothing."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _write_private(path: Path, text: str) -> None:
    """Replace PATH atomically with TEXT, readable by its owner only (0600) from the start."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _load_refresh_grants(path: Path) -> dict[str, _RefreshGrant]:
    """The refresh grants a previous run saved (digest -> grant); expired ones are dropped.

    A missing file is no grants; an unreadable or damaged one is logged (without its content)
    and ignored: the users log in again."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return {}
    if mode & 0o077:
        log.warning("dev issuer: refresh token file %s had mode %o, tightening to 0600", path, mode)
        path.chmod(0o600)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["grants"]
        now = time.time()
        grants = {}
        for digest, entry in entries.items():
            grant = _RefreshGrant(
                username=str(entry["username"]),
                client_id=str(entry["client_id"]),
                scope=str(entry["scope"]),
                auth_time=int(entry["auth_time"]),
                expires_at=float(entry["expires_at"]),
            )
            if isinstance(digest, str) and grant.expires_at > now:
                grants[digest] = grant
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning(
            "dev issuer: ignoring the refresh token file %s (%s); logins must be made again",
            path,
            type(exc).__name__,
        )
        return {}
    return grants


class _OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def _load_or_create_key(path: Path) -> RSAKey:
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = RSAKey.generate_key(2048, private=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # lost a creation race; use the winner's key below
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(key.as_dict(private=True), fh)
            log.info("dev issuer: generated signing key %s", path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("dev issuer: key file %s had mode %o, tightening to 0600", path, mode)
        path.chmod(0o600)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        key = RSAKey.import_key(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"dev issuer key file {path} is not a valid RSA JWK: {exc}") from exc
    if not key.is_private:
        raise ValueError(f"dev issuer key file {path} holds no private key")
    return RSAKey.import_key(data, {"kid": key.thumbprint(), "use": "sig", "alg": "RS256"})


def _normalize_user_code(value: str) -> str:
    chars = "".join(c for c in value.upper() if c.isalnum())
    return f"{chars[:4]}-{chars[4:]}" if len(chars) == 8 else value.strip().upper()


def _new_user_code() -> str:
    chars = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def _form_str(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


class DevIssuer:
    """In-memory OIDC issuer supporting the device and refresh-token grants."""

    def __init__(
        self,
        *,
        key_path: Path,
        users: Mapping[str, DevUser],
        client_id: str = "hoopctl",
        auto_approve: str | None = None,
        id_token_ttl: int = 3600,
        device_code_ttl: int = 600,
        refresh_token_ttl: int = 86400,
        poll_interval: int = 1,
        refresh_path: Path | None = None,
    ) -> None:
        for username, user in users.items():
            if username != user.name:
                raise ValueError(
                    f"users key {username!r} does not match DevUser.name {user.name!r}"
                )
        if auto_approve is not None and auto_approve not in users:
            raise ValueError(f"auto_approve user {auto_approve!r} is not a configured user")
        if not client_id:
            raise ValueError("client_id must not be empty")
        if min(id_token_ttl, device_code_ttl, refresh_token_ttl) <= 0 or poll_interval < 0:
            raise ValueError("TTLs must be positive and poll_interval non-negative")
        self._key_path = Path(key_path)
        self._users: dict[str, DevUser] = dict(users)
        self._client_id = client_id
        self._auto_approve = auto_approve
        self._id_token_ttl = id_token_ttl
        self._device_code_ttl = device_code_ttl
        self._refresh_token_ttl = refresh_token_ttl
        self._poll_interval = poll_interval
        self._key: RSAKey | None = None
        self._runner: web.AppRunner | None = None
        self._issuer: str | None = None
        self._devices: dict[str, _DeviceGrant] = {}  # device_code -> grant
        self._user_codes: dict[str, str] = {}  # user_code -> device_code
        # sha256(refresh_token) -> grant; saved to refresh_path (when given) on every change.
        self._refresh: dict[str, _RefreshGrant] = {}
        self._refresh_path = Path(refresh_path) if refresh_path is not None else None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("dev issuer already started")
        self._key = await asyncio.to_thread(_load_or_create_key, self._key_path)
        if self._refresh_path is not None:
            self._refresh = await asyncio.to_thread(_load_refresh_grants, self._refresh_path)
        app = web.Application(middlewares=[self._housekeeping])
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/device/code", self._device_authorization)
        app.router.add_get("/device", self._verification_page)
        app.router.add_post("/device", self._verification_submit)
        app.router.add_post("/token", self._token)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self._issuer = f"http://{url_host}:{bound_port}"
        log.warning(
            "%s: serving at %s; anyone who can reach %s/device can log in as any "
            "configured user without a password. Never expose it beyond loopback.",
            _BANNER, self._issuer, self._issuer,
        )  # fmt: skip

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise RuntimeError("dev issuer not started")
        return self._issuer

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self._issuer = None
        self._devices.clear()
        self._user_codes.clear()
        self._refresh.clear()
        if runner is not None:
            await runner.cleanup()

    # -- programmatic approval ---------------------------------------------------

    def approve(self, user_code: str, username: str) -> None:
        """Approve a pending device code as ``username``.

        Raises KeyError for an unknown or expired user code, ValueError for an
        unknown user or a code that was already approved or denied.
        """
        grant = self._live_grant(user_code)
        user = self._users.get(username)
        if user is None:
            raise ValueError(f"unknown user {username!r}")
        self._decide(grant, "approved", user.name)

    def deny(self, user_code: str) -> None:
        """Deny a pending device code (same errors as :meth:`approve`)."""
        self._decide(self._live_grant(user_code), "denied", None)

    def _live_grant(self, user_code: str) -> _DeviceGrant:
        self._purge()
        device_code = self._user_codes.get(_normalize_user_code(user_code))
        grant = self._devices.get(device_code) if device_code is not None else None
        if grant is None or time.monotonic() >= grant.expires_at:
            raise KeyError(f"unknown or expired user code {user_code!r}")
        return grant

    @staticmethod
    def _decide(
        grant: _DeviceGrant, status: Literal["approved", "denied"], username: str | None
    ) -> None:
        if grant.status != "pending":
            raise ValueError(f"user code {grant.user_code} was already {grant.status}")
        grant.status = status
        grant.username = username
        grant.auth_time = int(time.time())

    # -- housekeeping ------------------------------------------------------------

    @web.middleware
    async def _housekeeping(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._purge()
        return await handler(request)

    def _purge(self) -> None:
        now = time.monotonic()
        for code, grant in list(self._devices.items()):
            if now >= grant.expires_at + _EXPIRED_RETENTION:
                self._drop_device(code)
        wall = time.time()
        expired = [digest for digest, rgrant in self._refresh.items() if wall >= rgrant.expires_at]
        for digest in expired:
            del self._refresh[digest]
        if expired:
            self._save_refresh()

    def _save_refresh(self) -> None:
        if self._refresh_path is None:
            return
        document = {
            "note": "hoop-broker dev issuer refresh grants; only SHA-256 digests of the tokens",
            "grants": {digest: grant.to_dict() for digest, grant in self._refresh.items()},
        }
        try:
            _write_private(self._refresh_path, json.dumps(document))
        except OSError as exc:
            # Logins keep working; only a restart would forget them.
            log.warning(
                "dev issuer: cannot save refresh tokens to %s: %s", self._refresh_path, exc.strerror
            )

    def _drop_device(self, device_code: str) -> None:
        grant = self._devices.pop(device_code, None)
        if grant is not None:
            self._user_codes.pop(grant.user_code, None)

    # -- helpers -----------------------------------------------------------------

    def _check_client(self, form: Mapping[str, Any]) -> str:
        client_id = _form_str(form, "client_id")
        if not secrets.compare_digest(client_id.encode(), self._client_id.encode()):
            raise _OAuthError("invalid_client", "unknown client_id", status=401)
        return client_id

    def _sign(self, claims: dict[str, Any]) -> str:
        assert self._key is not None
        return jwt.encode({"alg": "RS256", "kid": self._key.kid}, claims, self._key)

    def _issue_tokens(
        self, *, username: str, client_id: str, scope: str, auth_time: int
    ) -> dict[str, Any]:
        user = self._users[username]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user.name,
            "aud": client_id,
            "iat": now,
            "nbf": now,
            "exp": now + self._id_token_ttl,
            "auth_time": auth_time,
            "preferred_username": user.name,
            "email": user.email or f"{user.name}@dev.invalid",
            "groups": list(user.groups),
        }
        id_token = self._sign({**claims, "jti": secrets.token_urlsafe(16)})
        access_token = self._sign({**claims, "jti": secrets.token_urlsafe(16), "scope": scope})
        while len(self._refresh) >= _MAX_REFRESH_TOKENS:
            del self._refresh[next(iter(self._refresh))]  # evict the oldest
        refresh_token = secrets.token_urlsafe(32)
        self._refresh[_token_digest(refresh_token)] = _RefreshGrant(
            username=user.name,
            client_id=client_id,
            scope=scope,
            auth_time=auth_time,
            expires_at=time.time() + self._refresh_token_ttl,
        )
        self._save_refresh()
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self._id_token_ttl,
            "id_token": id_token,
            "refresh_token": refresh_token,
            "scope": scope,
        }

    # -- handlers ----------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        iss = self.issuer
        return web.json_response(
            {
                "issuer": iss,
                "jwks_uri": f"{iss}/jwks",
                "device_authorization_endpoint": f"{iss}/device/code",
                "token_endpoint": f"{iss}/token",
                "grant_types_supported": [DEVICE_CODE_GRANT, REFRESH_TOKEN_GRANT],
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": list(_SCOPES),
                "claims_supported": list(_CLAIMS),
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        assert self._key is not None
        return web.json_response({"keys": [self._key.as_dict(private=False)]})

    async def _device_authorization(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            client_id = self._check_client(form)
        except _OAuthError as exc:
            return _error_response(exc)
        if len(self._devices) >= _MAX_DEVICE_GRANTS:
            return _error_response(
                _OAuthError("temporarily_unavailable", "too many pending device codes", 503)
            )
        scope = " ".join(_form_str(form, "scope").split()) or "openid"
        user_code = _new_user_code()
        while user_code in self._user_codes:
            user_code = _new_user_code()
        device_code = secrets.token_urlsafe(32)
        grant = _DeviceGrant(
            device_code=device_code,
            user_code=user_code,
            client_id=client_id,
            scope=scope,
            expires_at=time.monotonic() + self._device_code_ttl,
            interval=self._poll_interval,
        )
        login_hint = _form_str(form, "login_hint").strip()
        if login_hint and login_hint not in self._users:
            known = ", ".join(sorted(self._users)) or "none"
            return _error_response(
                _OAuthError(
                    "invalid_request", f"no dev user named {login_hint!r} (dev users: {known})"
                )
            )
        self._devices[device_code] = grant
        self._user_codes[user_code] = device_code
        # Naming the user is as good as picking them on the verification page, which anyone
        # who can reach this issuer may do: the login is approved at once.
        chosen = login_hint or self._auto_approve
        if chosen is not None:
            self._decide(grant, "approved", chosen)
        verification_uri = f"{self.issuer}/device"
        return web.json_response(
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verification_uri,
                "verification_uri_complete": f"{verification_uri}?user_code={user_code}",
                "expires_in": self._device_code_ttl,
                "interval": self._poll_interval,
            },
            headers=_NO_STORE,
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            client_id = self._check_client(form)
            grant_type = _form_str(form, "grant_type")
            if grant_type == DEVICE_CODE_GRANT:
                body = self._device_code_grant(client_id, _form_str(form, "device_code"))
            elif grant_type == REFRESH_TOKEN_GRANT:
                body = self._refresh_grant(client_id, _form_str(form, "refresh_token"))
            elif not grant_type:
                raise _OAuthError("invalid_request", "grant_type is required")
            else:
                raise _OAuthError("unsupported_grant_type", f"unsupported grant_type {grant_type}")
        except _OAuthError as exc:
            return _error_response(exc)
        return web.json_response(body, headers=_NO_STORE)

    def _device_code_grant(self, client_id: str, device_code: str) -> dict[str, Any]:
        if not device_code:
            raise _OAuthError("invalid_request", "device_code is required")
        grant = self._devices.get(device_code)
        if grant is None or grant.client_id != client_id:
            raise _OAuthError("invalid_grant", "unknown device_code")
        now = time.monotonic()
        if now >= grant.expires_at:
            raise _OAuthError("expired_token", "the device_code has expired")
        if grant.status == "denied":
            raise _OAuthError("access_denied", "the user denied the request")
        if grant.status == "pending":
            too_fast = grant.last_poll is not None and now - grant.last_poll < grant.interval
            grant.last_poll = now
            if too_fast:
                grant.interval += _SLOW_DOWN_STEP
                raise _OAuthError("slow_down", f"poll at most every {grant.interval} s")
            raise _OAuthError("authorization_pending", "waiting for the user to approve")
        assert grant.username is not None and grant.auth_time is not None
        self._drop_device(device_code)  # single use
        return self._issue_tokens(
            username=grant.username,
            client_id=client_id,
            scope=grant.scope,
            auth_time=grant.auth_time,
        )

    def _refresh_grant(self, client_id: str, refresh_token: str) -> dict[str, Any]:
        if not refresh_token:
            raise _OAuthError("invalid_request", "refresh_token is required")
        digest = _token_digest(refresh_token)
        grant = self._refresh.get(digest)
        if grant is None or grant.client_id != client_id:
            raise _OAuthError("invalid_grant", "unknown or expired refresh_token")
        del self._refresh[digest]  # rotation: the old token is now spent
        if time.time() >= grant.expires_at:
            self._save_refresh()
            raise _OAuthError("invalid_grant", "unknown or expired refresh_token")
        if grant.username not in self._users:
            self._save_refresh()
            raise _OAuthError("invalid_grant", "the user is no longer a configured dev user")
        return self._issue_tokens(
            username=grant.username,
            client_id=client_id,
            scope=grant.scope,
            auth_time=grant.auth_time,
        )

    async def _verification_page(self, request: web.Request) -> web.Response:
        return self._page(user_code=request.query.get("user_code", ""))

    async def _verification_submit(self, request: web.Request) -> web.Response:
        form = await request.post()
        user_code = _form_str(form, "user_code")
        username = _form_str(form, "username")
        action = _form_str(form, "action")
        try:
            if action == "approve":
                self.approve(user_code, username)
                message = f"Approved as {username}. You can return to your terminal."
            elif action == "deny":
                self.deny(user_code)
                message = "Request denied. You can close this page."
            else:
                raise ValueError("choose Approve or Deny")
        except (KeyError, ValueError) as exc:
            return self._page(user_code=user_code, error=str(exc.args[0]), status=400)
        return self._page(message=message)

    def _page(
        self, *, user_code: str = "", message: str = "", error: str = "", status: int = 200
    ) -> web.Response:
        esc = html.escape
        options = "".join(
            f'<option value="{esc(u.name)}">{esc(u.name)}'
            f"{esc(' (' + ', '.join(u.groups) + ')') if u.groups else ''}</option>"
            for u in self._users.values()
        )
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(_BANNER)}</title>",
            "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}"
            ".warn{background:#fdd;border:2px solid #c00;padding:1em;font-weight:bold}"
            ".err{color:#c00}</style></head><body>",
            f"<p class='warn'>{esc(_BANNER)}. There is no password: anyone who can reach "
            "this page can sign in as any configured user.</p>",
        ]
        if error:
            parts.append(f"<p class='err'>{esc(error)}</p>")
        if message:
            parts.append(f"<p>{esc(message)}</p>")
        else:
            parts.append(
                "<form method='post' action='/device'>"
                f"<p><label>Code <input name='user_code' value='{esc(user_code)}' "
                "autocomplete='off' required></label></p>"
                f"<p><label>Sign in as <select name='username'>{options}</select></label></p>"
                "<p><button name='action' value='approve'>Approve</button> "
                "<button name='action' value='deny'>Deny</button></p></form>"
            )
        parts.append("</body></html>")
        return web.Response(
            text="".join(parts),
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers=_HTML_HEADERS,
        )


def _error_response(exc: _OAuthError) -> web.Response:
    return web.json_response(
        {"error": exc.error, "error_description": exc.description},
        status=exc.status,
        headers=_NO_STORE,
    )
