"""Tamper evidence: the audit hash chain, signed recordings, prune checkpoints, verification.

The chain: every audit event stored gets a sequence number ``seq`` (1, 2, 3, … with no gaps),
the hash of the event before it (``prev_hash``; 64 zeros for the first) and its own hash::

    hash = sha256(canonical_json({...event, "seq": seq, "prev_hash": prev_hash}))

where ``canonical_json`` is JSON with sorted keys, no spaces and ASCII escapes. A changed event
no longer matches its hash; a deleted one leaves a gap in ``seq`` and a broken ``prev_hash``
link; two events swapped each match their hash only under the other's ``seq``.

Signatures (Ed25519, the broker's ``audit_key``) cover what the chain cannot: each recording
(its sha256 and one sha256 per 64 KiB block, so a changed byte is placed to its block and
lines), the checkpoint a prune leaves (the seq and hash of the last event it removed, so the
chain stays verifiable from there), and the chain head (``audit_head``: the newest seq and hash,
rewritten at most once a second, so events deleted from the end are noticed too).

Everything here is synchronous and reads the store with its own sqlite3 connection; the
broker runs it in a worker thread (:func:`verify_session`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from broker.audit.chain import GENESIS, canonical_json, chain_hash
from broker.audit.index import drop_from_index
from broker.database import dialect, has_table, json_field
from broker.errors import BrokerError
from broker.recording_objects import STORED_SUFFIX, ObjectStoreError, RecordingObjects

if TYPE_CHECKING:
    from broker.keys import BrokerKeys
    from broker.store import SyncConnection

BLOCK_SIZE = 64 * 1024
SIGNATURE_SUFFIX = ".sig"
HEAD_FILE = "audit_head"
REORDER_WINDOW = 8
"""How far (in seq) a swapped event is looked for when its hash does not match."""

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IntegrityError(BrokerError):
    """Verification or pruning could not run (no store, no key, unreadable file)."""


# -- canonical form and the chain --------------------------------------------------------


def json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """RECORD as it reads back from JSON (tuples become lists, keys strings, odd values text),
    so that the hash the broker computes is the hash a verifier recomputes from the store."""
    result: dict[str, Any] = json.loads(json.dumps(record, default=str))
    return result


# -- keys --------------------------------------------------------------------------------


class Signer:
    """Signs with the broker's audit key (Ed25519)."""

    def __init__(self, key: Ed25519PrivateKey, fingerprint: str) -> None:
        self._key = key
        self.fingerprint = fingerprint

    @classmethod
    def from_ssh_key(cls, key: asyncssh.SSHKey) -> Signer:
        private = load_ssh_private_key(key.export_private_key(), None)
        if not isinstance(private, Ed25519PrivateKey):
            raise IntegrityError("the audit key must be an Ed25519 key")
        return cls(private, key.get_fingerprint("sha256"))

    @classmethod
    def load(cls, data_dir: Path, *, create: bool = False) -> Signer:
        from broker.keys import load_audit_key, load_or_create_audit_key

        key = load_or_create_audit_key(data_dir) if create else load_audit_key(data_dir)
        return cls.from_ssh_key(key)

    def sign(self, payload: dict[str, Any]) -> str:
        return base64.b64encode(self._key.sign(canonical_json(payload))).decode()

    @property
    def verifier(self) -> Verifier:
        return Verifier(self._key.public_key(), self.fingerprint)


class Verifier:
    """Checks signatures made with the broker's audit key, from its public half."""

    def __init__(self, key: Ed25519PublicKey, fingerprint: str) -> None:
        self._key = key
        self.fingerprint = fingerprint

    @classmethod
    def load(cls, data_dir: Path) -> Verifier | None:
        from broker.keys import AUDIT_KEY_FILE

        path = data_dir / f"{AUDIT_KEY_FILE}.pub"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise IntegrityError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return cls.from_public_key(data)
        except IntegrityError as exc:
            raise IntegrityError(f"{path} {exc}") from None

    @classmethod
    def from_public_key(cls, data: bytes) -> Verifier:
        """From an OpenSSH public key line (audit_key.pub)."""
        try:
            public = load_ssh_public_key(data)
            fingerprint = asyncssh.import_public_key(data).get_fingerprint("sha256")
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise IntegrityError(f"is not an Ed25519 public key: {exc}") from None
        if not isinstance(public, Ed25519PublicKey):
            raise IntegrityError("is not an Ed25519 public key")
        return cls(public, fingerprint)

    def check(self, payload: dict[str, Any], signature: str) -> bool:
        try:
            self._key.verify(base64.b64decode(signature, validate=True), canonical_json(payload))
        except (InvalidSignature, binascii.Error, ValueError, TypeError):
            return False
        return True


