"""The broker process: config, keys, store, audit, token validation and the SSH listener."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

from broker.api import Api
from broker.approvals import start_approvals
from broker.audit.events import AuditEvent, open_audit_log
from broker.audit.index import schedule_indexing, stop_indexing
from broker.audit.integrity import seal_recording, signature_path
from broker.config import BrokerConfig, OidcSection
from broker.errors import BrokerError, ConfigError
from broker.identity.dev_issuer import DevIssuer, DevUser
from broker.identity.registry import CertificateRegistry
from broker.identity.tokens import TokenValidator
from broker.keys import BrokerKeys, UserCA, load_or_create_keys
from broker.node_watch import NodeWatch
from broker.recording_objects import ObjectStoreError, RecordingShipper, open_recording_objects
from broker.server import BrokerConnection, handle_process, open_sftp
from broker.sessions.approvals import ApprovalGate
from broker.sessions.budgets import RateBudget, SharedRateBudget, StatementRate
from broker.signals import SignalWatch
from broker.store import Store

log = logging.getLogger("hoop.broker")
DRAIN_SECONDS = 30.0  # how long a stopping broker waits for its sessions to end

DEV_CLIENT_ID = "hoopctl"
# Set by the supervisor of `serve --workers N` for its workers: the dev issuer it serves.
DEV_ISSUER_ENV = "HOOP_DEV_ISSUER"


_PR_SET_DUMPABLE = 4


def make_non_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): no core dumps, no ptrace by other processes, and
    /proc/<pid>/environ, mem, fd, maps … owned by root, so even a process of the broker's own
    uid cannot read its environment or memory. Linux only; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def check_data_dir(data_dir: Path) -> None:
    """The data dir is the broker user's alone: owned by it, mode 0700 (tightened if looser)."""
    try:
        st = data_dir.stat()
    except OSError as exc:
        raise BrokerError(f"cannot read data dir {data_dir}: {exc.strerror}") from None
    if st.st_uid != os.geteuid():
        raise BrokerError(
            f"data dir {data_dir} is owned by uid {st.st_uid}, not the broker's user "
            f"(uid {os.geteuid()}); run: chown {os.geteuid()} {data_dir}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        data_dir.chmod(mode & 0o700)
        print(
            f"hoop-broker: data dir {data_dir} was mode {mode:o}, readable by other users; "
            f"now {mode & 0o700:o}",
            file=sys.stderr,
            flush=True,
        )


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Broker:
    """One broker process. ROLE "single": the whole broker. With `serve --workers N`, the
    "supervisor" holds the port, runs the dev issuer and the audit sinks, and closes what its
    workers leave open; each "worker" serves SSH on the shared port (SO_REUSEPORT)."""

    def __init__(
        self, config: BrokerConfig, *, dev_mode: bool = False, role: str = "single"
    ) -> None:
        if dev_mode and config.oidc is not None:
            raise ConfigError("--dev serves its own issuer: remove [oidc] or run without --dev")
        if not dev_mode and config.oidc is None:
            raise ConfigError("no [oidc] section: configure an issuer, or run with --dev")
        self.config = config
        self.dev_mode = dev_mode
        self.role = role
        self.api = Api(self)
        # Statements per minute, per user and target: counted in the store when workers share it.
        self.rates: StatementRate = RateBudget()
        self.live: set[asyncio.Task[Any]] = set()  # channels being served (server.py)
        self.stopping = False
        self._server: asyncssh.SSHAcceptor | None = None
        self._dev_issuer: DevIssuer | None = None
        self._store: Store | None = None
        # Recordings are copied to an S3-compatible bucket when [recordings] url is set.
        self.recording_objects = open_recording_objects(config.recordings)
        self._shipper: RecordingShipper | None = None
        self._shipping: asyncio.Task[None] | None = None
        self._node_watch: asyncio.Task[None] | None = None
        self.oidc: OidcSection = config.oidc or OidcSection(
            issuer="http://127.0.0.1",
            client_id=DEV_CLIENT_ID,  # replaced at start
        )

    @property
    def data_dir(self) -> Path:
        return self.config.broker.data_dir

    async def start(self, *, listen: str | None = None) -> None:
        # Before any secret is loaded: the keys, credentials and environment stay in this
        # process, out of reach of local targets and of anything else running as its user.
        make_non_dumpable()
        self.keys: BrokerKeys = load_or_create_keys(self.data_dir)
        check_data_dir(self.data_dir)
        self.store = self._store = await Store.open(
            self.data_dir, url=self.config.store.conninfo(), node=self.config.broker.node
        )
        # Other processes change the same store: workers, and with PostgreSQL other nodes.
        shared = self.role == "worker" or self.store.shared
        if shared:
            self.rates = SharedRateBudget(self.store)
        self.certificates = await CertificateRegistry.open(
            self.store.db, UserCA(self.data_dir, self.keys.user_ca)
        )
        self.audit = await open_audit_log(self.store, self.config, self.role)
        if self.dev_mode and self.role == "worker":
            self.oidc = OidcSection(
                issuer=os.environ[DEV_ISSUER_ENV], client_id=DEV_CLIENT_ID, algorithms=["RS256"]
            )
        elif self.dev_mode:
            await self._start_dev_issuer()
        self.validator = TokenValidator(self.oidc)
        self.signals = SignalWatch(self, self.config.signals)
        await self.signals.create_tables()
        self.approvals: ApprovalGate = await start_approvals(self, shared=shared)
        if self.role != "worker":
            await self.close_interrupted_sessions()
            await self._start_shipping()
            if self.store.shared:
                watch = NodeWatch(self, float(self.config.store.node_timeout))
                self._node_watch = asyncio.create_task(watch.run(), name="node-watch")
        if self.role == "supervisor":
            return  # the workers listen
        host, port = split_host_port(listen or self.config.broker.listen)
        try:
            self._server = await asyncssh.listen(
                host,
                port,
                reuse_port=self.role == "worker",
                server_host_keys=[self.keys.host_key],
                server_factory=lambda: BrokerConnection(self),
                process_factory=lambda process: handle_process(self, process),
                # The sftp subsystem (sftp, and scp in its default mode): every channel is
                # checked in open_sftp as handle_process checks a session, and the server it
                # returns reaches only the target, never the broker's own files.
                sftp_factory=lambda chan: open_sftp(self, chan),
                login_timeout=self.config.broker.login_timeout,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
                keepalive_interval=30,
                encoding=None,
            )
        except OSError as exc:
            raise BrokerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        schedule_indexing(self.store)
        bound = self._server.sockets[0].getsockname()
        self.listen_address = f"{bound[0]}:{bound[1]}"
        if self.role == "worker":
            return  # the supervisor says where the broker listens, once every worker is ready
        print(
            f"hoop-broker listening on {self.listen_address} "
            f"(host key {self.keys.host_fingerprint})",
            file=sys.stderr,
            flush=True,
        )

    async def close_interrupted_sessions(self, owner: str | None = None) -> None:
        """Sessions left open by a crash (of the broker, or of the worker OWNER): mark them
        interrupted; their recordings stay as flushed, and are sealed."""
        for session in await self.store.interrupt_open_sessions(time.time(), owner):
            details: dict[str, object] = {"state": "interrupted"}
            if session.get("recording"):
                signature = await seal_recording(
                    self.keys, Path(session["recording"]), session["id"]
                )
                if signature is not None:
                    details["recording_sha256"] = signature["sha256"]
            await self.audit.emit(
                AuditEvent(
                    type="session.end",
                    actor=session["user"],
                    target=session["target"],
                    session=session["id"],
                    outcome="failure",
                    reason="broker stopped during the session",
                    details=details,
                )
            )

    async def _start_shipping(self) -> None:
        """Ship recordings to the bucket (one shipper per node: the single broker process or
        the supervisor, which ships what its workers record). A bucket that cannot be reached
        at start is a start-up error: the operator asked for copies off this machine."""
        objects = self.recording_objects
        if objects is None:
            return
        try:
            await asyncio.to_thread(objects.check)
        except ObjectStoreError as exc:
            raise BrokerError(str(exc)) from None
        self._shipper = RecordingShipper(
            objects,
            self.data_dir / "recordings",
            signature_of=signature_path,
            interval=self.config.recordings.ship_interval,
        )
        self._shipping = asyncio.create_task(self._shipper.run(), name="recording-shipper")

    async def _stop_shipping(self) -> None:
        """The last round, once every session has ended and sealed its recording."""
        if self._shipper is None or self._shipping is None:
            return
        self._shipping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._shipping
        await self._shipper.ship_now()

    async def _drain(self) -> None:
        pending = await _drain_tasks(set(self.live))
        if pending:
            log.warning("stopping: %d sessions did not end within %ss", len(pending), DRAIN_SECONDS)

    async def _start_dev_issuer(self) -> None:
        dev = self.config.dev
        users = dict(dev.users) if dev else {}
        self._dev_issuer = DevIssuer(
            key_path=self.data_dir / "dev_issuer_key.json",
            # Refresh grants survive a restart (only token digests are written, mode 0600).
            refresh_path=self.data_dir / "dev_issuer_refresh.json",
            users={
                name: DevUser(name=name, groups=tuple(user.groups), email=user.email)
                for name, user in users.items()
            },
            client_id=DEV_CLIENT_ID,
            auto_approve=dev.auto_approve if dev else None,
            id_token_ttl=dev.id_token_ttl if dev else 3600,
        )
        host, port = split_host_port(dev.listen if dev else "127.0.0.1:2280")
        try:
            await self._dev_issuer.start(host, port)
        except OSError as exc:
            raise BrokerError(
                f"cannot start the dev issuer on {host}:{port}: {exc.strerror}"
            ) from None
        self.oidc = OidcSection(
            issuer=self._dev_issuer.issuer, client_id=DEV_CLIENT_ID, algorithms=["RS256"]
        )
        print(
            f"hoop-broker: DEV MODE, INSECURE: built-in OIDC issuer at {self._dev_issuer.issuer} "
            "approves logins without passwords; never use this in production",
            file=sys.stderr,
            flush=True,
        )

    async def stop(self) -> None:
        """Stop accepting, end every session (each writes its session.end and seals its
        recording), then drain the audit sinks and close the store: nothing is lost."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._drain()
        if self._node_watch is not None:
            self._node_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._node_watch
        await self._stop_shipping()
        await stop_indexing()
        if getattr(self, "signals", None) is not None:
            with contextlib.suppress(Exception):
                await self.signals.flush()
        if self._dev_issuer is not None:
            await self._dev_issuer.stop()
        if getattr(self, "audit", None) is not None:
            await self.audit.close()  # drains the sinks and signs the chain head
        if self._store is not None:
            await self._store.close()


async def _drain_tasks(tasks: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Cancel TASKS and wait for them to run their endings; those still running after
    DRAIN_SECONDS."""
    running = {task for task in tasks if not task.done()}
    for task in running:
        task.cancel()
    if not running:
        return set()
    _, pending = await asyncio.wait(running, timeout=DRAIN_SECONDS)
    return pending


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets: the broker stops when it is set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_forever(
    config: BrokerConfig,
    *,
    dev_mode: bool,
    listen: str | None,
    role: str = "single",
    ready: Callable[[], None] | None = None,
) -> None:
    broker = Broker(config, dev_mode=dev_mode, role=role)
    try:
        await broker.start(listen=listen)
    except BaseException:
        await broker.stop()
        raise
    if ready is not None:
        ready()
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        await broker.stop()
