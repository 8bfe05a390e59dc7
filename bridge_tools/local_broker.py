"""A private Mosquitto on a free local port, for the demo (and the tests).

The demo needs a broker when none is configured or reachable. We start the
real thing rather than embedding a Python broker: Mosquitto is what our users
run, it speaks MQTT 5 (user properties, response topics) as the bridge
expects, and the test suite runs against it too.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from bridge.errors import BrokerError

SEARCH_PATH = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """The mosquitto binary, or None if it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in SEARCH_PATH if Path(path).exists()), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LocalMosquitto:
    """Mosquitto on 127.0.0.1 and a free port, in a directory of its own."""

    def __init__(self, directory: Path | None = None, *, persistence: bool = False) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError(
                "mosquitto is not installed: `sudo apt-get install -y mosquitto` "
                "(or point the bridge at a broker you have)"
            )
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.config = self.directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.directory}/",
            "max_queued_messages 100000",
            "log_dest none",
            # Started as root, mosquitto would drop to the `mosquitto` user and
            # then could not write into our directory.
            f"user {getpass.getuser()}",
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(  # noqa: S603 (our binary, our config)
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not is_listening(self.host, self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto did not start on {self.host}:{self.port}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
