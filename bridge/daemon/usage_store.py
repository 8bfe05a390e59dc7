"""The day's token usage on disk, so budgets survive restarts and upgrades.

One small JSON file, ``usage.json`` in the state directory (under systemd the
unit's ``StateDirectory=``, given as ``$STATE_DIRECTORY``; elsewhere
``$XDG_STATE_HOME/openai-mqtt-bridge`` or ``~/.local/state/openai-mqtt-bridge``),
holding the book of the day being counted, the one the clock set aside
(:mod:`bridge.protocol.shared_usage`) and the instance that wrote it. It is
written atomically (a temporary file, fsync, rename, fsync of the directory).

- **Reading.** Only a regular file is read: it is opened without blocking and
  checked (``fstat``) before a byte is read, so a FIFO or a device can never
  hang the start. A missing file starts at zero; anything else that is not a
  usage file (corrupt, unreadable, not a regular file, too large) is logged
  once and set aside as ``usage.json.corrupt-<time>``, never a crash, never
  a silent reset.
- **Writing.** A save that fails is logged once per outage, as a WARNING,
  and retried with back-off (5 s doubling to 5 min); the first save that
  works again says so at INFO. Meanwhile :attr:`UsageStore.problem` says what
  is wrong (``P/bridge/info``'s ``usage_file``).
- **Other instances' files.** ``run --workers N`` gives worker ``w<i>`` the
  directory ``<state_dir>/w<i>``. At start the files of that tree other than
  our own (``<state_dir>/usage.json``, ``<state_dir>/w*/usage.json``) are
  read as the documents of the instances that wrote them: the day's usage
  survives a move to workers, back, and from N to M even when the broker has
  lost the retained documents. They are merged with those documents, never
  added to them: nothing is counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from bridge.backoff import backoff_delays
from bridge.protocol.guardrails import UsageBook
from bridge.protocol.shared_usage import MAX_INSTANCES, SharedUsage
from bridge.protocol.usage_documents import SavedUsage, file_document, read_file_document

logger = logging.getLogger(__name__)

APP_DIRECTORY: Final = "openai-mqtt-bridge"
FILE_NAME: Final = "usage.json"
MAX_FILE_BYTES: Final = 16 * 1024 * 1024  # two books of 10,000 ids with the longest names
SAVE_RETRY: Final = (5.0, 300.0)  # seconds: the back-off of a failing save
WORKER_DIRECTORY: Final = re.compile(r"w[0-9]+")  # <state_dir>/w<i> (workers.py)


class NotARegularFile(OSError):
    """The path is a FIFO, a directory, a device...: it is not read."""


def default_state_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Where state lives when ``state_dir`` is not set."""
    systemd = environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / APP_DIRECTORY


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes; never blocks
    on a FIFO (NotARegularFile, or another OSError: FileNotFoundError if missing)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"not a regular file ({_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(descriptor, 1 << 16):
            size += len(chunk)
            if size > limit:
                raise NotARegularFile(f"larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


class UsageStore:
    """The usage file of one instance: loaded once at start, saved now and then."""

    def __init__(self, directory: Path, instance: str) -> None:
        self.path = directory / FILE_NAME
        self.instance = instance
        self.problem: str | None = None  # "not writable: ..." while saves fail
        self.failed_saves = 0  # since start
        self._retry_at = 0.0  # monotonic time of the next save while they fail
        self._delays: Callable[[], float] | None = None

    def load(self) -> SharedUsage:
        """The usage saved last (its days included), with what the other instances of this
        state directory saved; a fresh start if there is none."""
        usage = SharedUsage(name=self.instance)
        saved = self._read(self.path)
        if saved is not None:
            if saved.instance in (None, self.instance):  # None: written by an older version
                usage = SharedUsage(saved.own, saved.earlier, saved.folded, name=self.instance)
            else:  # this directory's instance was renamed: the old name's usage
                usage.merge_peer(saved.instance, saved.own)
        for name, book in self._neighbours():
            usage.merge_peer(name, book)
        return usage

    def due(self, now: float) -> bool:
        """Whether a save may be tried at monotonic time ``now`` (not while backing off)."""
        return now >= self._retry_at

    def save(self, usage: SharedUsage, now: float | None = None) -> None:
        """Write the own books atomically; a failure is logged once per outage."""
        now = time.monotonic() if now is None else now
        document = file_document(self.instance, usage)
        try:
            self._write(json.dumps(document, separators=(",", ":")).encode())
        except OSError as exc:
            self._failed(exc, now)
            return
        usage.unsaved = False
        if self.problem is not None:
            logger.info("token usage is saved to %s again", self.path)
            self.problem, self._delays, self._retry_at = None, None, 0.0

    def _write(self, data: bytes) -> None:
        temporary = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC
        descriptor = os.open(temporary, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _failed(self, exc: OSError, now: float) -> None:
        self.failed_saves += 1
        if self.problem is None:
            logger.warning(
                "could not save token usage to %s: %s; the day's usage is kept in memory "
                "and on the broker meanwhile, and saving is retried with back-off",
                self.path,
                exc,
            )
            self._delays = backoff_delays(*SAVE_RETRY)
        self.problem = f"not writable: {exc}"
        assert self._delays is not None
        self._retry_at = now + self._delays()

    def _read(self, path: Path) -> SavedUsage | None:
        """What our own file holds; None if there is none."""
        try:
            raw = read_regular_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self._set_aside(f"cannot be read ({exc.strerror or exc})")
            return None
        try:
            return read_file_document(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            self._set_aside(f"is not a usage file this bridge wrote ({exc})")
            return None

    def _neighbours(self) -> Iterator[tuple[str, UsageBook]]:
        """The books of the other instances' files in this state tree (see the module)."""
        root = self.path.parent
        if WORKER_DIRECTORY.fullmatch(root.name):
            root = root.parent
        try:
            workers = [p for p in root.iterdir() if WORKER_DIRECTORY.fullmatch(p.name)]
        except OSError:
            workers = []
        paths = [root / FILE_NAME, *(directory / FILE_NAME for directory in sorted(workers))]
        for path in paths[: MAX_INSTANCES + 1]:
            if path == self.path:
                continue
            try:
                saved = read_file_document(json.loads(read_regular_file(path)))
            except (OSError, ValueError, RecursionError):
                continue  # missing, or its own instance's business
            if saved.instance is not None and saved.instance != self.instance:
                yield saved.instance, saved.own

    def _set_aside(self, problem: str) -> None:
        aside = self.path.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            where = f"moved to {aside}"
        except OSError as exc:
            where = f"could not be moved aside ({exc})"
        logger.error(
            "the token usage file %s %s; %s. Today's usage starts from what the broker "
            "keeps of this instance (zero if nothing): budgets may not count what was spent "
            "before",
            self.path,
            problem,
            where,
        )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"
