"""Bridge daemons as real processes on one broker: the several-instances tests' fixture."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config.settings import instance_name, load_settings
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, body
from tests.helpers import SECOND
from tests.ops_helpers import daemon_config, finish, spawn_daemon

KEEPALIVE = 5  # seconds (the least the config allows): a lost instance is noticed within 2 x this


class BridgeProcesses:
    """Bridge daemons as processes, each with its own config, state and client id."""

    def __init__(self, tmp_path: Path, broker: Broker, simulator: Simulator) -> None:
        self.tmp_path, self.broker, self.simulator = tmp_path, broker, simulator
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()
        self.logs: dict[str, str] = {}  # stderr of the processes that ended, by name

    def config(self, name: str, *, cluster: bool = True, **sections: dict[str, Any]) -> Path:
        """Its config: client id ``bridge-<name>``; a cluster instance named ``name``."""
        directory = self.tmp_path / name
        directory.mkdir(exist_ok=True)
        limits = {"max_connections": 500, "commands_per_second": 1000, "command_burst": 1000}
        extra: dict[str, Any] = {**sections, "limits": {**limits, **sections.get("limits", {})}}
        extra["cluster"] = {"roll_call": 0.5}
        if cluster:
            extra["cluster"] |= {"enabled": True, "instance": name}
        return daemon_config(
            directory,
            {
                "host": self.broker.host,
                "port": self.broker.port,
                "client_id": f"bridge-{name}",
                "keepalive": KEEPALIVE,
            },
            openai={"base_url": self.simulator.base_url},
            **extra,
        )

    def spawn(self, name: str, config: Path) -> str:
        """Start it without waiting; its instance name."""
        self.processes[name] = spawn_daemon(config)
        return instance_name(load_settings(config, {}).config)

    async def start(self, name: str, config: Path) -> str:
        """Spawn it; return its instance name once it serves (its presence says ``online``
        after its roll call) and has published its usage (both live)."""
        instance = instance_name(load_settings(config, {}).config)
        presence = f"ai/bridge/instances/{instance}"
        async with Client(self.broker) as watcher:
            await watcher.subscribe(presence, f"{presence}/usage")
            self.spawn(name, config)
            waiting = {presence, f"{presence}/usage"}
            while waiting:
                message = await watcher.next(20)
                topic = str(message.topic)
                if message.retain:
                    continue
                if topic == presence and body(message).get("state") != "online":
                    continue
                waiting.discard(topic)
            return instance

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.killed.add(name)

    async def exits(self, name: str, wait: float = 20) -> tuple[int, str]:
        """Wait for it to end by itself; its exit code and stderr."""
        process = self.processes[name]
        await asyncio.to_thread(process.wait, wait * SECOND)
        code, stderr = finish(process)
        self.logs[name] = stderr
        return code, stderr

    async def stop(self, name: str) -> str:
        """SIGTERM it; its stderr (it must exit 0)."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 20 * SECOND)
        code, stderr = finish(process)
        assert code == 0, stderr[-3000:]
        return stderr

    def stop_all(self) -> dict[str, tuple[int, str]]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # one a test stopped
                process.send_signal(signal.SIGTERM)
        ended = {}
        for name, process in self.processes.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20 * SECOND)
            code, stderr = finish(process)
            ended[name] = (code, stderr[-3000:])
        return ended


@pytest.fixture
def bridges(tmp_path: Path, broker: Broker, simulator: Simulator) -> Iterator[BridgeProcesses]:
    """Bridge processes; each one still running at the end must stop cleanly (exit 0)."""
    running = BridgeProcesses(tmp_path, broker, simulator)
    yield running
    for name, (code, log) in running.stop_all().items():
        if name not in running.killed and name not in running.logs:
            assert code == 0, f"{name} did not stop cleanly:\n{log}"
