"""Several bridge instances on one Mosquitto: real processes, every command carried out once."""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import pytest

from bridge.cluster.ownership import owner_of
from bridge_tools.simulator import Simulator
from tests.bridge_processes import KEEPALIVE, BridgeProcesses
from tests.conftest import Broker, Client
from tests.helpers import SECOND

pytestmark = pytest.mark.integration


def by_id(seen: list[dict[str, Any]]) -> dict[str, collections.Counter[str]]:
    """For each id, how many of each ack and event kind arrived."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for message in seen:
        connection_id = message.get("connection_id") or message.get("_id")
        kind = message.get("action") or message.get("type")
        counts[str(connection_id)][str(kind)] += 1
    return counts


async def collect(client: Client, until: int, kind: str, wait: float = 60) -> list[dict[str, Any]]:
    """Messages on P/+/events (each tagged with its id) until ``until`` of ``kind`` came."""
    seen: list[dict[str, Any]] = []
    count = 0
    async with asyncio.timeout(wait * SECOND):
        while count < until:
            message = await client.next(wait)
            document = json.loads(message.payload)
            document.setdefault("_id", str(message.topic).split("/")[1])
            seen.append(document)
            count += (document.get("action") or document.get("type")) == kind
    for message in await client.quiet(1):
        document = json.loads(message.payload)
        document.setdefault("_id", str(message.topic).split("/")[1])
        seen.append(document)
    return seen


CREATE = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Describe tulips."}


async def test_three_instances_carry_out_every_command_once(
    broker: Broker, simulator: Simulator, bridges: BridgeProcesses, client: Client
) -> None:
    """The seed flow on 20 ids and two asks on 20 more: every ack and event exactly once."""
    for name in ("i1", "i2", "i3"):
        await bridges.start(name, bridges.config(name))
    seed = [f"seed-{n}" for n in range(20)]
    asks = [f"ask-{n}" for n in range(20)]
    for connection_id in seed:
        await client.command(connection_id, {"action": "connect"})
        await client.command(connection_id, {"action": "send", "event": CREATE})
    for connection_id in asks:
        await client.command(connection_id, {"action": "ask", "input": "Describe tulips."})
    seen = await collect(client, 40, "response.completed")
    for connection_id in seed:
        await client.command(connection_id, {"action": "close"})
    for connection_id in asks:
        await client.command(connection_id, {"action": "ask", "input": "And roses?"})
    seen += await collect(client, 20, "response.completed")
    counts = by_id(seen)
    for connection_id in seed:
        got = counts[connection_id]
        assert (got["connect"], got["send"], got["response.completed"], got["close"]) == (
            1,
            1,
            1,
            1,
        ), got
    for connection_id in asks:
        got = counts[connection_id]
        assert (got["connect"], got["ask"], got["response.completed"]) == (1, 2, 2), got
    assert len(simulator.received) == 20 + 40  # one request upstream per send and ask
    # Each instance keeps its own P/bridge/info under its presence topic.
    async with Client(broker) as reader:
        await reader.subscribe("ai/bridge/instances/+/info")
        infos = {str(m.topic).split("/")[3] for m in await reader.quiet(1.0)}
    assert infos == {"i1", "i2", "i3"}
    # Each id was served where rendezvous hashing puts it (no instance joined or left).
    claims = await retained_claims(broker)
    for connection_id in asks:
        assert claims[connection_id] == owner_of(connection_id, ["i1", "i2", "i3"])


async def retained_claims(broker: Broker) -> dict[str, str]:
    async with Client(broker) as reader:
        await reader.subscribe("ai/bridge/claims/+")
        messages = await reader.quiet(1.0)
    return {
        str(m.topic).rsplit("/", 1)[1]: json.loads(m.payload)["instance"]
        for m in messages
        if m.payload
    }


def test_300_ids_spread_evenly_over_3_instances() -> None:
    """Rendezvous hashing: each of 3 instances owns 100 of 300 ids, give or take 20%."""
    spread = collections.Counter(owner_of(f"device-{n}", ["a", "b", "c"]) for n in range(300))
    assert all(80 <= count <= 120 for count in spread.values()), spread
    # A fourth instance takes about a quarter, and only from the others (no shuffling).
    moved = [
        n
        for n in range(300)
        if owner_of(f"device-{n}", ["a", "b", "c", "d"]) != owner_of(f"device-{n}", ["a", "b", "c"])
    ]
    assert all(owner_of(f"device-{n}", ["a", "b", "c", "d"]) == "d" for n in moved)
    assert 50 <= len(moved) <= 100


async def test_a_killed_instance_is_reported_and_its_ids_move(
    broker: Broker, simulator: Simulator, bridges: BridgeProcesses, client: Client
) -> None:
    for name in ("i1", "i2", "i3"):
        await bridges.start(name, bridges.config(name))
    victims = [f"k-{n}" for n in range(30) if owner_of(f"k-{n}", ["i1", "i2", "i3"]) == "i2"][:4]
    for connection_id in victims:  # mid-stream when the instance dies
        await client.command(connection_id, {"action": "connect"})
        event = {**CREATE, "input": "Describe tulips. [[fault:gap_30]]"}
        await client.command(connection_id, {"action": "send", "event": event})
    await client.until(lambda m: m.get("type") == "response.output_text.delta")
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    bridges.kill("i2")
    lost: set[str] = set()
    while len(lost) < len(victims):
        message = await client.next_json(4 * KEEPALIVE)
        if message.get("action") == "disconnected":
            assert message["code"] == 1012
            assert "i2" in message["reason"]
            lost.add(message["connection_id"])
    assert lost == set(victims)
    assert loop.time() - killed_at < 2 * KEEPALIVE * SECOND
    # At once, a survivor serves them.
    for connection_id in victims:
        await client.command(connection_id, {"action": "connect"})
    acked: set[str] = set()
    while len(acked) < len(victims):
        message = await client.next_json(10)
        if message.get("action") == "connect":
            acked.add(message["connection_id"])
    claims = await retained_claims(broker)
    assert {claims[connection_id] for connection_id in victims} <= {"i1", "i3"}


async def test_a_joining_instance_interrupts_and_duplicates_nothing(
    broker: Broker, simulator: Simulator, bridges: BridgeProcesses, client: Client
) -> None:
    """Streams run on two instances while a third joins: each finishes where it started,
    once; new ids spread over all three."""
    await bridges.start("j1", bridges.config("j1"))
    await bridges.start("j2", bridges.config("j2"))
    before = [f"b-{n}" for n in range(12)]
    for connection_id in before:  # 2 s of silence halfway: still streaming at the join
        text = "Describe tulips. [[fault:gap_2]]"
        await client.command(connection_id, {"action": "ask", "input": text})
    await bridges.start("j3", bridges.config("j3"))
    after = [f"a-{n}" for n in range(12)]
    for connection_id in after:
        await client.command(connection_id, {"action": "ask", "input": "Describe roses."})
    seen = await collect(client, 24, "response.completed")
    counts = by_id(seen)
    for connection_id in before + after:
        got = counts[connection_id]
        assert (got["connect"], got["ask"], got["response.completed"]) == (1, 1, 1), got
        assert got["disconnected"] == 0, got
        deltas = "".join(
            m["delta"]
            for m in seen
            if m["_id"] == connection_id and m.get("type") == "response.output_text.delta"
        )
        (completed,) = [
            m for m in seen if m["_id"] == connection_id and m.get("type") == "response.completed"
        ]
        (message,) = completed["response"]["output"]
        assert deltas == message["content"][0]["text"]  # every delta once, in order
    claims = await retained_claims(broker)
    assert {claims[connection_id] for connection_id in before} <= {"j1", "j2"}  # stayed
    assert {claims[connection_id] for connection_id in after} == {"j1", "j2", "j3"}