def _signer_from(keys: BrokerKeys | Signer | Path) -> Signer:
    if isinstance(keys, Signer):
        return keys
    if isinstance(keys, Path):
        return Signer.load(keys)
    return Signer.from_ssh_key(keys.audit_key)


def _write_private(path: Path, data: bytes) -> None:
    """Write DATA to PATH atomically (temp file, fsync, rename), mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    owner = path.parent.stat()
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        # Run as root against a broker's data dir: leave the file to the broker's user.
        os.chown(path, owner.st_uid, owner.st_gid)


def _iso(timestamp: float | None) -> str:
    if not isinstance(timestamp, int | float):
        return "unknown time"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


# -- problems ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing found wrong, with its place: `audit seq 42: changed: …`."""

    place: str
    kind: str
    detail: str
    session: str | None = None

    def __str__(self) -> str:
        return f"{self.place}: {self.kind}: {self.detail}"


# -- recordings --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str
    lines: int
    blocks: list[str]
    block_lines: list[int]  # the line number (from 1) at the start of each block


# Read this many blocks at a time: the whole-file hash of each piece runs in a second thread
# while this one hashes its blocks (hashlib lets go of the GIL), so sealing a large recording
# takes about one hash's time, not two.
_PIECE_BLOCKS = 64


def digest_file(path: Path, block_size: int = BLOCK_SIZE) -> FileDigest:
    from concurrent.futures import Future, ThreadPoolExecutor

    whole = hashlib.sha256()
    blocks: list[str] = []
    block_lines: list[int] = []
    newlines = 0
    size = 0
    last = b""
    with path.open("rb") as file, ThreadPoolExecutor(1, "hoop-digest") as pool:
        hashing: Future[None] | None = None
        while piece := file.read(block_size * _PIECE_BLOCKS):
            if hashing is not None:
                hashing.result()
            hashing = pool.submit(whole.update, piece)
            view = memoryview(piece)
            for start in range(0, len(piece), block_size):
                chunk = view[start : start + block_size]
                blocks.append(hashlib.sha256(chunk).hexdigest())
                block_lines.append(newlines + 1)
                newlines += piece.count(b"\n", start, start + block_size)
            size += len(piece)
            last = piece[-1:]
        if hashing is not None:
            hashing.result()
    lines = newlines + (1 if size and last != b"\n" else 0)
    return FileDigest(size, whole.hexdigest(), lines, blocks, block_lines)


def signature_path(recording: Path) -> Path:
    return recording.with_name(recording.name + SIGNATURE_SUFFIX)


def sign_recording(
    keys: BrokerKeys | Signer | Path, recording: Path, session_id: str
) -> dict[str, Any]:
    """Sign RECORDING (a closed session's .cast) and write RECORDING.sig beside it.

    KEYS is the broker's keys, a Signer, or the data dir (the key is read from it). Returns
    the signature document; its ``sha256`` is worth putting in the session.end audit event.
    Reads the whole file: call it in a worker thread (``asyncio.to_thread``).
    """
    signer = _signer_from(keys)
    recording = Path(recording)
    try:
        digest = digest_file(recording)
    except OSError as exc:
        raise IntegrityError(f"cannot sign {recording}: {exc.strerror or exc}") from None
    document: dict[str, Any] = {
        "version": 1,
        "kind": "hoop.recording.signature",
        "session": session_id,
        "file": recording.name,
        "size": digest.size,
        "sha256": digest.sha256,
        "lines": digest.lines,
        "block_size": BLOCK_SIZE,
        "blocks": digest.blocks,
        "block_lines": digest.block_lines,
        "signed_at": time.time(),
        "key": signer.fingerprint,
    }
    document["signature"] = signer.sign(document)
    try:
        _write_private(signature_path(recording), json.dumps(document, indent=1).encode())
    except OSError as exc:
        raise IntegrityError(
            f"cannot write {signature_path(recording)}: {exc.strerror or exc}"
        ) from None
    return document


async def seal_recording(
    keys: BrokerKeys | Signer | Path, recording: Path, session_id: str
) -> dict[str, Any] | None:
    """Sign a closed session's recording in a worker thread; never raises.

    Returns the signature document (put its ``sha256`` in the session.end event as
    ``details.recording_sha256``: then the audit chain vouches for the recording too), or None
    when the recording is missing or the signature cannot be written (logged as an error;
    `hoop-broker verify` will report the recording as not signed).
    """
    try:
        return await asyncio.to_thread(sign_recording, keys, recording, session_id)
    except (IntegrityError, OSError) as exc:
        logging.getLogger("hoop.audit").error(
            "audit: recording of session %s not signed: %s", session_id, exc
        )
        return None


