"""`status` on a real Mosquitto and the simulator: what the bridge holds for an id."""

from __future__ import annotations

from typing import Any

import pytest

from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client

pytestmark = pytest.mark.integration


async def test_status_reports_the_connection_and_the_conversation(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Nothing held, then an `ask` session: open, its profile, one turn remembered."""
    await start_bridge(broker, simulator)
    await client.command("kitchen", {"action": "status", "request_id": "s1"})
    (before,) = await client.until(lambda m: m.get("action") == "status")
    assert before == {
        "object": "response.websocket.status",
        "action": "status",
        "connection_id": "kitchen",
        "state": "closed",
        "profile": None,
        "requests_in_flight": 0,
        "conversation": None,
        "output_status": None,
        "request_id": "s1",
    }
    await client.command("kitchen", {"action": "ask", "input": "Describe tulips."})
    await client.until(lambda m: m.get("type") == "response.completed")
    await client.command("kitchen", {"action": "status", "request_id": "s2"})
    seen = await client.until(lambda m: m.get("action") == "status")
    after = seen[-1]
    assert (after["state"], after["profile"], after["requests_in_flight"]) == (
        "open",
        "default",
        0,
    )
    assert after["conversation"] == {"profile": "default", "turns": 1}
    assert after["request_id"] == "s2"
