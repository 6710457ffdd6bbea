"""Plain OpenSSH through the broker: `hoopctl ssh-config` Host blocks (SetEnv HOOP_TARGET) used by
the real ssh, scp, sftp and rsync clients against a real broker and a real sshd target."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pexpect
import pytest

from broker.recording import read_events
from broker.sessions.file_transfer import Digest, RsyncRefused, SftpBridge, parse_rsync
from tests.helpers import BrokerProcess, User
from tests.sshd_harness import SshdServer, sshd_available, start_sshd
from tests.terminal_helpers import PROMPT, start_terminal_broker

pytestmark = pytest.mark.skipif(
    not sshd_available() or not all(shutil.which(p) for p in ("ssh", "scp", "sftp")),
    reason="OpenSSH sshd and clients are needed",
)
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")


def ssh_target(
    name: str, sshd: SshdServer, *, transfer: str | None = None, known_host: str | None = None
) -> str:
    setting = f'transfer = "{transfer}"\n' if transfer else ""
    return f"""
[[targets]]
name = "{name}"
type = "ssh"
guard = "screen"
address = "{sshd.host}:{sshd.port}"
user = "{sshd.user}"
credential = "file:{sshd.client_key_path}"
known_host = "{known_host or sshd.host_key_line}"
allowed_groups = ["engineers"]
policy = "shell"
{setting}"""


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd: SshdServer) -> Iterator[BrokerProcess]:
    other_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    targets = (
        ssh_target("web", sshd)
        + ssh_target("web-up", sshd, transfer="upload")
        + ssh_target("web-down", sshd, transfer="download")
        + ssh_target("web-both", sshd, transfer="both")
        + ssh_target("web-strict", sshd, transfer="both").replace(
            'guard = "screen"', 'guard = "strict"'
        )
        + ssh_target("web-badkey", sshd, transfer="both", known_host=other_key)
        + ssh_target("contractor-web", sshd, transfer="both").replace(
            'allowed_groups = ["engineers"]', 'allowed_groups = ["contractors"]'
        )
    )
    process = start_terminal_broker(tmp_path_factory.mktemp("openssh-broker"), targets)
    yield process
    process.stop()


class OpenSsh:
    """Alice's machine with the Host blocks of `hoopctl ssh-config` in an OpenSSH config file."""

    def __init__(self, user: User, config: Path, block: str) -> None:
        self.user = user
        self.config = config
        self.block = block
        self.env = {**user.env}
        self.env.pop("SSH_AUTH_SOCK", None)
        self.opts = ["-F", str(config), "-o", "BatchMode=yes"]

    def run(self, *argv: str, timeout: float = 25) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ssh(self, host: str, *command: str) -> subprocess.CompletedProcess[str]:
        return self.run("ssh", *self.opts, host, *command)

    def scp(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("scp", *self.opts, *args)

    def sftp(self, host: str, batch: str) -> subprocess.CompletedProcess[str]:
        script = self.config.with_name("sftp-batch")
        script.write_text(batch)
        return self.run("sftp", *self.opts, "-b", str(script), host)

    def rsync(self, *args: str) -> subprocess.CompletedProcess[str]:
        rsh = " ".join(["ssh", *self.opts])
        return self.run("rsync", "-e", rsh, *args)


@pytest.fixture(scope="module")
def openssh(broker: BrokerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSsh]:
    home = tmp_path_factory.mktemp("alice")
    user = User(home / "alice")
    assert user.login(broker).returncode == 0
    result = user.run("ssh-config")
    assert result.returncode == 0, result.stderr
    config = home / "ssh_config"
    config.write_text(result.stdout)
    yield OpenSsh(user, config, result.stdout)


def events_since(broker: BrokerProcess, mark: int, event_type: str) -> list[dict[str, Any]]:
    return [e for e in broker.audit_events()[mark:] if e["type"] == event_type]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the Host blocks -----------------------------------------------------------------------


def test_ssh_config_writes_a_host_block_per_ssh_target(openssh: OpenSsh) -> None:
    hosts = re.findall(r"^Host (\S+)$", openssh.block, re.M)
    assert hosts[0] == "hoop-127.0.0.1"
    # Alice's ssh targets: not the local shell (dev-shell), the database (prod-db) nor the
    # contractors' target.
    names = ("web", "web-up", "web-down", "web-both", "web-strict", "web-badkey")
    assert sorted(hosts[1:]) == sorted(f"{name}.hoop" for name in names)
    web = openssh.block.split("Host web.hoop\n", 1)[1].split("\n\n", 1)[0]
    assert "    SetEnv HOOP_TARGET=web\n" in web + "\n"
    assert "    StrictHostKeyChecking yes" in web and "    IdentitiesOnly yes" in web


# -- commands and shells -------------------------------------------------------------------


def test_plain_ssh_command_is_an_exec_session(openssh: OpenSsh, broker: BrokerProcess) -> None:
    mark = len(broker.audit_events())
    command = "echo out | tr a-z A-Z; echo err >&2; exit 3"

    result = openssh.ssh("web.hoop", command)

    assert result.returncode == 3, result.stderr
    assert result.stdout == "OUT\n"
    assert "err" in result.stderr
    # Judged and run exactly as sent: the pipe is the shell's, not a quoted word.
    start = events_since(broker, mark, "session.start")[0]
    assert start["target"] == "web" and start["details"]["kind"] == "exec"
    assert start["details"]["command"] == command
    ran = events_since(broker, mark, "command")[0]
    assert ran["details"]["command"] == command and ran["details"]["decision"] == "allow"
    _, events = read_events(broker.data_dir / "recordings" / f"{start['session']}.cast")
    assert ("m", f"command: {command}") in [(kind, data) for _, kind, data in events]
    assert any(kind == "o" and "OUT" in data for _, kind, data in events)


def test_denied_command_through_plain_ssh_never_runs(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    victim, proof = tmp_path / "victim", tmp_path / "proof"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    mark = len(broker.audit_events())

    result = openssh.ssh("web.hoop", f"rm -rf {victim}; touch {proof}")

    assert result.returncode == 3, result
    assert "denied by rule no-recursive-rm" in result.stderr
    assert (victim / "keep").read_text() == "keep" and not proof.exists()
    blocked = events_since(broker, mark, "command.blocked")
    assert blocked[0]["details"]["command"] == f"rm -rf {victim}; touch {proof}"


def test_a_command_held_for_review_is_not_run(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    proof = tmp_path / "proof"
    mark = len(broker.audit_events())

    # Nobody in the approvers group has logged in: the request waits, the command does not run.
    result = openssh.run(
        "ssh",
        *openssh.opts,
        "-o",
        "SetEnv=HOOP_TARGET=web HOOP_REASON=INC-42",
        "web.hoop",
        f"reboot; touch {proof}",
    )

    assert result.returncode == 4, result
    assert "approval required from approvers (rule reboots-need-review)" in result.stderr
    assert "hoopctl exec web --request" in result.stderr
    assert not proof.exists()
    requested = events_since(broker, mark, "approval.requested")[0]
    assert requested["details"]["requester_reason"] == "INC-42"


def test_interactive_plain_ssh_session_is_recorded(openssh: OpenSsh, broker: BrokerProcess) -> None:
    child = pexpect.spawn(
        "ssh",
        [*openssh.opts, "web.hoop"],
        env=openssh.env,
        encoding="utf-8",
        timeout=20,
        dimensions=(40, 200),
    )
    child.expect(r"session (\d{8}-[0-9a-f]{12}) started")
    session_id = child.match.group(1)
    child.expect(PROMPT)
    child.send("echo who=$(id -un)\r")
    child.expect("who=")
    child.expect(PROMPT)
    child.send("rm -rf /nonexistent-hoop-dir\r")
    child.expect("denied by rule no-recursive-rm")
    child.expect(PROMPT)
    child.send("exit 5\r")
    child.expect(pexpect.EOF)
    child.close()

    assert child.exitstatus == 5
    header, events = read_events(broker.data_dir / "recordings" / f"{session_id}.cast")
    assert header["hoop"]["target"] == "web"
    marks = [data for _, kind, data in events if kind == "m"]
    assert "command: echo who=$(id -un)" in marks
    start = next(e for e in broker.audit_events("session.start") if e["session"] == session_id)
    assert start["details"]["guard"] == "screen"


def test_interactive_plain_ssh_on_a_strict_target(openssh: OpenSsh, broker: BrokerProcess) -> None:
    child = pexpect.spawn(
        "ssh", [*openssh.opts, "web-strict.hoop"], env=openssh.env, encoding="utf-8", timeout=20
    )
    child.expect(r"session (\d{8}-[0-9a-f]{12}) started")
    session_id = child.match.group(1)
    child.expect(r"@web-strict:\S*[$#]")
    child.send("echo strict-$((6*7))\r")
    child.expect("strict-42")
    child.send("exit\r")
    child.expect(pexpect.EOF)
    child.close()

    start = next(e for e in broker.audit_events("session.start") if e["session"] == session_id)
    assert start["details"]["guard"] == "strict"


def test_a_target_outside_the_users_groups_is_refused(openssh: OpenSsh, tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    result = openssh.run(
        "ssh",
        *openssh.opts,
        "-o",
        "SetEnv=HOOP_TARGET=contractor-web",
        "web.hoop",
        f"touch {proof}",
    )

    assert result.returncode == 1
    assert "no target 'contractor-web' is open to you" in result.stderr
    assert not proof.exists()


def test_a_local_target_by_hand_runs_commands_but_takes_no_transfers(
    openssh: OpenSsh, tmp_path: Path
) -> None:
    by_hand = ["-o", "SetEnv=HOOP_TARGET=dev-shell"]

    command = openssh.run("ssh", *openssh.opts, *by_hand, "web.hoop", "id -un")
    download = openssh.run(
        "scp", *openssh.opts, *by_hand, "web.hoop:/etc/hostname", str(tmp_path / "h")
    )

    assert command.returncode == 0, command.stderr
    assert command.stdout == "hoop-target\n"
    assert download.returncode != 0
    assert "target dev-shell: local targets take no file transfers" in download.stderr
    assert not (tmp_path / "h").exists()


def test_plain_ssh_without_a_target_behaves_as_before(
    openssh: OpenSsh, broker: BrokerProcess
) -> None:
    # The broker's own block takes session commands, as it always did.
    result = openssh.ssh("hoop-127.0.0.1", "exec", "web", "--", "echo", "as-before")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "as-before\n"

    bare = openssh.ssh("hoop-127.0.0.1", "echo", "hi")
    assert bare.returncode == 2
    assert "expected: connect" in bare.stderr

    sftp = openssh.sftp("hoop-127.0.0.1", "ls\n")
    assert sftp.returncode != 0
    assert "sftp reaches a target through its Host block" in sftp.stderr


def test_a_transfer_to_a_target_that_fails_says_why(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    mark = len(broker.audit_events())

    result = openssh.scp(f"web-badkey.hoop:{tmp_path}/x", str(tmp_path / "y"))

    assert result.returncode != 0
    assert "target web-badkey: host key does not match the configured known_host" in result.stderr
    end = events_since(broker, mark, "session.end")[0]
    assert end["target"] == "web-badkey" and end["details"]["state"] == "failed"


# -- scp -------------------------------------------------------------------------------------


def test_scp_upload_arrives_byte_identical_and_is_audited(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    data = os.urandom(300_000) + b"end"
    source = tmp_path / "payload.bin"
    source.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    mark = len(broker.audit_events())

    result = openssh.scp(str(source), f"web-up.hoop:{dest}/")

    assert result.returncode == 0, result.stderr
    assert (dest / "payload.bin").read_bytes() == data
    transfer = events_since(broker, mark, "file.transfer")[0]
    assert transfer["outcome"] == "success" and transfer["target"] == "web-up"
    assert transfer["details"] == {
        "tool": "sftp",  # OpenSSH 9's scp speaks SFTP
        "direction": "upload",
        "path": f"{dest}/payload.bin",
        "size": len(data),
        "sha256": sha256(data),
        "state": "closed",
    }
    session = transfer["session"]
    start = [e for e in events_since(broker, mark, "session.start") if e["session"] == session]
    assert start[0]["details"]["kind"] == "transfer"
    _, events = read_events(broker.data_dir / "recordings" / f"{session}.cast")
    marks = [data for _, kind, data in events if kind == "m"]
    assert (
        f"file upload closed: {dest}/payload.bin ({len(data)} bytes, sha256 {sha256(data)})"
        in marks
    )
    # The session's timeline (hoopctl sessions show) lists the transfer.
    shown = openssh.user.run("sessions", "show", session, "--output", "json")
    assert shown.returncode == 0, shown.stderr
    timeline = json.loads(shown.stdout)["timeline"]
    assert [(t["type"], t["text"], t["outcome"]) for t in timeline] == [
        ("file.transfer", f"upload {dest}/payload.bin ({len(data)} bytes)", "ran")
    ]


def test_legacy_scp_upload_and_download(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    data = b"legacy scp\n" * 1000
    source = tmp_path / "legacy.txt"
    source.write_bytes(data)
    mark = len(broker.audit_events())

    up = openssh.scp("-O", str(source), f"web-both.hoop:{tmp_path}/copied.txt")
    down = openssh.scp("-O", f"web-both.hoop:{tmp_path}/copied.txt", str(tmp_path / "back.txt"))

    assert up.returncode == 0, up.stderr
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "copied.txt").read_bytes() == data
    assert (tmp_path / "back.txt").read_bytes() == data
    transfers = events_since(broker, mark, "file.transfer")
    assert [(t["details"]["tool"], t["details"]["direction"]) for t in transfers] == [
        ("scp", "upload"),
        ("scp", "download"),
    ]
    assert all(t["details"]["sha256"] == sha256(data) for t in transfers)


@pytest.mark.parametrize("target", ["web", "web-up"])
def test_scp_download_is_refused_without_download(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path, target: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you\n")
    local = tmp_path / "local-copy"
    mark = len(broker.audit_events())

    result = openssh.scp(f"{target}.hoop:{secret}", str(local))

    assert result.returncode != 0
    setting = "none" if target == "web" else "upload"
    assert (
        f'download of {secret} refused: target {target} allows no downloads (transfer = "{setting}")'
        in result.stderr
    )
    assert not local.exists() or local.stat().st_size == 0
    refused = events_since(broker, mark, "file.transfer")
    assert refused[0]["outcome"] == "failure"
    assert refused[0]["details"]["state"] == "refused"
    assert refused[0]["details"]["path"] == str(secret)
    assert refused[0]["details"]["size"] == 0


def test_legacy_scp_download_refused_says_why(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you\n")
    local = tmp_path / "local-copy"

    result = openssh.scp("-O", f"web-up.hoop:{secret}", str(local))

    assert result.returncode != 0
    assert "allows no downloads" in result.stderr
    assert not local.exists() or local.stat().st_size == 0


def test_scp_upload_is_refused_without_upload(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "new.txt"
    source.write_text("new content\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    existing = dest / "new.txt"
    existing.write_text("must survive\n")

    result = openssh.scp(str(source), f"web-down.hoop:{dest}/")

    assert result.returncode != 0
    assert "allows no uploads" in result.stderr
    assert existing.read_text() == "must survive\n"


# -- sftp ----------------------------------------------------------------------------------


def test_sftp_put_and_get(openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    mark = len(broker.audit_events())

    result = openssh.sftp(
        "web-both.hoop",
        f"put {local} {remote_dir}/up.bin\nget {remote_dir}/up.bin {tmp_path}/down.bin\nls {remote_dir}\n",
    )

    assert result.returncode == 0, result.stderr
    assert (remote_dir / "up.bin").read_bytes() == data
    assert (tmp_path / "down.bin").read_bytes() == data
    transfers = events_since(broker, mark, "file.transfer")
    assert [(t["details"]["direction"], t["details"]["path"]) for t in transfers] == [
        ("upload", f"{remote_dir}/up.bin"),
        ("download", f"{remote_dir}/up.bin"),
    ]
    assert {t["details"]["sha256"] for t in transfers} == {sha256(data)}
    assert {t["details"]["size"] for t in transfers} == {len(data)}
    # One session for the sftp channel; its end is recorded.
    assert len({t["session"] for t in transfers}) == 1


def test_sftp_changes_count_as_uploads(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("keep\n")
    mark = len(broker.audit_events())

    result = openssh.sftp("web-down.hoop", f"rm {keep}\n")

    assert result.returncode != 0
    assert "remove" in result.stderr and "allows no uploads" in result.stderr
    assert keep.read_text() == "keep\n"
    change = events_since(broker, mark, "file.change")[0]
    assert change["outcome"] == "failure"
    assert change["details"]["operation"] == "remove"
    assert change["details"]["state"] == "refused"


async def test_a_client_rewriting_an_upload_gets_no_sha256(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    """A client of its own (asyncssh) through the same Host block: bytes written twice, or a
    file left longer than what was written, must not be audited as the hash of what was sent
    first; a file opened to read and write is refused."""
    host = re.search(r"HostName (\S+)\n    Port (\d+)", openssh.block)
    key_path = re.search(r"IdentityFile (\S+)", openssh.block)
    assert host and key_path
    key = asyncssh.read_private_key(key_path.group(1))
    cert = asyncssh.read_certificate(key_path.group(1) + "-cert.pub")
    old = tmp_path / "old.txt"
    old.write_bytes(b"0123456789" * 10)
    mark = len(broker.audit_events())

    async with asyncssh.connect(
        host.group(1),
        int(host.group(2)),
        username="alice",
        client_keys=[(key, cert)],
        known_hosts=str(openssh.user.config_dir / "known_hosts"),
        agent_path=None,
        config=None,
    ) as conn:
        async with conn.start_sftp_client(env={"HOOP_TARGET": "web-both"}) as sftp:
            async with sftp.open(str(tmp_path / "new.txt"), "wb") as f:
                await f.write(b"benign content", 0)
                await f.write(b"evil", 0)
            flags = asyncssh.FXF_WRITE  # no truncation: the old tail stays
            async with sftp.open(str(old), flags, encoding=None) as f:
                await f.write(b"short", 0)
            with pytest.raises(asyncssh.SFTPOpUnsupported):
                await sftp.open(str(old), "r+b")

    assert (tmp_path / "new.txt").read_bytes() == b"evil" + b"benign content"[4:]
    transfers = events_since(broker, mark, "file.transfer")
    assert [(t["details"]["size"], t["details"]["sha256"]) for t in transfers] == [
        (18, None),
        (5, None),
    ]


# -- rsync ---------------------------------------------------------------------------------


@needs_rsync
def test_rsync_upload_allowed_and_download_refused(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    source = tmp_path / "r.bin"
    source.write_bytes(data)
    dest = tmp_path / "rdest"
    dest.mkdir()
    mark = len(broker.audit_events())

    up = openssh.rsync("-a", str(source), f"web-up.hoop:{dest}/")
    down = openssh.rsync(f"web-up.hoop:{dest}/r.bin", str(tmp_path / "back.bin"))

    assert up.returncode == 0, up.stderr
    assert (dest / "r.bin").read_bytes() == data
    assert down.returncode != 0
    assert "allows no downloads" in down.stderr
    assert not (tmp_path / "back.bin").exists()
    transfers = events_since(broker, mark, "file.transfer")
    assert [
        (t["details"]["tool"], t["details"]["direction"], t["details"]["state"]) for t in transfers
    ] == [("rsync", "upload", "closed"), ("rsync", "download", "refused")]
    assert transfers[0]["details"]["path"] == f"{dest}/"
    assert transfers[0]["details"]["sha256"] is None
    assert transfers[0]["details"]["size"] >= len(data)


@needs_rsync
def test_rsync_download_allowed_and_upload_refused(
    openssh: OpenSsh, broker: BrokerProcess, tmp_path: Path
) -> None:
    data = os.urandom(20_000)
    remote = tmp_path / "remote.bin"
    remote.write_bytes(data)
    existing = tmp_path / "existing.txt"
    existing.write_text("must survive\n")
    other = tmp_path / "other.txt"
    other.write_text("other\n")

    down = openssh.rsync(f"web-down.hoop:{remote}", str(tmp_path / "copy.bin"))
    up = openssh.rsync(str(other), f"web-down.hoop:{existing}")

    assert down.returncode == 0, down.stderr
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert up.returncode != 0
    assert "allows no uploads" in up.stderr
    assert existing.read_text() == "must survive\n"


@needs_rsync
def test_rsync_options_that_write_on_a_download_are_refused(
    openssh: OpenSsh, tmp_path: Path
) -> None:
    remote = tmp_path / "remote.txt"
    remote.write_text("stays\n")

    result = openssh.rsync("--remove-source-files", f"web-down.hoop:{remote}", str(tmp_path / "c"))

    assert result.returncode != 0
    assert "rsync option --remove-source-files is not passed on" in result.stderr
    assert remote.read_text() == "stays\n"
    assert not (tmp_path / "c").exists()


# -- pieces --------------------------------------------------------------------------------


def test_the_sftp_bridge_overrides_every_file_operation() -> None:
    """asyncssh's SFTPServer defaults serve the broker's own files: none may be inherited."""
    pure = {"convert_attrs", "format_longname", "_to_sftpname"}
    inherited = [
        name
        for name, member in inspect.getmembers(asyncssh.SFTPServer)
        if callable(member)
        and not name.startswith("__")
        and name not in pure
        and name not in SftpBridge.__dict__
    ]
    assert inherited == []


def test_digest_follows_offsets() -> None:
    data = os.urandom(10_000)
    digest = Digest()
    digest.add(4000, data[4000:8000])
    digest.add(0, data[:4000])
    digest.add(8000, data[8000:])
    assert digest.result() == (len(data), sha256(data))

    gap = Digest()
    gap.add(100, b"x" * 10)
    assert gap.result() == (10, None)

    # Bytes written twice: the target has the second version, which the hash would not show.
    rewritten = Digest()
    rewritten.add(0, b"benign!!")
    rewritten.add(0, b"evil")
    assert rewritten.result() == (12, None)


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        (
            "rsync --server --sender -e.LsfxCIvu --remove-source-files . /tmp/x",
            "--remove-source-files",
        ),
        ("rsync --server -e.LsfxCIvu --log-file=/tmp/l . /tmp", "--log-file"),
        ("rsync --server -se.LsfxCIvu . /tmp", "-s"),
        ("rsync --server -ce.LsfxCIvu . /tmp", "-c"),
        ("rsync --server --sender -Re.LsfxCIvu --files-from /etc/list . /", "--files-from"),
        ("sh -c 'rsync --server . /tmp'", "only `rsync --server"),
        ("rsync --server -e.LsfxCIvu . /a /b", "one destination"),
    ],
)
def test_rsync_server_commands_outside_the_list_are_refused(command: str, fragment: str) -> None:
    with pytest.raises(RsyncRefused, match=re.escape(fragment)):
        parse_rsync(command)


def test_rsync_upload_runs_with_whole_file() -> None:
    spec = parse_rsync("rsync --server -logDtpre.iLsfxCIvu --delete . '/tmp/a b/'")
    assert spec.direction == "upload" and spec.paths == ("/tmp/a b/",)
    assert spec.command == "rsync --server --whole-file -logDtpre.iLsfxCIvu --delete . '/tmp/a b/'"
    download = parse_rsync("rsync --server --sender -vlogDtpre.iLsfxCIvu . /tmp/x /tmp/y")
    assert download.direction == "download" and download.paths == ("/tmp/x", "/tmp/y")
