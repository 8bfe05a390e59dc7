"""Soak: N connections streaming for M minutes while the broker restarts K times.

    .venv/bin/python -m bench.soak [--connections 8] [--minutes 2] [--restarts 3]

The bridge runs as a real daemon process (`python -m bridge run`) between a
private Mosquitto (with persistence, so sessions survive its restarts) and the
simulator. A subscriber with a persistent session counts what arrives. Every
response's events carry contiguous sequence numbers from 0 to its terminal
event, so the upstream's count is known exactly; the report compares it with
what the subscriber received: lost, duplicated, reordered. Also: the daemon's
peak RSS (VmHWM) and whether it ever restarted (it must not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge_tools.local_broker import LocalMosquitto
from bridge_tools.simulator import Simulator, SimulatorOptions

TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


@dataclass
class Tally:
    """What the subscriber saw, per response id."""

    numbers: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    last_terminal: dict[str, int] = field(default_factory=dict)
    responses_done: int = 0
    notices: list[dict[str, object]] = field(default_factory=list)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def subscriber(
    host: str, port: int, tally: Tally, done: asyncio.Event, turns: dict[str, asyncio.Event]
) -> None:
    """A persistent-session subscriber that reconnects across broker restarts."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    first = True
    current: dict[str, str] = {}
    while not done.is_set():
        try:
            async with aiomqtt.Client(
                host,
                port,
                identifier="soak-subscriber",
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=first,
                properties=properties,
            ) as client:
                if first:
                    await client.subscribe("ai/+/events", qos=1)
                    first = False
                async for message in client.messages:
                    connection_id = message.topic.value.split("/")[1]
                    assert isinstance(message.payload, bytes)
                    body = json.loads(message.payload)
                    if "object" in body:
                        if body.get("action") == "disconnected":
                            tally.notices.append(body)
                        continue
                    response = str(
                        body.get("response", {}).get("id") or current.get(connection_id, "")
                    )
                    if body.get("type") == "response.created":
                        current[connection_id] = response
                    if "sequence_number" in body and response:
                        tally.numbers[response].append(body["sequence_number"])
                    if body.get("type") in TERMINAL:
                        tally.last_terminal[response] = body["sequence_number"]
                        tally.responses_done += 1
                        turns[connection_id].set()
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


async def driver(
    host: str, port: int, ids: list[str], deadline: float, turns: dict[str, asyncio.Event]
) -> None:
    """Publishes a response.create per connection each time the previous one finished."""
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier="soak-driver") as client:
                for connection_id in ids:
                    await client.publish(f"ai/{connection_id}/cmd", b'{"action":"connect"}', qos=1)
                await asyncio.sleep(1)
                for connection_id in ids:
                    turns[connection_id].set()
                while time.monotonic() < deadline:
                    for connection_id in ids:
                        if turns[connection_id].is_set():
                            turns[connection_id].clear()
                            event = {
                                "type": "response.create",
                                "model": "m",
                                "input": f"Tell me about tulips, part {time.time()}",
                                "max_output_tokens": 200,
                            }
                            await client.publish(
                                f"ai/{connection_id}/cmd",
                                json.dumps({"action": "send", "event": event}).encode(),
                                qos=1,
                            )
                    await asyncio.sleep(0.05)
                return
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def soak(connections: int, minutes: float, restarts: int, pace: float) -> None:
    directory = Path(tempfile.mkdtemp(prefix="soak-"))
    broker = LocalMosquitto(directory, persistence=True)
    broker.start()
    async with Simulator(SimulatorOptions(tokens_per_second=pace)) as simulator:
        config = directory / "bridge.yaml"
        config.write_text(
            json.dumps(
                {
                    "state_dir": str(directory / "state"),
                    "mqtt": {
                        "host": broker.host,
                        "port": broker.port,
                        "client_id": "soak-bridge",
                        "keepalive": 10,
                        "reconnect_max_delay": 1,
                    },
                    "openai": {"base_url": simulator.base_url},
                    "logging": {"level": "WARNING"},
                }
            )
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)], stderr=subprocess.PIPE
        )
        await asyncio.sleep(1.5)
        ids = [f"soak{n}" for n in range(connections)]
        turns = {connection_id: asyncio.Event() for connection_id in ids}
        tally, done = Tally(), asyncio.Event()
        started = time.monotonic()
        deadline = started + minutes * 60
        listening = asyncio.create_task(subscriber(broker.host, broker.port, tally, done, turns))
        driving = asyncio.create_task(driver(broker.host, broker.port, ids, deadline, turns))
        for n in range(restarts):
            await asyncio.sleep(
                max(0.0, started + (n + 1) * minutes * 60 / (restarts + 1) - time.monotonic())
            )
            broker.stop()
            await asyncio.sleep(2)
            broker.start()
        await driving
        await asyncio.sleep(5)  # let the last responses finish
        done.set()
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        alive = daemon.poll() is None
        rss = peak_rss_mb(daemon.pid) if alive else float("nan")
        daemon.terminate()
        _, stderr = daemon.communicate(timeout=30)
    broker.stop()
    report(tally, connections, minutes, restarts, rss, alive)
    complaints = [line for line in stderr.decode().splitlines() if " ERROR " in line]
    print(f"  daemon ERROR log lines: {len(complaints)}")
    for line in complaints[:5]:
        print(f"    {line}")


def report(
    tally: Tally, connections: int, minutes: float, restarts: int, rss: float, alive: bool
) -> None:
    sent = received = lost = duplicated = reordered = 0
    for response, numbers in tally.numbers.items():
        last = tally.last_terminal.get(response, max(numbers))
        sent += last + 1
        received += len(numbers)
        lost += len(set(range(last + 1)) - set(numbers))
        duplicated += len(numbers) - len(set(numbers))
        reordered += sum(1 for a, b in itertools.pairwise(numbers) if b < a)
    print(f"soak: {connections} connections, {minutes:g} min, {restarts} broker restarts")
    print(
        f"  responses {len(tally.numbers)} ({tally.responses_done} finished), "
        f"events sent by the upstream {sent}, received {received}"
    )
    print(
        f"  lost {lost}, duplicated {duplicated}, reordered {reordered}, "
        f"disconnected notices {len(tally.notices)}"
    )
    print(f"  daemon peak RSS {rss:.1f} MB, daemon restarts {0 if alive else 1}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--tokens-per-second", type=float, default=50.0)
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    asyncio.run(soak(args.connections, args.minutes, args.restarts, args.tokens_per_second))


if __name__ == "__main__":
    main()
