"""End to end: a real Mosquitto, the simulator, the bridge, and an MQTT client.

Each test names one point of the contract (../shared/contract.md, the README's
"The MQTT contract") and fails if that point breaks.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge_tools.simulator import Simulator
from tests.conftest import KEY, Broker, Client, body, prop
from tests.helpers import eventually

pytestmark = pytest.mark.integration

CREATE = {
    "type": "response.create",
    "model": "gpt-5.4-nano-2026-03-17",
    "input": "Say hello from Responses websocket mode in one sentence.",
}
TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def is_action(action: str) -> Any:
    return lambda m: m.get("object") is not None and m.get("action") == action


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    """'ack:<action>' for the bridge's messages, the event type for server events."""
    return [f"ack:{m['action']}" if "object" in m else m["type"] for m in messages]


async def test_seed_flow(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """connect, send response.create, close: acks and every server event, in order."""
    await start_bridge(broker, simulator)
    await client.command(
        "demo-connection-1", {"action": "connect", "connection_id": "demo-connection-1"}
    )
    ack = await client.next_json()
    assert ack == {
        "object": "response.websocket.connection",
        "action": "connect",
        "connection_id": "demo-connection-1",
        "url": simulator.url,
    }

    await client.command(
        "demo-connection-1",
        {"action": "send", "connection_id": "demo-connection-1", "event": CREATE},
    )
    stream = await client.until(lambda m: m.get("type") in TERMINAL)
    assert stream[0] == {
        "object": "response.websocket.client_event",
        "action": "send",
        "connection_id": "demo-connection-1",
        "event_type": "response.create",
    }
    events = stream[1:]
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 1
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == "".join(deltas)

    await client.command(
        "demo-connection-1",
        {
            "action": "close",
            "connection_id": "demo-connection-1",
            "reason": "Example flow complete",
        },
    )
    assert await client.next_json() == {
        "object": "response.websocket.connection",
        "action": "close",
        "connection_id": "demo-connection-1",
        "code": 1000,
        "reason": "Example flow complete",
    }
    assert await client.quiet() == []
    received = [frame.json() for frame in simulator.received]
    assert received == [CREATE]


async def test_back_to_back_commands_keep_their_order(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """connect, send, close published without waiting run in order, acks in order."""
    await start_bridge(broker, simulator)
    for command in (
        {"action": "connect"},
        {"action": "send", "event": CREATE},
        {"action": "close"},
    ):
        await client.command("c1", command)
    messages = await client.until(is_action("close"))
    seen = kinds(messages)
    assert seen[:2] == ["ack:connect", "ack:send"]
    assert seen[-1] == "ack:close"
    assert "ack:close" not in seen[:-1]
    # The close was queued behind the send: the upstream got the event, then our close.
    assert simulator.received
    assert simulator.received[0].json() == CREATE


async def test_server_events_are_relayed_byte_for_byte(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """The bridge publishes each server event exactly as the upstream sent it."""
    await start_bridge(broker, simulator)
    await client.command("c1", {"action": "connect"})
    await client.next()
    await client.command("c1", {"action": "send", "event": CREATE})
    await client.next()  # send ack
    raw: list[bytes] = []
    while True:
        message = await client.next()
        assert isinstance(message.payload, bytes)
        raw.append(message.payload)
        if json.loads(message.payload)["type"] == "response.completed":
            break
    for payload in raw:  # compact server JSON, untouched: no spaces added by re-encoding
        assert payload.startswith(b'{"type":"')


async def test_user_properties_and_content_type(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """MQTT v5 messages carry the seed's msg.openai fields as user properties."""
    await start_bridge(broker, simulator)
    await client.command("c1", {"action": "connect"})
    ack = await client.next()
    await client.command("c1", {"action": "send", "event": CREATE})
    await client.next()
    event = await client.next()
    assert dict(prop(ack, "UserProperty")) == {
        "transport": "responses.websocket",
        "direction": "bridge",
        "connection_id": "c1",
        "event_type": "connect",
    }
    assert dict(prop(event, "UserProperty")) == {
        "transport": "responses.websocket",
        "direction": "server",
        "connection_id": "c1",
        "event_type": "response.created",
    }
    assert prop(event, "ContentType") == "application/json"


async def test_request_id_is_echoed(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """request_id comes back in the ack or the error of its command."""
    await start_bridge(broker, simulator)
    await client.command("c1", {"action": "connect", "request_id": "r-connect"})
    assert (await client.next_json())["request_id"] == "r-connect"
    await client.command("c1", {"action": "connect", "request_id": "r-again"})
    error = await client.next_json()
    assert (error["error"]["code"], error["request_id"]) == ("already_open", "r-again")


async def test_response_topic_and_correlation_data(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """A v5 command's ack also goes to its Response Topic with its Correlation Data."""
    await start_bridge(broker, simulator)
    await client.subscribe("replies/me")
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = "replies/me"
    properties.CorrelationData = b"corr-42"
    await client.command("c1", {"action": "connect"}, properties=properties)
    first, second = await client.next(), await client.next()
    by_topic = {first.topic.value: first, second.topic.value: second}
    assert set(by_topic) == {"ai/c1/events", "replies/me"}
    reply = by_topic["replies/me"]
    assert prop(reply, "CorrelationData") == b"corr-42"
    assert body(reply)["action"] == "connect"


@pytest.mark.parametrize(
    ("connection_id", "payload", "code", "action"),
    [
        ("c1", b"{nope", "invalid_json", None),
        ("c1", b"[1]", "invalid_command", None),
        ("c1", {"action": "dance"}, "unknown_action", "dance"),
        ("c1", {"action": "connect", "connection_id": "c2"}, "connection_id_mismatch", "connect"),
        ("c1", {"action": "send", "event": CREATE}, "not_open", "send"),
        ("c1", {"action": "close"}, "not_open", "close"),
        (
            "c1",
            {"action": "send", "event": {"type": "response.steer"}},
            "event_type_not_allowed",
            "send",
        ),
        ("c1", b'{"action":"connect","pad":"' + b"x" * 2048 + b'"}', "payload_too_large", None),
        ("bridge", {"action": "connect"}, "invalid_connection_id", None),
        ("has space", {"action": "connect"}, "invalid_connection_id", None),
    ],
)
async def test_each_bad_input_gets_one_error(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    connection_id: str,
    payload: Any,
    code: str,
    action: str | None,
) -> None:
    """Every malformed command gets exactly one error event with a stable code."""
    await start_bridge(broker, simulator, limits={"max_command_bytes": 1024})
    await client.command(connection_id, payload)
    error = await client.next_json()
    assert error["object"] == "response.websocket.error"
    assert error["connection_id"] == connection_id
    assert error["action"] == action
    assert error["error"]["code"] == code
    assert error["error"]["message"]
    assert [(m.topic.value, m.payload) for m in await client.quiet()] == []
    assert simulator.handshakes == []


async def test_bad_input_does_not_disturb_other_connections(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Garbage on one id leaves another id's stream complete and in order."""
    await start_bridge(broker, simulator)
    await client.command("good", {"action": "connect"})
    await client.next()
    await client.command("good", {"action": "send", "event": CREATE})
    for garbage in (b"\xff", b"{", b"null", b'{"action":"send"}'):
        await client.command("bad", garbage)
    messages = await client.until(lambda m: m.get("type") == "response.completed")
    good = [m for m in messages if m.get("connection_id", "good") == "good" and "error" not in m]
    bad = [m for m in messages if m.get("connection_id") == "bad"]
    events = [m for m in good if "type" in m]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    bad += [m for m in [body(x) for x in await client.quiet()] if m.get("connection_id") == "bad"]
    assert len(bad) == 4
    assert all(m["object"] == "response.websocket.error" for m in bad)


async def test_retained_command_is_not_acted_on(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """A retained connect opens nothing; the bridge says why."""
    await client.command("c1", {"action": "connect"}, retain=True)
    await start_bridge(broker, simulator)
    error = await client.next_json()
    assert error["error"]["code"] == "retained_command"
    assert await client.quiet() == []
    assert simulator.handshakes == []


async def test_connection_limit(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Past limits.max_connections, connect is answered with limit_reached."""
    await start_bridge(broker, simulator, limits={"max_connections": 1})
    await client.command("a", {"action": "connect"})
    assert (await client.next_json())["action"] == "connect"
    await client.command("b", {"action": "connect"})
    error = await client.next_json()
    assert (error["connection_id"], error["error"]["code"]) == ("b", "limit_reached")


async def test_upstream_handshake_carries_configured_auth(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """The key goes as a Bearer header; org, project, extra headers and query go along."""
    await start_bridge(
        broker,
        simulator,
        openai={
            "organization": "org-1",
            "project": "proj-1",
            "headers": {"OpenAI-Beta": "responses_websockets=2026-02-06"},
            "query": {"api-version": "preview"},
        },
    )
    await client.command("c1", {"action": "connect"})
    ack = await client.next_json()
    assert ack["url"] == simulator.url + "?api-version=preview"
    (handshake,) = simulator.handshakes
    assert handshake.header("Authorization") == f"Bearer {KEY}"
    assert handshake.header("OpenAI-Organization") == "org-1"
    assert handshake.header("OpenAI-Project") == "proj-1"
    assert handshake.header("OpenAI-Beta") == "responses_websockets=2026-02-06"
    assert handshake.query == {"api-version": "preview"}


async def test_query_string_auth_is_redacted_in_the_ack(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """With the key in a query parameter, the upstream gets it and the ack shows REDACTED."""
    async with Simulator() as keyless:  # like a gateway that authenticates by query string
        await start_bridge(broker, keyless, openai={"api_key_query_param": "api-key"})
        await client.command("c1", {"action": "connect"})
        ack = await client.next_json()
        assert ack["url"] == keyless.url + "?api-key=REDACTED"
        (handshake,) = keyless.handshakes
        assert handshake.query == {"api-key": KEY}
        assert handshake.header("Authorization") is None


async def test_upstream_handshake_refused(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """A refused handshake answers upstream_connect_failed with the HTTP status, no secret."""
    await start_bridge(broker, simulator, openai={"query": {"simulator_status": "401"}})
    await client.command("c1", {"action": "connect", "request_id": "r1"})
    error = await client.next_json()
    assert error["error"]["code"] == "upstream_connect_failed"
    assert error["error"]["status"] == 401
    assert error["request_id"] == "r1"
    assert KEY not in json.dumps(error)
    # The id is free again: a later connect (to a healthy endpoint) is attempted.
    await client.command("c1", {"action": "send", "event": CREATE})
    assert (await client.next_json())["error"]["code"] == "not_open"


async def test_broker_state_online_then_offline(
    broker: Broker, simulator: Simulator, start_bridge: Any
) -> None:
    """P/bridge/state is `online` (retained) while running, `offline` after a clean stop."""
    bridge = await start_bridge(broker, simulator)
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/state")
        online = await watcher.next()
        assert (online.payload, online.retain) == (b"online", True)
        await bridge.stop()
        offline = await watcher.next()
        assert offline.payload == b"offline"
    async with Client(broker) as late:
        await late.subscribe("ai/bridge/state")
        retained = await late.next()
        assert (retained.payload, retained.retain) == (b"offline", True)


async def test_graceful_stop_closes_upstreams(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """On stop: close 1001 upstream, a close ack per connection, then offline."""
    bridge = await start_bridge(broker, simulator)
    for connection_id in ("a", "b"):
        await client.command(connection_id, {"action": "connect"})
    await client.until(lambda m: m.get("connection_id") == "b")
    if len(simulator.handshakes) < 2:
        await client.next_json()
    await client.subscribe("ai/bridge/state")
    await client.next()  # the retained online
    await bridge.stop()
    messages = [await client.next() for _ in range(3)]
    acks = [body(m) for m in messages[:2]]
    assert sorted(a["connection_id"] for a in acks) == ["a", "b"]
    for ack in acks:
        assert (ack["action"], ack["code"], ack["reason"]) == (
            "close",
            1001,
            "bridge shutting down",
        )
    assert messages[2].payload == b"offline"
    await eventually(lambda: len(simulator.closes) >= 2, what="the simulator saw both closes")
    assert [close.code for close in simulator.closes] == [1001, 1001]
