"""The SSH floor under `hoopctl proxy`: a local port carried over SSH to a server process that
connects on to the database, with no parsing at all (bench/proxy.py's "ssh tunnel" way).

    python -m bench.ssh_tunnel server --port P --ready FILE
    python -m bench.ssh_tunnel client --ssh-port P --listen L --target-port 5432 --ready FILE

Two processes, as hoopctl and the broker are, both asyncssh on loopback, with hoopctl's own
cipher order (hoopctl.transport.ENCRYPTION). The server accepts any client key and forwards
only to 127.0.0.1 (a bench tool: it listens on loopback for the length of one run). Each
writes FILE once it is ready; a client without its server, or the server after its client
closes, ends itself when the bench kills it.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import asyncssh

from hoopctl.transport import ENCRYPTION


class _AnyKey(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return dest_host == "127.0.0.1"


async def serve(port: int, ready: Path) -> None:
    server = await asyncssh.listen(
        "127.0.0.1",
        port,
        server_factory=_AnyKey,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        encryption_algs=ENCRYPTION,
    )
    ready.write_text("ready")
    await server.wait_closed()


async def client(ssh_port: int, listen: int, target_port: int, ready: Path) -> None:
    async with asyncssh.connect(
        "127.0.0.1",
        ssh_port,
        username="bench",
        client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        known_hosts=None,
        encryption_algs=ENCRYPTION,
    ) as conn:
        listener = await conn.forward_local_port("127.0.0.1", listen, "127.0.0.1", target_port)
        ready.write_text("ready")
        await listener.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ssh-port", type=int, default=0)
    parser.add_argument("--listen", type=int, default=0)
    parser.add_argument("--target-port", type=int, default=5432)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(serve(args.port, args.ready))
    else:
        asyncio.run(client(args.ssh_port, args.listen, args.target_port, args.ready))


if __name__ == "__main__":
    main()
