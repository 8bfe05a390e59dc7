"""Added latency: upstream → bridge → broker → subscriber, against a direct publisher.

    .venv/bin/python -m bench.latency [--rate 1000] [--seconds 10] [--qos 1]

An upstream of its own (another process) sends server events at a fixed rate,
each stamped with its send time; the bridge relays them. The baseline: a bare
paho publisher (another process) publishes the same stamped events at the
same rate to the same broker. One subscriber measures arrival minus send time
for both; the difference is what the bridge adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import statistics
import tempfile
import threading
import time
import uuid
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from websockets.asyncio.server import ServerConnection, serve

from bench.goals import goal
from bridge.config.settings import parse_config, resolve
from bridge.daemon.service import Service
from bridge_tools.local_broker import LocalMosquitto, free_port, is_listening

PADDING = "x" * 120  # about the size of a text delta event


def stamped(n: int) -> bytes:
    return json.dumps(
        {
            "type": "response.output_text.delta",
            "sequence_number": n,
            "sent_ns": time.time_ns(),
            "delta": PADDING,
        },
        separators=(",", ":"),
    ).encode()


def paced(rate: float, count: int) -> Any:
    """Yield n at `rate` per second, on schedule (no drift)."""
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield n


def upstream_process(port: int, rate: float, count: int) -> None:
    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # the port probe is no error

    async def handler(websocket: ServerConnection) -> None:
        await websocket.recv()  # the response.create
        start = time.perf_counter()
        for n in range(count):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await websocket.send(stamped(n).decode())
        await websocket.wait_closed()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, compression=None):
            await asyncio.Future()

    asyncio.run(main())


def direct_process(host: str, port: int, rate: float, count: int, qos: int) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"direct-{uuid.uuid4()}")
    client.connect(host, port)
    client.loop_start()
    time.sleep(0.3)
    for n in paced(rate, count):
        client.publish("ai/direct/events", stamped(n), qos=qos)
    time.sleep(1)
    client.loop_stop()
    client.disconnect()


class Collector:
    def __init__(self, host: str, port: int, qos: int, topic: str, count: int) -> None:
        self.latencies: list[float] = []
        self.count = count
        self.done = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4()}")
        self.client.on_message = self.on_message
        self.client.connect(host, port)
        self.client.subscribe(topic, qos=qos)
        self.client.loop_start()

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.time_ns()
        if not message.payload.startswith(b'{"type":"response.output_text.delta"'):
            return
        sent = json.loads(message.payload)["sent_ns"]
        self.latencies.append((now - sent) / 1e6)
        if len(self.latencies) == self.count:
            self.done.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while not is_listening("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.05)


def summary(latencies: list[float]) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


async def through_bridge(host: str, port: int, rate: float, count: int, qos: int) -> list[float]:
    upstream_port = free_port()
    upstream = multiprocessing.Process(
        target=upstream_process, args=(upstream_port, rate, count), daemon=True
    )
    upstream.start()
    await asyncio.to_thread(wait_listening, upstream_port)
    settings = resolve(
        parse_config(
            {
                "state_dir": tempfile.mkdtemp(prefix="latency-state-"),
                "mqtt": {"host": host, "port": port, "qos": qos, "client_id": "latency-bridge"},
                "openai": {"base_url": f"http://127.0.0.1:{upstream_port}/v1"},
            }
        ),
        {},
    )
    service = Service(settings)
    stop = asyncio.Event()
    bridge = asyncio.create_task(service.run(stop))
    await service.ready.wait()
    collector = Collector(host, port, qos, "ai/lat/events", count)
    async with aiomqtt.Client(host, port) as client:
        await client.publish("ai/lat/cmd", b'{"action":"connect"}', qos=1)
        await asyncio.sleep(0.5)
        await client.publish(
            "ai/lat/cmd",
            json.dumps(
                {"action": "send", "event": {"type": "response.create", "model": "m", "input": "x"}}
            ).encode(),
            qos=1,
        )
        await asyncio.to_thread(collector.done.wait, count / rate + 30)
    collector.close()
    stop.set()
    await bridge
    upstream.terminate()
    return collector.latencies


def direct(host: str, port: int, rate: float, count: int, qos: int) -> list[float]:
    collector = Collector(host, port, qos, "ai/direct/events", count)
    time.sleep(0.3)
    publisher = multiprocessing.Process(
        target=direct_process, args=(host, port, rate, count, qos), daemon=True
    )
    publisher.start()
    collector.done.wait(count / rate + 30)
    publisher.join()
    collector.close()
    return collector.latencies


GOAL_ADDED_P99_MS = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--qos", type=int, default=1)
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    with LocalMosquitto() as broker:
        base = direct(broker.host, broker.port, args.rate, count, args.qos)
        relayed = asyncio.run(through_bridge(broker.host, broker.port, args.rate, count, args.qos))
    print(f"received: direct {len(base)}/{count}, bridge {len(relayed)}/{count}")
    for name, latencies in (("direct publisher", base), ("through the bridge", relayed)):
        p50, p99, worst = summary(latencies)
        print(
            f"{name:>18}: {len(latencies)} events at {args.rate:g}/s QoS {args.qos}: "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms"
        )
    added = summary(relayed)[1] - summary(base)[1]
    print(f"{'added by bridge':>18}: p99 {added:+.2f} ms")
    print(goal(f"added p99 at most {GOAL_ADDED_P99_MS:g} ms", added <= GOAL_ADDED_P99_MS))


if __name__ == "__main__":
    main()