def _line_at(path: Path, offset: int) -> int:
    """The line number (from 1) holding byte OFFSET of PATH."""
    count = 1
    with path.open("rb") as file:
        remaining = offset
        while remaining > 0:
            chunk = file.read(min(remaining, 1 << 20))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count


def _bad_lines(path: Path, start: int, end: int, first_line: int) -> list[int]:
    """Lines of PATH that start within [START, END) and are not asciicast events."""
    bad = []
    with path.open("rb") as file:
        file.seek(start)
        data = file.read(end - start)
        if start > 0:  # the first partial line belongs to the block before
            cut = data.find(b"\n")
            if cut < 0:
                return []
            data = data[cut + 1 :]
            first_line += 1
        data += file.readline()  # finish the last line
    for number, raw in enumerate(data.splitlines(), first_line):
        try:
            value = json.loads(raw)
        except ValueError:
            bad.append(number)
            continue
        if number == 1:
            if not isinstance(value, dict):
                bad.append(number)
        elif not (isinstance(value, list) and len(value) == 3):
            bad.append(number)
    return bad


def _ranges(indexes: list[int]) -> Iterator[tuple[int, int]]:
    """Runs of consecutive integers: [1, 2, 3, 7] -> (1, 3), (7, 7)."""
    start = prev = None
    for index in indexes:
        if start is None:
            start = prev = index
        elif index == prev + 1:  # type: ignore[operator]
            prev = index
        else:
            yield start, prev  # type: ignore[misc]
            start = prev = index
    if start is not None:
        yield start, prev  # type: ignore[misc]


