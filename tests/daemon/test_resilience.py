"""End to end under trouble: upstream drops and closes, slow handshakes, broker restarts,
and the API key canary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY, Broker, Client, body
from tests.helpers import SECOND, free_port

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
        ("close_1001", 1001, "response.output_text.delta"),
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


async def test_connection_age_limit_error_is_relayed(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """After the (here: 1 s) connection limit the server's error is relayed; a new
    connection on the same id works."""
    async with Simulator(SimulatorOptions(api_key=KEY, max_connection_age=1.0 * SECOND)) as aging:
        await start_bridge(broker, aging)
        await open_connection(client, "c1")
        await asyncio.sleep(1.2 * SECOND)  # past the simulator's connection age
        await client.command("c1", {"action": "send", "event": create()})
        messages = await client.until(lambda m: m.get("type") == "error")
        assert messages[-1]["error"]["code"] == "websocket_connection_limit_reached"
        await client.command("c1", {"action": "close"})
        await client.until(lambda m: m.get("action") == "close")
        await open_connection(client, "c1")


async def test_connection_age_limit_pushed_then_closed(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """A server that pushes the limit error on an idle socket and closes: error, then
    `disconnected` with its code, and the id is free again."""
    options = SimulatorOptions(api_key=KEY, max_connection_age=0.5, push_limit_error=True)
    async with Simulator(options) as aging:
        await start_bridge(broker, aging)
        await open_connection(client, "c1")
        messages = await client.until(lambda m: m.get("action") == "disconnected")
        assert [m.get("type") for m in messages[:-1]] == ["error"]
        assert messages[0]["error"]["code"] == "websocket_connection_limit_reached"
        assert messages[-1]["code"] == 1000
        await open_connection(client, "c1")


@pytest.fixture
async def untrusted_tls_server(tmp_path: Path) -> AsyncIterator[int]:
    """A TLS server with a self-signed certificate nobody trusts; yields its port."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("base_url", "status", "words"),
    [
        ("{sim}?simulator_status=401", 401, "Incorrect API key"),
        ("{sim}?simulator_status=403", 403, ""),
        ("{sim}?simulator_status=429&simulator_retry_after=7", 429, "Retry-After: 7"),
        ("{sim}?simulator_status=500", 500, ""),
        ("{sim}?simulator_status=503", 503, ""),
        ("http://127.0.0.1:{closed}/v1", None, "refused"),
        ("http://no-such-host.invalid/v1", None, "resolve"),
        ("https://127.0.0.1:{sim_port}/v1", None, "reset"),
        ("https://127.0.0.1:{untrusted}/v1", None, "TLS handshake failed"),
    ],
)
async def test_handshake_failures(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    untrusted_tls_server: int,
    base_url: str,
    status: int | None,
    words: str,
) -> None:
    """Each refused or failed handshake: upstream_connect_failed, the status, no secret."""
    url = base_url.format(
        sim=simulator.base_url,
        sim_port=simulator.port,
        closed=free_port(),
        untrusted=untrusted_tls_server,
    )
    await start_bridge(
        broker, simulator, openai={"base_url": url, "connect_attempts": 2, "open_timeout": 3}
    )
    await client.command("c1", {"action": "connect", "request_id": "r1"})
    error = await client.next_json(wait=20)
    assert error["error"]["code"] == "upstream_connect_failed"
    assert error["error"].get("status") == status
    assert words in error["error"]["message"]
    assert error["request_id"] == "r1"
    assert KEY not in json.dumps(error)
    if status in (500, 503):  # 5xx is tried again, 4xx is not
        assert len(simulator.handshakes) == 2
    elif status is not None:
        assert len(simulator.handshakes) == 1


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


async def start_long_stream(subscriber: Client) -> list[dict[str, Any]]:
    """Open c1 and ask for a long answer; return what arrived up to the first delta."""
    await open_connection(subscriber, "c1")
    text = "Explain in detail how tulips grow, bloom and spread in spring. " * 3
    await subscriber.command("c1", {"action": "send", "event": create(text, max_output_tokens=400)})
    return await subscriber.until(lambda m: m.get("type") == "response.output_text.delta")


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
            before = await start_long_stream(subscriber)
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


async def test_broker_away_longer_than_the_buffer_ends_the_stream_clearly(
    persistent_broker: Broker, start_bridge: Any
) -> None:
    """The buffer fills while the broker is down: the stream is cut with `disconnected`
    1013 after what was kept, never a silent gap, and memory stays bounded."""
    broker = persistent_broker
    options = SimulatorOptions(api_key=KEY, tokens_per_second=100)
    async with Simulator(options) as paced:
        bridge = await start_bridge(
            broker, paced, mqtt={"buffer_max_messages": 20}, limits={"event_buffer_wait": 0.5}
        )
        subscriber = Client(broker, client_id="persistent-sub-2", persistent=True)
        await subscriber.connect(subscribe=("ai/+/events",))
        try:
            before = await start_long_stream(subscriber)
            await subscriber.disconnect()
            broker.stop()
            await paced.wait_for(lambda: paced.open_connections == 0, 10 * SECOND)
            broker.start()
            await subscriber.connect()
            after = await subscriber.until(lambda m: m.get("action") == "disconnected", wait=20)
        finally:
            await subscriber.disconnect()
        peak = bridge.service.link.outbox.peak
    notice = after[-1]
    assert (notice["code"], notice["reason"].split(":")[0]) == (1013, "event buffer full")
    numbers = [m["sequence_number"] for m in before[1:] + after if "sequence_number" in m]
    # A prefix of the stream, no hole in it. Across a broker outage QoS 1 is at
    # least once (README, Ordering): what the broker took but had not acknowledged
    # when it stopped comes again, so repeats are allowed, never a gap.
    first_seen = list(dict.fromkeys(numbers))
    assert first_seen == list(range(len(first_seen)))
    assert not any(m.get("type") == "response.completed" for m in after)
    # The bound, plus the bridge's own few retained messages a reconnect queues again:
    # state, info, its presence (joining, then online), its usage and P/bridge/usage.
    assert peak <= 20 + 8


