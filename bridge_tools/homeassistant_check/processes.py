"""The check's child processes, and waiting for something to become true.

Each child runs in a session (process group) of its own with its output in a
log file: a Ctrl-C in the terminal reaches only the check, which then stops
the children itself, in order, by their process group ids.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from bridge_tools.homeassistant_check import CheckFailed

T = TypeVar("T")

POLL_INTERVAL: Final = 0.2


def timeout_factor() -> float:
    """``BRIDGE_TESTS_TIMEOUT_FACTOR`` (CI sets 2): every wait of the check is that much longer."""
    try:
        return max(1.0, float(os.environ.get("BRIDGE_TESTS_TIMEOUT_FACTOR", "1")))
    except ValueError:
        return 1.0


class NotYet(Exception):
    """Raised by a probe of :func:`wait_until`: not there yet, and why."""


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, indented, for a failure message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"


@dataclass
class Child:
    """One started process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        """Raise :class:`CheckFailed` with the end of its log if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise CheckFailed(
                f"{self.name} exited with code {code}; the end of {self.log}:\n{log_tail(self.log)}"
            )


class Children:
    """The processes the check started, stopped in the reverse order of their start."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    def stop(self, child: Child, timeout: float = 30.0) -> int:
        """SIGTERM to the child's process group, SIGKILL after ``timeout`` s; its exit code."""
        process = child.process
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        else:
            # Whatever it left running in its group goes too.
            _signal_group(process.pid, signal.SIGKILL)
        if child in self.started:
            self.started.remove(child)
        return process.returncode

    def stop_all(self) -> None:
        for child in reversed(list(self.started)):
            self.stop(child)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def wait_until(
    what: str,
    probe: Callable[[], T],
    timeout: float,
    *,
    watch: Sequence[Child] = (),
) -> T:
    """``probe()``'s value once it stops raising :class:`NotYet`.

    Raises :class:`CheckFailed` naming ``what`` (and the last reason given) when
    ``timeout`` seconds (times :func:`timeout_factor`) pass, or as soon as one
    of the ``watch`` processes exits.
    """
    deadline = time.monotonic() + timeout * timeout_factor()
    reason = "no answer yet"
    while True:
        for child in watch:
            child.check_alive()
        try:
            return probe()
        except NotYet as exc:
            reason = str(exc) or reason
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not so after {timeout * timeout_factor():.0f} s ({reason})")
        time.sleep(POLL_INTERVAL)
