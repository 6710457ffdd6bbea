"""The broker's SSH front door: certificate authentication and dispatch of each SSH session.

A session channel asks for a session command (`connect NAME`, `exec NAME -- CMD`, …), or, from
plain OpenSSH with the Host blocks of `hoopctl ssh-config`, carries ``HOOP_TARGET=NAME``: then
its shell, exec or sftp request is a session on that target (broker/sessions/openssh.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

import asyncssh

from broker.audit.events import AuditEvent
from broker.config import Target
from broker.errors import BrokerError
from broker.protocol import LOGIN_USER, SUBSYSTEM
from broker.protocols import unit_for
from broker.session_context import ConnectionContext
from broker.sessions.approvals import ApprovalGate, ApprovalRecord
from broker.sessions.base import SessionBase, SessionHost
from broker.sessions.command_exec import CommandExec
from broker.sessions.file_transfer import FileTransferSession, SftpBridge
from broker.sessions.guarded_terminal import GuardedTerminalSession
from broker.sessions.openssh import TARGET_ENV, OpenSshExec, openssh_reason, openssh_request
from broker.sessions.proxy import NativeProxy
from broker.sessions.request import RequestError, SessionCommand, parse_session_command
from broker.sessions.sql_exec import SqlExec
from broker.sessions.sql_shell import SqlShell
from broker.sessions.terminal import TerminalSession

if TYPE_CHECKING:
    from broker.api import Api
    from broker.config import BrokerConfig
    from broker.identity.registry import CertificateRegistry

log = logging.getLogger("hoop.broker")

# Says why a channel is refused (the message, the exit status) and ends it.
Refuse = Callable[[str, int], None]


class ServerHost(SessionHost, Protocol):
    """What the SSH server needs of the broker: the API, certificates, config and the gate."""

    api: Api
    config: BrokerConfig
    certificates: CertificateRegistry
    approvals: ApprovalGate
    # Every channel being served (sessions and API calls): the broker drains them on stop.
    live: set[asyncio.Task[Any]]


class BrokerConnection(asyncssh.SSHServer):
    """One client connection. Only certificates the broker issued itself are accepted: signed
    by its current CA and found, unrevoked and unchanged, in its certificate registry.

    The reserved user `hoop-login` needs no authentication and may only call the login
    methods of the hoop-api subsystem: it is how a client without a certificate gets one.
    """

    def __init__(self, broker: ServerHost) -> None:
        self._broker = broker
        self._remote = "unknown"
        self._presented: bytes | None = None
        self.context: ConnectionContext | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        if peer:
            self._remote = f"{peer[0]}:{peer[1]}"
        # asyncssh hands validate_ca_key only the signing key, not the certificate; its serial
        # and key id are in the bytes the client sent, which pass through here first. Should
        # asyncssh stop calling this, no certificate is seen and every one is refused.
        check = conn.validate_public_key

        async def remember_presented(
            username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            self._presented = key_data
            try:
                return await check(username, key_data, msg, signature)
            finally:
                self._presented = None

        conn.validate_public_key = remember_presented  # type: ignore[method-assign]

    def begin_auth(self, username: str) -> bool:
        self.context = None
        if username == LOGIN_USER:
            self.context = ConnectionContext(
                user=LOGIN_USER, groups=(), remote=self._remote, anonymous=True
            )
            return False
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False

    async def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # asyncssh checks the certificate's validity period and principals after this returns,
        # and then that the client holds the certificate's private key.
        refusal = await self._broker.certificates.check(username, key, self._presented)
        if refusal is not None:
            serial = refusal.details().get("certificate_serial", "unreadable")
            log.warning(
                "refused certificate serial %s for user %r from %s: %s",
                serial,
                username,
                self._remote,
                refusal.reason,
            )
            await self._broker.audit.emit(
                AuditEvent(
                    type="auth.rejected",
                    actor=username,
                    outcome="failure",
                    reason=refusal.reason,
                    remote=self._remote,
                    details=refusal.details(),
                )
            )
            return False
        identity = await self._broker.store.identity(username)
        if identity is None:
            return False
        self.context = ConnectionContext(
            user=username, groups=identity.groups, remote=self._remote, kind=identity.kind
        )
        self._broker.audit.actor_kinds[username] = identity.kind
        return True


async def _guarded(
    process: asyncssh.SSHServerProcess[bytes], work: Coroutine[Any, Any, int]
) -> int:
    """A bug in one session must end that session with a message, never the connection silently."""
    try:
        return await work
    except Exception:
        log.exception("session failed")
        with contextlib.suppress(OSError, asyncssh.Error):
            process.stderr.write(b"hoop-broker: internal error; the broker logged it\r\n")
        return 1


def _refuse(process: asyncssh.SSHServerProcess[bytes], message: str, status: int) -> None:
    process.stderr.write(f"hoop-broker: {message}\r\n".encode())
    process.exit(status)


async def handle_process(broker: ServerHost, process: asyncssh.SSHServerProcess[bytes]) -> None:
    task = asyncio.current_task()
    if task is not None:
        broker.live.add(task)
        task.add_done_callback(broker.live.discard)
    conn = process.get_extra_info("connection")
    owner = conn.get_owner() if conn is not None else None
    ctx = owner.context if isinstance(owner, BrokerConnection) else None
    username = process.get_extra_info("username")
    if ctx is None or ctx.user != username:
        _refuse(process, "not authenticated", 2)
        return
    if process.subsystem == SUBSYSTEM:
        await broker.api.serve(process, ctx)
        return
    if ctx.anonymous:
        _refuse(process, "log in first: hoopctl login", 2)
        return

    def refuse(message: str, status: int) -> None:
        _refuse(process, message, status)

    if TARGET_ENV in process.env:
        await _handle_openssh(broker, process, ctx, process.env[TARGET_ENV], refuse)
        return
    try:
        request = parse_session_command(process.command or "")
    except RequestError as exc:
        _refuse(process, str(exc), 2)
        return
    target = await _find_target(broker, ctx, request.target, refuse)
    if target is None:
        return
    session_class = SESSIONS.get((_family(target), request.verb))
    if session_class is None:
        _refuse(process, f"target {target.name} does not take `{request.verb}`", 2)
        return
    cleared, grant = await _clear_to_start(broker, ctx, target, refuse)
    if not cleared:
        return
    session = session_class(
        broker, ctx, process, target, broker.config.policy_for(target), broker.approvals, request
    )
    session.grant = grant
    status = await _guarded(process, session.run())
    with contextlib.suppress(OSError, asyncssh.Error):
        process.exit(status)


async def _handle_openssh(
    broker: ServerHost,
    process: asyncssh.SSHServerProcess[bytes],
    ctx: ConnectionContext,
    name: str,
    refuse: Refuse,
) -> None:
    """A channel from plain OpenSSH carrying HOOP_TARGET=NAME: its shell request is `connect
    NAME`, its exec request `exec NAME -- CMD` or a file transfer (scp -t|-f, rsync --server)."""
    try:
        plain = openssh_request(name, process.env, process.command, process.subsystem)
    except RequestError as exc:
        refuse(str(exc), 2)
        return
    target = await _find_target(broker, ctx, plain.request.target, refuse)
    if target is None:
        return
    family = _family(target)
    if family == "database":
        refuse(
            f"target {target.name} is a database: plain ssh reaches shell targets "
            f"(hoopctl connect {target.name})",
            2,
        )
        return
    cleared, grant = await _clear_to_start(broker, ctx, target, refuse)
    if not cleared:
        return
    parts = (broker, ctx, process, target, broker.config.policy_for(target), broker.approvals)
    session: SessionBase
    if plain.kind == "shell":
        session = SESSIONS[(family, "connect")](*parts, plain.request)
    elif plain.kind == "exec":
        session = OpenSshExec(*parts, plain.request, command=plain.command or "")
    else:
        session = FileTransferSession(*parts, plain.request, tool=plain.kind, command=plain.command)
    session.grant = grant
    status = await _guarded(process, session.run())
    with contextlib.suppress(OSError, asyncssh.Error):
        process.exit(status)


async def open_sftp(broker: ServerHost, chan: asyncssh.SSHServerChannel[bytes]) -> SftpBridge:
    """The sftp subsystem (asyncssh's SFTP factory): checked as handle_process checks a
    session, then a transfer session whose SFTP server passes operations on to the target. A
    refused channel is told why and closed; the server returned for it refuses everything."""

    def refuse(message: str, status: int) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            chan.write_stderr(f"hoop-broker: {message}\r\n".encode())
            chan.exit(status)

    closed = SftpBridge(chan, None, None, refusal="this channel was refused")
    try:
        return await _open_sftp(broker, chan, refuse) or closed
    except Exception:
        log.exception("sftp session failed")
        refuse("internal error; the broker logged it", 1)
        return closed


async def _open_sftp(
    broker: ServerHost, chan: asyncssh.SSHServerChannel[bytes], refuse: Refuse
) -> SftpBridge | None:
    conn = chan.get_connection()
    owner = conn.get_owner()
    ctx = owner.context if isinstance(owner, BrokerConnection) else None
    if ctx is None or ctx.user != chan.get_extra_info("username"):
        refuse("not authenticated", 2)
        return None
    if ctx.anonymous:
        refuse("log in first: hoopctl login", 2)
        return None
    env = chan.get_environment()
    name = env.get(TARGET_ENV)
    if not name:
        refuse(
            "sftp reaches a target through its Host block from hoopctl ssh-config "
            f"(SetEnv {TARGET_ENV}=NAME)",
            2,
        )
        return None
    try:
        request = SessionCommand("transfer", name, reason=openssh_reason(env))
    except RequestError as exc:
        refuse(str(exc), 2)
        return None
    target = await _find_target(broker, ctx, name, refuse)
    if target is None:
        return None
    if _family(target) == "database":
        refuse(f"target {target.name} is a database: it takes no file transfers", 2)
        return None
    cleared, grant = await _clear_to_start(broker, ctx, target, refuse)
    if not cleared:
        return None
    session = FileTransferSession(
        broker,
        ctx,
        cast("asyncssh.SSHServerProcess[bytes]", None),  # an SFTP channel has no process
        target,
        broker.config.policy_for(target),
        broker.approvals,
        request,
        tool="sftp",
        say=lambda text: _say_on(chan, text),
    )
    session.grant = grant
    if not await session.start():  # said and audited
        _end_channel(chan, 1)
        return None
    try:
        client = await session.open_target_sftp()
    except BaseException:
        await asyncio.shield(session.finish(1))
        raise
    if client is None:  # said, and recorded as failed
        await session.finish(1)
        _end_channel(chan, 1)
        return None
    session.on_stop = chan.close

    async def finished() -> None:
        await session.finish(1 if session.failures else 0)

    return SftpBridge(chan, session, client, on_exit=finished)


def _end_channel(chan: asyncssh.SSHServerChannel[bytes], status: int) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        chan.exit(status)


def _say_on(chan: asyncssh.SSHServerChannel[bytes], text: str) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        chan.write_stderr(f"hoop-broker: {text}\r\n".encode())


async def _audit_rejection(
    broker: ServerHost,
    ctx: ConnectionContext,
    target: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> None:
    """The `session.rejected` event of a session refused before it started."""
    await broker.audit.emit(
        AuditEvent(
            type="session.rejected",
            actor=ctx.user,
            groups=ctx.groups,
            target=target,
            outcome="failure",
            reason=reason,
            remote=ctx.remote,
            details=details or {},
        )
    )


async def _find_target(
    broker: ServerHost, ctx: ConnectionContext, name: str, refuse: Refuse
) -> Target | None:
    """The target NAME if it is open to the user; otherwise refused (and audited)."""
    target = broker.config.target(name)
    if target is None or not ctx.may_use(target.allowed_groups):
        # Unknown and forbidden look the same, so target names do not leak to outsiders.
        await _audit_rejection(
            broker, ctx, name, "no such target, or not allowed for the user's groups"
        )
        refuse(f"no target {name!r} is open to you (see hoopctl targets)", 1)
        return None
    return target


async def _clear_to_start(
    broker: ServerHost, ctx: ConnectionContext, target: Target, refuse: Refuse
) -> tuple[bool, ApprovalRecord | None]:
    """Whether a session on TARGET may start now (its access grant, strict audit), and the
    grant it runs under; a refusal is said and audited."""
    grant = None
    if target.access == "request":
        grant = await broker.approvals.active_grant(ctx.user, target.name)
        if grant is None:
            await _refuse_without_grant(broker, refuse, ctx, target)
            return False, None
    locked = await _signal_lock(broker, ctx, target)
    if locked is not None:
        refuse(locked, 3)
        return False, None
    refusal = broker.audit.refusal_reason()
    if refusal is not None:
        # Strict audit: no session may start while its events could be lost.
        with contextlib.suppress(BrokerError):
            await _audit_rejection(broker, ctx, target.name, refusal)
        refuse(f"session refused: {refusal}", 1)
        return False, None
    return True, grant


async def _signal_lock(broker: ServerHost, ctx: ConnectionContext, target: Target) -> str | None:
    """Why USER may not open a session on TARGET now (a `lock:` signal action), audited; None
    when nothing holds them off. A lock that cannot be read refuses (fail closed)."""
    signals = getattr(broker, "signals", None)
    if signals is None or not signals.settings.enabled:
        return None
    try:
        locked = await signals.locked_until(ctx.user, target.name)
    except Exception:
        log.exception("signal locks cannot be read")
        locked = (float("inf"), "unknown")
    if locked is None:
        return None
    until, name = locked
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
        if until != float("inf")
        else "the broker can read its locks again"
    )
    reason = f"locked out of {target.name} until {when} (signal {name})"
    locked_until = until if until != float("inf") else None
    await _audit_rejection(
        broker, ctx, target.name, reason, {"locked_until": locked_until, "signal": name}
    )
    return f"session refused: {reason}"


async def _refuse_without_grant(
    broker: ServerHost, refuse: Refuse, ctx: ConnectionContext, target: Target
) -> None:
    """A target with `access = "request"` and no active grant for this user: say how to get one."""
    pending = await broker.approvals.pending_access(ctx.user, target.name)
    if pending is not None:
        message = (
            f"target {target.name} needs an access grant: your request {pending.id} still "
            f"waits for {pending.groups_text()}"
        )
    else:
        message = (
            f"target {target.name} needs an access grant: "
            f'hoopctl request {target.name} --for 1h --reason "why"'
        )
    await _audit_rejection(
        broker,
        ctx,
        target.name,
        "no active access grant",
        {"pending_request": pending.id if pending else None},
    )
    refuse(message, 4)


def _family(target: Target) -> str:
    if unit_for(target).family == "sql":
        return "database"
    # guard = "screen" is the declared weaker grade: prompt-level checks off the screen.
    if getattr(target, "guard", "strict") == "screen":
        return "screen-terminal"
    return "terminal"


# Which kind of session serves each verb on each family of target.
SESSIONS: dict[tuple[str, str], type[SessionBase]] = {
    ("terminal", "connect"): GuardedTerminalSession,
    ("terminal", "exec"): CommandExec,
    ("screen-terminal", "connect"): TerminalSession,
    ("screen-terminal", "exec"): CommandExec,
    ("database", "exec"): SqlExec,
    ("database", "connect"): SqlShell,
    ("database", "proxy"): NativeProxy,
}
