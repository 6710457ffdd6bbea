"""hoopctl's one transport: an SSH connection to the broker, pinned host key, hoop-api calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import asyncssh

from broker.protocol import LOGIN_USER, SUBSYSTEM
from hoopctl.address import BrokerAddress
from hoopctl.errors import ApiCallError, BrokerUnreachable, HostKeyError, NotLoggedIn
from hoopctl.hostkeys import fingerprint, pin, pinned_key

CONNECT_TIMEOUT = 15
CALL_TIMEOUT = 60

# Decides whether to trust a broker host key seen for the first time; returns True to pin it.
FirstUseDecision = Callable[[asyncssh.SSHKey], bool]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def _offered_key(address: BrokerAddress) -> asyncssh.SSHKey:
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(address.host, address.port, config=None),
            CONNECT_TIMEOUT,
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise BrokerUnreachable(f"cannot reach broker at {address}: {_reason(exc)}") from None
    if key is None:
        raise BrokerUnreachable(f"broker at {address} presented no host key")
    return key


async def _trusted_key(
    address: BrokerAddress, first_use: FirstUseDecision | None
) -> asyncssh.SSHKey:
    key = pinned_key(address)
    if key is not None:
        return key
    if first_use is None:
        raise HostKeyError(
            f"broker {address} is not known yet: run hoopctl login --broker {address}"
        )
    offered = await _offered_key(address)
    if not first_use(offered):
        raise HostKeyError(
            f"host key {fingerprint(offered)} of broker {address} was not accepted; nothing saved"
        )
    pin(address, offered)
    return offered


# AES-GCM first: with the CPU's AES instructions it costs a fraction of chacha20-poly1305 per
# packet, which counts on the proxy's many small packets (bench/proxy.py).
ENCRYPTION = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")


async def open_connection(
    address: BrokerAddress,
    *,
    username: str = LOGIN_USER,
    client_keys: list[tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]] | None = None,
    first_use: FirstUseDecision | None = None,
) -> asyncssh.SSHClientConnection:
    trusted = await _trusted_key(address, first_use)
    try:
        return await asyncssh.connect(
            address.host,
            address.port,
            username=username,
            known_hosts=([trusted], [], []),
            client_keys=client_keys or [],
            agent_path=None,
            config=None,
            password=None,
            kbdint_auth=False,
            password_auth=False,
            connect_timeout=CONNECT_TIMEOUT,
            encryption_algs=ENCRYPTION,
        )
    except asyncssh.HostKeyNotVerifiable:
        offered = await _offered_key(address)
        raise HostKeyError(
            f"broker {address} host key changed: pinned {fingerprint(trusted)}, "
            f"offered {fingerprint(offered)}; if this rotation is expected, "
            f"run hoopctl login --forget-host-key"
        ) from None
    except asyncssh.PermissionDenied:
        # The broker does not say why (revoked, its CA rotated, expired, not issued by it):
        # whichever it is, a fresh login is the way back in.
        raise NotLoggedIn(
            f"broker {address} refused your certificate (revoked, issued before a CA "
            f"rotation, expired, or not issued by this broker): log in again with "
            f"hoopctl login --broker {address}"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise BrokerUnreachable(f"cannot reach broker at {address}: {_reason(exc)}") from None


class ApiClient:
    """JSON-lines calls over one hoop-api subsystem channel."""

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        self._process: asyncssh.SSHClientProcess[str] | None = None
        self._next_id = 0

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self.close_channel()
        self._conn.close()
        await self._conn.wait_closed()

    def close_channel(self) -> None:
        """End the hoop-api channel and keep the connection (for what else runs on it)."""
        if self._process is not None:
            self._process.stdin.write_eof()
            self._process.close()
            self._process = None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        try:
            if self._process is None:
                self._process = await self._conn.create_process(
                    subsystem=SUBSYSTEM, encoding="utf-8"
                )
            self._next_id += 1
            request = {"id": self._next_id, "method": method, "params": params or {}}
            self._process.stdin.write(json.dumps(request) + "\n")
            line = await asyncio.wait_for(self._process.stdout.readline(), CALL_TIMEOUT)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise BrokerUnreachable(f"lost the broker during {method}: {_reason(exc)}") from None
        if not line:
            raise BrokerUnreachable(f"the broker closed the connection during {method}")
        response = json.loads(line)
        if "error" in response:
            error = response["error"]
            raise ApiCallError(str(error.get("code")), str(error.get("message")))
        return response.get("result")

    async def stream(
        self, method: str, params: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Events pushed by a stream method, on a channel of their own, until the broker ends it."""
        try:
            process = await self._conn.create_process(subsystem=SUBSYSTEM, encoding="utf-8")
        except (OSError, asyncssh.Error) as exc:
            raise BrokerUnreachable(f"lost the broker during {method}: {_reason(exc)}") from None
        try:
            process.stdin.write(
                json.dumps({"id": 1, "method": method, "params": params or {}}) + "\n"
            )
            while True:
                try:
                    line = await process.stdout.readline()
                except (OSError, asyncssh.Error) as exc:
                    raise BrokerUnreachable(
                        f"lost the broker during {method}: {_reason(exc)}"
                    ) from None
                if not line:
                    return
                message = json.loads(line)
                if "error" in message:
                    error = message["error"]
                    raise ApiCallError(str(error.get("code")), str(error.get("message")))
                if "event" in message:
                    yield message["event"]
                else:
                    return
        finally:
            process.close()
