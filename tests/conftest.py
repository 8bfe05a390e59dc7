"""Fixtures: a real Mosquitto per test, the simulator, a bridge, an MQTT client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.config.settings import Settings, load_settings
from bridge.daemon.service import Service
from bridge_tools.local_broker import LocalMosquitto, find_mosquitto
from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.helpers import SECOND

# Fixtures of their own modules (bridge processes for the several-instances tests).
pytest_plugins = ["tests.bridge_processes"]

KEY = "sk-test-canary-0123456789abcdefXYZ"  # a canary: it must never show up on MQTT or in logs


def ensure_mosquitto() -> None:
    """Install mosquitto with apt-get when it is missing and that is possible; else fail."""
    if find_mosquitto():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "mosquitto"], check=False, capture_output=True
        )
    if not find_mosquitto():
        pytest.fail(
            "mosquitto is not installed and could not be installed: run "
            "`sudo apt-get install -y mosquitto` (the integration tests need a real broker)"
        )


class Broker(LocalMosquitto):
    """A private Mosquitto on a free port that a test may stop and start again."""

    def __init__(self, directory: Path, *, persistence: bool = False) -> None:
        ensure_mosquitto()
        super().__init__(directory, persistence=persistence)

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout * SECOND)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker that keeps sessions and queued messages across a restart."""
    broker = Broker(tmp_path, persistence=True)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorOptions(api_key=KEY)) as sim:
        yield sim


class Endpoint(Protocol):
    """A Responses endpoint for a test: the simulator, or one that lies."""

    @property
    def base_url(self) -> str: ...


def bridge_settings(
    broker: Broker, simulator: Endpoint, tmp_path: Path, **sections: Any
) -> Settings:
    """Settings for a bridge between ``broker`` and ``simulator``, with overrides."""
    document: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),  # today's token usage: this test's own
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": f"bridge-{uuid.uuid4().hex[:8]}",
            "reconnect_initial_delay": 0.05,
            "reconnect_max_delay": 0.5,
            "keepalive": 5,
        },
        "openai": {
            "base_url": simulator.base_url,
            "open_timeout": 5 * SECOND,
            "close_timeout": 2 * SECOND,
        },
        "shutdown": {"grace_seconds": 5 * SECOND},
        # The roll call every bridge holds before it serves: short on a private broker.
        "cluster": {"roll_call": 0.1 * SECOND},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            document.setdefault(name, {}).update(values)
        else:  # a list section (tools)
            document[name] = values
    path = tmp_path / f"bridge-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(json.dumps(document))
    return load_settings(path, {"OPENAI_API_KEY": KEY})


class RunningBridge:
    """A Service running as a task in the test's event loop."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(service.run(self.stop_event))

    async def ready(self) -> None:
        await asyncio.wait_for(self.service.ready.wait(), 10 * SECOND)

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 20 * SECOND)


@pytest.fixture
async def start_bridge(tmp_path: Path) -> AsyncIterator[Any]:
    """A factory: ``await start_bridge(broker, simulator, mqtt={...})`` → RunningBridge."""
    running: list[RunningBridge] = []

    async def start(
        broker: Broker, simulator: Endpoint, **sections: dict[str, Any]
    ) -> RunningBridge:
        bridge = RunningBridge(Service(bridge_settings(broker, simulator, tmp_path, **sections)))
        running.append(bridge)
        await bridge.ready()
        return bridge

    yield start
    for bridge in running:
        if not bridge.task.done():
            bridge.stop_event.set()
            await asyncio.wait_for(bridge.task, 20 * SECOND)


class Client:
    """A test MQTT client: publishes commands and collects what arrives."""

    def __init__(
        self, broker: Broker, *, client_id: str | None = None, persistent: bool = False
    ) -> None:
        self.broker = broker
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:8]}"
        self.persistent = persistent
        self.received: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def connect(self, subscribe: tuple[str, ...] = ()) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600 if self.persistent else 0
        self._client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not self.persistent,
            properties=properties,
            timeout=10 * SECOND,
        )
        await self._client.__aenter__()
        for topic in subscribe:
            await self._client.subscribe(topic, qos=1)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._client is not None
        try:
            async for message in self._client.messages:
                self.received.put_nowait(message)
        except aiomqtt.MqttError:
            pass

    async def disconnect(self) -> None:
        """Disconnect cleanly; every message the broker delivered still reaches ``received``."""
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)
            self._client = None
        if self._reader is not None:
            # The reader drains what paho already took, then ends on the disconnect.
            try:
                await asyncio.wait_for(self._reader, 5 * SECOND)
            except TimeoutError:
                self._reader.cancel()
            self._reader = None

    @property
    def mqtt(self) -> aiomqtt.Client:
        assert self._client is not None
        return self._client

    async def subscribe(self, *topics: str) -> None:
        for topic in topics:
            await self.mqtt.subscribe(topic, qos=1)

    async def command(
        self,
        connection_id: str,
        payload: dict[str, Any] | bytes,
        *,
        prefix: str = "ai",
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.mqtt.publish(
            f"{prefix}/{connection_id}/cmd", raw, qos=1, retain=retain, properties=properties
        )

    async def next(self, wait: float = 10) -> aiomqtt.Message:
        """The next message, within ``wait`` seconds (times the timing factor)."""
        return await asyncio.wait_for(self.received.get(), wait * SECOND)

    async def next_json(self, wait: float = 10) -> dict[str, Any]:
        return body(await self.next(wait))

    async def until(self, predicate: Any, wait: float = 10) -> list[dict[str, Any]]:
        """Collect JSON messages until one satisfies ``predicate``; return them all."""
        seen: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait * SECOND
        while True:  # one deadline, no nested timeouts (they can lose a cancel on 3.11)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {wait}s; saw {seen[-5:]}")
            message = await asyncio.wait_for(self.received.get(), remaining)
            document = body(message)
            seen.append(document)
            if predicate(document):
                return seen

    async def quiet(self, seconds: float = 0.3) -> list[aiomqtt.Message]:
        """Whatever arrives within ``seconds`` (to check that nothing more comes)."""
        extra: list[aiomqtt.Message] = []
        try:
            async with asyncio.timeout(seconds * SECOND):
                while True:
                    extra.append(await self.received.get())
        except TimeoutError:
            return extra


def body(message: aiomqtt.Message) -> dict[str, Any]:
    """A received message's JSON object."""
    assert isinstance(message.payload, bytes)
    document: dict[str, Any] = json.loads(message.payload)
    return document


def prop(message: aiomqtt.Message, name: str) -> Any:
    """One MQTT v5 property of a received message (None when absent)."""
    return getattr(message.properties, name, None)


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[Client]:
    async with Client(broker) as test_client:
        await test_client.subscribe("ai/+/events")
        yield test_client
