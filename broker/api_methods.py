"""How modules add methods to the hoop-api subsystem: plain calls and streams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from broker.session_context import ConnectionContext

Handler = Callable[[ConnectionContext, dict[str, Any]], Awaitable[Any]]
# A stream pushes events to the client until it returns or the client closes the channel.
Push = Callable[[dict[str, Any]], Awaitable[None]]
StreamHandler = Callable[[ConnectionContext, dict[str, Any], Push], Awaitable[None]]


@dataclass
class ApiMethods:
    calls: dict[str, Handler] = field(default_factory=dict)
    streams: dict[str, StreamHandler] = field(default_factory=dict)
