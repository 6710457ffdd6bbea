"""Recordings shipped to an S3-compatible bucket (`[recordings] url = "s3://…"`).

The bucket is moto's S3 server, run here on loopback: it speaks the S3 HTTP API that boto3
signs and sends, so the broker's real client, retries and multipart code run against it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from broker.config import RecordingsSection
from broker.recording_objects import RecordingObjects
from tests.helpers import (
    BIN,
    HOOP_BROKER,
    BrokerProcess,
    User,
    dev_config,
    free_port,
    start_broker,
)

BUCKET = "hoop-recordings"
PREFIX = "node-a/"
KEYS = {"HOOP_S3_KEY": "testing-key", "HOOP_S3_SECRET": "testing-secret"}


@pytest.fixture
def bucket(s3_endpoint: str) -> Iterator[object]:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["HOOP_S3_KEY"],
        aws_secret_access_key=KEYS["HOOP_S3_SECRET"],
    )
    s3.create_bucket(Bucket=BUCKET)
    yield s3
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    s3.delete_bucket(Bucket=BUCKET)


def recordings_config(endpoint: str, bucket: str = BUCKET) -> str:
    return f"""
[recordings]
url = "s3://{bucket}/{PREFIX}"
endpoint_url = "{endpoint}"
access_key_id = "env:HOOP_S3_KEY"
secret_access_key = "env:HOOP_S3_SECRET"
"""


def start(tmp_path: Path, endpoint: str, workers: int = 1) -> BrokerProcess:
    config = dev_config(tmp_path / "data", port=free_port(), dev_port=free_port())
    return start_broker(tmp_path, config + recordings_config(endpoint), env=KEYS, workers=workers)


def objects(s3: object) -> dict[str, bytes]:
    found = {}
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):  # type: ignore[attr-defined]
        body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()  # type: ignore[attr-defined]
        found[item["Key"]] = body
    return found


def wait_for(check: object, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def verify(broker: BrokerProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HOOP_BROKER, "verify", "--config", str(broker.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **KEYS},
    )


def only_session(broker: BrokerProcess) -> str:
    (cast,) = (broker.data_dir / "recordings").glob("*.cast")
    return cast.stem


@pytest.mark.parametrize("workers", [1, 2])
def test_a_recording_goes_to_the_bucket_and_replays_and_verifies_from_it_alone(
    tmp_path: Path, s3_endpoint: str, bucket: object, alice: User, workers: int
) -> None:
    """With workers, the supervisor ships what they record."""
    broker = start(tmp_path, s3_endpoint, workers)
    try:
        assert alice.login(broker).returncode == 0
        ran = alice.run("exec", "dev-shell", "--", "echo", "shipped-word")
        assert ran.returncode == 0, ran.stderr
        sid = only_session(broker)
        local = broker.data_dir / "recordings" / f"{sid}.cast"
        wait_for(lambda: local.with_name(local.name + ".stored").exists(), "the sealed copy")
        stored = objects(bucket)
        # The sealed recording and its signature, byte for byte; its parts are gone.
        assert stored[f"{PREFIX}{sid}.cast"] == local.read_bytes()
        assert stored[f"{PREFIX}{sid}.cast.sig"] == local.with_name(f"{sid}.cast.sig").read_bytes()
        assert not [key for key in stored if ".parts/" in key], sorted(stored)
        # This node's copy is lost: replay and verify use the bucket's.
        for path in (broker.data_dir / "recordings").glob(f"{sid}.cast*"):
            path.unlink()
        replayed = alice.run("replay", sid, "--format", "cast")
        assert replayed.returncode == 0, replayed.stderr
        assert "shipped-word" in replayed.stdout
        checked = verify(broker)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "1 recording" in checked.stdout
        # A byte changed in the bucket is found there.
        data = bytearray(stored[f"{PREFIX}{sid}.cast"])
        where = data.index(b"shipped-word")
        data[where] = ord("S")
        bucket.put_object(Bucket=BUCKET, Key=f"{PREFIX}{sid}.cast", Body=bytes(data))  # type: ignore[attr-defined]
        checked = verify(broker)
        assert checked.returncode == 1
        assert re.search(rf"recording {sid}: changed: bytes 0-", checked.stdout), checked.stdout
        # Deleted from the bucket: missing, whatever this node still has.
        bucket.delete_object(Bucket=BUCKET, Key=f"{PREFIX}{sid}.cast")  # type: ignore[attr-defined]
        checked = verify(broker)
        assert checked.returncode == 1
        assert f"recording {sid}: missing: {PREFIX}{sid}.cast is not in the bucket" in (
            checked.stdout
        )
    finally:
        broker.stop()


def test_a_killed_broker_loses_at_most_about_a_second_and_is_sealed_after_restart(
    tmp_path: Path, s3_endpoint: str, bucket: object, alice: User
) -> None:
    broker = start(tmp_path, s3_endpoint)
    try:
        assert alice.login(broker).returncode == 0
        script = "for i in $(seq 1 2000); do echo tick-$i; sleep 0.05; done"
        client = subprocess.Popen(
            [str(BIN / "hoopctl"), "exec", "dev-shell", "--", "bash", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=alice.env,
            text=True,
        )
        seen = 0
        assert client.stdout is not None
        for line in client.stdout:
            seen = int(line.strip().split("-")[1])
            if seen >= 60:  # about 3 s of output
                break
        assert broker.process is not None
        broker.process.send_signal(signal.SIGKILL)
        broker.process.wait(10)
        client.kill()
        client.wait(10)
        sid = only_session(broker)
        parts = sorted(
            (key, body) for key, body in objects(bucket).items() if ".cast.parts/" in key
        )
        shipped = b"".join(body for _key, body in parts).decode()
        ticks = [int(n) for n in re.findall(r"tick-(\d+)", shipped)]
        # Shipped in order, with nothing missing up to the last tick shipped...
        assert ticks == list(range(1, len(ticks) + 1))
        # ...which is at most about a second (20 ticks) before the last one the client saw.
        assert ticks and ticks[-1] >= seen - 30, (ticks[-1:], seen)
        # Restarted: the session ends interrupted, sealed, and its whole recording is shipped.
        broker.start()
        local = broker.data_dir / "recordings" / f"{sid}.cast"
        wait_for(lambda: local.with_name(local.name + ".stored").exists(), "the sealed copy")
        stored = objects(bucket)
        assert stored[f"{PREFIX}{sid}.cast"].startswith(shipped.encode())
        assert not [key for key in stored if ".parts/" in key]
        checked = verify(broker)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        broker.stop()


def test_a_bucket_that_cannot_be_opened_stops_the_broker_from_starting(
    tmp_path: Path, s3_endpoint: str
) -> None:
    config = dev_config(tmp_path / "data", port=free_port(), dev_port=free_port())
    config += recordings_config(s3_endpoint, bucket="no-such-bucket")
    (tmp_path / "broker.toml").write_text(config)
    result = subprocess.run(
        [
            HOOP_BROKER,
            "serve",
            "--dev",
            "--workers",
            "1",
            "--config",
            str(tmp_path / "broker.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **KEYS},
    )
    assert result.returncode != 0
    assert "s3://no-such-bucket/node-a/" in result.stderr
    assert "Traceback" not in result.stderr
    assert KEYS["HOOP_S3_SECRET"] not in result.stderr


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ('url = "https://bucket/prefix"', "recordings.url"),
        ('url = "s3:///prefix"', "recordings.url"),
        ('url = "s3://b/p"\naccess_key_id = "env:K"', "go together"),
        ('url = "s3://b/p"\naccess_key_id = "AKIA123"\nsecret_access_key = "env:S"', "reference"),
        ('url = "s3://b/p"\nship_interval = 5', "recordings.ship_interval"),
    ],
)
def test_bad_recordings_settings_are_config_errors(
    tmp_path: Path, section: str, problem: str
) -> None:
    config = dev_config(tmp_path / "data", port=free_port(), dev_port=free_port())
    (tmp_path / "broker.toml").write_text(config + "\n[recordings]\n" + section + "\n")
    result = subprocess.run(
        [HOOP_BROKER, "check-config", str(tmp_path / "broker.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert problem in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_reading_a_live_recording_from_its_parts(
    s3_endpoint: str, bucket: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `replay --follow` reads on a node that did not record the session: the parts
    from any offset on, up to the first gap; then the sealed copy once there is one."""
    store = RecordingObjects(
        RecordingsSection(
            url=f"s3://{BUCKET}/{PREFIX}",
            endpoint_url=s3_endpoint,
            access_key_id="env:HOOP_S3_KEY",
            secret_access_key="env:HOOP_S3_SECRET",
        )
    )
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    sid = "20261206-0123456789ab"
    store.ship_part(sid, 0, b"one\n")
    store.ship_part(sid, 4, b"two\nthree\n")
    store.ship_part(sid, 20, b"after a gap\n")
    assert store.shipped_size(sid) == 14
    whole = store.read(sid)
    assert whole is not None and whole.data == b"one\ntwo\nthree\n" and not whole.sealed
    later = store.read(sid, 6)
    assert later is not None and later.data == b"o\nthree\n"
    assert store.read("20261206-ffffffffffff") is None


