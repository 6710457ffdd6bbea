"""The broker's SSH front door: certificate authentication and dispatch of each SSH session."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncssh

from broker.audit import AuditEvent
from broker.protocol import LOGIN_USER, SUBSYSTEM
from broker.session_context import ConnectionContext

if TYPE_CHECKING:
    from broker.app import Broker


class BrokerConnection(asyncssh.SSHServer):
    """One client connection. Only certificates from the broker's own CA are accepted.

    The reserved user `hoop-login` needs no authentication and may only call the login
    methods of the hoop-api subsystem: it is how a client without a certificate gets one.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._remote = "unknown"
        self.context: ConnectionContext | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        if peer:
            self._remote = f"{peer[0]}:{peer[1]}"

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
        # asyncssh checks the certificate's validity period and principals after this returns.
        if key.public_data != self._broker.keys.user_ca.public_data:
            await self._broker.audit.emit(
                AuditEvent(
                    type="auth.rejected",
                    actor=username,
                    outcome="failure",
                    reason="certificate not signed by this broker's CA",
                    remote=self._remote,
                )
            )
            return False
        identity = await self._broker.store.identity(username)
        if identity is None:
            return False
        self.context = ConnectionContext(user=username, groups=identity.groups, remote=self._remote)
        return True


async def handle_process(broker: Broker, process: asyncssh.SSHServerProcess[str]) -> None:
    conn = process.get_extra_info("connection")
    owner = conn.get_owner() if conn is not None else None
    ctx = owner.context if isinstance(owner, BrokerConnection) else None
    username = process.get_extra_info("username")
    if ctx is None or ctx.user != username:
        process.stderr.write("hoop-broker: not authenticated\r\n")
        process.exit(2)
        return
    if process.subsystem == SUBSYSTEM:
        await broker.api.serve(process, ctx)
        return
    if ctx.anonymous:
        process.stderr.write("hoop-broker: log in first: hoopctl login\r\n")
        process.exit(2)
        return
    command = (process.command or "").split()
    verb = command[0] if command else "(shell)"
    process.stderr.write(f"hoop-broker: '{verb}' is not available on this broker\r\n")
    process.exit(2)
