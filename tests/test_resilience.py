"""End to end under trouble: upstream drops and closes, slow handshakes, broker restarts,
and the API key canary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY, Broker, Client, body
from tests.helpers import SECOND

pytestmark = pytest.mark.integration


def create(text: str = "Tell me about tulips.", **extra: Any) -> dict[str, Any]:
    return {"type": "response.create", "model": "gpt-5.4-nano", "input": text, **extra}


def faulty(fault: str) -> dict[str, Any]:
    return create(metadata={"simulator_fault": fault})


async def open_connection(client: Client, connection_id: str) -> None:
    await client.command(connection_id, {"action": "connect"})
    ack = await client.next_json()
    assert (ack["connection_id"], ack["action"]) == (connection_id, "connect"), ack


@pytest.mark.parametrize(
    ("fault", "code", "after"),
    [
        ("drop_before_created", 1006, None),
        ("drop_after_created", 1006, "response.created"),
        ("drop_mid_stream", 1006, "response.output_text.delta"),
        ("close_1011", 1011, "response.output_text.delta"),
        ("close_1012", 1012, "response.output_text.delta"),
        ("close_4000", 4000, "response.output_text.delta"),
    ],
)
async def test_upstream_end_is_reported_and_id_reusable(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    fault: str,
    code: int,
    after: str | None,
) -> None:
    """A drop or server close gives `disconnected` with the real code; connect works again."""
    await start_bridge(broker, simulator)
    await open_connection(client, "c1")
    await client.command("c1", {"action": "send", "event": faulty(fault)})
    messages = await client.until(lambda m: m.get("action") == "disconnected")
    notice = messages[-1]
    assert notice["object"] == "response.websocket.connection"
    assert notice["code"] == code
    assert isinstance(notice["reason"], str)
    types = [m.get("type") for m in messages]
    if after is not None:
        assert after in types
    await open_connection(client, "c1")


async def test_server_error_events_are_relayed(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """An `error` event from the server is a server event: relayed, connection kept."""
    await start_bridge(broker, simulator)
    await open_connection(client, "c1")
    await client.command(
        "c1", {"action": "send", "event": create(previous_response_id="resp_unknown", store=False)}
    )
    messages = await client.until(lambda m: m.get("type") == "error")
    assert messages[-1]["error"]["code"] == "previous_response_not_found"
    await client.command("c1", {"action": "send", "event": create()})
    await client.until(lambda m: m.get("type") == "response.completed")


async def test_silent_upstream_is_not_timed_out(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """A server silent mid-stream, but answering pings, is not a dead server."""
    await start_bridge(broker, simulator, openai={"ping_interval": 0.2, "ping_timeout": 0.5})
    await open_connection(client, "c1")
    await client.command("c1", {"action": "send", "event": faulty("gap_2")})
    messages = await client.until(
        lambda m: m.get("type") == "response.completed" or m.get("action") == "disconnected",
        wait=15,
    )
    assert messages[-1]["type"] == "response.completed"


async def test_dead_upstream_is_detected_by_pings(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """A server that stops answering pings ends in `disconnected` (1011), not a hang."""
    await start_bridge(broker, simulator, openai={"ping_interval": 0.2, "ping_timeout": 0.5})
    await open_connection(client, "c1")
    await client.command("c1", {"action": "send", "event": faulty("hang")})
    messages = await client.until(lambda m: m.get("action") == "disconnected", wait=15)
    assert messages[-1]["code"] == 1011


class DelayingProxy:
    """A TCP proxy to the simulator that holds the first connection for ``delay`` seconds."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.accepted = 0
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.accepted == 1:
            await asyncio.sleep(self.delay)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DelayingProxy]:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self.server.close()


