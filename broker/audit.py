"""Structured audit events: written to the store and, as JSON lines, to the broker's stdout."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from broker.store import Store

if TYPE_CHECKING:
    from broker.config import BrokerConfig


@dataclass(frozen=True)
class AuditEvent:
    type: str
    actor: str | None = None
    groups: Sequence[str] = ()
    target: str | None = None
    session: str | None = None
    outcome: str = "success"
    reason: str | None = None
    remote: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    def __init__(self, store: Store, *, stdout: bool = True, stream: TextIO | None = None) -> None:
        self._store = store
        self._stream = (stream or sys.stdout) if stdout else None

    async def emit(self, event: AuditEvent) -> dict[str, Any]:
        record = {k: v for k, v in asdict(event).items() if v not in (None, (), {}, [])}
        record["groups"] = list(event.groups)
        record["time"] = time.time()
        await self._store.append_audit(record)
        if self._stream is not None:
            self._stream.write(json.dumps(record, sort_keys=True) + "\n")
            self._stream.flush()
        return record


async def open_audit_log(store: Store, config: BrokerConfig) -> AuditLog:
    """The broker's audit log as configured (store, stdout and the configured sinks)."""
    return AuditLog(store, stdout=config.broker.audit_stdout)
