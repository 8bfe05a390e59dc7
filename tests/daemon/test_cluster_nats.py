"""Several bridge instances on a real broker cluster: two NATS nodes, MQTT on each.

NATS's MQTT listener speaks MQTT 3.1.1 (QoS 0 and 1, retained messages and
wills through JetStream), so the bridges run with ``mqtt.protocol: "3.1.1"``,
each attached to a different node; the client publishes through one node.
Skipped, saying why, only where nats-server is not installed (failed when CI is set).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridge.cluster.ownership import owner_of
from bridge_tools.nats_cluster import NatsCluster
from bridge_tools.simulator import Simulator
from tests.helpers import SECOND, eventually, require_nats_server
from tests.ops_helpers import daemon_config, finish, spawn_daemon

pytestmark = pytest.mark.integration

LOG = "stderr.log"  # an instance's log, in its directory


@pytest.fixture(autouse=True)
def nats_server() -> None:
    """Every test here runs a broker cluster."""
    require_nats_server()


CREATE = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Describe tulips."}


def instance(
    directory: Path, name: str, mqtt: tuple[str, int], simulator: Simulator
) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True)
    config = daemon_config(
        directory,
        {
            "host": mqtt[0],
            "port": mqtt[1],
            "client_id": f"bridge-{name}",
            "protocol": "3.1.1",
            "keepalive": 5,
        },
        openai={"base_url": simulator.base_url},
        limits={"commands_per_second": 1000, "command_burst": 1000},
        # A loop that stands still for a roll call rejoins (fencing): on a loaded machine 0.5 s
        # did once, and a running stream was handed over (a `disconnected` in the join test).
        cluster={"enabled": True, "instance": name, "roll_call": 1.0 * SECOND},
        logging={"level": "DEBUG"},  # "instance n2 is here": see until_members
    )
    with (directory / LOG).open("wb") as log:
        return spawn_daemon(config, stderr=log)


def log_of(directory: Path) -> str:
    return (directory / LOG).read_text(errors="replace")


async def until_members(directory: Path, names: set[str]) -> None:
    """Until every instance in ``names`` (each in ``directory / name``) has heard every
    other one say it is online, and so counts it as a member."""
    for name in names:
        for other in names - {name}:
            await eventually(
                lambda: f"instance {other} is here" in log_of(directory / name),  # noqa: B023
                30,
                f"{name} heard that {other} is online",
            )


async def until_online(
    client: aiomqtt.Client,
    names: set[str],
    counts: dict[str, collections.Counter[str]] | None = None,
) -> None:
    """Until every instance in ``names`` says it is online; events seen meanwhile are
    counted in ``counts``."""
    seen: set[str] = set()
    async with asyncio.timeout(30 * SECOND):
        async for message in client.messages:
            topic = str(message.topic)
            if topic.startswith("ai/bridge/instances/") and b'"online"' in bytes(message.payload):
                seen.add(topic.rsplit("/", 1)[1])
                if seen >= names:
                    return
            elif counts is not None and topic.endswith("/events"):
                document = json.loads(bytes(message.payload))
                kind = document.get("action") or document.get("type")
                counts[topic.split("/")[1]][str(kind)] += 1


async def test_two_instances_on_two_nats_nodes_carry_out_every_command_once(
    tmp_path: Path, simulator: Simulator
) -> None:
    with NatsCluster(2, tmp_path / "nats") as cluster:
        first, second = cluster.mqtt
        processes = {}
        async with aiomqtt.Client(
            first[0], first[1], protocol=aiomqtt.ProtocolVersion.V311, timeout=10 * SECOND
        ) as client:
            await client.subscribe("ai/bridge/instances/+", qos=1)
            await client.subscribe("ai/+/events", qos=1)
            processes["n1"] = instance(tmp_path / "n1", "n1", first, simulator)
            processes["n2"] = instance(tmp_path / "n2", "n2", second, simulator)
            try:
                await until_online(client, {"n1", "n2"})
                await until_members(tmp_path, {"n1", "n2"})
                seed = [f"seed-{n}" for n in range(8)]
                asks = [f"ask-{n}" for n in range(8)]
                for connection_id in seed:
                    await client.publish(f"ai/{connection_id}/cmd", b'{"action":"connect"}', qos=1)
                    send = json.dumps({"action": "send", "event": CREATE})
                    await client.publish(f"ai/{connection_id}/cmd", send, qos=1)
                for connection_id in asks:
                    ask = json.dumps({"action": "ask", "input": "Describe tulips."})
                    await client.publish(f"ai/{connection_id}/cmd", ask, qos=1)
                counts: dict[str, collections.Counter[str]] = collections.defaultdict(
                    collections.Counter
                )
                expected = len(seed) + len(asks)
                await read_events(client, counts, expected, 60 * SECOND)
                await read_events(client, counts, None, 1.0 * SECOND)  # duplicates come now?
            finally:
                for process in processes.values():
                    process.send_signal(signal.SIGTERM)
                logs = {
                    name: finish_after(process, tmp_path / name)
                    for name, process in processes.items()
                }
        for connection_id in seed:
            got = counts[connection_id]
            assert (got["connect"], got["send"], got["response.completed"]) == (1, 1, 1), got
        for connection_id in asks:
            got = counts[connection_id]
            assert (got["connect"], got["ask"], got["response.completed"]) == (1, 1, 1), got
        assert len(simulator.received) == len(seed) + len(asks)
        for name, (code, log) in logs.items():
            assert code == 0, f"{name}:\n{log}"


async def read_events(
    client: aiomqtt.Client,
    counts: dict[str, collections.Counter[str]],
    completions: int | None,
    seconds: float,
) -> None:
    """Count acks and events per id until ``completions`` responses completed, those
    counted before included (None: for ``seconds``, to see that nothing more comes)."""
    completed = sum(got["response.completed"] for got in counts.values())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                topic = str(message.topic)
                if not topic.endswith("/events"):
                    continue
                document: dict[str, Any] = json.loads(bytes(message.payload))
                kind = document.get("action") or document.get("type")
                counts[topic.split("/")[1]][str(kind)] += 1
                completed += kind == "response.completed"
                if completions is not None and completed == completions:
                    return
    if completions is not None:
        raise AssertionError(f"{completed} of {completions} responses completed: {dict(counts)}")


def finish_after(
    process: subprocess.Popen[bytes], directory: Path | None = None
) -> tuple[int, str]:
    """Its exit code once it stops (20 s at most) and its log (in ``directory``, for an
    :func:`instance`)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(20 * SECOND)
    code, stderr = finish(process)
    return code, stderr if directory is None else log_of(directory)