async def test_ids_never_wait_on_each_other(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """While one id's handshake hangs, another id connects, streams and closes."""
    async with DelayingProxy(simulator.port, 3 * SECOND).running() as proxy:
        await start_bridge(
            broker, simulator, openai={"base_url": f"http://127.0.0.1:{proxy.port}/v1"}
        )
        await client.command("slow", {"action": "connect"})
        await asyncio.sleep(0.2 * SECOND)  # "slow" holds the proxy's first connection
        await client.command("fast", {"action": "connect"})
        await client.command("fast", {"action": "send", "event": create()})
        await client.command("fast", {"action": "close"})
        messages = await client.until(
            lambda m: m.get("connection_id") == "fast" and m.get("action") == "close",
            wait=2.5,
        )
        assert all(m.get("connection_id") != "slow" for m in messages)
        ack = await client.next_json(wait=10)
        assert (ack["connection_id"], ack["action"]) == ("slow", "connect")


async def test_two_streams_interleave_independently(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """Two ids stream at once; each one's events stay complete and in order."""
    options = SimulatorOptions(api_key=KEY, tokens_per_second=200)
    async with Simulator(options) as paced:
        await start_bridge(broker, paced)
        for connection_id in ("a", "b"):
            await open_connection(client, connection_id)
        for connection_id in ("a", "b"):
            await client.command(connection_id, {"action": "send", "event": create()})
        done: set[str] = set()
        events: dict[str, list[int]] = {"a": [], "b": []}
        async with asyncio.timeout(15 * SECOND):
            while done != {"a", "b"}:
                message = await client.next()
                event = body(message)
                connection_id = message.topic.value.split("/")[1]
                if "sequence_number" in event:
                    events[connection_id].append(event["sequence_number"])
                if event.get("type") == "response.completed":
                    done.add(connection_id)
        for numbers in events.values():
            assert numbers == list(range(len(numbers)))


async def test_broker_restart_mid_stream_loses_nothing(
    persistent_broker: Broker, start_bridge: Any
) -> None:
    """Mosquitto restarts during a stream: every event arrives once, in order (QoS 1)."""
    broker = persistent_broker
    options = SimulatorOptions(api_key=KEY, tokens_per_second=150)
    async with Simulator(options) as paced:
        bridge = await start_bridge(broker, paced)
        subscriber = Client(broker, client_id="persistent-sub", persistent=True)
        await subscriber.connect(subscribe=("ai/+/events",))
        try:
            await open_connection(subscriber, "c1")
            long_text = "Explain in detail how tulips grow, bloom and spread in spring. " * 3
            await subscriber.command(
                "c1", {"action": "send", "event": create(long_text, max_output_tokens=400)}
            )
            before = await subscriber.until(lambda m: m.get("type") == "response.output_text.delta")
            await subscriber.disconnect()
            broker.stop()
            await asyncio.sleep(1.0 * SECOND)  # the stream goes on into the bridge's buffer
            broker.start()
            await subscriber.connect()
            after = await subscriber.until(
                lambda m: m.get("type") in {"response.completed", "response.incomplete"}, wait=30
            )
        finally:
            await subscriber.disconnect()
        assert bridge.service.link.connects >= 2
    numbers = [m["sequence_number"] for m in before[1:] + after if "sequence_number" in m]
    assert before[0]["action"] == "send"
    missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
    duplicated = sorted({n for n in numbers if numbers.count(n) > 1})
    assert (missing, duplicated) == ([], []), numbers
    assert numbers == list(range(len(numbers)))  # in order
    assert len(numbers) > 30
    assert any(m.get("type") == "response.output_text.delta" for m in after)  # mid-stream


async def test_api_key_never_published_or_logged(
    broker: Broker, simulator: Simulator, start_bridge: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The canary key appears in no MQTT byte on any topic and in no log line."""
    caplog.set_level(logging.DEBUG)
    async with Client(broker) as spy:
        await spy.subscribe("#")
        await start_bridge(broker, simulator)
        await start_bridge(
            broker, simulator, mqtt={"topic_prefix": "q"}, openai={"api_key_query_param": "api-key"}
        )
        await start_bridge(
            broker,
            simulator,
            mqtt={"topic_prefix": "bad"},
            openai={"query": {"simulator_status": "401"}},
        )
        for prefix in ("ai", "q", "bad"):
            await spy.command("c1", {"action": "connect"}, prefix=prefix)
            await spy.command("c1", {"action": "send", "event": create()}, prefix=prefix)
            await spy.command("c1", b"{broken", prefix=prefix)
            await spy.command("c1", {"action": "close"}, prefix=prefix)
        traffic = await spy.quiet(2)
    payloads = b"".join(m.payload for m in traffic if isinstance(m.payload, bytes))
    assert b'"action":"close"' in payloads  # the run did reach the end
    assert b"upstream_connect_failed" in payloads
    assert b"api-key=REDACTED" in payloads
    assert KEY.encode() not in payloads
    # The in-process simulator's own server logs would show the key it was sent;
    # everything the bridge logs (its libraries included) must not.
    lines = [
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith(("bridge.simulator", "websockets.server"))
    ]
    assert any("Authorization" in line for line in lines)  # headers were logged...
    assert not [line for line in lines if KEY in line]  # ...without the key
    assert len(lines) > 10
