"""Helpers of the operations tests: a notify socket the test owns, the daemon as a process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import aiomqtt

from bridge.config.settings import Settings
from bridge.daemon.service import Service
from bridge.ops.operations import Operations
from tests.conftest import KEY, Client, RunningBridge
from tests.helpers import SECOND


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket that collects what the daemon says."""

    def __init__(self) -> None:
        # sun_path holds at most 107 bytes: pytest's tmp_path can be longer.
        self.directory = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
        self.path = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.seen: list[str] = []

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def drain(self) -> list[str]:
        """Whatever has arrived and was not read yet, without waiting."""
        got: list[str] = []
        while True:
            try:
                got.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                self.seen.extend(got)
                return got

    # Deadlines, not an asyncio.timeout around wait_for: on Python 3.11 the two can
    # race and lose the outer cancellation, and the watchdog's pings never stop coming.

    async def next(self, wait: float = 10) -> str:
        """The next datagram, within ``wait`` seconds (times the timing factor)."""
        return await self._receive(wait * SECOND)

    async def until(self, predicate: Callable[[str], bool], wait: float = 10) -> list[str]:
        """Collect datagrams until one satisfies ``predicate``; return them all."""
        got: list[str] = []
        deadline = _now() + wait * SECOND
        while True:
            message = await self._receive(deadline - _now())
            got.append(message)
            if predicate(message):
                return got

    async def during(self, seconds: float) -> list[str]:
        """Every datagram that arrives within ``seconds``."""
        got: list[str] = []
        deadline = _now() + seconds * SECOND
        while (left := deadline - _now()) > 0:
            try:
                got.append(await self._receive(left))
            except TimeoutError:
                break
        return got

    async def _receive(self, seconds_left: float) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), max(seconds_left, 0))
        message = data.decode()
        self.seen.append(message)
        return message


def _now() -> float:
    return asyncio.get_running_loop().time()


def daemon_config(tmp_path: Path, mqtt: dict[str, Any], **sections: dict[str, Any]) -> Path:
    """A config file for the daemon as a process, quick to stop and reconnect."""
    document: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "mqtt": {
            "client_id": "ops-bridge",
            "keepalive": 5,
            "reconnect_initial_delay": 0.05,
            "reconnect_max_delay": 0.3,
            "connect_timeout": 5 * SECOND,
            **mqtt,
        },
        "openai": {"base_url": "http://127.0.0.1:9/v1", "close_timeout": 2 * SECOND},
        "shutdown": {"grace_seconds": 5 * SECOND},
        "cluster": {"roll_call": 0.1 * SECOND},  # every bridge's start roll call
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    path = tmp_path / "ops-bridge.yaml"
    path.write_text(json.dumps(document))
    return path


def spawn_daemon(
    config: Path, stderr: IO[bytes] | int = subprocess.PIPE, **env: str
) -> subprocess.Popen[bytes]:
    """``python -m bridge run --config config`` with the test's API key and ``env``;
    its stderr to ``stderr`` (a pipe that :func:`finish` reads, by default)."""
    environ = {**os.environ, "OPENAI_API_KEY": KEY, **env}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        if name not in env:
            environ.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Stop the process if it still runs; its exit code and stderr."""
    if process.poll() is None:
        process.kill()
    _, stderr = process.communicate(timeout=20 * SECOND)
    return process.returncode, (stderr or b"").decode(errors="replace")


class OpsBridge:
    """A Service with its Operations (info, discovery, metrics) in the test's event loop."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.ops = Operations(settings, environ or {})
        self.service = Service(settings, observer=self.ops)
        self._running = self.ops.running(self.service)
        self.bridge: RunningBridge | None = None

    async def __aenter__(self) -> OpsBridge:
        await self._running.__aenter__()
        self.bridge = RunningBridge(self.service)
        await self.bridge.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.bridge is not None:
                await self.bridge.stop()
        finally:
            await self._running.__aexit__(None, None, None)


async def next_on(client: Client, topic: str, wait: float = 10) -> aiomqtt.Message:
    """The next message on ``topic`` within ``wait`` seconds, skipping others."""
    deadline = _now() + wait * SECOND
    while True:
        message = await client.next(max(deadline - _now(), 0) / SECOND)
        if message.topic.value == topic:
            return message
