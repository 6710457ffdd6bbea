"""A loopback OIDC *test issuer* whose signing keys the test controls.

This is real HTTP (a ``ThreadingHTTPServer`` on 127.0.0.1) and real JWT crypto (RSA keys and
RS256 signatures from joserfc), so the broker fetches discovery and JWKS and verifies signatures
exactly as it would against a production identity provider. It is *not* a third-party IdP:
interop with a real provider (device flow, consent, refresh) is proven separately in
``tests/test_oidc_provider_login.py``. Here the point is control: the test decides which keys
are published (rotation), and mints good and deliberately bad tokens.

Public API:

* :class:`JwksIssuer` -- ``start()``/``stop()`` (or a context manager); ``.issuer`` URL;
  ``new_key(kid)``; ``publish(*keys)``; ``claims(**overrides)``; ``mint(claims, key=...)``;
  ``jwks_fetches`` (how many times /jwks was served).
* :func:`unsigned_token` -- ``alg: none`` with an empty signature.
* :func:`hs256_token` -- HMAC-signed with arbitrary secret bytes (key-confusion attack).
* :func:`b64url` / :func:`b64url_json` -- unpadded base64url helpers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.helpers import free_port

AUDIENCE = "hoopctl"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unsigned_token(claims: dict[str, Any], *, kid: str | None = None) -> str:
    """An ``alg: none`` JWT: header and payload, empty signature."""
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return f"{b64url_json(header)}.{b64url_json(claims)}."


def hs256_token(claims: dict[str, Any], secret: bytes, *, kid: str | None = None) -> str:
    """An HS256 JWT signed with SECRET (e.g. the issuer's RSA public key in PEM form)."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


class JwksIssuer:
    """Serves /.well-known/openid-configuration and /jwks from a mutable key set."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._published: list[RSAKey] = []
        self.jwks_fetches = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # keys -----------------------------------------------------------------------------------

    @staticmethod
    def new_key(kid: str) -> RSAKey:
        return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})

    def publish(self, *keys: RSAKey) -> None:
        """Replace the published key set (an empty call publishes no keys)."""
        with self._lock:
            self._published = list(keys)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.as_dict(private=False) for key in self._published]}

    # tokens ---------------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Claims of a good ID token for alice, valid for an hour; None as a value drops it."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "user-alice-0001",
            "preferred_username": "alice",
            "groups": ["engineers", "dba"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    @staticmethod
    def mint(claims: dict[str, Any], key: RSAKey) -> str:
        """Sign CLAIMS with KEY (RS256, kid from the key)."""
        header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
        return jwt.encode(header, claims, key, algorithms=["RS256"])

    # server ---------------------------------------------------------------------------------

    def start(self) -> JwksIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": issuer.issuer,
                        "jwks_uri": f"{issuer.issuer}/jwks",
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                    }
                elif self.path == "/jwks":
                    with issuer._lock:
                        issuer.jwks_fetches += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="jwks-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> JwksIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
