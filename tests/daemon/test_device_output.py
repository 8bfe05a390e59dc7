"""Device output on a real Mosquitto: text, answer and status topics, as small devices see them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY, Broker, Client
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

# A long answer in three scripts, with 4-byte emoji and a skin-tone modifier: the
# simulator's "say ..." repeats it, cut into deltas at its token boundaries.
PHRASE = (
    "Grüße aus der Küche 🍳 und 你好世界\uff0c今天天气很好\u3002 "
    "The quick brown fox 🦊 jumps over the lazy dog 👍🏽 "
) * 6


@contextlib.asynccontextmanager
async def small_device(broker: Broker, *topics: str) -> AsyncIterator[aiomqtt.Client]:
    """A subscriber that declares an MQTT 5 Maximum Packet Size of 256 bytes, as
    PubSubClient's default buffer: the broker drops anything larger for it."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.MaximumPacketSize = 256
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        properties=properties,
        timeout=10 * SECOND,
    ) as device:
        for topic in topics:
            await device.subscribe(topic, qos=1)
        yield device


async def ask(client: Client, connection_id: str, text: str, **fields: Any) -> None:
    await client.command(connection_id, {"action": "ask", "input": text, **fields})


async def answers(client: Client, connection_id: str, count: int) -> list[dict[str, Any]]:
    """The next ``count`` answers on ``P/<id>/answer`` (the client subscribed to it)."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        message = await client.next(15)
        if str(message.topic) == f"ai/{connection_id}/answer":
            found.append(json.loads(message.payload))
    return found


async def test_text_chunks_reach_a_256_byte_device_whole(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Every chunk fits, is valid UTF-8 and within text_max_bytes; together they are the
    answer's text and the upstream's deltas."""
    await start_bridge(broker, simulator)
    await client.subscribe("ai/tx/answer")
    async with small_device(broker, "ai/tx/text", "ai/tx/answer") as device:
        output = {"text": True, "answer": True, "text_max_bytes": 120}
        await ask(client, "tx", f"say {PHRASE}", output=output)
        events = await client.until(lambda m: m.get("type") == "response.completed")
        (answer,) = await answers(client, "tx", 1)
        seen = await _drain(device)
    # The device gets every chunk; the answer (over 256 bytes) the broker drops for it.
    assert {topic for topic, _ in seen} == {"ai/tx/text"}
    chunks = [payload for _, payload in seen]
    assert len(chunks) > 5
    texts = [chunk.decode("utf-8") for chunk in chunks]  # each chunk valid UTF-8 on its own
    assert all(0 < len(chunk) <= 120 for chunk in chunks)
    deltas = "".join(e["delta"] for e in events if e.get("type") == "response.output_text.delta")
    assert "".join(texts) == answer["text"] == deltas
    assert "你好世界" in answer["text"]
    assert "👍🏽" in answer["text"]
    assert answer["status"] == "completed"


async def _drain(device: aiomqtt.Client, quiet: float = 0.5) -> list[Any]:
    seen: list[Any] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(quiet * SECOND):
            async for message in device.messages:
                seen.append((str(message.topic), message.payload))
    return seen


@pytest.mark.parametrize(
    ("text", "status", "code"),
    [
        ("Describe tulips.", "completed", None),
        ("Describe tulips. [[fault:failed]]", "failed", "server_error"),
        ("Describe tulips. [[fault:rate_limit]]", "error", "rate_limit_exceeded"),
        ("Describe tulips. [[fault:drop_mid_stream]]", "error", "upstream_lost"),
    ],
)
async def test_one_answer_per_turn_with_its_status(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    text: str,
    status: str,
    code: str | None,
) -> None:
    await start_bridge(broker, simulator)
    await client.subscribe("ai/a1/answer")
    await ask(client, "a1", text, request_id="r1", output={"answer": True})
    (answer,) = await answers(client, "a1", 1)
    assert answer["object"] == "response.websocket.answer"
    assert (answer["connection_id"], answer["request_id"], answer["status"]) == ("a1", "r1", status)
    assert (answer.get("error") or {}).get("code") == code
    if status == "completed":
        assert answer["text"]
        assert answer["usage"]["total_tokens"] > 0
        assert answer["response_id"].startswith("resp")
    # Exactly one: the id is usable again and answers the next turn alone.
    await ask(client, "a1", "Describe roses.", request_id="r2")
    (following,) = await answers(client, "a1", 1)
    assert (following["request_id"], following["status"]) == ("r2", "completed")