def verify_recording(
    verifier: Verifier | None,
    recording: Path,
    session_id: str | None = None,
    *,
    place: str | None = None,
    chained_sha256: tuple[int, str] | None = None,
) -> list[Problem]:
    """Check RECORDING against RECORDING.sig; every problem names its place.

    Reported: a missing signature or recording, a signature that does not verify (or was made
    by another key), a recording of another session, changed bytes (by 64 KiB block, with
    their line numbers: line 1 is the header, line N+1 is event N), a truncated file (where it
    now ends) and bytes added after signing.
    """
    recording = Path(recording)
    where = place or f"recording {session_id or recording.stem}"
    sig_path = signature_path(recording)

    def problem(kind: str, detail: str) -> Problem:
        return Problem(where, kind, detail, session_id)

    if not sig_path.exists():
        if not recording.exists():
            return [problem("missing", f"{recording} and its signature are gone")]
        return [problem("not signed", f"{sig_path.name} is missing")]
    try:
        document = json.loads(sig_path.read_bytes())
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        signature = document.pop("signature")
        size = int(document["size"])
        block_size = int(document["block_size"])
        blocks = list(document["blocks"])
        block_lines = [int(n) for n in document["block_lines"]]
        lines = int(document["lines"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [problem("bad signature", f"{sig_path.name} cannot be read: {exc}")]
    problems: list[Problem] = []
    if verifier is None:
        problems.append(problem("unverifiable", "no audit public key to check the signature"))
    elif document.get("key") != verifier.fingerprint:
        problems.append(
            problem(
                "bad signature",
                f"signed by key {document.get('key')}, not this broker's {verifier.fingerprint}",
            )
        )
    elif not verifier.check(document, signature):
        problems.append(
            problem("bad signature", f"{sig_path.name} was changed after it was signed")
        )
    if chained_sha256 is not None and document.get("sha256") != chained_sha256[1]:
        problems.append(
            problem(
                "bad signature",
                f"the signed sha256 differs from the one in the audit chain "
                f"(session.end, audit seq {chained_sha256[0]})",
            )
        )
    if session_id is not None and document.get("session") != session_id:
        problems.append(
            problem("wrong recording", f"the signature is for session {document.get('session')}")
        )
    try:
        actual_size = recording.stat().st_size
    except FileNotFoundError:
        problems.append(
            problem("missing", f"{recording} is gone (signed: {size} bytes, {lines} lines)")
        )
        return problems
    changed: list[int] = []
    with recording.open("rb") as file:
        for index, expected in enumerate(blocks):
            start = index * block_size
            length = min(block_size, size - start)
            if start + length > actual_size:
                break  # cut short: reported below
            file.seek(start)
            if hashlib.sha256(file.read(length)).hexdigest() != expected:
                changed.append(index)
    for first, last in _ranges(changed):
        start = first * block_size
        end = min((last + 1) * block_size, size) - 1
        line_from = block_lines[first]
        line_to = block_lines[last + 1] if last + 1 < len(block_lines) else lines
        detail = (
            f"bytes {start}-{end} changed (block{'s' if last > first else ''} "
            f"{first + 1}{f'-{last + 1}' if last > first else ''} of {len(blocks)}; "
            f"lines {line_from}-{line_to}, events {max(line_from - 1, 0)}-{max(line_to - 1, 0)})"
        )
        with contextlib.suppress(OSError):
            bad = _bad_lines(recording, start, min(end + 1, actual_size), line_from)
            if bad:
                shown = ", ".join(str(n) for n in bad[:5]) + (" …" if len(bad) > 5 else "")
                detail += f"; line{'s' if len(bad) > 1 else ''} {shown} no longer parse"
        problems.append(problem("changed", detail))
    if actual_size < size:
        line = _line_at(recording, actual_size)
        problems.append(
            problem(
                "truncated",
                f"{actual_size} of {size} bytes remain: cut at byte {actual_size} "
                f"(line {line} of {lines})",
            )
        )
    elif actual_size > size:
        problems.append(
            problem(
                "grown",
                f"{actual_size - size} bytes were added after signing, from byte {size} "
                f"(line {lines + 1})",
            )
        )
    return problems


# -- signed documents in the store and the data dir ---------------------------------------


def checkpoint_payload(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("seq", "hash", "event_time", "created_at", "cut", "events", "key")
    return {"kind": "hoop.audit.checkpoint", **{k: row[k] for k in keys}}


def write_head(data_dir: Path, signer: Signer, seq: int, digest: str) -> None:
    """Sign and write the chain head (data_dir/audit_head), unless a newer one is there."""
    path = data_dir / HEAD_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(path.read_bytes())["seq"]) > seq:
            return
    head: dict[str, Any] = {
        "kind": "hoop.audit.head",
        "seq": seq,
        "hash": digest,
        "time": time.time(),
        "key": signer.fingerprint,
    }
    head["signature"] = signer.sign(head)
    _write_private(path, json.dumps(head).encode())


def read_head(data_dir: Path, verifier: Verifier | None) -> tuple[dict[str, Any] | None, str]:
    """(the signed head, "") or (None, why it cannot be trusted; "" when there is none)."""
    path = data_dir / HEAD_FILE
    try:
        head = json.loads(path.read_bytes())
        signature = head.pop("signature")
        int(head["seq"]), str(head["hash"])
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"{path.name} cannot be read: {exc}"
    if verifier is None:
        return None, "no audit public key to check it"
    if head.get("key") != verifier.fingerprint or not verifier.check(head, signature):
        return None, f"{path.name} does not carry a valid signature of this broker's key"
    return head, ""


# -- the chain ---------------------------------------------------------------------------


@dataclass
class ChainReport:
    problems: list[Problem] = field(default_factory=list)
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoint: int | None = None
    head: int | None = None


def _describe(record: dict[str, Any]) -> str:
    parts = [str(record.get("type", "?"))]
    if record.get("actor"):
        parts.append(f"by {record['actor']}")
    if record.get("target"):
        parts.append(f"on {record['target']}")
    text = " ".join(parts)
    if record.get("session"):
        text += f", session {record['session']}"
    return f"{text}, {_iso(record.get('time'))}"


def _chain_columns_present(conn: SyncConnection) -> bool:
    if dialect(conn) == "postgres":
        return True  # made with the chain
    columns = {row[1] for row in conn.execute("PRAGMA table_info(audit_events)")}
    return {"seq", "prev_hash", "hash"} <= columns


def _latest_checkpoint(
    conn: sqlite3.Connection, verifier: Verifier | None, report: ChainReport
) -> tuple[int, str, str]:
    """(seq, hash, label) the chain must start after: the newest valid checkpoint, or genesis."""
    row = conn.execute(
        "SELECT seq, hash, event_time, created_at, cut, events, key, signature "
        "FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return 0, GENESIS, "the start of the chain"
    names = ("seq", "hash", "event_time", "created_at", "cut", "events", "key", "signature")
    checkpoint = dict(zip(names, row, strict=True))
    place = f"audit checkpoint seq {checkpoint['seq']}"
    if verifier is None:
        report.problems.append(Problem(place, "unverifiable", "no audit public key to check it"))
    elif checkpoint["key"] != verifier.fingerprint or not verifier.check(
        checkpoint_payload(checkpoint), checkpoint["signature"]
    ):
        report.problems.append(
            Problem(place, "bad signature", "the prune checkpoint is not signed by this broker")
        )
    report.checkpoint = int(checkpoint["seq"])
    return (
        int(checkpoint["seq"]),
        str(checkpoint["hash"]),
        f"the prune checkpoint of {_iso(checkpoint['created_at'])}",
    )


def verify_chain_db(
    conn: sqlite3.Connection, verifier: Verifier | None, data_dir: Path | None = None
) -> ChainReport:
    """Walk the whole chain in seq order and report every changed, missing or reordered event."""
    report = ChainReport()
    if not _chain_columns_present(conn):
        report.problems.append(
            Problem("audit", "not chained", "this store predates the hash chain; start the broker")
        )
        return report
    last_seq, last_hash, origin = _latest_checkpoint(conn, verifier, report)
    last_ok = True
    head, head_problem = (None, "") if data_dir is None else read_head(data_dir, verifier)
    if head_problem:
        report.problems.append(Problem("audit head", "bad signature", head_problem))
    head_seen: str | None = None
    unchained = conn.execute("SELECT COUNT(*) FROM audit_events WHERE seq IS NULL").fetchone()[0]
    if unchained:
        report.problems.append(
            Problem(
                "audit",
                "not chained",
                f"{unchained} events have no seq/hash (written by an older broker?)",
            )
        )
    cursor = conn.execute(
        "SELECT seq, prev_hash, hash, time, type, actor, session, target, event "
        "FROM audit_events WHERE seq IS NOT NULL ORDER BY seq"
    )
    first = True
    while rows := cursor.fetchmany(2000):
        for seq, prev, digest, at, kind, actor, session, target, text in rows:
            report.events += 1
            if report.first_seq is None:
                report.first_seq = seq
            report.last_seq = seq
            place = f"audit seq {seq}"
            if head is not None and seq == head["seq"]:
                head_seen = digest
            reported = len(report.problems)
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                report.problems.append(
                    Problem(place, "changed", f"the stored event is not valid JSON ({exc})")
                )
                last_seq, last_hash, last_ok, first = seq, digest, False, False
                continue
            who = record.get("session") if isinstance(record.get("session"), str) else None
            if seq <= last_seq:
                why = (
                    f"the chain should start after {origin} (seq {last_seq})"
                    if first
                    else "more than one event has this seq"
                )
                report.problems.append(Problem(place, "changed", why, who))
            elif seq > last_seq + 1:
                gap = (
                    f"seq {last_seq + 1}"
                    if seq == last_seq + 2
                    else f"seq {last_seq + 1}-{seq - 1}"
                )
                after = f"after {origin}" if first else f"between seq {last_seq} and {seq}"
                report.problems.append(
                    Problem(
                        f"audit {gap}",
                        "missing",
                        f"{seq - last_seq - 1} event{'s' if seq - last_seq > 2 else ''} deleted "
                        f"{after}",
                    )
                )
            self_ok = chain_hash(record, seq, prev) == digest
            if not self_ok:
                moved = next(
                    (
                        other
                        for step in range(1, REORDER_WINDOW + 1)
                        for other in (seq + step, seq - step)
                        if other > 0 and chain_hash(record, other, prev) == digest
                    ),
                    None,
                )
                if moved is not None:
                    report.problems.append(
                        Problem(
                            place,
                            "reordered",
                            f"this event was written as seq {moved} ({_describe(record)})",
                            who,
                        )
                    )
                else:
                    report.problems.append(
                        Problem(
                            place,
                            "changed",
                            f"the event no longer matches its hash ({_describe(record)})",
                            who,
                        )
                    )
            elif seq == last_seq + 1 and prev != last_hash:
                if first:
                    report.problems.append(
                        Problem(place, "changed", f"the first event does not link to {origin}")
                    )
                elif last_ok:
                    report.problems.append(
                        Problem(
                            f"audit seq {last_seq}",
                            "changed",
                            f"rewritten with a new hash: seq {seq} links to the original",
                        )
                    )
            columns = {"type": kind, "actor": actor, "session": session, "target": target}
            for name, value in columns.items():
                if record.get(name) != value:
                    report.problems.append(
                        Problem(
                            place,
                            "changed",
                            f"column {name} is {value!r} but the hashed event says "
                            f"{record.get(name)!r}",
                            who,
                        )
                    )
            if record.get("time") != at:
                report.problems.append(
                    Problem(
                        place,
                        "changed",
                        f"column time is {at!r}, the event says {record.get('time')!r}",
                        who,
                    )
                )
            if head is not None and seq == head["seq"] and len(report.problems) > reported:
                head_seen = None  # already reported at this seq
            last_seq, last_hash, last_ok, first = seq, digest, self_ok, False
    if data_dir is not None and head is None and not head_problem and report.events:
        report.problems.append(
            Problem(
                "audit head",
                "missing",
                f"{data_dir / HEAD_FILE} is gone (the broker writes it when it starts): events "
                "deleted from the end of the chain cannot be ruled out",
            )
        )
    if head is not None:
        report.head = int(head["seq"])
        if report.checkpoint is not None and head["seq"] <= report.checkpoint:
            pass  # the head predates the last prune
        elif head["seq"] > last_seq:
            report.problems.append(
                Problem(
                    f"audit seq {last_seq + 1}-{head['seq']}"
                    if head["seq"] > last_seq + 1
                    else f"audit seq {head['seq']}",
                    "missing",
                    f"deleted from the end: the broker signed seq {head['seq']} as its newest "
                    f"event at {_iso(head.get('time'))}",
                )
            )
        elif head_seen is not None and head_seen != head["hash"]:
            report.problems.append(
                Problem(
                    f"audit seq {head['seq']}",
                    "changed",
                    "its hash differs from the one the broker signed as its head",
                )
            )
    return report


# -- whole data dir and one session ------------------------------------------------------


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chain: ChainReport = field(default_factory=ChainReport)
    recordings: int = 0
    key: str | None = None

    @property
    def intact(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        chain = self.chain
        span = f" (seq {chain.first_seq}-{chain.last_seq})" if chain.first_seq is not None else ""
        since = (
            f", after the prune checkpoint at seq {chain.checkpoint}"
            if chain.checkpoint is not None
            else ""
        )
        what = (
            f"{chain.events} audit event{'s' if chain.events != 1 else ''}{span}{since} and "
            f"{self.recordings} recording{'s' if self.recordings != 1 else ''}"
        )
        key = f"; key {self.key}" if self.key else ""
        if self.intact:
            return f"intact: {what}{key}"
        count = len(self.problems)
        return f"{count} problem{'s' if count != 1 else ''} in {what}{key}"


def open_store_readonly(data_dir: Path, store_url: str | None = None) -> SyncConnection:
    """The store, read only: the SQLite file in DATA_DIR, or the PostgreSQL database."""
    from broker.store import connect_sync, describe_location, store_location

    location = store_location(data_dir, store_url)
    where = describe_location(location)
    if isinstance(location, Path) and not location.exists():
        raise IntegrityError(f"no store at {location}: is this the broker's data dir?")
    try:
        if isinstance(location, Path):
            conn: SyncConnection = sqlite3.connect(
                f"file:{location}?mode=ro", uri=True, timeout=5.0
            )
        else:
            conn = connect_sync(location)
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        conn.execute("SELECT 1 FROM audit_events LIMIT 1")
    except sqlite3.Error as exc:
        raise IntegrityError(f"cannot read store {where}: {str(exc).splitlines()[0]}") from None
    return conn


def _recording_file(data_dir: Path, session_id: str, stored: str | None) -> Path:
    standard = data_dir / "recordings" / f"{session_id}.cast"
    if not standard.exists() and stored and Path(stored).exists():
        return Path(stored)
    return standard


def verify_data_dir(
    data_dir: Path,
    session_id: str | None = None,
    objects: RecordingObjects | None = None,
    store_url: str | None = None,
) -> VerifyReport:
    """Verify the audit chain and the recordings (all, or SESSION_ID's) of a broker data dir.

    With OBJECTS (recordings shipped to a bucket), the bucket's copy of each ended session
    is what is checked: it is the copy every node replays. A recording sealed here and not
    shipped yet is checked here, and said so.
    """
    verifier = Verifier.load(data_dir)
    report = VerifyReport(key=verifier.fingerprint if verifier else None)
    if verifier is None:
        report.problems.append(
            Problem(
                "audit key", "missing", f"{data_dir}/audit_key.pub is gone: nothing can be checked"
            )
        )
    conn = open_store_readonly(data_dir, store_url)
    try:
        report.chain = verify_chain_db(conn, verifier, data_dir)
        report.problems.extend(report.chain.problems)
        since_row = (
            conn.execute("SELECT value FROM audit_meta WHERE key = 'chain_since'").fetchone()
            if _has_table(conn, "audit_meta")
            else None
        )
        chain_since = float(since_row[0]) if since_row else 0.0
        sql = "SELECT id, state, started_at, recording FROM sessions"
        params: tuple[Any, ...] = ()
        if session_id is not None:
            sql += " WHERE id = ?"
            params = (session_id,)
        sessions = conn.execute(sql + " ORDER BY started_at", params).fetchall()
        chained: dict[str, tuple[int, str]] = {}
        sealed = json_field(conn, "event", "details", "recording_sha256")
        if report.chain.events:
            for seq, sid, digest in conn.execute(
                f"SELECT seq, session, {sealed} "  # noqa: S608 (a constant expression)
                "FROM audit_events WHERE type = 'session.end' AND seq IS NOT NULL "
                f"AND {sealed} IS NOT NULL"
            ):
                chained[sid] = (seq, digest)
        if session_id is not None and not sessions:
            report.problems.append(
                Problem(f"session {session_id}", "missing", "not in the store", session_id)
            )
    finally:
        conn.close()
    with tempfile.TemporaryDirectory(prefix="hoop-verify-") as fetched:
        for sid, state, started_at, stored in sessions:
            _verify_session_recording(
                report,
                verifier,
                data_dir,
                (sid, state, started_at, stored),
                chained=chained,
                chain_since=chain_since,
                objects=objects,
                fetched=Path(fetched),
            )
    return report


def _verify_session_recording(
    report: VerifyReport,
    verifier: Verifier | None,
    data_dir: Path,
    row: tuple[str, str, float, str | None],
    *,
    chained: dict[str, tuple[int, str]],
    chain_since: float,
    objects: RecordingObjects | None,
    fetched: Path,
) -> None:
    sid, state, started_at, stored = row
    if not _SESSION_ID.match(sid):
        report.problems.append(Problem(f"session {sid!r}", "changed", "not a session id"))
        return
    if stored is None and sid not in chained:
        # Refused before it ran (state "blocked"): a session of its own, never recorded.
        # A recorded session's sealed digest is in the chain, so clearing its column
        # does not hide its recording: it is checked below.
        return
    path = _recording_file(data_dir, sid, stored)
    if state == "open":
        report.notes.append(f"recording {sid}: not checked: the session is still open")
        return
    if objects is not None:
        shipped = _shipped_copy(report, objects, sid, path, fetched)
        if shipped is None:
            return
        path = shipped
    if not signature_path(path).exists() and started_at < chain_since:
        report.notes.append(
            f"recording {sid}: not signed: recorded before this broker signed recordings"
        )
        return
    report.recordings += 1
    report.problems.extend(verify_recording(verifier, path, sid, chained_sha256=chained.get(sid)))
    if path.parent == fetched:  # one fetched copy on disk at a time
        for done in (path, signature_path(path)):
            done.unlink(missing_ok=True)


def _shipped_copy(
    report: VerifyReport, objects: RecordingObjects, sid: str, local: Path, fetched: Path
) -> Path | None:
    """The bucket's sealed copy of SID's recording, fetched into FETCHED; the local copy
    when it is sealed here and not shipped yet (noted); None when neither (reported)."""
    try:
        copy = objects.fetch(sid, fetched, sealed_only=True)
    except ObjectStoreError as exc:
        report.problems.append(Problem(f"recording {sid}", "unreadable", str(exc), sid))
        return None
    if copy is not None:
        return copy
    shipped_marker = local.with_name(local.name + STORED_SUFFIX)
    if local.exists() and not shipped_marker.exists():
        report.notes.append(f"recording {sid}: not in {objects.where} yet: checked here")
        return local
    report.problems.append(
        Problem(
            f"recording {sid}",
            "missing",
            f"{objects.key(sid)} is not in the bucket {objects.bucket}",
            sid,
        )
    )
    return None


def _has_table(conn: SyncConnection, name: str) -> bool:
    return has_table(conn, name)


async def verify_session(
    data_dir: Path,
    session_id: str,
    objects: RecordingObjects | None = None,
    store_url: str | None = None,
) -> list[str]:
    """What `hoopctl replay ID --verify` shows: one line per problem, [] when intact.

    Covers the session's recording and its audit events, and every problem of the chain that
    cannot be pinned to one session (deleted or reordered events, checkpoint, head): a deleted
    event may well have been this session's. Changed events of other sessions are summed up
    in one line. Runs in a worker thread; the whole chain is read (about 1 s per 100k events).
    """
    report = await asyncio.to_thread(verify_data_dir, data_dir, session_id, objects, store_url)
    lines = []
    others = 0
    for problem in report.problems:
        if problem.session is None or problem.session == session_id:
            lines.append(str(problem))
        else:
            others += 1
    if others:
        lines.append(
            f"audit: {others} problem{'s' if others > 1 else ''} in other sessions' events "
            "(run hoop-broker verify on the broker host)"
        )
    return lines


# -- retention ---------------------------------------------------------------------------


@dataclass
class PruneResult:
    cut: float
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    sessions: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    event: dict[str, Any] | None = None
    bucket_error: str | None = None  # the pruned sessions' copies could not be deleted


def _side_files(recordings: Path, session_id: str) -> list[Path]:
    """The recording and every file beside it named after it (.sig, .idx, …)."""
    return sorted(p for p in recordings.glob(f"{session_id}.cast*") if p.is_file())


def prune(
    data_dir: Path,
    older_than: int,
    *,
    now: float | None = None,
    dry_run: bool = False,
    objects: RecordingObjects | None = None,
    store_url: str | None = None,
    node: str | None = None,
) -> PruneResult:
    """Delete recordings of sessions that ended, and audit events written, before now-OLDER_THAN.

    The chain stays verifiable: the seq and hash of the last event removed are kept as a
    checkpoint signed with the audit key, `hoop-broker verify` starts from it, and the prune
    itself is appended as an `audit.prune` event. Sessions still open are never touched.
    """
    from broker.store import append_chained, chain_node, connect_existing, migrate_audit_chain

    if older_than <= 0:
        raise IntegrityError("--older-than must be a positive duration")
    now = time.time() if now is None else now
    cut = now - older_than
    result = PruneResult(cut=cut)
    conn = connect_existing(data_dir, store_url)
    try:
        signer = Signer.load(data_dir)
    except BaseException:
        conn.close()
        raise
    recordings = data_dir / "recordings"
    try:
        migrate_audit_chain(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT id FROM sessions WHERE state != 'open' "
                "AND COALESCE(ended_at, started_at) < ?",
                (cut,),
            ).fetchall()
            result.sessions = [row[0] for row in rows if _SESSION_ID.match(row[0])]
            newest_kept = conn.execute(
                "SELECT MIN(seq) FROM audit_events WHERE seq IS NOT NULL AND time >= ?", (cut,)
            ).fetchone()[0]
            if newest_kept is None:
                newest_kept = (
                    conn.execute("SELECT MAX(seq) FROM audit_events").fetchone()[0] or 0
                ) + 1
            last = conn.execute(
                "SELECT seq, hash, time FROM audit_events WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                (newest_kept,),
            ).fetchone()
            if last is not None:
                result.last_seq = int(last[0])
                result.first_seq, result.events = conn.execute(
                    "SELECT MIN(seq), COUNT(*) FROM audit_events WHERE seq <= ?", (last[0],)
                ).fetchone()
                checkpoint = {
                    "seq": int(last[0]),
                    "hash": str(last[1]),
                    "event_time": float(last[2]),
                    "created_at": now,
                    "cut": cut,
                    "events": int(result.events),
                    "key": signer.fingerprint,
                }
                signature = signer.sign(checkpoint_payload(checkpoint))
                if not dry_run:
                    conn.execute(
                        "INSERT INTO audit_checkpoints(seq, hash, event_time, created_at, cut, "
                        "events, key, signature) VALUES (?,?,?,?,?,?,?,?)",
                        (*checkpoint.values(), signature),
                    )
                    conn.execute("DELETE FROM audit_events WHERE seq <= ?", (last[0],))
            if not dry_run and result.sessions:
                for start in range(0, len(result.sessions), 500):
                    part = result.sessions[start : start + 500]
                    conn.execute(
                        f"DELETE FROM sessions WHERE id IN ({','.join('?' * len(part))})",  # noqa: S608
                        part,
                    )
                # The search index's text of a pruned session goes with its recording.
                drop_from_index(conn, result.sessions)
            open_ids = {
                row[0] for row in conn.execute("SELECT id FROM sessions WHERE state = 'open'")
            }
            conn.execute("ROLLBACK" if dry_run else "COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        # Files after the commit: a crash in between leaves files that the next prune finds
        # as orphans (older than the cut, no session in the store), never a session whose
        # recording is gone.
        doomed = [f for sid in result.sessions for f in _side_files(recordings, sid)]
        if recordings.is_dir():
            known = {p for sid in result.sessions for p in _side_files(recordings, sid)}
            listed = {row[0] for row in conn.execute("SELECT id FROM sessions")} | open_ids
            for path in recordings.iterdir():
                sid = path.name.split(".cast", 1)[0]
                if (
                    path.is_file()
                    and ".cast" in path.name
                    and sid not in listed
                    and path not in known
                    and path.stat().st_mtime < cut
                ):
                    doomed.append(path)
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                if not dry_run:
                    path.unlink()
                result.files += 1
                result.bytes += size
        if dry_run:
            return result
        removed_from_bucket: str | None = None
        if objects is not None and result.sessions:
            try:
                objects.remove(result.sessions)
                removed_from_bucket = objects.where
            except ObjectStoreError as exc:
                result.bucket_error = (
                    f"the bucket's copies of {len(result.sessions)} sessions stay: {exc}"
                )
        record = json_safe(
            {
                "type": "audit.prune",
                "actor": os.environ.get("SUDO_USER") or os.environ.get("USER") or None,
                "outcome": "success",
                "groups": [],
                "time": time.time(),
                "details": {
                    "older_than": older_than,
                    "cut": cut,
                    "events": result.events,
                    "first_seq": result.first_seq,
                    "last_seq": result.last_seq,
                    "sessions": len(result.sessions),
                    "files": result.files,
                    "bytes": result.bytes,
                    "bucket": removed_from_bucket,
                },
            }
        )
        record = {k: v for k, v in record.items() if v is not None}
        result.event = append_chained(conn, record, node=chain_node(conn, node))
        write_head(data_dir, signer, result.event["seq"], result.event["hash"])
    finally:
        conn.close()
    return result
