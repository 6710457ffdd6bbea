"""The registry of issued certificates: the broker admits only certificates it issued itself.

Every certificate the broker signs is a row here (serial, key id, user, principals, the user's
key fingerprint, the signing CA's fingerprint, validity, issue time). At authentication the
certificate the client presents must match its row in every one of those, be unrevoked and
come from the current CA; a certificate signed with the broker's CA key but not issued by the
broker (a stolen CA key) has no row and is refused.

The broker reads the registry at every authentication (no cache), so a revocation by
`hoop-broker revoke` or `rotate-ca`, another process writing the same store, holds from the
next connection on. The table lives in the broker's store, beside the other modules' tables;
the broker uses it through :class:`CertificateRegistry` (aiosqlite), the CLI through the plain
sqlite3 functions at the end of this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncssh

from broker.audit.integrity import Signer, json_safe, write_head
from broker.database import dialect
from broker.errors import AuthError, BrokerError, StoreError
from broker.identity.certificates import (
    IssuedCertificate,
    PresentedCertificate,
    issue_certificate,
    read_presented_certificate,
)
from broker.identity.tokens import Identity
from broker.keys import UserCA, rotate_user_ca
from broker.store import (
    SyncConnection,
    append_chained,
    chain_node,
    connect_existing,
    describe_location,
    migrate_audit_chain,
    store_location,
    write_lock,
)

# Serials are unsigned 64-bit: more than SQLite's INTEGER holds, so they are stored as decimal
# text (also how audit events carry them).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS issued_certificates (
    serial TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    "user" TEXT NOT NULL,
    principals TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    issued_at REAL NOT NULL,
    revoked_at REAL,
    revoked_reason TEXT
);
CREATE INDEX IF NOT EXISTS issued_certificates_user ON issued_certificates("user", revoked_at);
CREATE INDEX IF NOT EXISTS issued_certificates_ca ON issued_certificates(ca_fingerprint);
"""

_SCHEMA_PG = """
CREATE TABLE IF NOT EXISTS issued_certificates (
    serial TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    "user" TEXT NOT NULL,
    principals TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    valid_after BIGINT NOT NULL,
    valid_before BIGINT NOT NULL,
    issued_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    revoked_reason TEXT
);
CREATE INDEX IF NOT EXISTS issued_certificates_user ON issued_certificates("user", revoked_at);
CREATE INDEX IF NOT EXISTS issued_certificates_ca ON issued_certificates(ca_fingerprint);
"""

_COLUMNS = (
    'serial, key_id, "user", principals, key_fingerprint, ca_fingerprint, valid_after, '
    "valid_before, issued_at, revoked_at, revoked_reason"
)

# A random 64-bit serial that is already taken is drawn again (and the certificate signed
# again); more than a few in a row means something other than chance.
ISSUE_ATTEMPTS = 5
WRITE_ATTEMPTS = 50


@dataclass(frozen=True)
class IssuedRecord:
    serial: int
    key_id: str
    user: str
    principals: tuple[str, ...]
    key_fingerprint: str
    ca_fingerprint: str
    valid_after: int
    valid_before: int
    issued_at: float
    revoked_at: float | None = None
    revoked_reason: str | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> IssuedRecord:
        return cls(
            serial=int(row[0]),
            key_id=row[1],
            user=row[2],
            principals=tuple(json.loads(row[3])),
            key_fingerprint=row[4],
            ca_fingerprint=row[5],
            valid_after=int(row[6]),
            valid_before=int(row[7]),
            issued_at=float(row[8]),
            revoked_at=row[9],
            revoked_reason=row[10],
        )

    def active(self, now: float) -> bool:
        return self.revoked_at is None and self.valid_before > now


@dataclass(frozen=True)
class Refusal:
    """Why a presented certificate is refused; SERIAL and KEY_ID when it could be read."""

    reason: str
    serial: int | None = None
    key_id: str | None = None

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.serial is not None:
            details["certificate_serial"] = str(self.serial)
        if self.key_id is not None:
            details["key_id"] = self.key_id[:200]
        return details


