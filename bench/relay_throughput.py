"""Relay throughput: the bridge against a bare paho publisher, on the same broker, same run.

    .venv/bin/python -m bench.relay_throughput [--deltas 8000] [--connections 4]
        [--qos 1 0] [--protocol 5 3.1.1] [--repeat 3] [--py-spy DIR] [--profile]

Both sides push the same messages (server events of ~250 bytes, with the
bridge's v5 properties under MQTT 5) at the same QoS and MQTT version through
a private Mosquitto to one subscriber, and the rate is what the subscriber
receives per second, from its first message to its last. The baseline is
measured in the same run, alternating with the bridge, so the ratio means
something on a shared, noisy machine; the goal uses the median of the runs.
Each run also reports the CPU time of every process involved, which says
whether the machine's cores were the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import itertools
import json
import multiprocessing
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.goals import goal
from bench.stacks import parse, summarize
from bridge.config.settings import parse_config, resolve
from bridge.daemon.service import Service
from bridge.protocol.server_events import DIRECTION_SERVER, user_properties
from bridge_tools.local_broker import LocalMosquitto, free_port, is_listening

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


@dataclasses.dataclass(frozen=True)
class Run:
    """One side's result: what the subscriber received, and each process's CPU time."""

    events: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds by role; the first role is the publisher
    pids: dict[str, int] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def publisher_us_per_event(self) -> float:
        return 1e6 * next(iter(self.cpu.values())) / self.events

    def cpu_line(self) -> str:
        """Each process's CPU time per second of the run, in % of one core."""
        shares = ", ".join(f"{role} {100 * s / self.seconds:.0f}" for role, s in self.cpu.items())
        total = 100 * sum(self.cpu.values()) / self.seconds
        return f"CPU, % of one core: {shares} (total {total:.0f} of {100 * (os.cpu_count() or 1)})"


class CpuMeter:
    """CPU seconds that named processes spend between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        merged: dict[int, list[str]] = {}
        for role, pid in pids.items():
            merged.setdefault(pid, []).append(role)
        self._roles = {"+".join(roles): pid for pid, roles in merged.items()}
        self._before: dict[str, float] = {}

    def start(self) -> None:
        self._before = {role: cpu_seconds(pid) for role, pid in self._roles.items()}

    def stop(self) -> dict[str, float]:
        return {role: cpu_seconds(pid) - self._before[role] for role, pid in self._roles.items()}


class Arrivals:
    """The subscriber's clock: the rate counts from the first message that arrives to the last.

    Both sides are timed the same way, so neither counts the time before its
    first message (the simulator planning a response, a process starting).
    The CPU meter runs over the same window.
    """

    def __init__(self, meter: CpuMeter) -> None:
        self.meter = meter
        self.count = 0
        self.first = self.last = 0.0
        self.cpu: dict[str, float] = {}

    def arrived(self, *, last: bool = False) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
            self.meter.start()
        self.count += 1
        if last:
            self.last = now
            self.cpu = self.meter.stop()

    def run(self) -> Run:
        """The messages after the first, over the time since the first."""
        return Run(self.count - 1, self.last - self.first, self.cpu)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish_all(host: str, port: int, count: int, qos: int, protocol: str, go: Any) -> None:
    """A bare paho publisher: `count` events as fast as paho takes them.

    It sends what the bridge sends: the same payload, at the same QoS, over the
    same MQTT version, with the same v5 properties (built once and reused, as
    a paho user would).
    """
    v5 = protocol == "5"
    publisher = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4()}",
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
    )
    publisher.max_inflight_messages_set(100)
    publisher.max_queued_messages_set(0)
    publisher.connect(host, port)
    publisher.loop_start()
    properties = None
    if v5:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho
        properties.UserProperty = list(
            user_properties("base", DIRECTION_SERVER, "response.output_text.delta")
        )
        properties.ContentType = "application/json"
    go.wait()
    info = None
    for _ in range(count):
        info = publisher.publish("bench/base/events", EVENT, qos=qos, properties=properties)
    if info is not None:
        info.wait_for_publish(60)
    publisher.loop_stop()
    publisher.disconnect()


@contextlib.contextmanager
def subscribed(
    host: str, port: int, topic: str, qos: int, on_message: Callable[..., None], role: str
) -> Iterator[paho.Client]:
    """A paho client subscribed to ``topic``, its network loop in a thread, for the block."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{role}-{uuid.uuid4()}")
    client.on_message = on_message
    client.connect(host, port)
    client.subscribe(topic, qos=qos)
    client.loop_start()
    try:
        yield client
    finally:
        client.loop_stop()
        client.disconnect()


