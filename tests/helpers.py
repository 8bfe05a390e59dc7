"""Shared test helpers: the timing unit, free ports, waiting for a port."""

from __future__ import annotations

import os
import socket
import time

# Every duration in a test is written as a multiple of SECOND. Slow or shared
# machines scale them all at once: BRIDGE_TESTS_TIMEOUT_FACTOR=3 pytest.
SECOND = float(os.environ.get("BRIDGE_TESTS_TIMEOUT_FACTOR", "1"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_listening(host: str, port: int, timeout: float) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)