def judge(
    record: IssuedRecord | None,
    presented: PresentedCertificate,
    username: str,
    ca_fingerprint: str,
) -> str | None:
    """The reason to refuse PRESENTED for USERNAME given its registry RECORD, or None."""
    if record is None:
        return "certificate not issued by this broker (unknown serial)"
    if record.key_id != presented.key_id:
        return "certificate key id does not match the certificate issued with this serial"
    if record.user != username or username not in record.principals:
        return "certificate serial was issued to another user"
    if record.key_fingerprint != presented.key_fingerprint:
        return "certificate key does not match the certificate issued with this serial"
    if record.revoked_at is not None:
        return f"certificate revoked ({record.revoked_reason or 'hoop-broker revoke'})"
    if record.ca_fingerprint != ca_fingerprint:
        return "certificate was issued by a retired CA"
    return None


def _record_params(issued: IssuedCertificate, user: str, ca_fingerprint: str, now: float) -> tuple:
    return (
        str(issued.serial),
        issued.key_id,
        user,
        json.dumps(list(issued.principals)),
        issued.key_fingerprint,
        ca_fingerprint,
        issued.valid_after,
        issued.valid_before,
        now,
    )


_INSERT = (
    'INSERT INTO issued_certificates(serial, key_id, "user", principals, key_fingerprint, '
    "ca_fingerprint, valid_after, valid_before, issued_at) VALUES (?,?,?,?,?,?,?,?,?)"
)


async def _adopt_legacy(db: aiosqlite.Connection, ca_fingerprint: str) -> None:
    """Certificates recorded by a broker from before the registry (table `certificates`).

    They were issued by this broker, with the user as key id and the one CA there was; the
    ones still valid are adopted so that an upgrade does not log everyone out. The old table
    goes.
    """
    async with db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'certificates'"
    ) as cursor:
        if await cursor.fetchone() is None:
            return
    await db.execute(
        "INSERT OR IGNORE INTO issued_certificates(serial, key_id, user, principals, "
        "key_fingerprint, ca_fingerprint, valid_after, valid_before, issued_at) "
        "SELECT CAST(serial AS TEXT), user, user, json_array(user), key_fingerprint, ?, "
        "valid_after, valid_before, issued_at FROM certificates WHERE valid_before > ?",
        (ca_fingerprint, int(time.time())),
    )
    await db.execute("DROP TABLE certificates")
    await db.commit()


def _busy(exc: sqlite3.OperationalError) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith("SQLITE_BUSY") or "locked" in str(exc)


