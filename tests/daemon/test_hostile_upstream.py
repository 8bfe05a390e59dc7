"""An upstream that lies, against the real bridge and a real Mosquitto.

A small WebSocket server (:mod:`tests.hostile_upstream`) stands in for
OpenAI and sends exactly the bad frames: usage no budget can hold, error
events that are not JSON, frames that only look like events.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, Client, body
from tests.helpers import SECOND, free_port
from tests.hostile_upstream import Frame, HostileUpstream, TextBytes, answer
from tests.ops_helpers import daemon_config, finish, spawn_daemon

pytestmark = pytest.mark.integration

DIGITS_4300 = 10**4299  # Python reads and writes integers of at most 4,300 digits


def is_end(message: dict[str, Any]) -> bool:
    return message.get("type") == "response.completed" or (
        "error" in message and "object" in message
    )


async def ask(client: Client, connection_id: str, request_id: str) -> dict[str, Any]:
    """Ask; the answer's response.completed, or the bridge's error that ended it."""
    await client.command(connection_id, {"action": "ask", "input": "Hi", "request_id": request_id})
    seen = await client.until(is_end)
    assert not [m for m in seen if m.get("action") == "disconnected"], seen
    return seen[-1]


async def retained(client: Client, ready: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The documents on retained topics once each satisfies its ``ready[topic]``."""
    found: dict[str, dict[str, Any]] = {}
    while len(found) < len(ready):
        message = await client.next(20)
        topic = message.topic.value
        if topic in ready and message.payload and ready[topic](body(message)):
            found[topic] = body(message)
    return found


async def online(broker: Broker, config: Path) -> Any:
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/state")
        process = spawn_daemon(config)
        while (message := await watcher.next(20)).payload != b"online" or message.retain:
            pass
    return process


async def test_a_huge_usage_is_not_believed_and_the_bridge_goes_on(
    broker: Broker, tmp_path: Path
) -> None:
    """4,300-digit usage with metrics on: every later ask is answered (the budget
    refusal too), P/bridge/usage and P/bridge/info go on, SIGTERM exits 0."""
    lie = {"input_tokens": DIGITS_4300, "output_tokens": 10**399, "total_tokens": DIGITS_4300}
    async with HostileUpstream(lambda event, number: answer("Hi there", lie)) as upstream:
        config = daemon_config(
            tmp_path,
            {"host": broker.host, "port": broker.port},
            openai={"base_url": upstream.base_url},
            limits={"budgets": {"tokens_per_day": 20}},
            metrics={"enabled": True, "host": "127.0.0.1", "port": free_port()},
        )
        process = await online(broker, config)
        try:
            async with Client(broker) as client:
                await client.subscribe("ai/+/events")
                for connection_id in ("h1", "h2"):
                    completed = await ask(client, connection_id, "first")
                    assert completed["type"] == "response.completed"
                    refused = await ask(client, connection_id, "second")
                    assert refused["error"]["code"] == "budget_exceeded", refused
                    assert refused["request_id"] == "second"
                    assert "used" in refused["error"]["message"]
            # Read apart from the asks (whose waits pass over other topics): the retained
            # documents come on subscribe, or live once the bridge publishes them.
            async with Client(broker) as reader:
                await reader.subscribe("ai/bridge/usage", "ai/bridge/info")
                documents = await retained(
                    reader,
                    {
                        "ai/bridge/usage": lambda d: d["id_count"] == 2,
                        "ai/bridge/info": lambda d: d["responses_completed"] == 2,
                    },
                )
                usage, info = documents["ai/bridge/usage"], documents["ai/bridge/info"]
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 30 * SECOND)
        finally:
            _, stderr = finish(process)
    # Counted by the output's size (bytes / 4), not believed, never zero.
    per_answer = usage["ids"]["h1"]["total"]
    assert 20 <= per_answer < 100
    assert usage["tokens"]["total"] == 2 * per_answer
    assert info["tokens_today"] == 2 * per_answer
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.count("usage was not taken as sent") == 2, stderr  # once per connection
    assert "input_tokens is more than 1,000,000,000" in stderr