async def test_a_full_buffer_is_one_warning_however_many_connections_wait(
    broker: Broker, start_bridge: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Many readers waiting for room in the buffer log one warning, not one each."""
    caplog.set_level(logging.INFO, logger="bridge.daemon.service")
    caplog.set_level(logging.INFO, logger="bridge.daemon.relay")
    options = SimulatorOptions(api_key=KEY, tokens_per_second=200)
    async with Simulator(options) as paced:
        await start_bridge(
            broker, paced, mqtt={"buffer_max_messages": 20}, limits={"event_buffer_wait": 0.5}
        )
        subscriber = Client(broker)
        await subscriber.connect(subscribe=("ai/+/events",))
        try:
            ids = ["c1", "c2", "c3"]
            for connection_id in ids:
                await open_connection(subscriber, connection_id)
            text = "Explain in detail how tulips grow, bloom and spread in spring. " * 3
            for connection_id in ids:
                event = create(text, max_output_tokens=400)
                await subscriber.command(connection_id, {"action": "send", "event": event})
            await subscriber.until(lambda m: m.get("type") == "response.output_text.delta")
        finally:
            await subscriber.disconnect()
        broker.stop()
        await paced.wait_for(lambda: paced.open_connections == 0, 10 * SECOND)
    daemon = ("bridge.daemon.service", "bridge.daemon.relay")
    messages = [r.getMessage() for r in caplog.records if r.name in daemon]
    assert sum("ending the connection" in m for m in messages) == 3
    assert sum(m.startswith("event buffer full") for m in messages) == 1
    assert [m for m in messages if m.startswith("event buffer: no reader waits")] == [
        m for m in messages if m.endswith("(3 connections ended)")
    ]
    assert sum(m.endswith("(3 connections ended)") for m in messages) == 1


async def test_stalled_subscriber_does_not_hold_back_others(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """A subscriber that never reads does not slow the bridge or other subscribers."""
    bridge = await start_bridge(broker, simulator)
    stalled = socket.create_connection((broker.host, broker.port))
    # A raw MQTT 3.1.1 CONNECT + SUBSCRIBE to ai/+/events at QoS 1, then never read again.
    stalled.sendall(bytes.fromhex("101000044d5154540402003c0004") + b"stal")
    stalled.sendall(bytes.fromhex("820f0001000c") + b"ai/+/events" + b"\x01")
    try:
        await open_connection(client, "c1")
        for _ in range(3):
            await client.command("c1", {"action": "send", "event": create()})
            await client.until(lambda m: m.get("type") == "response.completed")
        # Everything was acknowledged by the broker: nothing waits on the stalled reader.
        await asyncio.wait_for(bridge.service.link.outbox.wait_empty(), 2 * SECOND)
    finally:
        stalled.close()


async def test_redelivered_command_is_not_carried_out_twice(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """The same send (same request_id, same bytes) twice: one ack, one upstream event."""
    await start_bridge(broker, simulator)
    await open_connection(client, "c1")
    send = json.dumps({"action": "send", "request_id": "r-1", "event": create()}).encode()
    await client.command("c1", send)
    await client.command("c1", send)
    messages = await client.until(lambda m: m.get("type") == "response.completed")
    assert [m.get("action") for m in messages].count("send") == 1
    assert [body(m) for m in await client.quiet(0.5)] == []
    assert len(simulator.received) == 1


async def test_command_flood_is_answered_not_queued(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Past the per-id rate, each command still gets exactly one answer: rate_limited."""
    await start_bridge(broker, simulator, limits={"commands_per_second": 5, "command_burst": 5})
    for n in range(15):
        await client.command("c1", {"action": "close", "request_id": str(n)})
    answers = [await client.next_json() for _ in range(15)]
    assert sorted(int(a["request_id"]) for a in answers) == list(range(15))
    codes = [a["error"]["code"] for a in answers]
    assert codes.count("not_open") >= 5
    assert codes.count("rate_limited") >= 5
    assert set(codes) == {"not_open", "rate_limited"}
    assert await client.quiet() == []


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
        if not record.name.startswith(("bridge_tools.simulator", "websockets.server"))
    ]
    assert any("Authorization" in line for line in lines)  # headers were logged...
    assert not [line for line in lines if KEY in line]  # ...without the key
    assert len(lines) > 10