class CertificateRegistry:
    """The broker's side: issue (sign and record) and check certificates."""

    def __init__(self, db: aiosqlite.Connection, ca: UserCA) -> None:
        self._db = db
        self.ca = ca

    @classmethod
    async def open(cls, db: aiosqlite.Connection, ca: UserCA) -> CertificateRegistry:
        try:
            if dialect(db) == "postgres":
                await db.executescript(_SCHEMA_PG)
                return cls(db, ca)
            await db.executescript(_SCHEMA)
            await db.commit()
            await _adopt_legacy(db, ca.current().get_fingerprint("sha256"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the certificate registry: {exc}") from None
        return cls(db, ca)

    async def issue(
        self, public_key: asyncssh.SSHKey, identity: Identity, *, max_ttl: int
    ) -> IssuedCertificate:
        """Sign PUBLIC_KEY for IDENTITY with the current CA and record it before handing it out."""
        ca = self.ca.current()
        ca_fingerprint = ca.get_fingerprint("sha256")
        for _ in range(ISSUE_ATTEMPTS):
            issued = issue_certificate(ca, public_key, identity, max_ttl=max_ttl)
            params = _record_params(issued, identity.user, ca_fingerprint, time.time())
            if await asyncio.shield(self._insert(params)):
                return issued
        raise StoreError("could not draw an unused certificate serial; try again")

    async def _insert(self, params: tuple) -> bool:
        """Write one row; False when its serial or key id is taken."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                async with write_lock(self._db):
                    try:
                        await self._db.execute(_INSERT, params)
                        await self._db.commit()
                        return True
                    except sqlite3.Error:
                        with contextlib.suppress(sqlite3.Error):
                            await self._db.rollback()
                        raise
            except sqlite3.IntegrityError:
                return False
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or attempt == WRITE_ATTEMPTS - 1:
                    raise StoreError(f"the certificate could not be recorded: {exc}") from None
                await asyncio.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    async def lookup(self, serial: int) -> IssuedRecord | None:
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM issued_certificates WHERE serial = ?",  # noqa: S608
            (str(serial),),
        ) as cursor:
            row = await cursor.fetchone()
        return IssuedRecord.from_row(row) if row else None

    async def check(
        self, username: str, signing_key: asyncssh.SSHKey, blob: bytes | None
    ) -> Refusal | None:
        """Why the certificate BLOB, signed by SIGNING_KEY, must not log USERNAME in, or None.

        Read from the store every time: a revocation holds from the next connection on.
        """
        try:
            ca = self.ca.current()
        except BrokerError as exc:
            return Refusal(f"the broker's user CA cannot be read: {exc}")
        if blob is None:
            return Refusal("the certificate presented could not be seen")
        try:
            presented = read_presented_certificate(blob)
        except AuthError as exc:
            return Refusal(str(exc))
        reason: str | None
        if signing_key.public_data != ca.public_data:
            if signing_key.get_fingerprint("sha256") in self.ca.retired_fingerprints():
                reason = "certificate signed by a retired CA (hoop-broker rotate-ca)"
            else:
                reason = "certificate not signed by this broker's CA"
        else:
            try:
                record = await self.lookup(presented.serial)
            except sqlite3.Error as exc:
                record, reason = None, f"the certificate registry cannot be read: {exc}"
            else:
                reason = judge(record, presented, username, ca.get_fingerprint("sha256"))
        if reason is None:
            return None
        return Refusal(reason, presented.serial, presented.key_id)


# -- the CLI's side: plain sqlite3 on the store file, safe while the broker runs -----------


def prepare(conn: SyncConnection) -> None:
    """Create the registry's table when missing (a store written before the registry)."""
    conn.executescript(_SCHEMA_PG if dialect(conn) == "postgres" else _SCHEMA)


def _select(conn: SyncConnection, where: str, params: Sequence[Any]) -> list[IssuedRecord]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM issued_certificates WHERE {where} ORDER BY issued_at",  # noqa: S608
        params,
    ).fetchall()
    return [IssuedRecord.from_row(row) for row in rows]


def _revoke(
    conn: SyncConnection, where: str, params: Sequence[Any], reason: str, now: float
) -> list[IssuedRecord]:
    """Revoke the unrevoked certificates matching WHERE in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        doomed = _select(conn, f"revoked_at IS NULL AND ({where})", params)
        conn.execute(
            "UPDATE issued_certificates SET revoked_at = ?, revoked_reason = ? "  # noqa: S608
            f"WHERE revoked_at IS NULL AND ({where})",
            (now, reason, *params),
        )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return doomed


def certificate(conn: SyncConnection, serial: int) -> IssuedRecord | None:
    found = _select(conn, "serial = ?", (str(serial),))
    return found[0] if found else None


def user_known(conn: SyncConnection, user: str) -> bool:
    """Whether the broker ever issued USER a certificate."""
    row = conn.execute('SELECT 1 FROM issued_certificates WHERE "user" = ? LIMIT 1', (user,))
    return row.fetchone() is not None


def revoke_user(
    conn: SyncConnection, user: str, reason: str, now: float | None = None
) -> list[IssuedRecord]:
    """Revoke USER's certificates that are still valid; the ones revoked now."""
    now = time.time() if now is None else now
    return _revoke(conn, '"user" = ? AND valid_before > ?', (user, now), reason, now)


def revoke_serial(
    conn: SyncConnection, serial: int, reason: str, now: float | None = None
) -> list[IssuedRecord]:
    """Revoke one certificate (expired or not); [] when it was revoked already."""
    now = time.time() if now is None else now
    return _revoke(conn, "serial = ?", (str(serial),), reason, now)


def revoke_all_but_ca(
    conn: SyncConnection, ca_fingerprint: str, reason: str, now: float | None = None
) -> list[IssuedRecord]:
    """Revoke every certificate not signed by CA_FINGERPRINT (after a CA rotation)."""
    now = time.time() if now is None else now
    return _revoke(conn, "ca_fingerprint != ?", (ca_fingerprint,), reason, now)


# -- hoop-broker revoke / rotate-ca ----------------------------------------------------------


class UnknownCertificate(BrokerError):
    """`hoop-broker revoke` was given a user or serial the registry does not know."""

    exit_code = 2


@dataclass
class Revocation:
    """What `hoop-broker revoke` did: BY is `user` or `serial`."""

    by: str
    subject: str
    revoked: list[IssuedRecord]
    already: IssuedRecord | None = None
    event: dict[str, Any] | None = None


@dataclass
class Rotation:
    previous_fingerprint: str
    fingerprint: str
    retired_path: Path
    revoked: list[IssuedRecord]
    event: dict[str, Any] | None = None


def _operator() -> str | None:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or None


def _open_store(data_dir: Path, url: str | None) -> SyncConnection:
    conn = connect_existing(data_dir, url)
    location = store_location(data_dir, url)
    try:
        if dialect(conn) == "sqlite":
            conn.execute("PRAGMA busy_timeout=5000")
        migrate_audit_chain(conn)
        prepare(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open store {describe_location(location)}: {exc}") from None
    return conn


def _append_event(
    conn: SyncConnection,
    data_dir: Path,
    signer: Signer,
    record: dict[str, Any],
    node: str | None = None,
) -> dict[str, Any]:
    record = {k: v for k, v in json_safe(record).items() if v is not None}
    event = append_chained(conn, record, node=chain_node(conn, node))
    write_head(data_dir, signer, event["seq"], event["hash"])
    return event


def _summary(records: Sequence[IssuedRecord]) -> dict[str, Any]:
    return {
        "serials": [str(r.serial) for r in records],
        "users": sorted({r.user for r in records}),
        "certificates": len(records),
    }


def revoke(
    data_dir: Path,
    who: str,
    now: float | None = None,
    *,
    store_url: str | None = None,
    node: str | None = None,
) -> Revocation:
    """Revoke USER's active certificates, or the one with serial WHO; an audit event records it."""
    now = time.time() if now is None else now
    signer = Signer.load(data_dir)
    conn = _open_store(data_dir, store_url)
    try:
        serial = int(who) if who.isascii() and who.isdigit() else None
        found = certificate(conn, serial) if serial is not None and serial < 1 << 64 else None
        operator = _operator()
        reason = f"revoked by {operator}" if operator else "revoked"
        if found is not None:
            result = Revocation("serial", str(found.serial), [])
            result.revoked = revoke_serial(conn, found.serial, reason, now)
            if not result.revoked:
                result.already = found
        elif user_known(conn, who):
            result = Revocation("user", who, revoke_user(conn, who, reason, now))
        elif serial is not None:
            raise UnknownCertificate(f"no certificate with serial {who} and no user {who!r}")
        else:
            raise UnknownCertificate(f"no certificate was ever issued to user {who!r}")
        if result.revoked:
            result.event = _append_event(
                conn,
                data_dir,
                signer,
                {
                    "type": "auth.revoked",
                    "actor": operator,
                    "outcome": "success",
                    "groups": [],
                    "time": time.time(),
                    "details": {"by": result.by, "subject": result.subject}
                    | _summary(result.revoked),
                },
                node,
            )
        return result
    except sqlite3.Error as exc:
        raise StoreError(f"the certificate registry could not be changed: {exc}") from None
    finally:
        conn.close()


def rotate_ca(
    data_dir: Path,
    now: float | None = None,
    *,
    store_url: str | None = None,
    node: str | None = None,
) -> Rotation:
    """A new user CA; the old one retired, and every certificate it signed revoked."""
    now = time.time() if now is None else now
    signer = Signer.load(data_dir)
    conn = _open_store(data_dir, store_url)
    try:
        rotated = rotate_user_ca(data_dir, now)
        fingerprint = rotated.current.get_fingerprint("sha256")
        result = Rotation(
            previous_fingerprint=rotated.previous.get_fingerprint("sha256"),
            fingerprint=fingerprint,
            retired_path=rotated.retired_path,
            revoked=revoke_all_but_ca(
                conn, fingerprint, "the broker's CA was rotated (hoop-broker rotate-ca)", now
            ),
        )
        summary = _summary(result.revoked)
        result.event = _append_event(
            conn,
            data_dir,
            signer,
            {
                "type": "auth.ca_rotated",
                "actor": _operator(),
                "outcome": "success",
                "groups": [],
                "time": time.time(),
                "details": {
                    "previous_ca": result.previous_fingerprint,
                    "ca": fingerprint,
                    "retired": rotated.retired_path.name,
                    "certificates": summary["certificates"],
                    "users": summary["users"],
                },
            },
            node,
        )
        return result
    except sqlite3.Error as exc:
        raise StoreError(f"the certificate registry could not be changed: {exc}") from None
    finally:
        conn.close()
