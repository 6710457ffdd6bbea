"""hoop-api methods for approvals and access requests (docs/approvals-contract.md).

Calls: approvals.list, approvals.get, approvals.decide, approvals.cancel, access.request,
access.list, approvals.standing.grant/revoke/list. Streams: approvals.watch (an approver's live queue) and approvals.wait (one
request until it is decided). Every request comes back as the record of
ApprovalRecord.to_dict(); refusals are ApiError(code, one line).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from broker.api_methods import ApiMethods, Push
from broker.protocol import ApiError
from broker.session_context import ConnectionContext
from broker.sessions.approvals import STATES, ApprovalError, ApprovalGate, ApprovalRecord

if TYPE_CHECKING:
    from broker.approvals.service import ApprovalService

SCOPES = ("review", "mine", "all")
# approvals.wait re-reads the store at least this often (expiry is also pushed).
WAIT_TICK = 5.0

T = TypeVar("T")


def _api_errors(
    handler: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await handler(*args, **kwargs)
        except ApprovalError as exc:
            raise ApiError(exc.code, exc.message) from None

    return wrapper


def _request_id(params: dict[str, Any]) -> str:
    value = params.get("id")
    if not isinstance(value, str) or not value:
        raise ApiError("bad_request", "id must be a request id")
    return value


class HasApprovals(Protocol):
    """The broker as the approval methods see it: it may or may not run the service."""

    approvals: ApprovalGate


def approval_methods(broker: HasApprovals) -> ApiMethods:
    def service() -> ApprovalService:
        from broker.approvals.service import ApprovalService

        gate = getattr(broker, "approvals", None)
        if not isinstance(gate, ApprovalService):
            raise ApiError("unavailable", "the approval service is not running")
        return gate

    @_api_errors
    async def list_(ctx: ConnectionContext, params: dict[str, Any]) -> list[dict[str, Any]]:
        state, scope = params.get("state"), params.get("scope")
        if state is not None and state not in STATES:
            raise ApiError("bad_request", f"state must be one of {', '.join(STATES)}")
        if scope is not None and scope not in SCOPES:
            raise ApiError("bad_request", f"scope must be one of {', '.join(SCOPES)}")
        records = await service().list_for(ctx.user, ctx.groups, scope=scope, state=state)
        return [record.to_dict() for record in records]

    @_api_errors
    async def get(ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        record = await service().get_visible(_request_id(params), ctx.user, ctx.groups)
        return record.to_dict()

    @_api_errors
    async def decide(ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        record = await service().decide(
            _request_id(params),
            actor=ctx.user,
            groups=ctx.groups,
            decision=params.get("decision"),
            comment=params.get("comment"),
        )
        return record.to_dict()

    @_api_errors
    async def cancel(ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        record = await service().cancel(_request_id(params), ctx.user, ctx.groups)
        return record.to_dict()

    @_api_errors
    async def access_request(ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        record = await service().request_access(
            user=ctx.user,
            groups=ctx.groups,
            target_name=params.get("target"),
            duration=params.get("duration"),
            reason=params.get("reason"),
        )
        return record.to_dict()

    @_api_errors
    async def access_list(ctx: ConnectionContext, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [record.to_dict() for record in await service().access_requests(ctx.user)]

    @_api_errors
    async def standing_grant(ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        standing = await service().standing.grant(
            actor=ctx.user,
            groups=ctx.groups,
            pattern=params.get("pattern"),
            target_name=params.get("target"),
            group=params.get("group"),
            duration=params.get("duration"),
            comment=params.get("comment"),
        )
        return standing.to_dict(time.time())

    @_api_errors
    async def standing_revoke(ctx: ConnectionContext, params: dict[str, Any]) -> dict[str, Any]:
        standing = await service().standing.revoke(
            params.get("id"), actor=ctx.user, groups=ctx.groups
        )
        return standing.to_dict(time.time())

    @_api_errors
    async def standing_list(ctx: ConnectionContext, params: dict[str, Any]) -> list[dict[str, Any]]:
        found = await service().standing.listing(
            actor=ctx.user, groups=ctx.groups, include_ended=bool(params.get("all"))
        )
        now = time.time()
        return [standing.to_dict(now) for standing in found]

    @_api_errors
    async def watch(ctx: ConnectionContext, params: dict[str, Any], push: Push) -> None:
        """An approver's queue: a snapshot of what they may decide, then every change to it."""
        gate = service()

        async def snapshot() -> None:
            pending = await gate.list_for(ctx.user, ctx.groups, scope="review", state="pending")
            await push({"type": "snapshot", "requests": [r.to_dict() for r in pending]})

        with gate.notifier.subscription() as changes:
            # Subscribed before the snapshot is read: nothing falls between the two.
            await snapshot()
            while True:
                change = await changes.get()
                assert change is not None
                if changes.overflowed:
                    changes.drain()
                    await snapshot()
                    continue
                if gate.may_decide(change.record, ctx.user, ctx.groups):
                    await push({"type": change.type, "request": change.record.to_dict()})

    @_api_errors
    async def wait(ctx: ConnectionContext, params: dict[str, Any], push: Push) -> None:
        """One request, pushed now and at every change, until it is no longer pending."""
        gate = service()
        request_id = _request_id(params)
        record = await gate.get_visible(request_id, ctx.user, ctx.groups)
        await push({"type": "updated", "request": record.to_dict()})
        seen = _fingerprint(record)
        while record.state == "pending":
            record = await gate.wait(request_id, WAIT_TICK)
            if _fingerprint(record) != seen:
                seen = _fingerprint(record)
                await push({"type": "updated", "request": record.to_dict()})

    return ApiMethods(
        calls={
            "approvals.list": list_,
            "approvals.get": get,
            "approvals.decide": decide,
            "approvals.cancel": cancel,
            "access.request": access_request,
            "access.list": access_list,
            "approvals.standing.grant": standing_grant,
            "approvals.standing.revoke": standing_revoke,
            "approvals.standing.list": standing_list,
        },
        streams={"approvals.watch": watch, "approvals.wait": wait},
    )


def _fingerprint(record: ApprovalRecord) -> tuple[object, ...]:
    return (record.state, len(record.decisions), record.expires_at)
