"""Relay throughput: the bridge against a bare paho publisher, on the same broker, same run.

    .venv/bin/python -m bench.relay_throughput [--deltas 5000] [--connections 4] [--qos 1]

Both sides push the same kind of messages (server events of ~250 bytes) at the
same QoS through a private Mosquitto to one subscriber, and the rate is what
the subscriber receives per second. The baseline is measured in the same run,
so the ratio means something on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bridge.config import parse_config, resolve
from bridge.local_broker import LocalMosquitto
from bridge.service import Service
from bridge.simulator import Simulator, SimulatorOptions

EVENT = json.dumps(
    {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": "msg_" + "a" * 48,
        "output_index": 0,
        "content_index": 0,
        "delta": " word",
        "logprobs": [],
        "obfuscation": "q2Xr9sZk1",
    }
).encode()


def baseline(host: str, port: int, count: int, qos: int) -> float:
    """Messages/s a bare paho publisher gets through the broker to a subscriber."""
    got = threading.Event()
    received = 0

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        nonlocal received
        received += 1
        if received == count:
            got.set()

    subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4()}")
    subscriber.on_message = on_message
    subscriber.connect(host, port)
    subscriber.subscribe("bench/base/events", qos=qos)
    subscriber.loop_start()
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4()}")
    publisher.max_inflight_messages_set(100)
    publisher.max_queued_messages_set(0)
    publisher.connect(host, port)
    publisher.loop_start()
    time.sleep(0.3)
    started = time.perf_counter()
    for _ in range(count):
        publisher.publish("bench/base/events", EVENT, qos=qos)
    if not got.wait(120):
        raise RuntimeError(f"baseline: only {received}/{count} arrived")
    elapsed = time.perf_counter() - started
    for client in (publisher, subscriber):
        client.loop_stop()
        client.disconnect()
    return count / elapsed


async def through_bridge(
    host: str, port: int, deltas: int, connections: int, qos: int
) -> tuple[float, int]:
    """Events/s the subscriber receives from `connections` streams relayed by the bridge."""
    reply = " ".join(["word"] * deltas)
    async with Simulator(SimulatorOptions(fixed_reply=reply)) as simulator:
        settings = resolve(
            parse_config(
                {
                    "mqtt": {
                        "host": host,
                        "port": port,
                        "qos": qos,
                        "client_id": "bench-bridge",
                        "buffer_max_messages": 1_000_000,
                        "buffer_max_bytes": 1 << 30,
                    },
                    "openai": {"base_url": simulator.base_url},
                    "limits": {"max_connections": connections + 1},
                }
            ),
            {},
        )
        service = Service(settings)
        stop = asyncio.Event()
        bridge = asyncio.create_task(service.run(stop))
        await service.ready.wait()
        ids = [f"bench{n}" for n in range(connections)]
        async with aiomqtt.Client(
            host, port, protocol=aiomqtt.ProtocolVersion.V5, max_queued_incoming_messages=0
        ) as client:
            await client.subscribe("ai/+/events", qos=qos)
            for connection_id in ids:
                await client.publish(f"ai/{connection_id}/cmd", b'{"action":"connect"}', qos=1)
            opened = 0
            async for message in client.messages:
                opened += b'"action":"connect"' in bytes(message.payload)
                if opened == len(ids):
                    break
            create = json.dumps(
                {
                    "action": "send",
                    "event": {
                        "type": "response.create",
                        "model": "m",
                        "input": "bench",
                        "max_output_tokens": deltas * 4,
                    },
                }
            ).encode()
            started = time.perf_counter()
            for connection_id in ids:
                await client.publish(f"ai/{connection_id}/cmd", create, qos=1)
            events = completed = 0
            async for message in client.messages:
                payload = bytes(message.payload)
                if payload.startswith(b'{"type":'):
                    events += 1
                    completed += payload.startswith(b'{"type":"response.completed"')
                    if completed == len(ids):
                        break
            elapsed = time.perf_counter() - started
        stop.set()
        await bridge
    return events / elapsed, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=5000, help="text deltas per stream")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--qos", type=int, nargs="*", default=[1, 0])
    args = parser.parse_args()
    with LocalMosquitto() as broker:
        for qos in args.qos:
            rate, events = asyncio.run(
                through_bridge(broker.host, broker.port, args.deltas, args.connections, qos)
            )
            base = baseline(broker.host, broker.port, events, qos)
            print(
                f"QoS {qos}: bridge {rate:8.0f} events/s ({events} events, "
                f"{args.connections} streams) | bare paho {base:8.0f} msg/s | "
                f"ratio {rate / base:.2f}"
            )


if __name__ == "__main__":
    main()
