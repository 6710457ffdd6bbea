"""Evidence bundles (issue 17): `hoopctl sessions export ID --bundle FILE` and
`hoopctl verify-bundle FILE`.

A real broker records a session on a local bash target that ran a command an approver
approved; the bundle is exported, the broker is stopped and its data dir moved away, and the
bundle is then checked with nothing but hoopctl. One changed byte in any part of it must be
found and named.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.approvals import World, approvals_world
from tests.helpers import HOOPCTL, User
from tests.test_approvals_helpers import Person

SUMMARY = re.compile(r"summary (\{.*\})")
AUDITORS = """
[audit]
auditors = ["dba-leads"]
"""


def session_of(stderr: str) -> str:
    match = SUMMARY.search(stderr)
    assert match, stderr
    return str(json.loads(match.group(1))["session"])


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


def rewrite(path: Path, changed: dict[str, bytes], out: Path) -> Path:
    """PATH's tar again, with the members in CHANGED replaced."""
    with tarfile.open(path) as src, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src:
            data = changed.get(info.name, src.extractfile(info).read())  # type: ignore[union-attr]
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def verify(user: User, path: Path, *args: str) -> tuple[int, str, str]:
    result = user.run("verify-bundle", str(path), *args)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, target_dir_module: Path) -> Iterator[dict]:
    """A session that ran an approved `touch`, exported; then the broker is gone."""
    root = tmp_path_factory.mktemp("bundle")
    proof = target_dir_module / "approved-and-ran"
    with approvals_world(root, targets=AUDITORS, people=("alice", "bob")) as world:
        alice, bob = world.alice.user, world.bob.user
        held = alice.run("exec", "shell", "--no-wait", "--", "touch", str(proof))
        assert held.returncode == 4, held.stderr
        request = re.search(r"request ([0-9a-f]{10})", held.stderr)
        assert request, held.stderr
        assert bob.run("approve", request.group(1), "-m", "ok, CHG-7").returncode == 0
        ran = alice.run(
            "exec", "shell", "--summary", "--request", request.group(1), "--", "touch", str(proof)
        )
        assert ran.returncode == 0, ran.stderr
        assert proof.exists()
        session = session_of(ran.stderr)
        bundle = root / "evidence.tar"
        # Evidence is for auditors: not even the session's own user exports it (it would
        # show them the signals raised about them).
        own = alice.run("sessions", "export", session, "--bundle", str(root / "own.tar"))
        assert own.returncode == 1 and "only auditors" in own.stderr
        assert not (root / "own.tar").exists()
        made = bob.run("sessions", "export", session, "--bundle", str(bundle))
        assert made.returncode == 0, made.stderr
        assert "verify-bundle" in made.stdout
        # Exporting again does not overwrite the evidence.
        again = bob.run("sessions", "export", session, "--bundle", str(bundle))
        assert again.returncode == 2 and "exists" in again.stderr
        # carol is no auditor and it is not her session.
        other = carol_of(world, root)
        refused = other.run("sessions", "export", session, "--bundle", str(root / "carol.tar"))
        assert refused.returncode != 0 and not (root / "carol.tar").exists()
        exported_events = world.broker.audit_events("session.exported")
        key = re.search(r"SHA256:\S+", (world.broker.data_dir / "audit_key.pub").read_text())
        data_dir = world.broker.data_dir
    # The broker is stopped; its data dir goes too.
    shutil.rmtree(data_dir)
    yield {
        "bundle": bundle,
        "session": session,
        "request": request.group(1),
        "user": alice,
        "root": root,
        "exported": exported_events,
        "key": key,
    }


def carol_of(world: World, root: Path) -> User:
    """carol, logged in to WORLD's broker: an engineer, no auditor."""
    return Person.login(world.broker, root, "carol").user


@pytest.fixture(scope="module")
def target_dir_module() -> Iterator[Path]:
    from tests.helpers import make_target_dir, remove_target_dir

    path = make_target_dir()
    yield path
    remove_target_dir(path)


def test_the_bundle_holds_the_session_and_verifies_without_the_broker(exported: dict) -> None:
    bundle, session = exported["bundle"], exported["session"]
    files = members(bundle)
    assert set(files) >= {
        "manifest.json",
        "events.jsonl",
        "recording.cast",
        "recording.cast.sig",
        "approvals.json",
        "audit_key.pub",
    }
    events = [json.loads(line) for line in files["events.jsonl"].splitlines()]
    types = [e["type"] for e in events]
    assert {"session.start", "session.end"} <= set(types)
    assert "approval.executed" in types and "command" in types
    assert all(e["session"] == session for e in events)
    approvals = json.loads(files["approvals.json"])
    (request,) = approvals["requests"]
    assert request["id"] == exported["request"] and request["state"] == "executed"
    assert request["decisions"][0]["approver"] == "bob"
    assert b"touch" in files["recording.cast"]
    status, out, err = verify(exported["user"], bundle)
    assert status == 0, out + err
    assert f"intact: session {session}" in out and "audit events" in out
    manifest = json.loads(files["manifest.json"])
    assert manifest["key"] in out
    # Pinned to the broker's key: still intact; to another key: refused.
    assert verify(exported["user"], bundle, "--key", manifest["key"])[0] == 0
    status, out, err = verify(exported["user"], bundle, "--key", "SHA256:" + "A" * 43)
    assert status == 1 and "not SHA256:AAAA" in out
    (event,) = [e for e in exported["exported"] if e["session"] == session]
    assert event["actor"] == "bob" and event["details"]["events"] == len(events)