def baseline(host: str, port: int, count: int, qos: int, protocol: str, broker_pid: int) -> Run:
    """Messages/s a bare paho publisher gets through the broker to a subscriber."""
    got = threading.Event()
    arrivals: Arrivals | None = None

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        assert arrivals is not None
        arrivals.arrived(last=arrivals.count + 1 == count)
        if arrivals.count == count:
            got.set()

    with subscribed(host, port, "bench/base/events", qos, on_message, "sub"):
        # The publisher is a process of its own, as the bridge daemon is.
        go = multiprocessing.Event()
        publisher = multiprocessing.Process(
            target=publish_all, args=(host, port, count, qos, protocol, go)
        )
        publisher.start()
        assert publisher.pid is not None
        arrivals = Arrivals(
            CpuMeter({"bare paho": publisher.pid, "broker": broker_pid, "subscriber": os.getpid()})
        )
        time.sleep(0.5)
        go.set()
        if not got.wait(120):
            raise RuntimeError(f"baseline: only {arrivals.count}/{count} arrived")
        publisher.join()
    return arrivals.run()


@contextlib.contextmanager
def simulator_process(deltas: int) -> Iterator[tuple[str, int]]:
    """The simulator answering ``deltas`` words at full speed, in a process of its own
    (it must not share the bridge's CPU time). Yields its base URL and its process id."""
    with simulator_serving(" ".join(["word"] * deltas)) as running:
        yield running


_HTTP_PORTS: dict[str, int] = {}  # a simulator's base URL -> its HTTP endpoint's port


def http_base_url(base_url: str) -> str:
    """The base URL of the HTTP endpoint of the simulator at ``base_url``."""
    return f"http://127.0.0.1:{_HTTP_PORTS[base_url]}/v1"


@contextlib.contextmanager
def simulator_serving(
    reply: str, tokens_per_second: float | None = None, **options: float
) -> Iterator[tuple[str, int]]:
    """The simulator in a process of its own, answering ``reply`` to every request.

    Its HTTP endpoint (issue 26) listens on the next free port: ``base_url`` with
    :func:`http_base_url`. ``options`` are more :class:`SimulatorOptions` fields
    (``first_token_delay``, ``store_latency``)."""
    port = free_port()
    http_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, json, sys; "
            "from bridge_tools.simulator import SimulatorOptions, serve; "
            "asyncio.run(serve('127.0.0.1', int(sys.argv[1]), SimulatorOptions("
            "fixed_reply=sys.argv[2], tokens_per_second=json.loads(sys.argv[3]), "
            "**json.loads(sys.argv[5])), int(sys.argv[4])))",
            str(port),
            reply,
            json.dumps(tokens_per_second),
            str(http_port),
            json.dumps(options),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not (is_listening("127.0.0.1", port) and is_listening("127.0.0.1", http_port)):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.05)
        _HTTP_PORTS[f"http://127.0.0.1:{port}/v1"] = http_port
        yield f"http://127.0.0.1:{port}/v1", process.pid
    finally:
        process.terminate()
        process.wait()


