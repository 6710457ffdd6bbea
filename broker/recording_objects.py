"""Recordings in an S3-compatible object store (`[recordings] url = "s3://bucket/prefix"`).

A session is recorded to the node's data dir as always (broker.recording, flushed at least
every half second). The node's shipper (RecordingShipper, in the one broker process or the
supervisor) copies each recording to the bucket as it grows, so a node that dies loses at
most about a second of it, and any node can replay or verify it. Keys, under the prefix:

* ``<session>.cast.parts/<offset>``: the bytes from OFFSET (16 digits) on, whole lines,
  shipped within ``ship_interval`` of reaching the file;
* ``<session>.cast`` and ``<session>.cast.sig``: the sealed recording and its signature,
  once the session has ended; its parts are then deleted.

boto3 does the talking (signing, retries, multipart uploads of large recordings); its calls
block, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.config import RecordingsSection, split_s3_url
from broker.credentials import resolve_credential
from broker.errors import BrokerError

log = logging.getLogger("hoop.recordings")

PART_LIMIT = 8 << 20
"""At most this many bytes in one part: a fast-growing recording is shipped in several."""
STORED_SUFFIX = ".stored"
"""Beside a local recording once its sealed copy is in the bucket (prune removes it with it)."""


class ObjectStoreError(BrokerError):
    """The object store refused or could not be reached (one line, no credentials in it)."""


@dataclass(frozen=True)
class StoredRecording:
    data: bytes
    signature: bytes | None  # None while the session has not been sealed
    sealed: bool


class RecordingObjects:
    """One bucket and prefix holding recordings. Every method blocks (call it in a thread)."""

    def __init__(self, settings: RecordingsSection) -> None:
        assert settings.url is not None
        self.settings = settings
        self.bucket, self.prefix = split_s3_url(settings.url)
        self._client: Any = None

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            settings = self.settings
            keys: dict[str, str] = {}
            if settings.access_key_id and settings.secret_access_key:
                keys = {
                    "aws_access_key_id": resolve_credential(
                        settings.access_key_id, target="recordings"
                    ),
                    "aws_secret_access_key": resolve_credential(
                        settings.secret_access_key, target="recordings"
                    ),
                }
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.endpoint_url,
                region_name=settings.region,
                config=Config(
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if settings.endpoint_url else {},
                ),
                **keys,
            )
        return self._client

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise ObjectStoreError(
                f"object store {self.where}: {what}: {error.get('Code', '?')} "
                f"{error.get('Message', '')}".rstrip()
            ) from None
        except (BotoCoreError, OSError) as exc:
            raise ObjectStoreError(f"object store {self.where}: {what}: {exc}") from None

    # -- keys ---------------------------------------------------------------------------

    def key(self, session_id: str, suffix: str = "") -> str:
        return f"{self.prefix}{session_id}.cast{suffix}"

    def _parts_prefix(self, session_id: str) -> str:
        return self.key(session_id, ".parts/")

    # -- primitives ---------------------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def call() -> bytes | None:
            try:
                answer = self._s3().get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return bytes(answer["Body"].read())

        return self._call(f"read {key}", call)

    def _put(self, key: str, data: bytes) -> None:
        self._call(
            f"write {key}",
            lambda: self._s3().put_object(Bucket=self.bucket, Key=key, Body=data),
        )

    def _list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under PREFIX, in key order."""

        def pages() -> list[tuple[str, int]]:
            found: list[tuple[str, int]] = []
            paginator = self._s3().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
            return sorted(found)

        return self._call(f"list {prefix}", pages)

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call(
                "delete",
                lambda batch=batch: self._s3().delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )

    def check(self) -> None:
        """Raise ObjectStoreError unless the bucket can be reached with these credentials."""
        self._call("open the bucket", lambda: self._s3().head_bucket(Bucket=self.bucket))

    # -- recordings ---------------------------------------------------------------------

    def _parts(self, session_id: str) -> list[tuple[int, str, int]]:
        """(offset, key, size) of the session's parts, in offset order."""
        prefix = self._parts_prefix(session_id)
        parts = []
        for key, size in self._list(prefix):
            name = key[len(prefix) :]
            if name.isdigit():
                parts.append((int(name), key, size))
        return sorted(parts)

    def sealed(self, session_id: str) -> bool:
        """Whether the bucket holds the session's sealed recording (another node sealed it
        after this one stopped answering, say)."""
        from botocore.exceptions import ClientError

        def call() -> bool:
            try:
                self._s3().head_object(Bucket=self.bucket, Key=self.key(session_id))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    return False
                raise
            return True

        return self._call(f"look for {self.key(session_id)}", call)

    def shipped_size(self, session_id: str) -> int:
        """How many bytes of the session's recording its parts hold, from the start, unbroken."""
        end = 0
        for offset, _key, size in self._parts(session_id):
            if offset != end:
                break
            end += size
        return end

    def ship_part(self, session_id: str, offset: int, data: bytes) -> None:
        self._put(self._parts_prefix(session_id) + f"{offset:016d}", data)

    def seal(self, session_id: str, recording: Path, signature: bytes) -> None:
        """Store the ended session's whole recording and its signature; drop its parts.
        The signature goes first: a reader that finds the whole recording finds it too."""
        self._put(self.key(session_id, ".sig"), signature)
        self._call(
            f"write {self.key(session_id)}",
            lambda: self._s3().upload_file(str(recording), self.bucket, self.key(session_id)),
        )
        self._delete([key for _offset, key, _size in self._parts(session_id)])

    def read(self, session_id: str, start: int = 0) -> StoredRecording | None:
        """The session's recording from byte START: the sealed copy, or else what its parts
        hold so far (a session still open, or one whose node died). None: nothing stored."""
        whole = self._get(self.key(session_id))
        if whole is not None:
            return StoredRecording(whole[start:], self._get(self.key(session_id, ".sig")), True)
        parts = self._parts(session_id)
        if not parts:
            return None
        chunks: list[bytes] = []
        end = 0
        for offset, key, size in parts:
            if offset != end:
                break  # a gap: what follows it cannot be placed
            if offset + size > start:
                data = self._get(key)
                if data is None:
                    break
                chunks.append(data[max(0, start - offset) :])
            end += size
        return StoredRecording(b"".join(chunks), None, False)

    def fetch(self, session_id: str, directory: Path, *, sealed_only: bool = False) -> Path | None:
        """Write the session's stored recording (and its signature, if sealed) into DIRECTORY
        as <session>.cast(.sig); None when nothing is stored (or, with SEALED_ONLY, nothing
        sealed)."""
        stored = self.read(session_id)
        if stored is None or (sealed_only and not stored.sealed):
            return None
        path = directory / f"{session_id}.cast"
        path.write_bytes(stored.data)
        if stored.signature is not None:
            path.with_name(path.name + ".sig").write_bytes(stored.signature)
        return path

    def remove(self, session_ids: list[str]) -> None:
        keys: list[str] = []
        for session_id in session_ids:
            keys += [self.key(session_id), self.key(session_id, ".sig")]
            keys += [key for _offset, key, _size in self._parts(session_id)]
        self._delete(keys)