async def test_status_heartbeats_while_the_first_token_is_slow(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """ready, thinking repeated every heartbeat while nothing comes, streaming, ready."""
    options = SimulatorOptions(api_key=KEY, first_token_delay=2.0 * SECOND)
    async with Simulator(options) as slow:
        profile = {"request": {"model": "m"}, "output": {"status": True, "status_heartbeat": 0.4}}
        await start_bridge(broker, slow, profiles={"default": profile})
        await client.subscribe("ai/st/status")
        loop = asyncio.get_running_loop()
        await ask(client, "st", "Describe tulips.")
        statuses: list[tuple[float, bytes]] = []
        while not statuses or statuses[-1][1] != b"ready" or len(statuses) < 3:
            message = await client.next(15)
            if str(message.topic) == "ai/st/status":
                assert message.retain is False or message.payload  # live copies
                statuses.append((loop.time(), message.payload))
        words = [word for _, word in statuses]
        assert words[0] == b"ready"
        assert words[-2:] == [b"streaming", b"ready"]
        thinking = [at for at, word in statuses if word == b"thinking"]
        assert len(thinking) >= 3, words  # 2 s of silence, a heartbeat every 0.4 s
        assert set(words[1:-2]) == {b"thinking"}
        async with Client(broker) as late:  # a late subscriber gets the retained state
            await late.subscribe("ai/st/status")
            message = await late.next(5)
            assert (message.payload, message.retain) == (b"ready", True)


async def test_events_off_leaves_acks_and_errors_only(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_bridge(broker, simulator)
    output = {"events": False, "answer": True}
    await client.subscribe("ai/q/answer")
    await ask(client, "q", "Describe tulips.", output=output, request_id="x1")
    seen = await client.until(lambda m: m.get("object") == "response.websocket.answer")
    on_events = [m for m in seen if m.get("object") != "response.websocket.answer"]
    assert [m.get("action") for m in on_events] == ["connect", "ask"]
    await ask(client, "q", "Again [[fault:rate_limit]]", request_id="x2")
    seen = await client.until(lambda m: m.get("object") == "response.websocket.answer")
    types = [m.get("type") or m.get("action") for m in seen[:-1]]
    assert types == ["ask", "error"]  # the server's error still reaches the events topic


async def test_defaults_publish_nothing_new(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Without output options, only P/<id>/events carries anything (the seed's contract)."""
    await start_bridge(broker, simulator)
    await client.subscribe("ai/d1/#")
    await ask(client, "d1", "Describe tulips.")
    await client.until(lambda m: m.get("type") == "response.completed")
    await client.command("d1", {"action": "close"})
    await client.until(lambda m: m.get("action") == "close")
    extra = await client.quiet(0.5)
    topics = {str(m.topic) for m in extra}
    assert topics <= {"ai/d1/events"}, topics


async def test_close_clears_the_retained_status(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_bridge(broker, simulator)
    await ask(client, "cl", "Describe tulips.", output={"status": True})
    await client.until(lambda m: m.get("type") == "response.completed")
    async with Client(broker) as before:  # retained while the connection is open
        await before.subscribe("ai/cl/status")
        assert (await before.next(5)).payload == b"ready"
        await client.command("cl", {"action": "close"})
        await client.until(lambda m: m.get("action") == "close")
        while (await before.next(5)).payload != b"":  # until the retained status is cleared
            pass
    async with Client(broker) as late:
        await late.subscribe("ai/cl/status")
        assert await late.quiet(0.5) == []  # nothing retained
