"""Logging setup, done once by the CLI; library modules only get loggers.

Level policy:

- ERROR: bugs and fatal startup problems (bad config, broker refusing us).
- WARNING: degraded but running: broker lost, upstream refused, buffer full,
  shutdown timed out.
- INFO: lifecycle only: start, broker connected/lost, each upstream opened
  and closed, stop. Never one line per event.
- DEBUG: per message details, including library internals.

Two formats (``logging.format``): ``text``, one line per record for a
terminal, and ``json``, one object per line with ``ts``, ``level``, ``logger``,
``message``, and ``connection_id`` when the record is about one connection
(its message starts with ``[<id>]``), plus ``exception`` for a traceback.

When stderr is the journal (``JOURNAL_STREAM`` names it), lines carry no
timestamp (journald adds it) and start with the syslog priority, ``<3>`` for
ERROR to ``<7>`` for DEBUG, which journald strips and stores as the entry's
priority: ``journalctl -p warning -u openai-mqtt-bridge`` then shows just the
warnings and errors. Every line of a record carries it, a traceback's too, so
``journalctl -p err`` shows why the bridge stopped. What does not go through
logging has its own way there: :func:`stderr_line` prefixes a line printed
before logging is set up (``config error: ...``), and :func:`fault_file` is
where :mod:`faulthandler` writes the stacks of a crash or of the watchdog's
SIGABRT: a journal stream of its own, opened at priority ``err``.

Every line, from every logger (libraries included) and at every level, is
scrubbed as a whole, traceback included, by the :class:`~bridge.redaction.Redactor`
that knows the bridge's secrets: :func:`setup` takes it, :func:`use_redactor`
replaces it later.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import socket
import sys
from typing import Final, TextIO

from bridge.protocol.redaction import Redactor

# syslog priorities, as sd-daemon(3) prefixes them: <3> err, <4> warning, <6> info, <7> debug
PRIORITIES: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_CONNECTION_PREFIX: Final = re.compile(r"\[([^\s\]]+)\] ")
# journald's stream socket, as sd_journal_stream_fd(3) connects to it.
JOURNAL_STDOUT: Final = "/run/systemd/journal/stdout"
IDENTIFIER: Final = "openai-mqtt-bridge"  # SYSLOG_IDENTIFIER of the fault stream's lines
ERR: Final = 3
_fault_streams: list[socket.socket] = []  # kept open for faulthandler, which holds only the fd


def setup(level: str, fmt: str = "text", redactor: Redactor | None = None) -> None:
    """Configure the root logger once: stderr, one line per record, ``text`` or ``json``.

    Each line is scrubbed by ``redactor`` (by default one that knows no secret
    and removes only what is shaped like an API key).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(_formatter(fmt), redactor or Redactor()))
    logging.getLogger().handlers[:] = [handler]
    _set_level(level)


def reconfigure(level: str, fmt: str) -> None:
    """Another level and format from now on (a reloaded config), for the handler :func:`setup`
    installed; its redactor stays, other handlers are left alone."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            handler.formatter.inner = _formatter(fmt)
    _set_level(level)


def _formatter(fmt: str) -> logging.Formatter:
    journal = stderr_is_journal()
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        pattern = "%(levelname)s %(name)s: %(message)s"
        formatter = logging.Formatter(pattern if journal else "%(asctime)s " + pattern)
    return JournalPriority(formatter) if journal else formatter


def _set_level(level: str) -> None:
    logging.getLogger().setLevel(level)
    # Library chatter (paho logs every packet, websockets every frame and
    # header) shows only at DEBUG.
    library_level = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for noisy in ("bridge.paho", "bridge.websockets", "websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(library_level)


def use_redactor(redactor: Redactor) -> None:
    """Scrub the lines of the handler :func:`setup` installed with ``redactor`` from now on."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            handler.formatter.redactor = redactor


def stderr_is_journal() -> bool:
    """True if stderr is connected to journald (``JOURNAL_STREAM`` is its ``device:inode``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def stderr_line(text: str, priority: int = ERR) -> str:
    """``text`` as a line for stderr: with journald's ``<priority>`` prefix when that is the
    journal, for what is printed before (or instead of) logging: ``config error: ...``."""
    return f"<{priority}>{text}" if stderr_is_journal() else text


def fault_file(path: str = JOURNAL_STDOUT) -> TextIO | int:
    """Where :mod:`faulthandler` should write: stderr, or under journald a stream of its own
    at priority ``err`` (a file descriptor), as ``sd_journal_stream_fd(3)`` opens one.

    faulthandler writes from a signal handler, straight to the descriptor: its lines
    cannot carry a ``<3>`` prefix, so the stream's priority does it. If journald
    cannot be reached, stderr it is (the dump lands at info, but lands).
    """
    if not stderr_is_journal():
        return sys.stderr
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stream.connect(path)
        stream.shutdown(socket.SHUT_RD)
        # identifier, unit (none), priority, level prefix, to syslog, to kmsg, to console
        stream.sendall(f"{IDENTIFIER}\n\n{ERR}\n0\n0\n0\n0\n".encode())
    except OSError:
        stream.close()
        return sys.stderr
    _fault_streams.append(stream)
    return stream.fileno()


class RedactingFormatter(logging.Formatter):
    """Scrubs the finished line of the formatter it wraps: message, traceback, JSON alike."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor) -> None:
        super().__init__()
        self.inner = inner
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(self.inner.format(record))


class JournalPriority(logging.Formatter):
    """Puts ``<priority>`` before each line of a record, for journald (which makes each line
    an entry of its own: a traceback's lines would be at info otherwise); wraps the real
    formatter."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = self.inner.format(record)
        return f"<{priority}>" + text.replace("\n", f"\n<{priority}>")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC), level, logger, message, connection_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        document: dict[str, object] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        connection_id = getattr(record, "connection_id", None)
        args = record.args
        if (
            connection_id is None
            and isinstance(record.msg, str)
            and record.msg.startswith("[%s] ")  # the bridge's "[<id>] ..." lines
            and isinstance(args, tuple)
            and args
        ):
            connection_id = args[0]
            document["message"] = message[len(f"[{connection_id}] ") :]
        if connection_id is None:
            found = _CONNECTION_PREFIX.match(message)
            if found:
                connection_id = found.group(1)
                document["message"] = message[found.end() :]
        if connection_id is not None:
            document["connection_id"] = str(connection_id)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, ensure_ascii=False, default=str)


class RedactSecrets(logging.Filter):
    """Scrubs the message of each record of one logger, for whatever handler gets it.

    The handler :func:`setup` installs scrubs every line already; this filter
    also protects records that reach other handlers (a test's, an embedding
    program's).
    """

    def __init__(self, secrets: tuple[str, ...] | Redactor) -> None:
        super().__init__()
        self.redactor = secrets if isinstance(secrets, Redactor) else Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.redactor.found(message):
            record.msg, record.args = self.redactor.redact(message), None
        return True


def redact(secrets: tuple[str, ...] | Redactor, *logger_names: str) -> None:
    """Attach one RedactSecrets filter to each named logger (replacing an earlier one)."""
    for name in logger_names:
        target = logging.getLogger(name)
        for old in [f for f in target.filters if isinstance(f, RedactSecrets)]:
            target.removeFilter(old)
        target.addFilter(RedactSecrets(secrets))
