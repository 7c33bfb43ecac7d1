"""Loopback addresses and ports for servers the tests and benchmarks start."""

from __future__ import annotations

import socket
import time

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (bound, then released), for a server
    that must be told its port before it starts."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def assert_connection_ends(sock: socket.socket, what: str, timeout: float = 5.0) -> None:
    """Fail the test, naming ``what``, unless the other side closes or resets ``sock`` within
    ``timeout`` seconds (whatever it sends before is read and dropped)."""
    limit = time.monotonic() + timeout
    try:
        while (remaining := limit - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(4096):
                return
    except ConnectionResetError:
        return
    except TimeoutError:
        pass
    raise AssertionError(f"still open after {timeout:g} s: {what}")
