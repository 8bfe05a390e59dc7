"""Every task the daemon starts is supervised: a bug ends one connection, never an id's future."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from bridge.protocol.upstream_events import ServerEvents
from bridge.upstream.connection import Upstream, UpstreamConnection
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

CREATE = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Name three tulips."}


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The ERROR lines with a traceback the supervisor wrote."""
    return [
        record
        for record in caplog.records
        if record.name == "bridge.daemon.service"
        and record.levelno >= logging.ERROR
        and record.exc_info
    ]


async def connect(client: Client, connection_id: str) -> dict[str, Any]:
    await client.command(connection_id, {"action": "connect"})
    messages = await client.until(lambda m: m.get("connection_id") == connection_id)
    return messages[-1]


async def test_a_relay_that_fails_ends_its_connection_and_the_id_connects_again(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected error in the relay: one traceback, `disconnected` 1011, the id reusable."""
    relay_event = ServerEvents.upstream_event  # the core's hot path (BridgeCore.upstream_event)
    failed: list[bytes] = []

    def fails_once(events: ServerEvents, connection_id: str, raw: bytes) -> Any:
        if not failed:
            failed.append(raw)
            raise RuntimeError("a bug in the relay")
        return relay_event(events, connection_id, raw)

    monkeypatch.setattr(ServerEvents, "upstream_event", fails_once)
    bridge = await start_bridge(broker, simulator)
    assert (await connect(client, "c1"))["action"] == "connect"
    await client.command("c1", {"action": "send", "event": CREATE})
    messages = await client.until(lambda m: m.get("action") == "disconnected")
    notice = messages[-1]
    assert (notice["connection_id"], notice["code"]) == ("c1", 1011)
    assert "internal error of the bridge" in notice["reason"]
    assert len(tracebacks(caplog)) == 1
    assert "a bug in the relay" in caplog.text
    assert bridge.service.core.idle  # nothing left for a stop to wait for

    # The id is free again: it connects and streams as if nothing happened.
    assert (await connect(client, "c1"))["action"] == "connect"
    await client.command("c1", {"action": "send", "event": CREATE})
    await client.until(lambda m: m.get("type") == "response.completed")
    assert bridge.service.connection_count == 1
    assert len(tracebacks(caplog)) == 1


async def test_an_opener_that_fails_answers_its_connect_and_stops_in_time(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected error while opening: the connect gets internal_error, the id connects
    again, and a stop does not wait out its grace for the failed task."""
    open_upstream = Upstream.open
    failed: list[bool] = []

    async def fails_once(upstream: Upstream) -> UpstreamConnection:
        if not failed:
            failed.append(True)
            raise RuntimeError("a bug in the opener")
        return await open_upstream(upstream)

    monkeypatch.setattr(Upstream, "open", fails_once)
    bridge = await start_bridge(broker, simulator, shutdown={"grace_seconds": 20 * SECOND})
    await client.command("o1", {"action": "connect", "request_id": "r1"})
    error = await client.next_json()
    assert (error["action"], error["request_id"]) == ("connect", "r1")
    assert error["error"]["code"] == "internal_error"
    assert len(tracebacks(caplog)) == 1

    assert (await connect(client, "o1"))["action"] == "connect"
    await client.command("o1", {"action": "close"})
    await client.until(lambda m: m.get("action") == "close")
    assert bridge.service.connection_count == 0
    started = time.monotonic()
    await bridge.stop()
    assert time.monotonic() - started < 5 * SECOND  # nothing left to wait for
