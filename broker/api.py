"""The `hoop-api` subsystem: JSON-lines requests for login, identity and target listings; other
modules add their own methods (approvals, audit). A stream method turns the channel into a
one-way feed of `{"id": N, "event": {...}}` lines until the client closes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh

from broker import __version__
from broker.api_methods import ApiMethods, Handler, StreamHandler
from broker.approvals.api import HasApprovals, approval_methods
from broker.audit.api import AuditHost, audit_methods
from broker.audit.events import AuditEvent
from broker.errors import AuthError, BrokerError
from broker.identity.certificates import parse_public_key
from broker.protocol import PROTOCOL_VERSION, ApiError, decode, encode
from broker.session_context import ConnectionContext

if TYPE_CHECKING:
    from broker.config import OidcSection
    from broker.identity.registry import CertificateRegistry
    from broker.identity.tokens import TokenValidator

log = logging.getLogger("hoop.broker.api")


class ApiHost(AuditHost, HasApprovals, Protocol):
    """What the hoop-api dispatcher needs of the broker: login, identity and the methods'."""

    oidc: OidcSection
    dev_mode: bool
    validator: TokenValidator
    certificates: CertificateRegistry


SCHEMA_COLUMNS = 5000  # columns targets.schema returns at most


class Api:
    """Dispatches hoop-api methods; anonymous connections may only log in."""

    ANONYMOUS_METHODS = frozenset({"auth.config", "auth.exchange"})

    def __init__(self, broker: ApiHost) -> None:
        self._broker = broker
        self._methods: dict[str, Handler] = {
            "auth.config": self._auth_config,
            "auth.exchange": self._auth_exchange,
            "whoami": self._whoami,
            "targets.list": self._targets_list,
            "targets.schema": self._targets_schema,
        }
        self._streams: dict[str, StreamHandler] = {}
        for extra in (approval_methods(broker), audit_methods(broker)):
            self._add(extra)

    def _add(self, methods: ApiMethods) -> None:
        clash = (set(methods.calls) | set(methods.streams)) & (
            set(self._methods) | set(self._streams)
        )
        if clash:
            raise RuntimeError(f"hoop-api methods defined twice: {sorted(clash)}")
        self._methods.update(methods.calls)
        self._streams.update(methods.streams)

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
            line = raw.decode("utf-8", "replace")
            stream = self._stream_request(line, ctx)
            if stream is not None:
                await self._serve_stream(process, ctx, *stream)
                break
            response = await self.handle_line(line, ctx)
            process.stdout.write(encode(response).encode())
        process.exit(0)

    def _stream_request(
        self, line: str, ctx: ConnectionContext
    ) -> tuple[Any, StreamHandler, dict[str, Any]] | None:
        """A well-formed, permitted call of a stream method; anything else goes to handle_line."""
        try:
            request = decode(line)
        except ApiError:
            return None
        method, params = request.get("method"), request.get("params") or {}
        if method not in self._streams or ctx.anonymous or not isinstance(params, dict):
            return None
        return request.get("id"), self._streams[method], params

    async def _serve_stream(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        ctx: ConnectionContext,
        request_id: Any,
        handler: StreamHandler,
        params: dict[str, Any],
    ) -> None:
        async def push(event: dict[str, Any]) -> None:
            process.stdout.write(encode({"id": request_id, "event": event}).encode())
            await process.stdout.drain()

        async def client_gone() -> None:
            with contextlib.suppress(OSError, asyncssh.Error):
                while await process.stdin.read(4096):
                    pass

        feed = asyncio.ensure_future(handler(ctx, params, push))
        watch = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({feed, watch}, return_when=asyncio.FIRST_COMPLETED)
            if feed.done() and feed.exception() is not None:
                error = feed.exception()
                code, message = (
                    (error.code, error.message)
                    if isinstance(error, ApiError)
                    else ("broker_error", "the stream failed; the broker logged it")
                )
                with contextlib.suppress(OSError, asyncssh.Error):
                    process.stdout.write(
                        encode(
                            {"id": request_id, "error": {"code": code, "message": message}}
                        ).encode()
                    )
                if not isinstance(error, ApiError):
                    log.error("stream failed", exc_info=error)
        finally:
            for task in (feed, watch):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

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
            # Signed with the current CA and recorded in the registry before it is handed out:
            # the broker admits only certificates it finds there.
            issued = await broker.certificates.issue(
                public_key, identity, max_ttl=broker.config.broker.certificate_ttl
            )
        except AuthError as exc:
            await broker.audit.emit(
                AuditEvent(type="auth.login", outcome="failure", reason=str(exc), remote=ctx.remote)
            )
            raise
        now = time.time()
        await broker.store.record_identity(
            identity.user, identity.groups, identity.subject, identity.issuer, now, identity.kind
        )
        broker.audit.actor_kinds[identity.user] = identity.kind
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
        # served_by: the host and process (a worker, with `serve --workers N`) of this
        # connection, for operators following one connection through the logs.
        return {
            "user": ctx.user,
            "groups": list(ctx.groups),
            "kind": ctx.kind,
            "served_by": self._broker.store.owner,
        }

    async def _targets_schema(
        self, ctx: ConnectionContext, params: dict[str, Any]
    ) -> dict[str, Any]:
        """The tables and columns of a database target, from its catalog (names only, read
        with the broker's credential), each column marked when a column rule masks it."""
        from broker.masking.lineage import ColumnSource
        from broker.masking.masker import Masker
        from broker.protocols import open_database, sql_unit

        name = params.get("target")
        config = self._broker.config
        target = config.target(name) if isinstance(name, str) else None
        if target is None or not ctx.may_use(target.allowed_groups):
            raise ApiError("not_found", f"no target {name!r} is open to you")
        if not hasattr(target, "masking"):
            raise ApiError("bad_request", f"target {target.name} is not a database")
        # Names are matched against the rules; no value is masked, so no key is needed.
        masker = Masker(target.masking, hash_key=b"names only")
        try:
            conn = await open_database(target)
        except BrokerError as exc:
            raise ApiError("unavailable", str(exc)) from None
        try:
            result = await conn.execute(sql_unit(target.type).completion_sql(SCHEMA_COLUMNS))
            pairs = [(str(row[0]), row[1]) async for row in result.rows]
        except Exception as exc:
            raise ApiError("unavailable", f"target {target.name}: the catalog cannot be read "
                           f"({type(exc).__name__})") from None  # fmt: skip
        finally:
            await conn.close()
        tables: dict[str, list[dict[str, Any]]] = {}
        for table, column in pairs:
            columns = tables.setdefault(table, [])
            if column is None:
                continue
            source = ColumnSource(str(column), (f"{table}.{column}",))
            columns.append({"name": str(column), "masked": masker.strategy_for(source) is not None})
        await self._broker.audit.emit(
            AuditEvent(
                type="schema.read",
                actor=ctx.user,
                groups=ctx.groups,
                target=target.name,
                remote=ctx.remote,
                details={"tables": len(tables), "columns": len(pairs)},
            )
        )
        return {
            "target": target.name,
            "tables": [{"name": t, "columns": c} for t, c in tables.items()],
            "truncated": len(pairs) >= SCHEMA_COLUMNS,
        }

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