async def test_a_killed_instance_on_one_node_is_reported_from_the_other(
    tmp_path: Path, simulator: Simulator
) -> None:
    """SIGKILL mid-stream on node 1's instance: node 2's says `disconnected` (1012)."""
    with NatsCluster(2, tmp_path / "nats") as cluster:
        first, second = cluster.mqtt
        processes = {
            "n1": instance(tmp_path / "n1", "n1", first, simulator),
            "n2": instance(tmp_path / "n2", "n2", second, simulator),
        }
        try:
            async with aiomqtt.Client(
                second[0], second[1], protocol=aiomqtt.ProtocolVersion.V311, timeout=10 * SECOND
            ) as client:
                await client.subscribe("ai/bridge/instances/+", qos=1)
                await client.subscribe("ai/+/events", qos=1)
                await until_online(client, {"n1", "n2"})
                await until_members(tmp_path, {"n1", "n2"})
                victims = [f"k{n}" for n in range(20) if owner_of(f"k{n}", ["n1", "n2"]) == "n1"]
                victims = victims[:3]
                for connection_id in victims:
                    await client.publish(f"ai/{connection_id}/cmd", b'{"action":"connect"}', qos=1)
                    event = {**CREATE, "input": "Describe tulips. [[fault:gap_30]]"}
                    send = json.dumps({"action": "send", "event": event})
                    await client.publish(f"ai/{connection_id}/cmd", send, qos=1)
                counts: dict[str, collections.Counter[str]] = collections.defaultdict(
                    collections.Counter
                )
                await read_until(client, counts, "response.output_text.delta", len(victims), 30)
                processes["n1"].send_signal(signal.SIGKILL)
                started = asyncio.get_running_loop().time()
                await read_until(client, counts, "disconnected", len(victims), 4 * 5)
                assert asyncio.get_running_loop().time() - started < 2 * 5 * SECOND
                for connection_id in victims:  # served at once by the survivor
                    await client.publish(f"ai/{connection_id}/cmd", b'{"action":"connect"}', qos=1)
                await read_until(client, counts, "connect", 2 * len(victims), 20)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for name, process in processes.items():
                finish_after(process, tmp_path / name)
        for connection_id in victims:
            assert counts[connection_id]["disconnected"] == 1, counts[connection_id]


async def read_until(
    client: aiomqtt.Client,
    counts: dict[str, collections.Counter[str]],
    kind: str,
    ids: int,
    seconds: float,
) -> None:
    """Count per id until ``ids`` ids have had a message of ``kind`` (all of them for
    ``connect``: its count across ids)."""
    async with asyncio.timeout(seconds * SECOND):
        async for message in client.messages:
            topic = str(message.topic)
            if not topic.endswith("/events"):
                continue
            document: dict[str, Any] = json.loads(bytes(message.payload))
            counts[topic.split("/")[1]][str(document.get("action") or document.get("type"))] += 1
            if sum(1 for got in counts.values() if got[kind]) >= ids or (
                kind == "connect" and sum(got["connect"] for got in counts.values()) >= ids
            ):
                return


