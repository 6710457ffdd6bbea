"""Evidence bundles: one session's recording, audit events and approvals, signed so that an
auditor can check them offline, without the broker (`hoopctl sessions export ID --bundle`,
`hoopctl verify-bundle`).

The bundle is a tar file holding:

- ``manifest.json``: what the bundle must hold, signed with the broker's audit key: the
  session, the seq and hash of each of its audit events, the sha256 of every other file,
  the audit chain's end when it was made (seq and hash), and the key's fingerprint;
- ``events.jsonl``: the session's audit events as stored, one per line, each with its
  ``seq``, ``prev_hash`` and ``hash``;
- ``recording.cast`` and ``recording.cast.sig``: the recording and the broker's signature of
  it (the session's ``session.end`` event also names the recording's sha256);
- ``approvals.json``: the approval requests the session made or ran, and the standing
  approvals it used;
- ``head.json``: the broker's last signed chain head, when it had one;
- ``audit_key.pub``: the broker's public audit key (OpenSSH format).

The chain hashes whole events, so the events of other sessions between this session's are
not in the bundle; the broker checks the whole chain (`hoopctl replay --verify`) before it
signs the manifest, and the manifest's signature stands in for them. The auditor checks the
key's fingerprint against the one they know for the broker (``--key``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from broker.audit.chain import GENESIS, canonical_json, chain_hash

MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
RECORDING = "recording.cast"
RECORDING_SIG = "recording.cast.sig"
APPROVALS = "approvals.json"
HEAD = "head.json"
PUBLIC_KEY = "audit_key.pub"
README = "README.txt"
MEMBERS = (MANIFEST, EVENTS, RECORDING, RECORDING_SIG, APPROVALS, HEAD, PUBLIC_KEY, README)
# A member larger than its limit is refused before it is read.
MAX_MEMBER = 4 * 1024**3
MAX_SMALL_MEMBER = 64 * 1024**2
_MEMBER_LIMITS = {RECORDING: MAX_MEMBER, EVENTS: 1024**3}
MAX_BUNDLE = 8 * 1024**3
KIND = "hoop.evidence.manifest"

_README = """Evidence bundle of hoopctl session {session}.

Check it without the broker:  hoopctl verify-bundle THIS.tar --key {key}
({key} is the broker's audit key; compare it with the one you know for the broker.)
manifest.json lists what this bundle must hold and is signed with that key.
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def event_lines(events: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(canonical_json(event) + b"\n" for event in events)


def bundle_files(
    *,
    session: dict[str, Any],
    events: list[dict[str, Any]],
    recording: bytes | None,
    recording_signature: dict[str, Any] | None,
    approvals: bytes,
    head: dict[str, Any] | None,
    public_key: bytes,
    chain_end: tuple[int, str] | None,
    key: str,
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The manifest to sign, and the bundle's other files in their order (events as stored,
    each with seq, prev_hash and hash). The manifest names every file by its sha256."""
    files: list[tuple[str, bytes]] = [
        (EVENTS, event_lines(events)),
        (APPROVALS, approvals),
        (PUBLIC_KEY, public_key),
        (README, _README.format(session=session["id"], key=key).encode()),
    ]
    if recording is not None and recording_signature is not None:
        files.append((RECORDING, recording))
        files.append((RECORDING_SIG, json.dumps(recording_signature, indent=1).encode()))
    if head is not None:
        files.append((HEAD, json.dumps(head, indent=1).encode()))
    manifest = {
        "kind": KIND,
        "version": 1,
        "session": session["id"],
        "user": session["user"],
        "target": session["target"],
        "state": session["state"],
        "started_at": session["started_at"],
        "ended_at": session["ended_at"],
        "events": [[event["seq"], event["hash"]] for event in events],
        "recording": None
        if recording_signature is None
        else {"sha256": recording_signature["sha256"], "size": recording_signature["size"]},
        "files": {name: sha256(data) for name, data in files},
        "chain_end": None if chain_end is None else {"seq": chain_end[0], "hash": chain_end[1]},
        "made_at": int(time.time()),
        "key": key,
    }
    return manifest, files


def write_tar(target: BinaryIO, files: list[tuple[str, bytes]], mtime: int) -> None:
    """The bundle's tar, byte for byte the same for the same files (so that the checker can
    tell a change to its framing too)."""
    with tarfile.open(fileobj=target, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))


def signed_files(
    manifest: dict[str, Any], files: list[tuple[str, bytes]]
) -> list[tuple[str, bytes]]:
    """The whole bundle: the signed MANIFEST first, then FILES."""
    return [(MANIFEST, json.dumps(manifest, indent=1).encode()), *files]


# -- verifying ---------------------------------------------------------------------------


class BundleError(Exception):
    """The file is not a bundle that can be read at all (one line)."""


@dataclass
class BundleReport:
    session: str = ""
    key: str = ""
    events: int = 0
    recording_bytes: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def read_members(raw: bytes) -> dict[str, bytes]:
    """The bundle's files by name, in their order; refuses links, directories, unknown names
    and repeats."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for info in tar:
                if info.name not in MEMBERS:
                    raise BundleError(f"unexpected file in the bundle: {info.name!r}")
                if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.issparse():
                    raise BundleError(f"{info.name} in the bundle is not a plain file")
                if info.name in members:
                    raise BundleError(f"{info.name} is in the bundle twice")
                if info.size > _MEMBER_LIMITS.get(info.name, MAX_SMALL_MEMBER):
                    raise BundleError(f"{info.name} in the bundle is too large")
                extracted = tar.extractfile(info)
                assert extracted is not None
                members[info.name] = extracted.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"not a readable tar file: {exc}") from None
    if MANIFEST not in members:
        raise BundleError("not an evidence bundle: it has no manifest.json")
    return members


