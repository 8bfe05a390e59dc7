"""One answer per question (issue 21): bridges that cannot share a prefix never both serve
it, and an instance that was away acts on nothing it held. Real processes, real broker."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import signal

import pytest

from bridge.cli import EXIT_CONFIG
from bridge.cluster.ownership import owner_of
from bridge_tools.simulator import Simulator
from tests.bridge_processes import KEEPALIVE, BridgeProcesses
from tests.conftest import Broker, Client, body
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

CREATE = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Describe tulips."}


def drain(watcher: Client) -> None:
    """Forget what the watcher has seen so far (a later ``presence`` waits for news)."""
    while not watcher.received.empty():
        watcher.received.get_nowait()


async def presence(watcher: Client, instance: str, state: str, wait: float = 20) -> None:
    """Until ``instance`` says ``state``, live (not a retained copy from an earlier run)."""
    async with asyncio.timeout(wait * SECOND):
        while True:
            message = await watcher.next(wait)
            if message.retain or str(message.topic) != f"ai/bridge/instances/{instance}":
                continue
            if message.payload and body(message).get("state") == state:
                return


async def answers(client: Client, connection_id: str, request_id: str) -> collections.Counter[str]:
    """Connect, send and close on ``connection_id``; what came back, counted by kind, until
    the close ack and a quiet second after it (a second bridge would answer within it)."""
    await client.command(connection_id, {"action": "connect", "request_id": f"{request_id}-c"})
    await client.command(connection_id, {"action": "send", "event": CREATE})
    seen: collections.Counter[str] = collections.Counter()
    async with asyncio.timeout(30 * SECOND):
        while seen["response.completed"] < 1:
            message = await client.next_json(30)
            if message.get("connection_id", connection_id) == connection_id:
                seen[str(message.get("action") or message.get("type"))] += 1
    for late in await client.quiet(1.0):
        document = json.loads(late.payload)
        seen[str(document.get("action") or document.get("type"))] += 1
    await client.command(connection_id, {"action": "close"})
    return seen


@pytest.mark.parametrize(
    ("first_cluster", "second_cluster"),
    [(False, False), (True, False), (False, True)],
    ids=["standalone-then-standalone", "cluster-then-standalone", "standalone-then-cluster"],
)
async def test_a_second_bridge_that_cannot_share_the_prefix_refuses_visibly(
    bridges: BridgeProcesses,
    broker: Broker,
    client: Client,
    first_cluster: bool,
    second_cluster: bool,
) -> None:
    """The first serves; the second says why in one ERROR line naming both and exits 78;
    every command is answered once; a restart of either changes nothing."""
    one = bridges.config("one", cluster=first_cluster)
    two = bridges.config("two", cluster=second_cluster)
    first = await bridges.start("one", one)
    second = bridges.spawn("two", two)
    code, log = await bridges.exits("two")
    assert code == EXIT_CONFIG, log
    errors = [line for line in log.splitlines() if "two bridges serve prefix" in line]
    assert len(errors) == 1, log
    assert first in errors[0]
    assert second in errors[0]
    assert "does not serve" in errors[0]
    seen = await answers(client, "kitchen", "r1")
    assert (seen["connect"], seen["send"], seen["response.completed"]) == (1, 1, 1), seen
    # The same first bridge restarting does not trip over its own retained presence.
    await bridges.stop("one")
    await bridges.start("one", one)
    seen = await answers(client, "garage", "r2")
    assert (seen["connect"], seen["response.completed"]) == (1, 1), seen
    # ... and the second, restarted, refuses again.
    bridges.spawn("two", two)
    assert (await bridges.exits("two"))[0] == EXIT_CONFIG
    log = await bridges.stop("one")
    said = [line for line in log.splitlines() if "two bridges serve prefix" in line]
    assert said, log  # the serving bridge names the other too
    assert second in said[0]
    assert "this one serves" in said[0]
    async with Client(broker) as reader:
        await reader.subscribe("ai/bridge/info")
        (info,) = await reader.quiet(1.0)
    assert body(info)["last_error"]["code"] == "instance_conflict"


async def test_two_standalone_bridges_started_together_serve_once(
    bridges: BridgeProcesses, client: Client
) -> None:
    for name in ("left", "right"):
        bridges.spawn(name, bridges.config(name, cluster=False))
    stopped = await asyncio.wait(
        [asyncio.ensure_future(bridges.exits(name)) for name in ("left", "right")],
        timeout=15 * SECOND,
        return_when=asyncio.FIRST_COMPLETED,
    )
    (done,) = stopped[0]
    code, log = done.result()
    assert code == EXIT_CONFIG, log
    for task in stopped[1]:
        task.cancel()
    seen = await answers(client, "hall", "r1")
    assert (seen["connect"], seen["send"], seen["response.completed"]) == (1, 1, 1), seen
    running = [name for name, p in bridges.processes.items() if p.poll() is None]
    assert len(running) == 1


async def test_an_instance_that_was_stopped_and_taken_over_acts_on_nothing_it_held(
    bridges: BridgeProcesses, broker: Broker, client: Client, simulator: Simulator
) -> None:
    """SIGSTOP an instance holding an id; the other declares it lost (1012) and serves the
    client's retry; after SIGCONT the stopped one carries out none of the commands it was
    sent meanwhile, and rejoins."""
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/instances/+")
        for name in ("i1", "i2"):
            await bridges.start(name, bridges.config(name))
        victim = next(f"v-{n}" for n in range(100) if owner_of(f"v-{n}", ["i1", "i2"]) == "i2")
        await client.command(victim, {"action": "connect"})
        await client.until(lambda m: m.get("action") == "connect")
        bridges.processes["i2"].send_signal(signal.SIGSTOP)
        stale = [f"stale-{n}" for n in range(3)]
        for request_id in stale:  # queued for i2, which holds the id
            ask = {"action": "ask", "input": "Describe tulips.", "request_id": request_id}
            await client.command(victim, ask)
        notice = await client.until(lambda m: m.get("action") == "disconnected", 4 * KEEPALIVE)
        assert notice[-1]["code"] == 1012
        assert "i2" in notice[-1]["reason"]
        retry = {"action": "ask", "input": "Describe roses.", "request_id": "retry"}
        await client.command(victim, retry)  # served by i1
        await client.until(lambda m: m.get("type") == "response.completed", 30)
        requests_before = len(simulator.received)
        drain(watcher)
        bridges.processes["i2"].send_signal(signal.SIGCONT)
        await presence(watcher, "i2", "online", 4 * KEEPALIVE)  # it rejoined
        late = [body(m) for m in await client.quiet(2.0)]
    assert not [m for m in late if m.get("request_id") in stale], late
    assert not [m for m in late if m.get("type") == "response.created"], late
    assert len(simulator.received) == requests_before  # nothing more went upstream
    log = await bridges.stop("i2")
    assert re.search(r"dropped [3-9] commands that arrived while this instance was away", log), log
