"""The README's Mosquitto ACL, on a real Mosquitto: only the users it names command the bridge."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from bridge_tools.simulator import Simulator
from tests.conftest import Broker, bridge_settings
from tests.helpers import SECOND
from tests.ops_helpers import OpsBridge

pytestmark = pytest.mark.integration

README = Path(__file__).parents[2] / "docs/operations/broker.md"  # the manual's ACL
USERS = {"openai-bridge": "pw-bridge", "homeassistant": "pw-ha", "intruder": "pw-intruder"}


def readme_acl() -> str:
    """The ACL block of the README's Operations section."""
    blocks: list[list[str]] = []
    inside = False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append([])
        elif inside:
            blocks[-1].append(line)
    texts = ["\n".join(block) + "\n" for block in blocks]
    found = [text for text in texts if text.startswith("# mosquitto ACL for openai-mqtt-bridge")]
    assert len(found) == 1, "the README has one ACL example"
    return found[0]


class AclBroker(Broker):
    """Mosquitto with passwords for USERS and the README's ACL."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        passwd = shutil.which("mosquitto_passwd")
        if passwd is None:
            pytest.fail("mosquitto_passwd is missing (it comes with the mosquitto package)")
        passwords, acl = directory / "passwd", directory / "acl"
        for user, password in USERS.items():
            create = ["-c"] if not passwords.exists() else []
            subprocess.run([passwd, *create, "-b", str(passwords), user, password], check=True)
        acl.write_text(readme_acl())
        text = self.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
        self.config.write_text(text + f"password_file {passwords}\nacl_file {acl}\n")


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclBroker]:
    broker = AclBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@asynccontextmanager
async def user_client(
    broker: Broker, user: str, *topics: str
) -> AsyncIterator[tuple[aiomqtt.Client, asyncio.Queue[aiomqtt.Message]]]:
    """A v5 client logged in as ``user``, subscribed to ``topics``; what it receives."""
    received: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"acl-{user}",
        username=user,
        password=USERS[user],
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=10 * SECOND,
    ) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for message in client.messages:
                received.put_nowait(message)

        reader = asyncio.create_task(read())
        try:
            yield client, received
        finally:
            reader.cancel()


async def drain(queue: asyncio.Queue[aiomqtt.Message], seconds: float) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    try:
        async with asyncio.timeout(seconds * SECOND):
            while True:
                got.append(await queue.get())
    except TimeoutError:
        return got


async def test_readme_acl_lets_named_users_command_the_bridge_and_nobody_else(
    tmp_path: Path, acl_broker: AclBroker, simulator: Simulator
) -> None:
    """The bridge works as openai-bridge; homeassistant commands it; an intruder cannot."""
    settings = bridge_settings(
        acl_broker,
        simulator,
        tmp_path,
        mqtt={"username": "openai-bridge", "password": USERS["openai-bridge"]},
        homeassistant={"discovery": True},
    )
    async with (
        OpsBridge(settings),
        user_client(
            acl_broker,
            "homeassistant",
            "ai/+/events",
            "ai/+/text",
            "ai/+/answer",
            "ai/+/status",
            "ai/bridge/#",
            "homeassistant/#",
        ) as (
            ha,
            ha_inbox,
        ),
        user_client(acl_broker, "intruder", "ai/#", "homeassistant/#") as (
            intruder,
            intruder_inbox,
        ),
    ):
        await ha.publish("ai/ha-1/cmd", json.dumps({"action": "connect"}), qos=1)
        output = {"text": True, "answer": True, "status": True}
        ask = {"action": "ask", "input": "Describe tulips.", "output": output}
        await ha.publish("ai/ha-2/cmd", json.dumps(ask), qos=1)
        await intruder.publish("ai/evil-1/cmd", json.dumps({"action": "connect"}), qos=1)
        seen = await drain(ha_inbox, 2.0)
        topics = {message.topic.value for message in seen}
        assert "ai/ha-1/events" in topics  # answered
        # The bridge may write the device-output topics, and the user read them.
        assert {"ai/ha-2/text", "ai/ha-2/answer", "ai/ha-2/status"} <= topics
        assert "ai/evil-1/events" not in topics  # never reached the bridge
        assert {"ai/bridge/state", "ai/bridge/info"} <= topics  # the bridge may write its own
        assert any(topic.startswith("homeassistant/sensor/") for topic in topics)
        assert await drain(intruder_inbox, 0.3) == []  # reads nothing either
