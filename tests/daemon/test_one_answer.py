"""One answer per question (issue 21): bridges that cannot share a prefix never both serve
it, and an instance that was away acts on nothing it held. Real processes, real broker."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import EXIT_CONFIG
from bridge.cluster.ownership import owner_of
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, body
from tests.helpers import SECOND
from tests.ops_helpers import daemon_config, finish, spawn_daemon

pytestmark = pytest.mark.integration

KEEPALIVE = 5  # seconds: an instance that stopped answering is lost within 2 x this
CREATE = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Describe tulips."}


class Bridges:
    """Bridge processes on one broker, each in its own directory, by name."""

    def __init__(self, tmp_path: Path, broker: Broker, simulator: Simulator) -> None:
        self.tmp_path, self.broker, self.simulator = tmp_path, broker, simulator
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, str] = collections.defaultdict(str)
        self.runs = 0

    def start(self, name: str, *, cluster: bool) -> subprocess.Popen[bytes]:
        self.runs += 1
        directory = self.tmp_path / f"{name}-{self.runs}"
        directory.mkdir()
        section: dict[str, Any] = {"roll_call": 0.5}
        if cluster:
            section |= {"enabled": True, "instance": name}
        config = daemon_config(
            directory,
            {
                "host": self.broker.host,
                "port": self.broker.port,
                "client_id": f"bridge-{name}",
                "keepalive": KEEPALIVE,
            },
            openai={"base_url": self.simulator.base_url},
            cluster=section,
        )
        process = self.processes[name] = spawn_daemon(config)
        return process

    def instance_of(self, name: str, *, cluster: bool) -> str:
        """The name a bridge says on its presence topic (standalone: host-client id)."""
        return name if cluster else f"{socket.gethostname()}-bridge-{name}"

    async def exits(self, name: str, wait: float = 20) -> tuple[int, str]:
        process = self.processes[name]
        await asyncio.to_thread(process.wait, wait * SECOND)
        code, log = finish(process)
        self.logs[name] += log
        return code, log

    async def stop(self, name: str) -> tuple[int, str]:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return await self.exits(name)

    def stop_all(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(20 * SECOND)
            self.logs[name] += finish(process)[1]


@pytest.fixture
def bridges(tmp_path: Path, broker: Broker, simulator: Simulator) -> Iterator[Bridges]:
    running = Bridges(tmp_path, broker, simulator)
    yield running
    running.stop_all()
    for name, log in running.logs.items():  # shown when a test fails
        print(f"--- {name}\n{log[-4000:]}")  # noqa: T201


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
    bridges: Bridges, broker: Broker, client: Client, first_cluster: bool, second_cluster: bool
) -> None:
    """The first serves; the second says why in one ERROR line naming both and exits 78;
    every command is answered once; a restart of either changes nothing."""
    first = bridges.instance_of("one", cluster=first_cluster)
    second = bridges.instance_of("two", cluster=second_cluster)
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/instances/+")
        bridges.start("one", cluster=first_cluster)
        await presence(watcher, first, "online")
        bridges.start("two", cluster=second_cluster)
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
        assert (await bridges.stop("one"))[0] == 0
        drain(watcher)
        bridges.start("one", cluster=first_cluster)
        await presence(watcher, first, "online")
        seen = await answers(client, "garage", "r2")
        assert (seen["connect"], seen["response.completed"]) == (1, 1), seen
        # ... and the second, restarted, refuses again.
        bridges.start("two", cluster=second_cluster)
        assert (await bridges.exits("two"))[0] == EXIT_CONFIG
    _, log = await bridges.stop("one")
    said = [line for line in log.splitlines() if "two bridges serve prefix" in line]
    assert said, log  # the serving bridge names the other too
    assert second in said[0]
    assert "this one serves" in said[0]
    async with Client(broker) as reader:
        await reader.subscribe("ai/bridge/info")
        (info,) = await reader.quiet(1.0)
    assert body(info)["last_error"]["code"] == "instance_conflict"


async def test_two_standalone_bridges_started_together_serve_once(
    bridges: Bridges, broker: Broker, client: Client
) -> None:
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/instances/+")
        for name in ("left", "right"):
            bridges.start(name, cluster=False)
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
    bridges: Bridges, broker: Broker, client: Client, simulator: Simulator
) -> None:
    """SIGSTOP an instance holding an id; the other declares it lost (1012) and serves the
    client's retry; after SIGCONT the stopped one carries out none of the commands it was
    sent meanwhile, and rejoins."""
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/instances/+")
        for name in ("i1", "i2"):
            bridges.start(name, cluster=True)
            await presence(watcher, name, "online")
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
    _, log = await bridges.stop("i2")
    assert re.search(r"dropped [3-9] commands that arrived while this instance was away", log), log