@pytest.mark.parametrize(
    "member",
    ["manifest.json", "events.jsonl", "recording.cast", "recording.cast.sig", "approvals.json"],
)
def test_one_changed_byte_in_any_part_is_found_and_named(
    exported: dict, member: str, tmp_path: Path
) -> None:
    files = members(exported["bundle"])
    data = bytearray(files[member])
    # A byte inside the content (a digit or letter of a value), not the framing: the file stays
    # readable, and only the check can tell.
    at = next(i for i in range(len(data) // 2, len(data)) if chr(data[i]).isalnum())
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    changed = rewrite(exported["bundle"], {member: bytes(data)}, tmp_path / "changed.tar")
    status, out, err = verify(exported["user"], changed)
    assert status == 1, out + err
    assert member in out, out
    assert "not as the broker signed it" in err and err.count("\n") == 1


def test_a_removed_event_or_file_is_named(exported: dict, tmp_path: Path) -> None:
    files = members(exported["bundle"])
    lines = files["events.jsonl"].splitlines(keepends=True)
    dropped = rewrite(
        exported["bundle"],
        {"events.jsonl": b"".join(lines[:2] + lines[3:])},
        tmp_path / "dropped.tar",
    )
    status, out, _ = verify(exported["user"], dropped)
    assert status == 1 and "missing" in out
    seq = json.loads(lines[2])["seq"]
    assert f"seq {seq}" in out
    # Another session's signed bundle cannot lend its key: a swapped public key fails.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    swapped = rewrite(exported["bundle"], {"audit_key.pub": other}, tmp_path / "swapped.tar")
    status, out, _ = verify(exported["user"], swapped)
    assert status == 1 and "audit_key.pub" in out


def test_every_single_byte_flip_across_the_file_fails(exported: dict, tmp_path: Path) -> None:
    raw = exported["bundle"].read_bytes()
    flipped = tmp_path / "flipped.tar"
    failures = 0
    offsets = range(0, len(raw), max(1, len(raw) // 12))
    for offset in offsets:
        data = bytearray(raw)
        data[offset] ^= 0x01
        flipped.write_bytes(bytes(data))
        status, _, err = verify(exported["user"], flipped)
        # 1: a part (or the tar's framing, its padding included) changed; 2: the tar cannot
        # be read at all. Never 0.
        assert status in (1, 2) and err.count("\n") == 1, (offset, err)
        failures += 1
    assert failures == len(offsets)


def test_bad_input_is_one_line(exported: dict, tmp_path: Path) -> None:
    user = exported["user"]
    status, _, err = verify(user, tmp_path / "none.tar")
    assert status == 2 and "cannot read" in err
    (tmp_path / "plain.txt").write_text("hello")
    status, _, err = verify(user, tmp_path / "plain.txt")
    assert status == 2 and "not a readable tar file" in err
    odd = tmp_path / "odd.tar"
    with tarfile.open(odd, "w") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    status, _, err = verify(user, odd)
    assert status == 2 and "unexpected file" in err
    result = user.run("sessions", "export", exported["session"])
    assert result.returncode == 2 and "--bundle" in result.stderr
    assert Path(HOOPCTL).exists()


def test_a_session_that_does_not_verify_gets_no_bundle(tmp_path: Path) -> None:
    with approvals_world(tmp_path, targets=AUDITORS, people=("alice", "bob")) as world:
        alice, bob = world.alice.user, world.bob.user
        ran = alice.run("exec", "shell", "--summary", "--", "echo", "evidence")
        assert ran.returncode == 0, ran.stderr
        session = session_of(ran.stderr)
        with sqlite3.connect(world.broker.data_dir / "hoop.db") as db:
            db.execute(
                "UPDATE audit_events SET event = replace(event, 'evidence', 'nothing-here') "
                "WHERE session = ? AND type = 'command'",
                (session,),
            )
        out = tmp_path / "tampered.tar"
        result = bob.run("sessions", "export", session, "--bundle", str(out))
        assert result.returncode == 1, result.stderr
        assert "does not verify" in result.stderr and result.stderr.count("\n") == 1
        assert not out.exists()
        assert not list(tmp_path.glob(".tampered.tar.*"))


def test_a_sparse_member_is_refused_before_it_is_read(exported: dict, tmp_path: Path) -> None:
    """A 10 KB tar can declare gigabytes (GNU sparse): refused, never read into memory."""
    hole = tmp_path / "recording.cast"
    with hole.open("wb") as file:
        file.truncate(3 * 1024**3)
    sparse = tmp_path / "sparse.tar"
    made = subprocess.run(
        ["tar", "--sparse", "-cf", str(sparse), "-C", str(tmp_path), "recording.cast"],
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert sparse.stat().st_size < 1024**2
    status, _, err = verify(exported["user"], sparse)
    assert status == 2 and "not a plain file" in err
