"""The `hoop-api` subsystem: JSON-lines requests for login, identity and target listings."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncssh

from broker import __version__
from broker.audit import AuditEvent
from broker.errors import AuthError, BrokerError
from broker.identity.certificates import issue_certificate, parse_public_key
from broker.protocol import PROTOCOL_VERSION, ApiError, decode, encode
from broker.session_context import ConnectionContext

if TYPE_CHECKING:
    from broker.app import Broker

Handler = Callable[[ConnectionContext, dict[str, Any]], Awaitable[Any]]


class Api:
    """Dispatches hoop-api methods; anonymous connections may only log in."""

    ANONYMOUS_METHODS = frozenset({"auth.config", "auth.exchange"})

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._methods: dict[str, Handler] = {
            "auth.config": self._auth_config,
            "auth.exchange": self._auth_exchange,
            "whoami": self._whoami,
            "targets.list": self._targets_list,
        }

    async def serve(
        self, process: asyncssh.SSHServerProcess[bytes], ctx: ConnectionContext
    ) -> None:
        while True:
            try:
                raw = await process.stdin.readline()
            except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, asyncssh.SignalReceived):
                continue
            except (OSError, asyncssh.Error):
                break
            if not raw:
                break
            response = await self.handle_line(raw.decode("utf-8", "replace"), ctx)
            process.stdout.write(encode(response).encode())
        process.exit(0)

    async def handle_line(self, line: str, ctx: ConnectionContext) -> dict[str, Any]:
        request_id: Any = None
        try:
            request = decode(line)
            request_id = request.get("id")
            method = request.get("method")
            params = request.get("params") or {}
            if not isinstance(method, str) or method not in self._methods:
                raise ApiError("unknown_method", f"unknown method {method!r}")
            if not isinstance(params, dict):
                raise ApiError("bad_request", "params must be an object")
            if ctx.anonymous and method not in self.ANONYMOUS_METHODS:
                raise ApiError("unauthenticated", "log in first: hoopctl login")
            result = await self._methods[method](ctx, params)
            return {"id": request_id, "result": result}
        except ApiError as exc:
            return {"id": request_id, "error": {"code": exc.code, "message": exc.message}}
        except AuthError as exc:
            return {"id": request_id, "error": {"code": "auth_failed", "message": str(exc)}}
        except BrokerError as exc:
            return {"id": request_id, "error": {"code": "broker_error", "message": str(exc)}}

    async def _auth_config(self, ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        oidc = self._broker.oidc
        return {
            "issuer": oidc.issuer,
            "client_id": oidc.client_id,
            "scopes": oidc.scopes,
            "dev": self._broker.dev_mode,
            "broker_version": __version__,
            "protocol": PROTOCOL_VERSION,
        }

    async def _auth_exchange(
        self, ctx: ConnectionContext, params: dict[str, Any]
    ) -> dict[str, Any]:
        token = params.get("id_token")
        public_key_text = params.get("public_key")
        if not isinstance(token, str) or not isinstance(public_key_text, str):
            raise ApiError("bad_request", "auth.exchange needs id_token and public_key")
        broker = self._broker
        try:
            identity = await broker.validator.validate(token)
            public_key = parse_public_key(public_key_text)
            issued = issue_certificate(
                broker.keys.user_ca,
                public_key,
                identity,
                max_ttl=broker.config.broker.certificate_ttl,
            )
        except AuthError as exc:
            await broker.audit.emit(
                AuditEvent(type="auth.login", outcome="failure", reason=str(exc), remote=ctx.remote)
            )
            raise
        now = time.time()
        await broker.store.record_identity(
            identity.user, identity.groups, identity.subject, identity.issuer, now
        )
        await broker.store.record_certificate(
            serial=issued.serial,
            user=identity.user,
            key_fingerprint=issued.key_fingerprint,
            groups=identity.groups,
            valid_after=issued.valid_after,
            valid_before=issued.valid_before,
            now=now,
        )
        await broker.audit.emit(
            AuditEvent(
                type="auth.login",
                actor=identity.user,
                groups=identity.groups,
                remote=ctx.remote,
                details={
                    "certificate_serial": str(issued.serial),
                    "valid_before": issued.valid_before,
                    "key_fingerprint": issued.key_fingerprint,
                },
            )
        )
        return {
            "certificate": issued.openssh(),
            "user": identity.user,
            "groups": list(identity.groups),
            "valid_before": issued.valid_before,
            "serial": str(issued.serial),
        }

    async def _whoami(self, ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        return {"user": ctx.user, "groups": list(ctx.groups)}

    async def _targets_list(
        self, ctx: ConnectionContext, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        config = self._broker.config
        return [
            {
                "name": target.name,
                "type": target.type,
                "description": target.description,
                "policy": config.policy_for(target).summary(),
            }
            for target in config.targets
            if ctx.may_use(target.allowed_groups)
        ]
