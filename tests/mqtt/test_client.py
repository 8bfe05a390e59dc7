"""The one paho owner against a real Mosquitto: the publish path's order, window and
callbacks, receiving, and the connection's own life."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import pytest

from bridge.config.sections import MqttConfig
from bridge.mqtt.client import BrokerConnection
from bridge.mqtt.errors import BrokerRefusedConnection
from bridge.mqtt.outbox import Outbox
from bridge.protocol.messages import Publish
from bridge.protocol.server_events import DIRECTION_SERVER, user_properties
from tests.conftest import Broker, prop
from tests.helpers import SECOND


async def relay(
    broker: Broker,
    publishes: list[Publish],
    *,
    window: int,
    qos: int,
    expect: int | None = None,
    hooks: list[bool] | None = None,
) -> tuple[list[aiomqtt.Message], list[int]]:
    """Publish ``publishes`` through a BrokerConnection; what a subscriber got, and the
    in-flight counts seen.

    The subscriber waits for ``expect`` messages (all of them by default).
    ``hooks`` collects, as the messages go, whether paho's on_publish was set.
    """
    expect = len(publishes) if expect is None else expect
    outbox = Outbox(max_messages=100_000, max_bytes=1 << 26)
    received: list[aiomqtt.Message] = []
    seen: list[int] = []
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe("pipe/#", qos=qos)
        connection = await connected(broker)
        task = asyncio.create_task(
            connection.publish_outbox(outbox, window=window, on_published=lambda _: None)
        )

        async def watch() -> None:
            while True:
                seen.append(connection.in_flight)
                if hooks is not None:
                    hooks.append(connection.awaits_acknowledgements)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        for publish in publishes:
            assert outbox.put(publish)
        async with asyncio.timeout(20 * SECOND):
            await outbox.wait_empty()
            async for message in sub.messages:
                received.append(message)
                if len(received) == expect:
                    break
        assert not task.done()  # the publish path only ends when cancelled (or the link fails)
        task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
        await connection.close()
    return received, seen


def mqtt_config(broker: Broker, **fields: Any) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, client_id="conn-test", **fields)


async def connected(broker: Broker, on_message: Any = None, **fields: Any) -> BrokerConnection:
    connection = BrokerConnection(
        mqtt_config(broker, **fields),
        clean_start=True,
        will=None,
        on_message=on_message or (lambda *_: None),
    )
    await connection.open()
    return connection


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publishes_in_order_with_properties(broker: Broker, qos: int) -> None:
    """Every message arrives once, in order, with its v5 user properties; the window holds."""
    props = user_properties("c1", DIRECTION_SERVER, "response.output_text.delta")
    publishes = [
        Publish("pipe/c1/events", b'{"n":%d}' % n, qos, props, relayed=True) for n in range(2000)
    ]
    received, seen = await relay(broker, publishes, window=8, qos=qos)
    assert [m.payload for m in received] == [p.payload for p in publishes]
    assert ("event_type", "response.output_text.delta") in prop(received[0], "UserProperty")
    assert max(seen) <= 8
    assert max(seen) > 1  # more than one message in flight at a time


async def test_a_topic_mqtt_cannot_carry_is_dropped_alone(broker: Broker) -> None:
    """A wildcard in a topic costs that one message, not the ones after it."""
    publishes = [
        Publish("pipe/a/events", b"1", 1),
        Publish("pipe/+/events", b"bad", 1),
        Publish("pipe/b/events", b"2", 1),
    ]
    received, _ = await relay(broker, publishes, window=4, qos=1, expect=2)
    assert [m.payload for m in received] == [b"1", b"2"]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_commands_are_handled_as_read_and_a_failing_handler_costs_one(
    broker: Broker, protocol: str
) -> None:
    """on_message runs for each message in order; one that raises is logged and acked, the
    next still arrives (and nothing waits in a queue)."""
    seen: list[tuple[str, bytes, bool]] = []
    three = asyncio.Event()

    def handle(topic: str, payload: bytes, retained: bool, reply_to: Any, correlation: Any) -> None:
        if payload == b"boom":
            raise RuntimeError("a bug")
        seen.append((topic, payload, retained))
        if len(seen) == 3:
            three.set()

    connection = await connected(broker, handle, protocol=protocol)
    await connection.subscribe("in/#", retain_as_published=protocol == "5")
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for payload in (b"1", b"boom", b"2"):
            await client.publish("in/x", payload, qos=1)
        await client.publish("in/r", b"3", qos=1, retain=True)
        await asyncio.wait_for(three.wait(), 10 * SECOND)
    # Retain As Published (MQTT 5) keeps the flag of a live delivery; 3.1.1 clears it.
    assert seen == [("in/x", b"1", False), ("in/x", b"2", False), ("in/r", b"3", protocol == "5")]
    await connection.close()


async def test_a_refused_login_is_a_refusal_with_its_code(tmp_path: Any) -> None:
    """A CONNACK failure comes back as BrokerRefusedConnection (what fatal_error reads)."""
    broker = Broker(tmp_path)
    text = broker.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
    broker.config.write_text(text)
    broker.start()
    try:
        with pytest.raises(BrokerRefusedConnection) as refused:
            await connected(broker)
        assert refused.value.code == 135  # not authorized
    finally:
        broker.stop()


async def test_mixed_qos_keeps_order_and_completes_acknowledged_messages(
    broker: Broker,
) -> None:
    """QoS 0 and 1 interleaved each arrive in order; QoS 1 messages are completed by the
    broker's acknowledgements, read by the reader callback (paho's on_publish stays unset:
    paho builds a reason code and a properties object for every QoS 0 write while it is
    set). MQTT keeps order per QoS level only: the broker may pass a QoS 0 message ahead
    of a QoS 1 one, which is why the bridge publishes one QoS."""
    qos0 = [Publish("pipe/c/zero", b"a%d" % n, 0) for n in range(500)]
    mixed = [Publish(f"pipe/c/{'one' if n % 2 else 'zero'}", b"m%d" % n, n % 2) for n in range(500)]
    qos0_again = [Publish("pipe/c/zero", b"b%d" % n, 0) for n in range(500)]
    publishes = qos0 + mixed + qos0_again
    hooks: list[bool] = []
    received, _ = await relay(broker, publishes, window=16, qos=1, hooks=hooks)
    for topic in ("pipe/c/zero", "pipe/c/one"):
        sent = [p.payload for p in publishes if p.topic == topic]
        assert [m.payload for m in received if m.topic.value == topic] == sent
    assert True in hooks  # acknowledgements were awaited while QoS 1 messages were in flight
    assert hooks[-1] is False  # and none once all were acknowledged


async def test_retained_publishes_are_retained(broker: Broker) -> None:
    """The adapter's announcements go through the pipeline with the retain flag kept."""
    await relay(broker, [Publish("pipe/bridge/info", b"{}", 1, retain=True)], window=4, qos=1)
    async with aiomqtt.Client(broker.host, broker.port) as late:
        await late.subscribe("pipe/bridge/info", qos=1)
        async with asyncio.timeout(5 * SECOND):
            message = await anext(aiter(late.messages))
    assert message.retain
    assert message.payload == b"{}"
