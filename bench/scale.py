"""Scale: C connections in one bridge process, idle, all streaming, then as `ask` sessions.

    .venv/bin/python -m bench.scale [--connections 2000] [--words 20]

The daemon and the simulator run as processes of their own. Reports the
daemon's RSS per open connection, the connect rate, and the relay throughput
with every connection streaming at once; then one `ask` of 4 KiB on every
connection, and the RSS with C conversations holding a 4 KiB transcript each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.goals import goal
from bridge_tools.local_broker import LocalMosquitto, free_port, is_listening


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 15
    while not is_listening("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.05)


class Counter:
    """Counts acks and events per kind as they arrive (paho thread)."""

    def __init__(self, host: str, port: int) -> None:
        self.connected = 0
        self.completed = 0
        self.events = 0
        self.changed = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4()}")
        self.client.on_message = self.on_message
        self.client.connect(host, port)
        self.client.subscribe("ai/+/events", qos=1)
        self.client.loop_start()

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        payload: bytes = message.payload
        with self.changed:
            if payload.startswith(b'{"type":'):
                self.events += 1
                if payload.startswith(b'{"type":"response.completed"'):
                    self.completed += 1
            elif b'"action":"connect"' in payload:
                self.connected += 1
            self.changed.notify_all()

    def wait(self, what: str, count: int, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: getattr(self, what) >= count, timeout):
                raise RuntimeError(f"{what}: {getattr(self, what)}/{count}")


GOAL_CONNECTIONS = 2000
GOAL_RSS_MB = 150
TRANSCRIPT_BYTES = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--words", type=int, default=20, help="words per streamed answer")
    args = parser.parse_args()
    count = args.connections
    directory = Path(tempfile.mkdtemp(prefix="scale-"))
    sim_port = free_port()
    reply = " ".join(["word"] * args.words)
    with LocalMosquitto(directory) as broker:
        simulator = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import asyncio, sys; from bridge_tools.simulator import SimulatorOptions, serve; "
                "asyncio.run(serve('127.0.0.1', int(sys.argv[1]), "
                "SimulatorOptions(fixed_reply=sys.argv[2])))",
                str(sim_port),
                reply,
            ],
            stderr=subprocess.DEVNULL,
        )
        config = directory / "bridge.yaml"
        config.write_text(
            json.dumps(
                {
                    "state_dir": str(directory / "state"),
                    "mqtt": {"host": broker.host, "port": broker.port, "client_id": "scale-bridge"},
                    "openai": {"base_url": f"http://127.0.0.1:{sim_port}/v1"},
                    "limits": {"max_connections": count + 10},
                    "logging": {"level": "WARNING"},
                }
            )
        )
        daemon = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--config", str(config)])
        try:
            wait_listening(sim_port)
            counter = Counter(broker.host, broker.port)
            time.sleep(2)
            base_rss = rss_mb(daemon.pid)
            publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4()}")
            publisher.connect(broker.host, broker.port)
            publisher.loop_start()
            started = time.perf_counter()
            for n in range(count):
                publisher.publish(f"ai/s{n}/cmd", b'{"action":"connect"}', qos=1)
            counter.wait("connected", count, 300)
            connect_seconds = time.perf_counter() - started
            time.sleep(2)
            idle_rss = rss_mb(daemon.pid)
            create = json.dumps(
                {
                    "action": "send",
                    "event": {"type": "response.create", "model": "m", "input": "go"},
                }
            ).encode()
            started = time.perf_counter()
            for n in range(count):
                publisher.publish(f"ai/s{n}/cmd", create, qos=1)
            counter.wait("completed", count, 600)
            stream_seconds = time.perf_counter() - started
            streamed_events = counter.events
            busy_rss = rss_mb(daemon.pid)
            question = "Describe " + "x" * (TRANSCRIPT_BYTES - 60 - args.words * 5)
            ask = json.dumps({"action": "ask", "input": question}).encode()
            for n in range(count):
                publisher.publish(f"ai/s{n}/cmd", ask, qos=1)
            counter.wait("completed", 2 * count, 600)
            time.sleep(2)
            ask_rss = rss_mb(daemon.pid)
            publisher.loop_stop()
            counter.client.loop_stop()
        finally:
            daemon.terminate()
            daemon.wait(60)
            simulator.terminate()
            simulator.wait()
    per = (idle_rss - base_rss) * 1024 / count
    print(f"scale: {count} connections in one bridge process")
    print(
        f"  RSS: {base_rss:.1f} MB at start, {idle_rss:.1f} MB with {count} idle "
        f"connections ({per:.1f} KiB each), {busy_rss:.1f} MB after all streamed"
    )
    print(f"  connect rate: {count / connect_seconds:.0f} connections/s")
    print(
        f"  all streaming: {streamed_events} events in {stream_seconds:.1f}s = "
        f"{streamed_events / stream_seconds:.0f} events/s"
    )
    transcripts = count * TRANSCRIPT_BYTES / 1024 / 1024
    print(
        f"  ask sessions: {ask_rss:.1f} MB with {count} conversations of about "
        f"{TRANSCRIPT_BYTES // 1024} KiB each ({transcripts:.1f} MB of transcripts)"
    )
    if count >= GOAL_CONNECTIONS:
        print(goal(f"{count} idle connections under {GOAL_RSS_MB} MB RSS", idle_rss < GOAL_RSS_MB))
        print(
            goal(
                f"{count} ask sessions within the streamed figure plus their transcripts",
                ask_rss <= busy_rss + 2 * transcripts,
            )
        )


if __name__ == "__main__":
    main()
