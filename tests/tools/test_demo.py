"""The offline demo (the README's first command) runs the seed flow end to end."""

from __future__ import annotations

import io
import json

import pytest

from bridge_tools.demo import CONNECTION_ID, DemoOptions, run_demo
from bridge_tools.local_broker import free_port
from tests.conftest import Broker

pytestmark = pytest.mark.integration


async def test_demo_on_the_configured_broker(broker: Broker) -> None:
    """With a reachable broker, the demo uses it and shows the flow as it streams."""
    out = io.StringIO()
    await run_demo(
        DemoOptions(broker_host=broker.host, broker_port=broker.port, tokens_per_second=500), out
    )
    text = out.getvalue()
    assert f"{broker.host}:{broker.port} (the configured broker)" in text
    lines = [line.strip() for line in text.splitlines()]
    order = [
        "→ connect",
        "← connected",
        "→ send",
        "← accepted",
        "← streaming",
        "← completed",
        "→ close",
        "← close",
        "→ ask",
    ]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(step)) for step in order]
    assert positions == sorted(positions)
    streamed = lines[positions[4] + 1]
    assert len(streamed.split()) > 5  # the answer's text, streamed onto one line
    assert "{" not in text  # for people, not a wall of JSON


async def test_demo_starts_a_private_broker_when_none_answers() -> None:
    """With nothing on the configured port, the demo brings its own Mosquitto."""
    out = io.StringIO()
    await run_demo(DemoOptions(broker_port=free_port(), tokens_per_second=500, raw=True), out)
    lines = out.getvalue().splitlines()
    received = [json.loads(line[2:]) for line in lines if line.startswith("< ")]
    assert received[0]["action"] == "connect"
    assert received[0]["connection_id"] == CONNECTION_ID
    closes = [event for event in received if event.get("action") == "close"]
    assert closes[0] == {
        "object": "response.websocket.connection",
        "action": "close",
        "connection_id": CONNECTION_ID,
        "code": 1000,
        "reason": "Example flow complete",
    }
    assert received[-1] == closes[1]  # the asks' connection, closed at the end
    # Then two asks: the second continues the first (the simulator says so).
    completed = [event for event in received if event.get("type") == "response.completed"]
    assert len(completed) == 3
    assert sum(event.get("action") == "ask" for event in received) == 2
    follow_up = completed[2]["response"]["output"][0]["content"][0]["text"]
    assert follow_up.startswith(("Building on", "Following up", "To continue"))
