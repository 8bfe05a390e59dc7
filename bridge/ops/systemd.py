"""sd_notify: readiness, status, watchdog and stopping, as systemd's ``Type=notify`` expects.

The protocol is one datagram per notification to the Unix socket named by
``$NOTIFY_SOCKET``; outside systemd there is no socket and every call is a
no-op. The bridge sends ``READY=1`` once the broker is connected and
``P/+/cmd`` subscribed, ``STATUS=`` lines as the broker link and the
connection count change, ``WATCHDOG=1`` while healthy (:func:`watchdog`) and
``STOPPING=1`` on a stop signal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send one notification (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to $NOTIFY_SOCKET.

    Returns False when there is no socket to tell (not under systemd) or it
    cannot be reached; a notification is never worth stopping the bridge for.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.debug("cannot notify systemd (%s): %s", state.split("=", 1)[0], exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec=``), or None when none are asked.

    systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, which must be us).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


async def watchdog(interval: float, healthy: Callable[[], bool]) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds while the bridge is healthy; never returns.

    Healthy means both: ``healthy()`` is true (the broker link is up), and the
    event loop keeps time. A wake-up more than half an interval late means
    the loop was blocked that long: that round sends nothing, so a loop that
    keeps stalling stops the pings and systemd restarts the bridge, like one
    that hangs for good.
    """
    loop = asyncio.get_running_loop()
    due = loop.time() + interval
    was_healthy = True
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        late = loop.time() - due
        due = loop.time() + interval
        if late > interval / 2:
            logger.warning("the event loop was blocked for %.1fs: no watchdog ping", late)
            continue
        now_healthy = healthy()
        if now_healthy:
            notify("WATCHDOG=1")
        elif was_healthy:
            logger.warning("broker link down: watchdog pings pause until it is back")
        was_healthy = now_healthy