def test_prune_deletes_the_bucket_copies_of_the_sessions_it_prunes(
    tmp_path: Path, s3_endpoint: str, bucket: object, alice: User
) -> None:
    broker = start(tmp_path, s3_endpoint)
    try:
        assert alice.login(broker).returncode == 0
        assert alice.run("exec", "dev-shell", "--", "echo", "old").returncode == 0
        sid = only_session(broker)
        local = broker.data_dir / "recordings" / f"{sid}.cast"
        wait_for(lambda: local.with_name(local.name + ".stored").exists(), "the sealed copy")
        assert f"{PREFIX}{sid}.cast" in objects(bucket)
        time.sleep(1.5)
        pruned = subprocess.run(
            [HOOP_BROKER, "prune", "--older-than", "1s", "--config", str(broker.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **KEYS},
        )
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        assert not [key for key in objects(bucket) if sid in key]
        assert not local.exists()
    finally:
        broker.stop()


def test_a_recording_another_node_sealed_is_not_shipped_again(
    tmp_path: Path, s3_endpoint: str, bucket: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that comes back after another took its session over finds its own unsealed
    copy of the recording: the bucket's sealed copy stands, and nothing more is shipped."""
    from broker.audit.integrity import signature_path
    from broker.recording_objects import RecordingShipper

    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    store = RecordingObjects(
        RecordingsSection(
            url=f"s3://{BUCKET}/{PREFIX}",
            endpoint_url=s3_endpoint,
            access_key_id="env:HOOP_S3_KEY",
            secret_access_key="env:HOOP_S3_SECRET",
        )
    )
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    sid = "20261206-0000000000aa"
    sealed_elsewhere = tmp_path / "sealed.cast"
    sealed_elsewhere.write_bytes(b'{"version": 2}\n[0.1, "o", "up to the takeover"]\n')
    store.seal(sid, sealed_elsewhere, b'{"signed": "by the other node"}')
    (recordings / f"{sid}.cast").write_bytes(
        b'{"version": 2}\n[0.1, "o", "up to the takeover"]\n[0.2, "o", "unseen"]\n'
    )
    shipper = RecordingShipper(store, recordings, signature_of=signature_path)
    shipper.ship_once()
    shipper.ship_once()
    assert (recordings / f"{sid}.cast.stored").exists()
    assert sorted(objects(bucket)) == [f"{PREFIX}{sid}.cast", f"{PREFIX}{sid}.cast.sig"]
    assert b"unseen" not in objects(bucket)[f"{PREFIX}{sid}.cast"]