@pytest.mark.parametrize(
    "lie",
    [
        {"input_tokens": -5, "output_tokens": -7, "total_tokens": -12},
        {"input_tokens": 2.5, "output_tokens": 1e3, "total_tokens": 1002.5},
        {"input_tokens": "5", "output_tokens": "lots", "total_tokens": "many"},
        None,
    ],
)
async def test_usage_that_is_not_counts_still_spends_the_budget(
    broker: Broker, tmp_path: Path, start_bridge: Any, client: Client, lie: Any
) -> None:
    """Negative, float, string or missing usage is counted by the output's size, not as 0."""
    async with HostileUpstream(lambda event, number: answer("x" * 200, lie)) as upstream:
        await start_bridge(broker, upstream, limits={"budgets": {"tokens_per_day": 50}})
        assert (await ask(client, "z1", "first"))["type"] == "response.completed"
        refused = await ask(client, "z1", "second")
        assert refused["error"]["code"] == "budget_exceeded"
        assert len(upstream.received) == 1  # the second never went upstream


DEEP = 200_000
BAD_ERRORS = {
    "invalid JSON": '{"type":"error","error":{"code":"server_error","message":"oops"',
    "200,000 levels deep": '{"type":"error","error":' + "[" * DEEP + "]" * DEEP + "}",
    "a 5,000-digit number": '{"type":"error","error":{"code":' + "9" * 5000 + "}}",
}


@pytest.mark.parametrize("bad", BAD_ERRORS.values(), ids=BAD_ERRORS.keys())
async def test_a_malformed_error_ends_the_ask_with_invalid_server_event(
    broker: Broker,
    tmp_path: Path,
    start_bridge: Any,
    client: Client,
    bad: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ask's request id gets invalid_server_event; no 1011, no traceback; the id goes on."""

    def script(event: dict[str, Any], number: int) -> list[str]:
        return [bad] if number == 0 else answer("Fine.", {"input_tokens": 1, "output_tokens": 2})

    async with HostileUpstream(script) as upstream:
        await start_bridge(broker, upstream)
        error = await ask(client, "e1", "q1")
        assert error["error"]["code"] == "invalid_server_event", error
        assert (error["action"], error["request_id"]) == ("ask", "q1")
        assert (await ask(client, "e1", "q2"))["type"] == "response.completed"
    assert upstream.sockets == 1  # the same socket went on
    assert not [record for record in caplog.records if record.exc_info], caplog.text


NOT_EVENTS: list[Frame] = [
    '{"type":"response.output_text.delta","delta":"cut short"',
    '{"type":"response.output_text.delta"garbage}',
    TextBytes(b'{"type":"response.output_text.delta","delta":"\xff\xfe"}'),
    b'{"type":"response.output_text.delta","delta":"\xc3("}',  # binary, not UTF-8
]


async def test_frames_that_only_look_like_events_are_not_relayed(
    broker: Broker, tmp_path: Path, start_bridge: Any, client: Client
) -> None:
    """Each is an invalid_server_event error; the events around them pass as sent."""
    frames = answer("Fine.", {"input_tokens": 1, "output_tokens": 2})
    script = [frames[0], *NOT_EVENTS, *frames[1:]]
    async with HostileUpstream(lambda event, number: script) as upstream:
        await start_bridge(broker, upstream)
        await client.command("f1", {"action": "connect"})
        await client.until(lambda m: m.get("action") == "connect")
        await client.command("f1", {"action": "send", "event": {"type": "response.create"}})
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1].get("type") != "response.completed":
            message = await client.next()
            assert isinstance(message.payload, bytes)
            seen.append(json.loads(message.payload))  # every message is JSON
    errors = [m["error"]["code"] for m in seen if "error" in m]
    assert errors == ["invalid_server_event"] * len(NOT_EVENTS)
    assert [m["type"] for m in seen if "type" in m] == [
        "response.created",
        "response.output_text.delta",
        "response.completed",
    ]