def verify_members(
    members: dict[str, bytes], expected_key: str | None = None, raw: bytes | None = None
) -> BundleReport:
    """Check a bundle's files against its signed manifest; name what changed. RAW, the
    tar file's bytes, is also compared with the tar the broker would have written."""
    from broker.audit.integrity import Verifier

    report = BundleReport()
    problems = report.problems
    try:
        manifest = json.loads(members[MANIFEST])
        signature = manifest.pop("signature")
        if manifest.get("kind") != KIND:
            raise ValueError(f"kind is {manifest.get('kind')!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        problems.append(f"{MANIFEST}: not a readable manifest ({exc})")
        return report
    report.session = str(manifest.get("session"))
    report.key = str(manifest.get("key"))
    try:
        verifier = Verifier.from_public_key(members.get(PUBLIC_KEY, b""))
    except Exception as exc:
        problems.append(f"{PUBLIC_KEY}: not the broker's Ed25519 public key ({exc})")
        return report
    if verifier.fingerprint != manifest.get("key"):
        problems.append(f"{PUBLIC_KEY}: it is not the key named in the manifest")
    if expected_key is not None and verifier.fingerprint != expected_key:
        problems.append(
            f"{PUBLIC_KEY}: the bundle is signed with {verifier.fingerprint}, not {expected_key}"
        )
    if not verifier.check(manifest, signature):
        problems.append(f"{MANIFEST}: changed: its signature does not match")
    _check_events(members.get(EVENTS), manifest, report)
    _check_recording(members, manifest, verifier, report)
    if HEAD in members:
        _check_head(members[HEAD], verifier, report)
    listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    for name, digest in listed.items():
        if name not in members:
            problems.append(f"{name}: missing")
        elif sha256(members[name]) != digest and not any(
            p.startswith(f"{name}:") for p in problems
        ):
            problems.append(f"{name}: changed: its sha256 is not the one the manifest names")
    for name in members:
        if name != MANIFEST and name not in listed:
            problems.append(f"{name}: not named in the manifest")
    if raw is not None and not problems:
        _check_framing(raw, members, int(manifest.get("made_at") or 0), report)
    return report


def _check_framing(raw: bytes, members: dict[str, bytes], mtime: int, report: BundleReport) -> None:
    rebuilt = io.BytesIO()
    write_tar(rebuilt, list(members.items()), mtime)
    expected = rebuilt.getvalue()
    if raw != expected:
        at = next(
            (i for i, (a, b) in enumerate(zip(raw, expected, strict=False)) if a != b),
            min(len(raw), len(expected)),
        )
        report.problems.append(
            f"the tar file: changed at byte {at}: its framing is not the one the broker wrote"
        )


def _check_events(data: bytes | None, manifest: dict[str, Any], report: BundleReport) -> None:
    problems = report.problems
    if data is None:
        problems.append(f"{EVENTS}: missing")
        return
    listed = [tuple(item) for item in manifest.get("events") or []]
    seen: list[tuple[int, str]] = []
    previous: tuple[int, str] | None = None
    for number, line in enumerate(data.splitlines(), 1):
        place = f"{EVENTS} line {number}"
        try:
            event = json.loads(line)
            seq, prev, digest = int(event["seq"]), str(event["prev_hash"]), str(event["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{place}: not a stored audit event ({exc})")
            continue
        what = f"{place} (seq {seq}, {event.get('type')})"
        if chain_hash(event, seq, prev) != digest:
            problems.append(f"{what}: changed: its content does not match its hash")
        if event.get("session") != manifest.get("session"):
            problems.append(f"{what}: it is not an event of session {manifest.get('session')}")
        if previous is not None and seq == previous[0] + 1 and prev != previous[1]:
            problems.append(f"{what}: its link to seq {previous[0]} is broken")
        if seq == 1 and prev != GENESIS:
            problems.append(f"{what}: the first event must start the chain")
        seen.append((seq, digest))
        previous = (seq, digest)
    report.events = len(seen)
    if seen != listed:
        missing = sorted({s for s, _ in listed} - {s for s, _ in seen})
        added = sorted({s for s, _ in seen} - {s for s, _ in listed})
        detail = []
        if missing:
            detail.append(f"seq {', '.join(map(str, missing[:10]))} missing")
        if added:
            detail.append(f"seq {', '.join(map(str, added[:10]))} not in the manifest")
        if not detail:
            detail.append("an event's hash or order is not the manifest's")
        problems.append(f"{EVENTS}: {'; '.join(detail)}")


def _check_recording(
    members: dict[str, bytes], manifest: dict[str, Any], verifier: Any, report: BundleReport
) -> None:
    problems = report.problems
    expected = manifest.get("recording")
    if expected is None:
        if RECORDING in members:
            problems.append(f"{RECORDING}: the manifest says the session has no recording")
        return
    data, sig = members.get(RECORDING), members.get(RECORDING_SIG)
    if data is None or sig is None:
        problems.append(f"{RECORDING if data is None else RECORDING_SIG}: missing")
        return
    report.recording_bytes = len(data)
    if sha256(data) != expected.get("sha256") or len(data) != expected.get("size"):
        problems.append(f"{RECORDING}: changed: its sha256 is not the one signed")
    try:
        document = json.loads(sig)
        signature = document.pop("signature")
    except (ValueError, KeyError, TypeError, AttributeError):
        problems.append(f"{RECORDING_SIG}: not a signature document")
        return
    if not verifier.check(document, signature):
        problems.append(f"{RECORDING_SIG}: changed: its signature does not match")
    elif document.get("sha256") != sha256(data):
        problems.append(f"{RECORDING}: changed: it is not the recording the broker signed")
    for line in (members.get(EVENTS) or b"").splitlines():
        try:
            event = json.loads(line)
            named = (event.get("details") or {}).get("recording_sha256")
        except (ValueError, AttributeError):
            continue  # reported with the events
        if event.get("type") == "session.end" and named not in (None, sha256(data)):
            problems.append(f"{RECORDING}: its sha256 is not the one session.end names")


def _check_head(data: bytes, verifier: Any, report: BundleReport) -> None:
    try:
        head = json.loads(data)
        signature = head.pop("signature")
    except (ValueError, KeyError, TypeError, AttributeError):
        report.problems.append(f"{HEAD}: not a signed chain head")
        return
    if not verifier.check(head, signature):
        report.problems.append(f"{HEAD}: changed: its signature does not match")
