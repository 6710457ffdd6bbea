"""The connection phase of MySQL's protocol: the server's greeting (protocol 10), the client's
HandshakeResponse41 (and SSLRequest), and the password scrambles of the plugins the broker
speaks to a target (mysql_native_password, caching_sha2_password)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from pymysql import _auth

from broker.protocols.mysql import packets as p

NATIVE = b"mysql_native_password"
CLEAR = b"mysql_clear_password"
CACHING_SHA2 = b"caching_sha2_password"
SHA256 = b"sha256_password"
UTF8MB4_GENERAL_CI = 45
# utf8mb4 collations both MySQL (5.7 on) and MariaDB know by these ids.
UTF8MB4_COLLATIONS = frozenset({45, 46, *range(224, 248)})


@dataclass(frozen=True)
class Greeting:
    version: str
    thread_id: int
    capabilities: int
    charset: int
    status: int
    scramble: bytes  # the auth plugin's data (20 bytes for both plugins, no trailing NUL)
    plugin: bytes


def parse_greeting(payload: bytes) -> Greeting:
    cur = p.Cursor(payload)
    protocol = cur.int(1)
    if protocol == 0xFF:
        raise p.ProtocolError(f"the server refused the connection: {p.parse_err(payload).message}")
    if protocol != 10:
        raise p.ProtocolError(f"the server speaks handshake protocol {protocol}, not 10")
    version = cur.cstring().decode("utf-8", "replace")
    thread_id = cur.int(4)
    first = cur.take(8)
    cur.take(1)
    capabilities = cur.int(2)
    charset = cur.int(1) if cur.left else 0
    status = cur.int(2) if cur.left else 0
    capabilities |= (cur.int(2) << 16) if cur.left else 0
    data_length = cur.int(1) if cur.left else 0
    cur.take(min(10, cur.left))
    second = b""
    if capabilities & p.CLIENT_SECURE_CONNECTION:
        second = cur.take(min(max(13, data_length - 8), cur.left))
    plugin = cur.cstring() if capabilities & p.CLIENT_PLUGIN_AUTH and cur.left else NATIVE
    scramble = (first + second).rstrip(b"\0")
    return Greeting(version, thread_id, capabilities, charset, status, scramble, plugin)


def new_scramble() -> bytes:
    """20 random bytes, none of them NUL (clients read the data as a C string)."""
    return bytes(secrets.choice(range(1, 128)) for _ in range(20))


def greeting(
    *, version: str, thread_id: int, capabilities: int, status: int, scramble: bytes
) -> bytes:
    return b"".join(
        (
            b"\x0a",
            version.encode("utf-8") + b"\0",
            thread_id.to_bytes(4, "little"),
            scramble[:8],
            b"\0",
            (capabilities & 0xFFFF).to_bytes(2, "little"),
            bytes((UTF8MB4_GENERAL_CI,)),
            status.to_bytes(2, "little"),
            (capabilities >> 16 & 0xFFFF).to_bytes(2, "little"),
            bytes((len(scramble) + 1,)),
            b"\0" * 10,
            scramble[8:] + b"\0",
            NATIVE + b"\0",
        )
    )


@dataclass
class Response:
    """A client's HandshakeResponse41 (or, with ``ssl`` and nothing else, its SSLRequest)."""

    capabilities: int
    max_packet: int
    charset: int
    user: bytes = b""
    auth: bytes = b""
    database: bytes = b""
    plugin: bytes = b""
    attributes: bytes = field(default=b"", repr=False)
    ssl_request: bool = False  # the 32 bytes that ask for TLS before the response


def parse_response(payload: bytes) -> Response:
    cur = p.Cursor(payload)
    capabilities = cur.int(4)
    if not capabilities & p.CLIENT_PROTOCOL_41:
        raise p.ProtocolError("the client does not speak protocol 4.1")
    response = Response(capabilities, cur.int(4), cur.int(1))
    cur.take(23)
    if not cur.left:
        response.ssl_request = bool(capabilities & p.CLIENT_SSL)
        if not response.ssl_request:
            raise p.ProtocolError("the handshake response ends before the user name")
        return response
    response.user = cur.cstring()
    if capabilities & p.CLIENT_PLUGIN_AUTH_LENENC:
        response.auth = cur.lenenc_bytes() or b""
    elif capabilities & p.CLIENT_SECURE_CONNECTION:
        response.auth = cur.take(cur.int(1))
    else:
        response.auth = cur.cstring()
    if capabilities & p.CLIENT_CONNECT_WITH_DB and cur.left:
        response.database = cur.cstring()
    if capabilities & p.CLIENT_PLUGIN_AUTH and cur.left:
        response.plugin = cur.cstring()
    if capabilities & p.CLIENT_CONNECT_ATTRS and cur.left:
        response.attributes = cur.rest()
    return response


def response(
    *, capabilities: int, charset: int, user: str, auth: bytes, database: str, plugin: bytes
) -> bytes:
    """The broker's HandshakeResponse41 to a target."""
    return b"".join(
        (
            capabilities.to_bytes(4, "little"),
            p.MAX_PACKET.to_bytes(4, "little"),
            bytes((charset,)),
            b"\0" * 23,
            user.encode("utf-8") + b"\0",
            p.lenenc_bytes(auth),
            database.encode("utf-8") + b"\0",
            plugin + b"\0",
        )
    )


def ssl_request(*, capabilities: int, charset: int) -> bytes:
    return (
        capabilities.to_bytes(4, "little")
        + p.MAX_PACKET.to_bytes(4, "little")
        + bytes((charset,))
        + b"\0" * 23
    )


def auth_switch(plugin: bytes, data: bytes) -> bytes:
    return b"\xfe" + plugin + b"\0" + data + b"\0"


# -- scrambles --------------------------------------------------------------------------------


def scramble(plugin: bytes, secret: bytes, data: bytes) -> bytes:
    """The first answer of PLUGIN to the server's DATA (ProtocolError for a plugin the broker
    does not speak)."""
    if not secret:
        return b""
    if plugin == NATIVE:
        return bytes(_auth.scramble_native_password(secret, data[:20]))
    if plugin == CACHING_SHA2:
        return bytes(_auth.scramble_caching_sha2(secret, data[:20]))
    raise p.ProtocolError(f"the target asks for the {plugin.decode(errors='replace')} plugin")


def rsa_password(secret: bytes, data: bytes, public_key: bytes) -> bytes:
    """The password encrypted with the server's RSA key (caching_sha2 without TLS)."""
    return bytes(_auth.sha2_rsa_encrypt(secret, data[:20], public_key))
