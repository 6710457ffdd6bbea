"""Test harness for the loopback OIDC provider in ``tests/idp`` (panva's oidc-provider).

Public API:

* :func:`ensure_idp_installed` -- ``npm ci`` in ``tests/idp`` if ``node_modules`` is missing.
* :class:`OidcProviderProcess` -- context manager running ``node tests/idp/server.mjs`` on
  127.0.0.1, exposing ``.issuer`` and ``.client_id``.
* :func:`approve_device_code` -- plays the human at the device verification pages
  (enter user code, log in, consent or deny) using plain HTTP.

Accounts known to the provider (username / password / groups):

* alice / alice-password / ["engineers", "dba"]
* bob / bob-password / ["approvers", "engineers"]
* carol / carol-password / ["contractors"]
* ci-bot / ci-bot-password / ["engineers"], with the claim ``hoop_agent: true``

Clients: ``hoopctl`` (public; device flow and refresh) and ``hoop-agent`` / secret
``hoop-agent-secret`` (confidential; the client credentials grant gives it a JWT access token
with ``aud`` = the ``hoopctl`` client id and groups ["dba", "engineers"]).
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpx

IDP_DIR = Path(__file__).resolve().parent / "idp"
SERVER_SCRIPT = IDP_DIR / "server.mjs"

ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"password": "alice-password", "groups": ["engineers", "dba"]},
    "bob": {"password": "bob-password", "groups": ["approvers", "engineers"]},
    "carol": {"password": "carol-password", "groups": ["contractors"]},
    "ci-bot": {"password": "ci-bot-password", "groups": ["engineers"]},
}

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

_install_lock = threading.Lock()


# ---------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH; Node.js 20+ is needed for the test IdP")
    return npm


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH; Node.js 20+ is needed for the test IdP")
    return node


def ensure_idp_installed() -> None:
    """Install the IdP's npm dependencies (``npm ci``) unless already present.

    Idempotent and quiet; raises RuntimeError with npm's output if the install fails.
    """
    marker = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
    if marker.exists():
        return
    with _install_lock:
        if marker.exists():
            return
        proc = subprocess.run(
            [_npm(), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=IDP_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0 or not marker.exists():
            raise RuntimeError(
                f"`npm ci` in {IDP_DIR} failed (exit {proc.returncode}):\n{proc.stdout}"
            )


# ---------------------------------------------------------------------------
# Provider process
# ---------------------------------------------------------------------------


class OidcProviderProcess:
    """Run the test OpenID Provider as a child process on 127.0.0.1.

    Usage::

        with OidcProviderProcess(device_code_ttl=5) as idp:
            idp.issuer       # "http://127.0.0.1:PORT"
            idp.client_id    # "hoopctl"

    ``port=0`` (default) lets the server pick a free port and report it; pass a number to
    use a fixed one. TTLs are in seconds and are passed to the server as ``IDP_*`` env vars.
    The child is terminated (then killed) on exit.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        id_token_ttl: int = 3600,
        access_token_ttl: int = 3600,
        refresh_token_ttl: int = 86400,
        device_code_ttl: int = 600,
        client_id: str = "hoopctl",
        startup_timeout: float = 20.0,
        install: bool = True,
    ) -> None:
        self.port = port
        self.id_token_ttl = id_token_ttl
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.device_code_ttl = device_code_ttl
        self.client_id = client_id
        self.startup_timeout = startup_timeout
        self.install = install
        self.issuer: str = ""
        self.metadata: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._stderr_file: IO[str] | None = None

    # -- convenience ------------------------------------------------------
    @property
    def device_authorization_endpoint(self) -> str:
        return str(self.metadata["device_authorization_endpoint"])

    @property
    def token_endpoint(self) -> str:
        return str(self.metadata["token_endpoint"])

    @property
    def jwks_uri(self) -> str:
        return str(self.metadata["jwks_uri"])

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    # -- lifecycle --------------------------------------------------------
    def _stderr_text(self) -> str:
        if self._stderr_file is None:
            return ""
        with contextlib.suppress(Exception):
            self._stderr_file.flush()
            self._stderr_file.seek(0)
            return self._stderr_file.read()
        return ""

    def _fail(self, message: str) -> RuntimeError:
        self.stop()
        return RuntimeError(f"{message}\n--- idp stderr ---\n{self._stderr_text()}")

    def start(self) -> OidcProviderProcess:
        if self.install:
            ensure_idp_installed()
        env = dict(os.environ)
        env.update(
            {
                "IDP_HOST": "127.0.0.1",
                "IDP_PORT": str(self.port),
                "IDP_ID_TOKEN_TTL": str(self.id_token_ttl),
                "IDP_ACCESS_TOKEN_TTL": str(self.access_token_ttl),
                "IDP_REFRESH_TOKEN_TTL": str(self.refresh_token_ttl),
                "IDP_DEVICE_CODE_TTL": str(self.device_code_ttl),
                "IDP_CLIENT_ID": self.client_id,
                "NODE_ENV": "test",
            }
        )
        env.pop("DEBUG", None)
        self._stderr_file = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._proc = subprocess.Popen(
            [_node(), str(SERVER_SCRIPT)],
            cwd=IDP_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
        )
        deadline = time.monotonic() + self.startup_timeout

        # The server prints "LISTENING <issuer>" once bound.
        line_box: list[str] = []

        def _read_line() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            line_box.append(self._proc.stdout.readline())

        reader = threading.Thread(target=_read_line, daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        line = line_box[0].strip() if line_box else ""
        if not line.startswith("LISTENING "):
            rc = self._proc.poll()
            raise self._fail(
                f"test IdP did not start within {self.startup_timeout:.0f}s "
                f"(exit code {rc}, first stdout line {line!r})"
            )
        self.issuer = line.split(" ", 1)[1]
        self.port = urlsplit(self.issuer).port or self.port

        last_error: Exception | None = None
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise self._fail(f"test IdP exited early with code {self._proc.returncode}")
                try:
                    r = client.get(self.discovery_url)
                    if r.status_code == 200:
                        self.metadata = r.json()
                        if self.metadata.get("issuer") != self.issuer:
                            raise self._fail(
                                f"discovery issuer {self.metadata.get('issuer')!r} != {self.issuer!r}"
                            )
                        return self
                    last_error = RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    last_error = exc
                time.sleep(0.1)
        raise self._fail(
            f"test IdP discovery at {self.discovery_url} did not answer within "
            f"{self.startup_timeout:.0f}s (last error: {last_error!r})"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()

    @property
    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self._stderr_text()

    def __enter__(self) -> OidcProviderProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None


# ---------------------------------------------------------------------------
# Playing the human
# ---------------------------------------------------------------------------


@dataclass
class _Form:
    id: str | None
    action: str | None
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    # name -> value of submit buttons that live inside or point at (form="id") this form
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self._current: _Form | None = None
        self._orphan_buttons: list[tuple[str | None, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._current = _Form(
                id=a.get("id"),
                action=a.get("action"),
                method=(a.get("method") or "get").lower(),
            )
            self.forms.append(self._current)
        elif tag == "input":
            name = a.get("name")
            typ = (a.get("type") or "text").lower()
            target = self._target(a)
            if name and target is not None and typ not in ("submit", "button", "image"):
                target.fields[name] = a.get("value", "")
            elif name and typ == "submit":
                self._button(a, name)
        elif tag == "button":
            name = a.get("name")
            if name and (a.get("type") or "submit").lower() == "submit":
                self._button(a, name)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None

    def _target(self, a: dict[str, str]) -> _Form | None:
        form_id = a.get("form")
        if form_id:
            return next((f for f in self.forms if f.id == form_id), None)
        return self._current

    def _button(self, a: dict[str, str], name: str) -> None:
        form_id = a.get("form")
        if form_id:
            self._orphan_buttons.append((form_id, name, a.get("value", "")))
        elif self._current is not None:
            self._current.buttons.append((name, a.get("value", "")))

    def close(self) -> None:
        super().close()
        for form_id, name, value in self._orphan_buttons:
            for f in self.forms:
                if f.id == form_id:
                    f.buttons.append((name, value))


def _forms(page: str) -> list[_Form]:
    parser = _FormParser()
    parser.feed(page)
    parser.close()
    return parser.forms


def _describe(resp: httpx.Response) -> str:
    text = re.sub(r"<style.*?</style>", "", resp.text, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = re.sub(r"\s+", " ", text).strip()
    return f"HTTP {resp.status_code} {resp.request.method} {resp.request.url}: {text[:400]}"


def _find_form(resp: httpx.Response, step: str, predicate: Any) -> _Form:
    for form in _forms(resp.text):
        if predicate(form):
            return form
    raise AssertionError(f"{step}: expected form not found; {_describe(resp)}")


def _submit(
    client: httpx.Client, resp: httpx.Response, form: _Form, data: dict[str, str]
) -> httpx.Response:
    action = urljoin(str(resp.url), form.action or str(resp.url))
    payload = {**form.fields, **data}
    if form.method == "post":
        return client.post(action, data=payload)
    return client.get(action, params=payload)


def _title(resp: httpx.Response) -> str:
    m = re.search(r"<title>(.*?)</title>", resp.text, flags=re.S | re.I)
    return html.unescape(m.group(1).strip()) if m else ""


def approve_device_code(
    issuer: str,
    user_code: str,
    username: str,
    password: str,
    *,
    deny: bool = False,
) -> None:
    """Act as the end-user approving (or denying) a device authorization request.

    Steps, over plain HTTP with a cookie jar, following redirects like a browser:
    GET {issuer}/device -> submit the user code -> "Confirm Device" page -> Continue ->
    our login page (username/password) -> consent page -> Continue (or Deny when ``deny``)
    -> the provider's "Sign-in Success" page (or, for deny, its aborted page).

    Raises AssertionError describing the failing step (e.g. wrong password, unknown code).
    """
    base = issuer.rstrip("/")
    with httpx.Client(
        follow_redirects=True, timeout=10.0, trust_env=False, headers={"User-Agent": "idp-harness"}
    ) as client:
        # 1. device verification page: user code input form (with xsrf)
        resp = client.get(f"{base}/device")
        if resp.status_code != 200:
            raise AssertionError(f"device page: {_describe(resp)}")
        form = _find_form(
            resp,
            "device code input",
            lambda f: "xsrf" in f.fields and "user_code" in f.fields and "confirm" not in f.fields,
        )
        resp = _submit(client, resp, form, {"user_code": user_code})

        # 2. confirm device page (form with xsrf + user_code + confirm=yes)
        if resp.status_code != 200:
            raise AssertionError(f"submitting user code {user_code!r}: {_describe(resp)}")
        form = _find_form(
            resp,
            f"confirm device for user code {user_code!r}",
            lambda f: f.fields.get("confirm") == "yes",
        )
        resp = _submit(client, resp, form, {})

        # 3. our interaction login page
        if resp.status_code != 200 or "/interaction/" not in resp.url.path:
            raise AssertionError(f"expected login interaction page: {_describe(resp)}")
        form = _find_form(
            resp,
            "login",
            lambda f: (f.action or "").endswith("/login"),
        )
        resp = _submit(client, resp, form, {"username": username, "password": password})
        if resp.status_code != 200:
            raise AssertionError(f"login as {username!r} failed: {_describe(resp)}")

        # 4. consent page (skipped by the provider if consent already exists)
        if "/interaction/" in resp.url.path:
            want = "/abort" if deny else "/confirm"
            forms = _forms(resp.text)
            if any((f.action or "").endswith("/login") for f in forms):
                raise AssertionError(f"login as {username!r} rejected: {_describe(resp)}")
            form = _find_form(resp, "consent", lambda f: (f.action or "").endswith(want))
            resp = _submit(client, resp, form, {})
        elif deny:
            raise AssertionError(f"expected consent page to deny on: {_describe(resp)}")

        # 5. final page rendered by the provider's device flow
        title = _title(resp)
        if deny:
            if "interrupted" not in resp.text and "access_denied" not in resp.text:
                raise AssertionError(f"deny did not reach the aborted page: {_describe(resp)}")
            return
        if resp.status_code != 200 or title != "Sign-in Success":
            raise AssertionError(f"device approval did not succeed: {_describe(resp)}")


# ---------------------------------------------------------------------------
# Small client-side helpers for tests
# ---------------------------------------------------------------------------


def start_device_authorization(
    idp: OidcProviderProcess,
    scope: str = "openid profile email groups offline_access",
) -> dict[str, Any]:
    """POST the device authorization request for ``idp.client_id``; returns the JSON body."""
    r = httpx.post(
        idp.device_authorization_endpoint,
        data={"client_id": idp.client_id, "scope": scope},
        timeout=10.0,
        trust_env=False,
    )
    if r.status_code != 200:
        raise AssertionError(f"device authorization failed: HTTP {r.status_code} {r.text}")
    return r.json()


def poll_device_token(idp: OidcProviderProcess, device_code: str) -> httpx.Response:
    """One poll of the token endpoint with the device_code grant (no retry/sleep)."""
    return httpx.post(
        idp.token_endpoint,
        data={
            "grant_type": DEVICE_CODE_GRANT,
            "device_code": device_code,
            "client_id": idp.client_id,
        },
        timeout=10.0,
        trust_env=False,
    )


__all__ = [
    "ACCOUNTS",
    "DEVICE_CODE_GRANT",
    "IDP_DIR",
    "OidcProviderProcess",
    "approve_device_code",
    "ensure_idp_installed",
    "poll_device_token",
    "start_device_authorization",
]
