"""Idle close on a real Mosquitto: forgotten connections are closed, streams never cut."""

from __future__ import annotations

from typing import Any

import pytest

from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY, Broker, Client
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

CREATE = {"type": "response.create", "model": "m", "input": "Tell me about tulips."}


async def test_a_forgotten_connection_is_closed_and_the_id_reusable(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """A connection nobody uses for sessions.idle_timeout: close 1000, `disconnected`."""
    await start_bridge(broker, simulator, sessions={"idle_timeout": 1 * SECOND})
    await client.command("c1", {"action": "connect"})
    assert (await client.next_json())["action"] == "connect"
    notice = await client.next_json(wait=10)
    assert notice == {
        "object": "response.websocket.connection",
        "action": "disconnected",
        "connection_id": "c1",
        "code": 1000,
        "reason": "idle timeout",
    }
    assert [close.code for close in simulator.closes] == [1000]
    await client.command("c1", {"action": "connect"})
    assert (await client.next_json())["action"] == "connect"


async def test_a_stream_longer_than_the_timeout_is_not_cut(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """A request in flight is not idle: the answer completes, then the idle clock runs."""
    async with Simulator(SimulatorOptions(api_key=KEY, tokens_per_second=15)) as slow:
        await start_bridge(broker, slow, sessions={"idle_timeout": 0.5 * SECOND})
        await client.command("c1", {"action": "connect"})
        await client.command("c1", {"action": "send", "event": CREATE})
        seen = await client.until(lambda m: m.get("type") == "response.completed", wait=30)
        assert not any(m.get("action") == "disconnected" for m in seen)
        deltas = [m for m in seen if m.get("type") == "response.output_text.delta"]
        assert len(deltas) / 15 > 0.5 * SECOND  # it streamed for longer than the timeout
        assert (await client.next_json(wait=10))["reason"] == "idle timeout"


async def test_zero_switches_it_off(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    bridge = await start_bridge(broker, simulator, sessions={"idle_timeout": 0})
    await client.command("c1", {"action": "connect"})
    assert (await client.next_json())["action"] == "connect"
    assert await client.quiet(1.5) == []
    assert bridge.service.core.phase("c1") is not None
