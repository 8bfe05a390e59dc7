"""Budgets across instances, workers and restarts: real processes on a real Mosquitto.

Every instance publishes its day's usage retained on ``ai/bridge/instances/<name>/usage``
and reads the others'; these tests hold the daemons to what that promises (issue 21).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.cluster.ownership import owner_of
from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.bridge_processes import KEEPALIVE
from tests.bridge_processes import BridgeProcesses as Bridges
from tests.conftest import KEY, Broker, Client, body
from tests.daemon.test_workers import Supervised
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

USAGE = "ai/bridge/instances/+/usage"


class Asker:
    """Asks on many ids at once: each id's events go to its own queue."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = collections.defaultdict(
            asyncio.Queue
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.client.received.get()
            self.queues[str(message.topic).split("/")[1]].put_nowait(body(message))

    async def ask(self, connection_id: str, wait: float = 30) -> dict[str, Any]:
        """The answer's response.completed, or the error that refused it."""
        await self.client.command(connection_id, {"action": "ask", "input": "Describe tulips."})
        queue = self.queues[connection_id]
        async with asyncio.timeout(wait * SECOND):
            while True:
                event = await queue.get()
                if event.get("type") == "response.completed" or event.get("error"):
                    return event

    async def until_disconnected(self, connection_id: str, wait: float) -> dict[str, Any]:
        queue = self.queues[connection_id]
        async with asyncio.timeout(wait * SECOND):
            while (event := await queue.get()).get("action") != "disconnected":
                pass
        return event

    def close(self) -> None:
        self._reader.cancel()


@contextlib.asynccontextmanager
async def asking(client: Client) -> AsyncIterator[Asker]:
    asker = Asker(client)
    try:
        yield asker
    finally:
        asker.close()


async def latest(broker: Broker, topic: str, predicate: Any, wait: float = 15) -> dict[str, Any]:
    """The first document on ``topic`` (retained or live) that satisfies ``predicate``."""
    async with Client(broker) as reader:
        await reader.subscribe(topic)
        async with asyncio.timeout(wait * SECOND):
            while True:
                document = body(await reader.next(wait))
                if predicate(document):
                    return document


def tokens(event: dict[str, Any]) -> int:
    total: int = event["response"]["usage"]["total_tokens"]
    return total


# One budget for three instances -----------------------------------------------------------

REPLY = "Tulips are spring bulbs in many colours, from Turkey and loved in Holland. " * 2
PACED = 60.0  # tokens a second: a response streams for about half a second


@pytest.fixture
async def paced_simulator() -> AsyncIterator[Simulator]:
    options = SimulatorOptions(api_key=KEY, tokens_per_second=PACED, fixed_reply=REPLY)
    async with Simulator(options) as simulator:
        yield simulator


async def test_three_instances_spend_one_global_budget(
    tmp_path: Path, broker: Broker, paced_simulator: Simulator, client: Client
) -> None:
    """30 ids ask again and again on three instances until refused: the prefix spends the
    budget plus at most the responses in flight and those started in one publish interval."""
    budget = 20000
    bridges = Bridges(tmp_path, broker, paced_simulator)
    try:
        for name in ("i1", "i2", "i3"):
            config = bridges.config(name, limits={"budgets": {"global_tokens_per_day": budget}})
            await bridges.start(name, config)
        spent: list[int] = []
        ids = [f"g-{n}" for n in range(30)]

        async def spend(asker: Asker, connection_id: str) -> None:
            while "error" not in (answer := await asker.ask(connection_id)):
                spent.append(tokens(answer))
            assert answer["error"]["code"] == "budget_exceeded", answer

        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asking(client) as asker:
            await asyncio.gather(*(spend(asker, connection_id) for connection_id in ids))
        total, biggest, seconds = sum(spent), max(spent), loop.time() - started
        overshoot, rate = total - budget, total / seconds
        print(  # noqa: T201  (the figures the README states)
            f"\nbudget {budget}: spent {total} in {len(spent)} responses of at most {biggest} "
            f"tokens in {seconds:.1f}s ({rate:.0f} tokens/s): overshoot {overshoot} = "
            f"{overshoot / biggest:.1f} of the largest responses = {overshoot / rate:.2f}s of spend"
        )
        assert total >= budget
        # The stated bound: the responses in flight when it ran out (one per id), and what
        # the prefix spends in one publish interval (1 s) before every instance has seen it.
        assert overshoot <= len(ids) * biggest + rate * 1.0, (total, biggest, rate)
        summary = await latest(broker, "ai/bridge/usage", lambda d: d["tokens"]["total"] == total)
        shares = summary["instances"]
        assert set(shares) == {"i1", "i2", "i3"}
        assert sum(share["tokens"]["total"] for share in shares.values()) == total
        (left,) = [b for b in summary["budgets"] if b.get("tokens_per_day") == budget]
        assert (left["used"], left["left"]) == (total, 0)
    finally:
        for name, (code, log) in bridges.stop_all().items():
            assert code == 0, f"{name}:\n{log}"


