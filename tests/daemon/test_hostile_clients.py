"""Hostile clients on a real Mosquitto: no message stops the bridge or borrows its privileges.

Each test names a promise of the README's Reliability and Security sections
and breaks it the way a careless or hostile client on the same broker would.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.daemon.service import Service
from bridge.errors import BrokerError
from bridge.mqtt import link as mqtt_link
from bridge.mqtt.client import BrokerConnection
from bridge.mqtt.properties import cached_properties
from bridge.protocol.core import BridgeCore
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, RunningBridge, body, bridge_settings
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

CREATE = {"type": "response.create", "model": "m", "input": "Describe tulips."}

# Each is one command that must get exactly one invalid_json error.
HOSTILE_PAYLOADS = [
    b"[" * 1000,  # RecursionError in json.loads stopped the daemon
    b"{" * 1000,
    b'{"action":"connect","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"action":"send","event":{"type":"response.create","temperature":NaN}}',
    b'{"action":"send","event":{"type":"response.create","top_p":Infinity}}',
    b'{"action":"send","event":{"type":"response.create","n":1e999}}',
    b'{"action":"send","event":{"type":"response.create","n":' + b"9" * 10_000 + b"}}",
]


def v5_reply(topic: str, correlation: bytes) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = topic
    properties.CorrelationData = correlation
    return properties


async def stream_once(client: Client, connection_id: str) -> list[dict[str, Any]]:
    """connect, send, wait for response.completed, close: the whole seed flow on one id."""
    await client.command(connection_id, {"action": "connect"})
    await client.command(connection_id, {"action": "send", "event": CREATE})
    seen = await client.until(lambda m: m.get("type") == "response.completed")
    await client.command(connection_id, {"action": "close"})
    seen += await client.until(lambda m: m.get("action") == "close")
    return seen


async def test_hostile_json_is_answered_and_the_bridge_keeps_running(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Deep nesting, NaN, Infinity, huge numbers: one invalid_json each; streams go on."""
    bridge: RunningBridge = await start_bridge(broker, simulator)
    await client.command("victim", {"action": "connect"})
    await client.command("victim", {"action": "send", "event": CREATE})
    for payload in HOSTILE_PAYLOADS:
        await client.command("x", payload)
    answers: list[dict[str, Any]] = []
    victim: list[dict[str, Any]] = []
    async with asyncio.timeout(20 * SECOND):
        while len(answers) < len(HOSTILE_PAYLOADS) or not any(
            m.get("type") == "response.completed" for m in victim
        ):
            message = await client.next()
            (answers if message.topic.value == "ai/x/events" else victim).append(body(message))
    assert [answer["error"]["code"] for answer in answers] == ["invalid_json"] * len(
        HOSTILE_PAYLOADS
    )
    assert await client.quiet(0.3) == []  # exactly one each
    assert not bridge.task.done()
    assert [received.json()["input"] for received in simulator.received] == ["Describe tulips."]
    # And the daemon still serves every id, the hostile one included.
    assert (await stream_once(client, "x"))[-1]["action"] == "close"


