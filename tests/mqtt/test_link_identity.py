"""Which broker the link reached, logged on every connect (a real Mosquitto): its address,
and its version where it says it on ``$SYS/broker/version``."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bridge.config.sections import MqttConfig
from bridge.mqtt.link import BROKER_VERSION, MqttLink
from bridge.protocol.contract import Topics
from bridge_tools.local_broker import find_mosquitto
from tests.conftest import Broker
from tests.helpers import SECOND, eventually

pytestmark = pytest.mark.integration


def mosquitto_version() -> str:
    """What this Mosquitto says of itself (``mosquitto version 2.0.11``)."""
    binary = find_mosquitto()
    assert binary is not None
    usage = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    return (usage.stdout or usage.stderr).splitlines()[0].strip()


@asynccontextmanager
async def running_link(broker: Broker) -> AsyncIterator[MqttLink]:
    config = MqttConfig(
        host=broker.host,
        port=broker.port,
        client_id="identity-test",
        reconnect_initial_delay=0.05,
        reconnect_max_delay=0.2,
    )
    link = MqttLink(config, Topics("ai"), lambda message: None)
    task = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        link.stop(1.0)
        await asyncio.wait_for(task, 10 * SECOND)


async def logged(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> None:
    """Until ``count`` INFO records of bridge.mqtt.link contain ``text``."""

    def seen() -> int:
        return sum(
            text in record.getMessage()
            for record in caplog.records
            if record.name == "bridge.mqtt.link" and record.levelno == logging.INFO
        )

    await eventually(lambda: seen() >= count, 10, f"{text!r} in\n{caplog.text}")


async def test_each_connect_logs_the_broker_address_and_version(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.mqtt.link")
    identity = f"broker {broker.host}:{broker.port} is {mosquitto_version()}"
    async with running_link(broker) as link:
        await logged(caplog, identity)
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
        await logged(caplog, identity, count=2)  # again after the reconnect
        assert link.connects == 2


async def test_a_broker_that_does_not_say_is_named_by_its_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL without ``$SYS``: the link stays up and says the version is not known."""
    broker = Broker(tmp_path)
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n")  # `#` does not reach $SYS topics
    broker.config.write_text(broker.config.read_text() + f"acl_file {acl}\n")
    broker.start()
    try:
        caplog.set_level(logging.INFO, logger="bridge.mqtt.link")
        async with running_link(broker) as link:
            await logged(caplog, f"broker {broker.host}:{broker.port} does not say its version")
            assert link.connected.is_set()
            assert BROKER_VERSION in caplog.text
    finally:
        broker.stop()
