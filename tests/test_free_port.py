"""tests.helpers.free_port: the ports the tests' servers listen on. A broker and its dev issuer
were once given the same port by bind(0), and the broker could not start (CI, stop 26)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.helpers import free_port


def test_ports_handed_out_in_a_row_differ_and_can_be_listened_on() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))
        sock.listen()


def test_a_port_something_listens_on_is_not_handed_out() -> None:
    # Ports are handed out in order within this worker's slice: listen on each of the next
    # few before asking, and none of them may come back.
    first = free_port()
    busy = []
    try:
        for port in range(first + 1, first + 6):
            sock = socket.socket()
            busy.append(sock)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            sock.listen()
        listening = {sock.getsockname()[1] for sock in busy if sock.getsockname()[1]}
        handed = {free_port() for _ in range(20)}
        assert listening and not listening & handed
    finally:
        for sock in busy:
            sock.close()


def test_two_xdist_workers_draw_from_apart_slices() -> None:
    code = "from tests.helpers import free_port; print(*[free_port() for _ in range(300)])"

    def ports(worker: str) -> set[int]:
        env = {**os.environ, "PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": "2"}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return set(map(int, result.stdout.split()))

    first, second = ports("gw0"), ports("gw1")
    assert len(first) == len(second) == 300
    assert not first & second