class RecordingShipper:
    """Copies the recordings this node writes to the object store as they grow, and each
    sealed one whole once its session has ended (see the module docstring).

    It reads the recordings directory, so it also ships what a worker wrote and what was
    sealed after a crash. SIGNATURE_OF names a recording's signature file (written when the
    session is sealed)."""

    def __init__(
        self,
        objects: RecordingObjects,
        recordings: Path,
        *,
        signature_of: Callable[[Path], Path],
        interval: float = 0.5,
    ) -> None:
        self.objects = objects
        self.recordings = recordings
        self.interval = interval
        self._signature_of = signature_of
        self._shipped: dict[str, int] = {}
        self._done: set[str] = set()
        self._failing = False

    async def run(self) -> None:
        while True:
            await self.ship_now()
            await asyncio.sleep(self.interval)

    async def ship_now(self) -> None:
        """One round; a failing store is logged (once per outage), never raised."""
        try:
            await asyncio.to_thread(self.ship_once)
        except ObjectStoreError as exc:
            if not self._failing:
                log.error("recordings: cannot ship to the object store: %s", exc)
            self._failing = True
        else:
            if self._failing:
                log.warning("recordings: shipping to the object store again")
            self._failing = False

    def ship_once(self) -> None:
        try:
            entries = list(os.scandir(self.recordings))
        except FileNotFoundError:
            return
        names = {entry.name for entry in entries}
        for entry in entries:
            name = entry.name
            if not name.endswith(".cast") or name.startswith("."):
                continue
            session_id = name[: -len(".cast")]
            if session_id in self._done:
                continue
            if name + STORED_SUFFIX in names:
                self._done.add(session_id)
                continue
            self._ship(session_id, Path(entry.path))

    def _ship(self, session_id: str, path: Path) -> None:
        signature = self._sealed(path)
        if signature is not None:
            self.objects.seal(session_id, path, signature)
            path.with_name(path.name + STORED_SUFFIX).touch(mode=0o600)
            self._done.add(session_id)
            self._shipped.pop(session_id, None)
            return
        offset = self._shipped.get(session_id)
        if offset is None:  # first seen since this process started
            if self.objects.sealed(session_id):
                # Sealed by another node, which took the session over while this one was
                # down: the bucket's copy is the session's; this one is not shipped again.
                path.with_name(path.name + STORED_SUFFIX).touch(mode=0o600)
                self._done.add(session_id)
                return
            offset = self.objects.shipped_size(session_id)  # resume after its parts
        with path.open("rb") as file:
            while True:
                file.seek(offset)
                data = file.read(PART_LIMIT)
                data = data[: data.rfind(b"\n") + 1]  # whole lines: the writer may be mid-line
                if not data:
                    break
                self.objects.ship_part(session_id, offset, data)
                offset += len(data)
        self._shipped[session_id] = offset

    def _sealed(self, path: Path) -> bytes | None:
        """The recording's signature document once it is whole (written atomically)."""
        try:
            document = self._signature_of(path).read_bytes()
            json.loads(document)
        except (OSError, ValueError):
            return None
        return document


def open_recording_objects(settings: RecordingsSection) -> RecordingObjects | None:
    """The configured bucket, or None when recordings stay in the data dir only."""
    return RecordingObjects(settings) if settings.url is not None else None


def fetched_copy(objects: RecordingObjects, session_id: str, directory: Path) -> Path | None:
    """The stored recording of SESSION_ID in a new private temporary directory under
    DIRECTORY (the caller removes it); None when nothing is stored."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    place = Path(tempfile.mkdtemp(dir=directory))
    return objects.fetch(session_id, place)