async def test_a_bug_while_handling_a_command_is_contained(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception: internal_error for that command, one log line, nothing else."""
    await start_bridge(broker, simulator)
    original = BridgeCore.receive_command

    def buggy(self: BridgeCore, connection_id: str, payload: bytes, **kwargs: Any) -> Any:
        if b"trigger-the-bug" in payload:
            raise KeyError("a bug")
        return original(self, connection_id, payload, **kwargs)

    monkeypatch.setattr(BridgeCore, "receive_command", buggy)
    with caplog.at_level(logging.ERROR):
        await client.command("c1", {"action": "connect", "request_id": "trigger-the-bug"})
        answer = await client.next_json()
    assert answer["error"]["code"] == "internal_error"
    assert (answer["action"], answer["request_id"]) == ("connect", "trigger-the-bug")
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert (await stream_once(client, "c1"))[-1]["action"] == "close"


async def test_response_topic_cannot_borrow_the_bridges_topics(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """A Response Topic on the bridge's own topics gets one error on the events topic, only."""
    await start_bridge(broker, simulator, homeassistant={"discovery": True})
    await client.subscribe("ai/bridge/#", "homeassistant/#", "$SYS/broker/uptime")
    await client.quiet(0.5)  # the retained state and discovery messages
    targets = [
        "ai/bridge/state",
        "ai/bridge/info",
        "ai/home-assistant/events",
        "ai/victim/cmd",
        "homeassistant/sensor/x/y/config",
        "$SYS/broker/uptime",
    ]
    for number, target in enumerate(targets):
        await client.command(
            "c1",
            {"action": "connect", "request_id": f"r{number}"},
            properties=v5_reply(target, b"attacker"),
        )
    received = [await client.next() for _ in targets]
    assert {message.topic.value for message in received} == {"ai/c1/events"}
    for number, message in enumerate(received):
        answer = body(message)
        assert answer["error"]["code"] == "response_topic_not_allowed"
        assert answer["request_id"] == f"r{number}"
    assert await client.quiet(0.5) == []  # nothing reached any of the targets
    assert simulator.handshakes == []  # and nothing was carried out


async def test_allowed_response_topic_gets_the_ack(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """mqtt.response_topics names where replies may go; others are refused."""
    await start_bridge(broker, simulator, mqtt={"response_topics": ["replies/#"]})
    await client.subscribe("replies/#", "elsewhere/#")
    await client.command(
        "c1", {"action": "connect"}, properties=v5_reply("replies/c1", b"\x00\x01")
    )
    first, second = await client.next(), await client.next()
    assert {first.topic.value, second.topic.value} == {"ai/c1/events", "replies/c1"}
    await client.command("c1", {"action": "close"}, properties=v5_reply("elsewhere/x", b"z"))
    refused = await client.next()
    assert refused.topic.value == "ai/c1/events"
    assert body(refused)["error"]["code"] == "response_topic_not_allowed"
    assert await client.quiet(0.3) == []


async def test_retained_commands_published_while_running_are_refused(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """MQTT v5 keeps the retain flag of live deliveries: a retained command is never run."""
    await start_bridge(broker, simulator)
    await client.command("c1", {"action": "connect", "request_id": "a"}, retain=True)
    await client.command("c1", {"action": "send", "event": CREATE, "request_id": "b"}, retain=True)
    answers = [await client.next_json(), await client.next_json()]
    assert [answer["error"]["code"] for answer in answers] == ["retained_command"] * 2
    assert [answer["request_id"] for answer in answers] == ["a", "b"]
    assert simulator.handshakes == []
    await client.command("c1", b"", retain=True)  # clear it


# Every way the daemon stops leaves `offline` --------------------------------------


async def retained_state(broker: Broker) -> bytes:
    """What a client subscribing now is told about ``ai/bridge/state``."""
    async with Client(broker) as fresh:
        await fresh.subscribe("ai/bridge/state")
        message = await fresh.next(5)
        assert message.retain
        assert isinstance(message.payload, bytes)
        return message.payload


async def watch_state(broker: Broker) -> Client:
    watcher = Client(broker)
    await watcher.connect(subscribe=("ai/bridge/state",))
    return watcher


async def until_state(watcher: Client, expected: bytes, wait: float = 10) -> None:
    while (await watcher.next(wait)).payload != expected:
        pass


@pytest.mark.parametrize(
    "failure", [RuntimeError("a bug"), BrokerError("fatal")], ids=["unexpected", "fatal"]
)
async def test_a_failing_link_leaves_offline(
    broker: Broker,
    simulator: Simulator,
    tmp_path: Path,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
) -> None:
    """An unexpected exception or a fatal error ends the daemon, and the state says offline."""
    watcher = await watch_state(broker)
    service = Service(bridge_settings(broker, simulator, tmp_path, mqtt={"keepalive": 60}))
    task = asyncio.create_task(service.run(asyncio.Event()))
    await until_state(watcher, b"online")

    def fail(self: BrokerConnection, entry: Any) -> None:
        raise failure

    monkeypatch.setattr(BrokerConnection, "_hand", fail)
    await client.command("c1", {"action": "connect"})  # its ack is the publish that fails
    with pytest.raises(type(failure)):
        await asyncio.wait_for(task, 10 * SECOND)
    # A keepalive of 60 s: a will would come after 90 s, so this is the bridge saying it.
    await until_state(watcher, b"offline")
    await watcher.disconnect()
    assert await retained_state(broker) == b"offline"


async def test_a_cancelled_daemon_leaves_offline(
    broker: Broker, simulator: Simulator, tmp_path: Path, client: Client
) -> None:
    """A second signal cancels the daemon mid-stream: still offline, at once."""
    watcher = await watch_state(broker)
    service = Service(bridge_settings(broker, simulator, tmp_path, mqtt={"keepalive": 60}))
    task = asyncio.create_task(service.run(asyncio.Event()))
    await until_state(watcher, b"online")
    await client.command("c1", {"action": "connect"})
    await client.command("c1", {"action": "send", "event": CREATE})
    await client.until(lambda m: m.get("type") == "response.created")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10 * SECOND)
    await until_state(watcher, b"offline")
    await watcher.disconnect()


# Memory a client could pin -------------------------------------------------------


async def test_correlation_data_is_not_cached(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Replies carrying distinct 64 KiB correlation data leave nothing behind."""
    await start_bridge(broker, simulator, limits={"commands_per_second": 1000})
    await client.subscribe("replies/#")
    cached_properties.cache_clear()
    for number in range(50):
        correlation = (uuid.uuid4().bytes * 4096)[:65_000]  # about 64 KiB, distinct
        await client.command(
            f"id{number % 5}", {"action": "close"}, properties=v5_reply("replies/x", correlation)
        )
    for _ in range(100):
        await client.next()
    # The cache holds one entry per (id, message kind): nothing per correlation.
    assert cached_properties.cache_info().currsize <= 5


async def test_reconnect_backoff_resets_after_a_connection_that_held(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After many brief broker restarts, the next one is still retried at the initial delay."""
    monkeypatch.setattr(mqtt_link, "HELD_SECONDS", 0.2 * SECOND, raising=False)
    bridge: RunningBridge = await start_bridge(
        broker,
        simulator,
        mqtt={"reconnect_initial_delay": 0.05, "reconnect_max_delay": 30},
    )
    first_delays: list[float] = []
    with caplog.at_level(logging.WARNING, logger="bridge.mqtt.link"):
        for _ in range(7):
            await asyncio.sleep(0.4 * SECOND)  # the connection holds
            caplog.clear()
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            await asyncio.wait_for(bridge.service.ready.wait(), 10 * SECOND)
            retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
            first_delays.append(float(retries[0].args[2]))  # type: ignore[index,arg-type]
    # Without the reset the 7th outage would start at 0.05 * 2**6 s, jittered: >= 1.6 s.
    assert max(first_delays) <= 0.05