async def through_bridge(
    host: str,
    port: int,
    base_url: str,
    deltas: int,
    connections: int,
    qos: int,
    protocol: str,
    pids: dict[str, int],
    *,
    in_process: bool = False,
    py_spy: str | None = None,
    transport: str = "websocket",
) -> Run:
    """Events/s the subscriber receives from `connections` streams relayed by the bridge
    (over the simulator's WebSocket endpoint, or with ``transport`` "http" its HTTP one)."""
    document = {
        "state_dir": tempfile.mkdtemp(prefix="relay-state-"),
        "mqtt": {
            "host": host,
            "port": port,
            "qos": qos,
            "protocol": protocol,
            "client_id": "bench-bridge",
            "buffer_max_messages": 1_000_000,
            "buffer_max_bytes": 1 << 30,
        },
        "openai": {"base_url": base_url},
        "limits": {"max_connections": connections + 1},
        "logging": {"level": "WARNING"},
    }
    if transport == "http":  # issue 26: the default profile on a named HTTP endpoint
        endpoint = {"base_url": http_base_url(base_url), "transport": "http", "check": False}
        document["endpoints"] = {"sim": endpoint}
        document["profiles"] = {"default": {"endpoint": "sim"}}
    async with bridge_running(document, in_process=in_process, py_spy=py_spy) as bridge_pid:
        meter = CpuMeter({"bridge": bridge_pid, **pids, "subscriber": os.getpid()})
        return await _relay(host, port, deltas, connections, qos, meter)


@contextlib.asynccontextmanager
async def bridge_running(
    document: dict[str, Any], *, in_process: bool, py_spy: str | None = None
) -> AsyncIterator[int]:
    """The bridge as the daemon runs (its own process), or in this one (for --profile).

    It yields the bridge's process id. With ``py_spy`` (a file name),
    py-spy samples the daemon once it is online and writes its stacks there
    (collapsed format).
    """
    if in_process:
        service = Service(resolve(parse_config(document), {}))
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await service.ready.wait()
        try:
            yield os.getpid()
        finally:
            stop.set()
            await task
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        json.dump(document, config)
    daemon = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--config", config.name])
    try:
        await asyncio.to_thread(wait_online, document["mqtt"]["host"], document["mqtt"]["port"])
        with sampling(daemon.pid, py_spy):
            yield daemon.pid
    finally:
        daemon.terminate()
        await asyncio.to_thread(daemon.wait, 30)
        await asyncio.to_thread(os.unlink, config.name)


