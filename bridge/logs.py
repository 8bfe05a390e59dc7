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

from bridge.endpoint import scrub


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
    # Library chatter (paho logs every packet, websockets every frame and
    # header) shows only at DEBUG.
    library_level = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for noisy in ("bridge.paho", "bridge.websockets", "websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(library_level)


class RedactSecrets(logging.Filter):
    """Removes secrets from records of a library logger (websockets logs headers at DEBUG)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(secret for secret in secrets if secret)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact(secrets: tuple[str, ...], *logger_names: str) -> None:
    """Attach one RedactSecrets filter to each named logger (replacing an earlier one)."""
    for name in logger_names:
        target = logging.getLogger(name)
        for old in [f for f in target.filters if isinstance(f, RedactSecrets)]:
            target.removeFilter(old)
        target.addFilter(RedactSecrets(secrets))