async def test_an_instance_joining_on_another_node_cuts_and_doubles_nothing(
    tmp_path: Path, simulator: Simulator
) -> None:
    """Streams run through n1 (node 1) while n2 joins on node 2: each finishes once; new ids
    spread over both."""
    with NatsCluster(2, tmp_path / "nats") as cluster:
        first, second = cluster.mqtt
        processes = {"n1": instance(tmp_path / "n1", "n1", first, simulator)}
        try:
            async with aiomqtt.Client(
                first[0], first[1], protocol=aiomqtt.ProtocolVersion.V311, timeout=10 * SECOND
            ) as client:
                await client.subscribe("ai/bridge/instances/+", qos=1)
                await client.subscribe("ai/+/events", qos=1)
                await until_online(client, {"n1"})
                counts: dict[str, collections.Counter[str]] = collections.defaultdict(
                    collections.Counter
                )
                before = [f"b{n}" for n in range(6)]
                for connection_id in before:  # 2 s of silence halfway: streaming at the join
                    ask = {"action": "ask", "input": "Describe tulips. [[fault:gap_2]]"}
                    await client.publish(f"ai/{connection_id}/cmd", json.dumps(ask), qos=1)
                processes["n2"] = instance(tmp_path / "n2", "n2", second, simulator)
                await until_online(client, {"n2"}, counts)
                await until_members(tmp_path, {"n1", "n2"})
                after = [f"a{n}" for n in range(6)]
                for connection_id in after:
                    ask = {"action": "ask", "input": "Describe roses."}
                    await client.publish(f"ai/{connection_id}/cmd", json.dumps(ask), qos=1)
                await read_events(client, counts, len(before) + len(after), 60 * SECOND)
                await read_events(client, counts, None, 1.0 * SECOND)
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            logs = {
                name: finish_after(process, tmp_path / name) for name, process in processes.items()
            }
        for connection_id in before + after:
            got = counts[connection_id]
            assert (got["connect"], got["ask"], got["response.completed"]) == (1, 1, 1), got
            if got["disconnected"]:  # the logs in full (an assertion's message is cut short)
                print(connection_id, dict(got), *(text for _, text in logs.values()), sep="\n")  # noqa: T201
            assert got["disconnected"] == 0, got
        # n2 served exactly the new ids it owns by hash; the running ones stayed on n1.
        served = {cid for cid in before + after if f"[{cid}] upstream open" in logs["n2"][1]}
        owned = {cid for cid in after if owner_of(cid, ["n1", "n2"]) == "n2"}
        assert owned  # (with these names and ids, some: the test would prove nothing else)
        assert served == owned
        for name, (code, log) in logs.items():
            assert code == 0, f"{name}:\n{log}"


async def test_a_standalone_bridge_on_another_node_refuses_to_serve_the_prefix(
    tmp_path: Path, simulator: Simulator
) -> None:
    """Issue 21 on a broker cluster: a cluster instance serves through node 1; a standalone
    bridge started on node 2 finds it through the cluster, exits 78 naming it, and every
    command is answered once."""
    with NatsCluster(2, tmp_path / "nats") as cluster:
        first, second = cluster.mqtt
        async with aiomqtt.Client(
            first[0], first[1], protocol=aiomqtt.ProtocolVersion.V311, timeout=10 * SECOND
        ) as client:
            await client.subscribe("ai/bridge/instances/+", qos=1)
            await client.subscribe("ai/+/events", qos=1)
            serving = instance(tmp_path / "n1", "n1", first, simulator)
            try:
                await until_online(client, {"n1"})
                (tmp_path / "lone").mkdir()
                config = daemon_config(
                    tmp_path / "lone",
                    {
                        "host": second[0],
                        "port": second[1],
                        "client_id": "lone",
                        "protocol": "3.1.1",
                        "keepalive": 5,
                    },
                    openai={"base_url": simulator.base_url},
                )
                lone = spawn_daemon(config)
                code, log = await asyncio.to_thread(finish_after, lone)
                assert code == 78, log
                assert "two bridges serve prefix 'ai'" in log
                assert "n1 (cluster instance)" in log
                for n in range(4):
                    ask = json.dumps({"action": "ask", "input": "Describe tulips."})
                    await client.publish(f"ai/nats-{n}/cmd", ask, qos=1)
                counts: dict[str, collections.Counter[str]] = collections.defaultdict(
                    collections.Counter
                )
                await read_events(client, counts, 4, 60 * SECOND)
                await read_events(client, counts, None, 1.0 * SECOND)
            finally:
                serving.send_signal(signal.SIGTERM)
                code, log = finish_after(serving, tmp_path / "n1")
        for n in range(4):
            got = counts[f"nats-{n}"]
            assert (got["connect"], got["ask"], got["response.completed"]) == (1, 1, 1), got
        assert len(simulator.received) == 4
        assert code == 0, log
        assert "lone must stop; this one serves" in log