async def test_a_per_id_budget_follows_the_id_to_the_survivor(
    broker: Broker, simulator: Simulator, bridges: Bridges, client: Client
) -> None:
    """The id spent its budget on i2; i2 is killed; on i1 it is still spent."""
    limits = {"budgets": {"tokens_per_day": 1}}
    for name in ("i1", "i2"):
        await bridges.start(name, bridges.config(name, limits=limits))
    victim = next(f"v-{n}" for n in range(100) if owner_of(f"v-{n}", ["i1", "i2"]) == "i2")
    async with asking(client) as asker:
        assert "error" not in await asker.ask(victim)
        await latest(broker, "ai/bridge/instances/i2/usage", lambda d: victim in d["ids"])
        bridges.kill("i2")
        notice = await asker.until_disconnected(victim, 4 * KEEPALIVE)
        assert notice["code"] == 1012
        refused = await asker.ask(victim)
    assert refused["error"]["code"] == "budget_exceeded"
    assert "this id's daily budget of 1 tokens is used up" in refused["error"]["message"]
    summary = await latest(broker, "ai/bridge/usage", lambda d: "i2" in d["instances"])
    assert summary["ids"][victim]["total"] > 0  # a lost instance's spend still counts


# Restarts and workers ----------------------------------------------------------------------


@pytest.mark.parametrize("disk", ["writable", "unwritable"])
async def test_tokens_today_survives_a_restart(
    tmp_path: Path, broker: Broker, simulator: Simulator, bridges: Bridges, disk: str
) -> None:
    """P/bridge/info's tokens_today, the Home Assistant sensor's figure, is the day's after a
    restart, from its first publication on; with a disk that cannot be written too."""
    config = bridges.config("solo", cluster=False)
    if disk == "unwritable":
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where the state directory's parent should be")
        document = json.loads(config.read_text())
        document["state_dir"] = str(blocker / "state")
        config.write_text(json.dumps(document))
    await bridges.start("solo", config)
    async with Client(broker) as client:
        await client.subscribe("ai/+/events")
        async with asking(client) as asker:
            answer = await asker.ask("t1")
    spent = tokens(answer)
    await latest(broker, "ai/bridge/info", lambda d: d["tokens_today"] == spent)
    log = await bridges.stop("solo")
    assert log.count("could not save token usage") == (disk == "unwritable")
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/info")
        await bridges.start("solo", config)
        while (message := await watcher.next(20)).retain:
            pass  # the one from before the restart
    first = body(message)
    assert first["tokens_today"] == spent
    if disk == "writable":
        assert first["usage_file"] == "ok"
    else:
        assert first["usage_file"].startswith("not writable: ")


@pytest.mark.parametrize("broker_kept", [True, False], ids=["retained", "broker-restarted"])
async def test_moving_to_workers_and_back_keeps_the_day(
    tmp_path: Path,
    broker: Broker,
    simulator: Simulator,
    bridges: Bridges,
    broker_kept: bool,
) -> None:
    """One process spends an id's budget; `run --workers 2` still refuses it, and one
    process again still refuses what the workers spent. Through the retained documents,
    or (the broker restarted without persistence) through the workers' reading of the
    state tree's files."""
    config = bridges.config("house", cluster=False, limits={"budgets": {"tokens_per_day": 1}})
    await bridges.start("house", config)
    async with Client(broker) as client:
        await client.subscribe("ai/+/events")
        async with asking(client) as asker:
            assert "error" not in await asker.ask("w-a")
    await bridges.stop("house")
    if not broker_kept:
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
    workers = Supervised(config, 2)
    try:
        async with Client(broker) as client:
            await client.subscribe("ai/+/events", USAGE)
            live: set[str] = set()
            while len(live) < 2:  # both workers are up and have read the usage
                message = await client.next(30)
                if str(message.topic).endswith("/usage") and not message.retain:
                    live.add(str(message.topic).split("/")[3])
            async with asking(client) as asker:
                refused = await asker.ask("w-a")
                assert refused["error"]["code"] == "budget_exceeded", refused
                assert "error" not in await asker.ask("w-b")  # spent on a worker
        workers.process.send_signal(signal.SIGTERM)
        assert await workers.wait() == 0, workers.output()
    finally:
        workers.finish()
    if not broker_kept:  # the way back too: from the files alone
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
    await bridges.start("house", config)
    async with Client(broker) as client:
        await client.subscribe("ai/+/events")
        async with asking(client) as asker:
            for connection_id in ("w-a", "w-b"):
                refused = await asker.ask(connection_id)
                assert refused["error"]["code"] == "budget_exceeded", refused


async def test_bad_usage_documents_are_ignored_with_one_warning_each(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Documents come from the broker: garbage is ignored (one WARNING per instance), a good
    one counts against the budget at once."""
    usage = "ai/bridge/instances/{}/usage"
    negative = {"instance": "evil", "day": "2026-06-01", "tokens": {"input": -1}}
    await client.mqtt.publish(usage.format("evil"), b"garbage", qos=1, retain=True)
    today = datetime.now(UTC).date().isoformat()
    good = {"instance": "good", "day": today, "profiles": {}, "ids": {}}
    good["tokens"] = {"input": 0, "output": 100, "total": 100}
    limits = {"budgets": {"global_tokens_per_day": 100, "timezone": "UTC"}}
    with caplog.at_level(logging.WARNING):
        await start_bridge(broker, simulator, limits=limits)
        for payload in (json.dumps(negative).encode(), json.dumps(good).encode()):
            name = json.loads(payload)["instance"]
            await client.mqtt.publish(usage.format(name), payload, qos=1, retain=True)
        async with asking(client) as asker:
            refused = await asker.ask("h1")  # published after the documents, on one link
    assert refused["error"]["code"] == "budget_exceeded", refused
    warnings = [r.getMessage() for r in caplog.records if "usage document" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'evil'" in warnings[0]