@contextlib.contextmanager
def sampling(pid: int, output: str | None) -> Iterator[None]:
    """py-spy samples process ``pid`` while the block runs (nothing if ``output`` is None)."""
    if output is None:
        yield
        return
    command = ["py-spy", "record", "--pid", str(pid), "--rate", "400", "--format", "raw"]
    spy = subprocess.Popen(
        [*command, "--nonblocking", "--output", output],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # let it attach
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


def wait_online(host: str, port: int) -> None:
    online = threading.Event()
    with subscribed(
        host,
        port,
        "ai/bridge/state",
        0,
        lambda client, userdata, message: online.set() if message.payload == b"online" else None,
        "watch",
    ):
        if not online.wait(30):
            raise RuntimeError("the bridge did not come online")


async def _relay(
    host: str, port: int, deltas: int, connections: int, qos: int, meter: CpuMeter
) -> Run:
    ids = [f"bench{n}" for n in range(connections)]
    received = threading.Event()
    counts = {"completed": 0, "connected": 0}
    connected = threading.Event()
    arrivals = Arrivals(meter)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        payload = message.payload
        if payload.startswith(b'{"type":'):
            completed = payload.startswith(b'{"type":"response.completed"')
            counts["completed"] += completed
            arrivals.arrived(last=counts["completed"] == len(ids))
            if arrivals.last:
                received.set()
        elif b'"action":"connect"' in payload:
            counts["connected"] += 1
            if counts["connected"] == len(ids):
                connected.set()

    with subscribed(host, port, "ai/+/events", qos, on_message, "sub"):
        await asyncio.sleep(0.3)
        async with aiomqtt.Client(host, port) as client:
            for connection_id in ids:
                await client.publish(f"ai/{connection_id}/cmd", b'{"action":"connect"}', qos=1)
            await asyncio.to_thread(connected.wait, 30)
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
            for connection_id in ids:
                await client.publish(f"ai/{connection_id}/cmd", create, qos=1)
            if not await asyncio.to_thread(received.wait, 300):
                raise RuntimeError(f"only {arrivals.count} events arrived")
    return arrivals.run()


GOAL_RATIO = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=8000, help="text deltas per stream")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--qos", type=int, nargs="*", default=[1, 0])
    parser.add_argument(
        "--protocol",
        choices=["5", "3.1.1"],
        nargs="*",
        default=["5", "3.1.1"],
        help="MQTT version of both publishers",
    )
    parser.add_argument(
        "--transport",
        choices=["websocket", "http"],
        nargs="*",
        default=["websocket", "http"],
        help="upstream transports to relay from (issue 26), each measured in the same run",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each side; the goal uses the median ratio"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print where the bridge's CPU time goes (cProfile)"
    )
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="sample the daemon with py-spy (first run of each case); stacks, summaries to DIR",
    )
    args = parser.parse_args()
    if args.py_spy:
        os.makedirs(args.py_spy, exist_ok=True)
    profiler = cProfile.Profile() if args.profile else None
    summaries: list[str] = []
    with LocalMosquitto() as broker, simulator_process(args.deltas) as (base_url, simulator):
        assert broker.process is not None
        broker_pid = broker.process.pid
        for protocol in args.protocol:
            for qos, transport in itertools.product(args.qos, args.transport):
                case = f"MQTT {protocol} QoS {qos}" + (" (HTTP)" if transport == "http" else "")
                stacks = (
                    os.path.join(args.py_spy, f"mqtt{protocol}-qos{qos}-{transport}.txt")
                    if args.py_spy
                    else None
                )
                ratios = []
                for attempt in range(args.repeat):
                    if profiler:
                        profiler.enable()
                    bridge = asyncio.run(
                        through_bridge(
                            broker.host,
                            broker.port,
                            base_url,
                            args.deltas,
                            args.connections,
                            qos,
                            protocol,
                            {"simulator": simulator, "broker": broker_pid},
                            in_process=profiler is not None,
                            py_spy=stacks if attempt == 0 else None,
                            transport=transport,
                        )
                    )
                    if profiler:
                        profiler.disable()
                    base = baseline(
                        broker.host, broker.port, bridge.events + 1, qos, protocol, broker_pid
                    )
                    ratios.append(bridge.rate / base.rate)
                    print(
                        f"{case}: bridge {bridge.rate:6.0f} events/s | "
                        f"bare paho {base.rate:6.0f} msg/s | ratio {ratios[-1]:.2f} "
                        f"({bridge.events} events, {args.connections} streams)\n"
                        f"  bridge run:   {bridge.publisher_us_per_event:5.1f} us CPU/event "
                        f"(bridge); {bridge.cpu_line()}\n"
                        f"  baseline run: {base.publisher_us_per_event:5.1f} us CPU/msg "
                        f"(publisher); {base.cpu_line()}",
                        flush=True,
                    )
                ratio = statistics.median(ratios)
                summaries.append(
                    f"{case}: median ratio {ratio:.2f} of {len(ratios)} runs "
                    f"({', '.join(f'{r:.2f}' for r in ratios)})\n"
                    + (
                        "  (--profile: the bridge ran in-process under cProfile; no goal)"
                        if profiler
                        else goal(
                            f"at least {GOAL_RATIO} of the bare publisher", ratio >= GOAL_RATIO
                        )
                    )
                )
                if stacks:
                    with open(stacks, encoding="utf-8") as lines:
                        summary = summarize(parse(lines), 25)
                    with open(stacks.replace(".txt", "-summary.txt"), "w") as out:
                        out.write(summary + "\n")
                    summaries.append(f"{case}, the daemon's CPU time ({stacks}):\n{summary}")
    print("\n" + "\n".join(summaries))
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
