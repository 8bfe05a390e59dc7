"""Logging setup, done once by the CLI; library modules only get loggers.

Level policy:

- ERROR: bugs and fatal startup problems (bad config, broker refusing us).
- WARNING: degraded but running: broker lost, upstream refused, buffer full,
  shutdown timed out.
- INFO: lifecycle only: start, broker connected/lost, each upstream opened
  and closed, stop. Never one line per event.
- DEBUG: per message details, including library internals.

Under systemd (``JOURNAL_STREAM`` set) lines carry no timestamp: journald adds it.
"""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str) -> None:
    """Configure the root logger once: stderr, one line per record."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journald:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter stays out of INFO: paho logs every packet at DEBUG,
    # websockets every frame.
    for noisy in ("bridge.paho", "bridge.websockets", "websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))
