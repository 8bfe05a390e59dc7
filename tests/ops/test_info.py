"""P/bridge/info: retained, refreshed on change at most once a second, never a secret."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from bridge import __version__
from bridge_tools.simulator import Simulator
from tests.conftest import KEY, Broker, Client, body, bridge_settings
from tests.helpers import SECOND
from tests.ops_helpers import OpsBridge, next_on

INFO = "ai/bridge/info"
CREATE = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Name three tulips."}


async def info_where(client: Client, predicate: Any, wait: float = 10) -> dict[str, Any]:
    """The first info document that satisfies ``predicate``."""
    deadline = time.monotonic() + wait * SECOND
    while True:
        left = max(deadline - time.monotonic(), 0) / SECOND
        document = body(await next_on(client, INFO, left))
        if predicate(document):
            return document


async def first_info(broker: Broker) -> None:
    """Until the bridge has published its info (once it has read the day's usage back)."""
    async with Client(broker) as watcher:
        await watcher.subscribe(INFO)
        await next_on(watcher, INFO)


@pytest.mark.integration
async def test_info_is_retained_complete_and_secret_free(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """A late subscriber gets the retained info: version, uptime, counts, config; no secret."""
    settings = bridge_settings(broker, simulator, tmp_path, mqtt={"password": "pw-info-canary"})
    async with OpsBridge(settings), Client(broker) as client:
        await first_info(broker)
        await client.subscribe(INFO)
        message = await next_on(client, INFO)
        assert message.retain
        raw = message.payload
        assert isinstance(raw, bytes)
        document = json.loads(raw)
    assert document["version"] == __version__
    assert document["connections"] == 0
    assert document["uptime_seconds"] >= 0
    assert document["started_at"].endswith("Z")
    assert document["last_error"] is None
    assert document["config"]["mqtt"]["topic_prefix"] == "ai"
    assert document["config"]["openai"]["api_key"] is True
    assert document["config"]["openai"]["websocket_url"] == settings.endpoint.display_url
    assert KEY.encode() not in raw
    assert b"pw-info-canary" not in raw


@pytest.mark.integration
async def test_info_follows_connections_tokens_and_errors(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """Info changes with the connection count, counts usage tokens, keeps the last error."""
    async with OpsBridge(bridge_settings(broker, simulator, tmp_path)), Client(broker) as client:
        await client.subscribe(INFO, "ai/+/events")
        await info_where(client, lambda d: d["connections"] == 0)
        await client.command("t1", {"action": "connect"})
        await info_where(client, lambda d: d["connections"] == 1)
        await client.command("t1", {"action": "send", "event": CREATE})
        completed = await next_on(client, "ai/t1/events")
        while body(completed).get("type") != "response.completed":
            completed = await next_on(client, "ai/t1/events")
        assert isinstance(completed.payload, bytes)
        usage = body(completed)["response"]["usage"]
        document = await info_where(client, lambda d: d["tokens_today"] > 0)
        assert document["tokens_today"] == usage["total_tokens"] > 0
        assert document["responses_completed"] == 1

        await client.command("nobody", {"action": "send", "event": CREATE})
        document = await info_where(client, lambda d: d["last_error"] is not None)
        assert document["last_error"]["code"] == "not_open"
        assert document["last_error"]["connection_id"] == "nobody"

        await client.command("t1", {"action": "close"})
        await info_where(client, lambda d: d["connections"] == 0)


@pytest.mark.integration
async def test_info_bursts_are_coalesced_to_one_a_second(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """Twelve connects over 1.2 s make an info a second at most, not twelve; the last says 12."""
    async with OpsBridge(bridge_settings(broker, simulator, tmp_path)), Client(broker) as client:
        await client.subscribe(INFO)
        await info_where(client, lambda d: d["connections"] == 0)
        started = time.monotonic()
        for n in range(12):
            await client.command(f"burst-{n}", {"action": "connect"})
            await asyncio.sleep(0.1 * SECOND)  # the burst's pace, not a wait for anything
        # Every info published since the burst began (the client queues them all), up to
        # the one that counts the twelfth connection.
        seen = await client.until(lambda document: document["connections"] == 12)
        elapsed = time.monotonic() - started
    # The first change goes out at once, then at most one a second.
    assert len(seen) <= elapsed + 1
    assert seen[-1]["connections"] == 12


@pytest.mark.integration
async def test_info_is_republished_after_the_broker_lost_it(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """A broker restarted without persistence forgets retained messages: info comes back."""
    async with OpsBridge(bridge_settings(broker, simulator, tmp_path)) as running:
        await first_info(broker)
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
        assert running.bridge is not None
        await running.bridge.ready()
        # Until the bridge is back and has said its info again (a watcher sees it live or,
        # subscribing late, retained), so that a late subscriber finds it retained.
        async with Client(broker) as watcher:
            await watcher.subscribe(INFO)
            await info_where(watcher, lambda d: d["broker_connects"] == 2)
        async with Client(broker) as client:
            await client.subscribe(INFO)
            message = await next_on(client, INFO)
            assert message.retain
            if body(message)["broker_connects"] != 2:  # the one from before, then the fresh one
                await info_where(client, lambda d: d["broker_connects"] == 2)
