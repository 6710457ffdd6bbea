"""Brokers sharing a PostgreSQL store watch one another.

Every node (its supervisor, or its one process) says it is alive every third of
`[store] node_timeout`. A node not heard from for node_timeout is taken to be dead: the first
node to notice takes its sessions over, in one transaction (so exactly one does), and ends
them as its own crash recovery would: marked interrupted, their recordings sealed from what
the dead node shipped to the bucket (`[recordings] url`), and a session.end for each.
Without a bucket the recording stays on the dead node's disk; its session.end says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from broker.audit.events import AuditEvent, AuditLog
from broker.audit.integrity import seal_recording
from broker.keys import BrokerKeys
from broker.recording_objects import ObjectStoreError, RecordingObjects
from broker.store import Store

log = logging.getLogger("hoop.broker.nodes")


class NodeWatchHost(Protocol):
    store: Store
    audit: AuditLog
    keys: BrokerKeys
    recording_objects: RecordingObjects | None

    @property
    def data_dir(self) -> Path: ...


class NodeWatch:
    def __init__(self, broker: NodeWatchHost, timeout: float) -> None:
        self._broker = broker
        self.timeout = timeout

    async def run(self) -> None:
        while True:
            try:
                await self.once(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watching the other nodes failed")
            await asyncio.sleep(self.timeout / 3)

    async def once(self, now: float) -> None:
        store = self._broker.store
        await store.heartbeat(now)
        before = now - self.timeout
        for node in await store.silent_nodes(before):
            sessions = await store.take_over(node, before, now)
            if sessions is None:
                continue
            log.warning(
                "node %s has not been heard from for %ss: %d of its sessions end here",
                node,
                int(self.timeout),
                len(sessions),
            )
            for session in sessions:
                await self._end(session, node)

    async def _end(self, session: dict[str, Any], node: str) -> None:
        details: dict[str, object] = {"state": "interrupted", "node": node}
        path = await self._recording_copy(session["id"])
        if path is not None:
            signature = await seal_recording(self._broker.keys, path, session["id"])
            if signature is not None:
                details["recording_sha256"] = signature["sha256"]
        else:
            details["recording"] = f"on node {node} only (no bucket to take it from)"
        await self._broker.audit.emit(
            AuditEvent(
                type="session.end",
                actor=session["user"],
                target=session["target"],
                session=session["id"],
                outcome="failure",
                reason=f"node {node} stopped answering during the session",
                details=details,
            )
        )

    async def _recording_copy(self, session_id: str) -> Path | None:
        """What the dead node shipped of the recording, as a file here for sealing (the
        shipper then sends the sealed copy to the bucket); None without a bucket."""
        objects = self._broker.recording_objects
        if objects is None:
            return None
        try:
            stored = await asyncio.to_thread(objects.read, session_id)
        except ObjectStoreError as exc:
            log.error("the recording of session %s cannot be taken over: %s", session_id, exc)
            return None
        if stored is None:
            return None
        directory = self._broker.data_dir / "recordings"
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / f"{session_id}.cast"
        if not path.exists():
            await asyncio.to_thread(_write_new, path, stored.data)
        return path


def _write_new(path: Path, data: bytes) -> None:
    with path.open("xb") as file:
        file.write(data)
    path.chmod(0o600)
