"""sd_notify: tell systemd we are ready or stopping. A no-op outside systemd."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send one notification (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to $NOTIFY_SOCKET.

    Returns False when there is no socket to tell (not under systemd).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
