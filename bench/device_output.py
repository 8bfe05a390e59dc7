"""Device output: what a device subscribed to ai/<id>/# receives per answer, and what it costs.

    .venv/bin/python -m bench.device_output [--ids 20] [--asks 200] [--words 120]
        [--tokens-per-second 150] [--streams 50] [--rounds 4] [--repeat 2]

The daemon, the simulator and the broker run as processes of their own; the
devices are one MQTT 5 client in this process. Every device asks, waits for
its answer to be whole and asks again, as a button on an ESP32 does; the
simulator answers every ask with the same text (``fixed_reply``, about 120
words built from its own generated answers), so a device knows when its text
is whole and the bench checks that it is.

1. **What a device receives per answer**, for ``--asks`` asks over ``--ids``
   ids, with the simulator streaming at ``--tokens-per-second`` (a model's
   pace: it decides how many deltas ``text_flush_ms`` gathers into one text
   chunk), in three modes: ``events`` (the default), ``text+answer`` with
   events off, ``text`` with events off. Messages and bytes per answer, acks
   (the connect and ask acks, which go to ``events`` in every mode) counted
   too and shown apart; the device's own commands are not counted (it
   subscribes with No Local).
2. **What it costs the bridge**: ``--streams`` ids asking ``--rounds`` times
   each, the simulator at full speed, every connection in ``text+answer``
   (events off), and in ``text+answer`` with events on, against plain
   ``events`` measured in the same run, alternating, ``--repeat`` times. The
   rate is the server events the bridge takes from the upstream per second
   (events per answer, as counted in part 1, times answers, over the time
   from the first ask to the last answer), with the CPU time of each process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from bench.goals import goal
from bench.relay_throughput import CpuMeter, simulator_serving, wait_online
from bridge_tools.local_broker import LocalMosquitto
from bridge_tools.simulator.text import generate_answer, tokenize

QUESTION = "How do I keep basil alive on a windowsill?"
EVENTS: dict[str, Any] | None = None  # no output object: the plain relay of events
TEXT_ANSWER = {"events": False, "text": True, "answer": True}
TEXT_ONLY = {"events": False, "text": True}
TEXT_ANSWER_EVENTS = {"text": True, "answer": True}
MODES: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("events", EVENTS),
    ("text+answer", TEXT_ANSWER),
    ("text", TEXT_ONLY),
)
COST_MODES: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("events", EVENTS),
    ("text+answer", TEXT_ANSWER),
    ("text+answer+events", TEXT_ANSWER_EVENTS),
)
KINDS = ("ack", "event", "text", "answer", "status", "error")
# The goal: a device that takes text+answer gets under a fifth of the messages per
# answer it gets from events. What sets the figure is text_flush_ms: one text chunk
# per 100 ms of streaming (or per 200 bytes when the text comes faster). Measured
# (131 words, 147 deltas; events give 1.1 acks + 155 server events per answer):
#   full speed       0.046  (4.7 chunks of ~145 B: the 200-byte limit)
#   150 tokens/s     0.088  (11.6 chunks of ~59 B: the default pace here)
#   50 tokens/s      0.207  (29.9 chunks of ~23 B)
# so 0.2 holds from about 55 simulator tokens/s up (~50 words/s), and the goal is
# read at the default pace. A chunker that failed to coalesce (a chunk per delta)
# would be at about 0.96, far from it either way.
GOAL_MESSAGE_RATIO = 0.2


def reply_text(words: int) -> str:
    """Sentences of the simulator's own generated answers, one by one until ``words``."""
    sentences: list[str] = []
    count = seed = 0
    while count < words:
        for sentence in re.split(r"(?<=[.!?]) ", generate_answer(QUESTION, seed)):
            if count < words:
                sentences.append(sentence)
                count += len(sentence.split())
        seed += 1
    return " ".join(sentences)


@contextlib.contextmanager
def daemon(broker: LocalMosquitto, base_url: str) -> Iterator[int]:
    """The bridge daemon, as it is run, until the block ends; yields its process id."""
    document = {
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"bench-{uuid.uuid4()}"},
        "openai": {"base_url": base_url},
        # Each bench device asks again the moment its answer is whole: lift the
        # per-id command rate, which a device pressing a button never reaches.
        "limits": {"max_connections": 2000, "commands_per_second": 1000, "command_burst": 1000},
        "logging": {"level": "WARNING"},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        json.dump(document, config)
    process = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--config", config.name])
    try:
        wait_online(broker.host, broker.port)
        yield process.pid
    finally:
        process.terminate()
        process.wait(30)
        os.unlink(config.name)


@dataclasses.dataclass
class Tally:
    """Messages of one kind and their bytes."""

    messages: int = 0
    payload: int = 0
    topic: int = 0
    properties: int = 0  # MQTT 5 properties as packed on the wire (with their length)


@dataclasses.dataclass
class Device:
    """One connection id: what is left to ask, and what of the current answer arrived."""

    connection_id: str
    asks_left: int
    text: bytearray = dataclasses.field(default_factory=bytearray)
    completed: bool = False
    answered: bool = False


class Devices:
    """Ids asking one question after another, and everything they receive on ai/<id>/#.

    One MQTT 5 client plays every device, in paho's network thread: it
    subscribes to ``ai/<id>/#`` per id with No Local (its own commands do not
    come back), counts every message by kind, and asks again on an id as
    soon as that id's answer is whole: ``response.completed`` when events are
    on, the answer when answers are on, all of the reply's text when text is
    on (each that applies). The text and the answer are checked against the
    reply.
    """

    def __init__(
        self,
        broker: LocalMosquitto,
        ids: list[str],
        asks_per_id: int,
        output: Mapping[str, Any] | None,
        reply: str,
        *,
        count_properties: bool,
    ) -> None:
        self.reply = reply.encode()
        self.want_events = output is None or bool(output.get("events", True))
        self.want_text = output is not None and bool(output.get("text"))
        self.want_answer = output is not None and bool(output.get("answer"))
        command: dict[str, Any] = {"action": "ask", "input": QUESTION}
        if output is not None:
            command["output"] = output  # on every ask, as the ESP32 example sends it
        self.command = json.dumps(command).encode()
        self.devices = {cid: Device(cid, asks_per_id) for cid in ids}
        self.expected = len(ids) * asks_per_id
        self.answers = 0
        self.tallies = {kind: Tally() for kind in KINDS}
        self.problems: list[str] = []
        self.count_properties = count_properties
        self.done = threading.Event()
        self.subscribed = threading.Event()
        self.started = self.finished = 0.0
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"devices-{uuid.uuid4()}", protocol=paho.MQTTv5
        )
        self.client.max_inflight_messages_set(len(ids) + 10)
        self.client.on_message = self.on_message
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def run(self, timeout: float) -> float:
        """Ask on every id until each has its answers; the seconds from first ask to last answer."""
        options = SubscribeOptions(qos=1, noLocal=True)
        self.client.subscribe([(f"ai/{cid}/#", options) for cid in self.devices])
        try:
            if not self.subscribed.wait(10):
                raise RuntimeError("the devices could not subscribe")
            self.started = time.perf_counter()
            for connection_id in self.devices:
                self.ask(connection_id)
            if not self.done.wait(timeout):
                raise RuntimeError(f"{self.answers}/{self.expected} answers in {timeout}s")
        finally:
            self.client.loop_stop()
            self.client.disconnect()
        if self.problems:
            raise RuntimeError("; ".join(self.problems[:5]))
        return self.finished - self.started

    def ask(self, connection_id: str) -> None:
        self.devices[connection_id].asks_left -= 1
        self.client.publish(f"ai/{connection_id}/cmd", self.command, qos=1)

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            self.received(message)
        except Exception as exc:  # in paho's thread: end the run with it, not a timeout
            self.problems.append(f"{message.topic}: {exc!r}")
            self.finished = time.perf_counter()
            self.done.set()

    def received(self, message: Any) -> None:
        topic: str = message.topic
        payload: bytes = message.payload
        connection_id, _, leaf = topic.partition("/")[2].rpartition("/")
        device = self.devices[connection_id]
        if leaf == "events":
            if payload.startswith(b'{"type":'):
                kind = "event"
                device.completed |= payload.startswith(b'{"type":"response.completed"')
            elif payload.startswith(b'{"object":"response.websocket.error"'):
                kind = "error"
                self.problems.append(payload.decode())
            else:
                kind = "ack"
        elif leaf == "text":
            kind = "text"
            device.text += payload
        elif leaf in ("answer", "status"):
            kind = leaf
            if leaf == "answer":
                device.answered = True
                answer = json.loads(payload)
                if answer["status"] != "completed" or answer["text"].encode() != self.reply:
                    self.problems.append(f"{connection_id}: answer {payload[:200]!r}")
        else:
            return
        tally = self.tallies[kind]
        tally.messages += 1
        tally.payload += len(payload)
        tally.topic += len(topic.encode())
        if self.count_properties and message.properties is not None:
            tally.properties += len(message.properties.pack())
        self.whole(device)

    def whole(self, device: Device) -> None:
        """If the device has its whole answer: count it, and ask again (or finish)."""
        if (
            (self.want_events and not device.completed)
            or (self.want_answer and not device.answered)
            or (self.want_text and len(device.text) < len(self.reply))
        ):
            return
        if self.want_text and device.text != self.reply:
            self.problems.append(f"{device.connection_id}: text {bytes(device.text[:200])!r}")
        device.text.clear()
        device.completed = device.answered = False
        self.answers += 1
        if device.asks_left > 0:
            self.ask(device.connection_id)
        elif self.answers == self.expected:
            self.finished = time.perf_counter()
            self.done.set()


def part_one(
    broker: LocalMosquitto, args: argparse.Namespace, reply: str
) -> dict[str, dict[str, Tally]]:
    """Each mode's tallies, per kind, for ``args.asks`` answers over ``args.ids`` ids."""
    results = {}
    with (
        simulator_serving(reply, args.tokens_per_second) as (base_url, _),
        daemon(broker, base_url),
    ):
        for mode, output in MODES:
            ids = [f"dev-{mode.replace('+', '-')}-{n}" for n in range(args.ids)]
            devices = Devices(
                broker, ids, args.asks // args.ids, output, reply, count_properties=True
            )
            devices.run(timeout=120)
            results[mode] = devices.tallies
    return results


def report_one(results: dict[str, dict[str, Tally]], answers: int) -> float:
    """Print part 1; return the goal's ratio (text+answer to events, messages per answer)."""

    def total(mode: str, field: str, kinds: tuple[str, ...] = KINDS) -> float:
        tallies = results[mode]
        count: int = sum(getattr(tallies[kind], field) for kind in kinds)
        return count / answers

    print(
        f"  {'mode':<12} {'msgs/answer':>11} {'(acks)':>7} {'payload B':>10} {'(acks)':>7} "
        f"{'+topic B':>9} {'+v5 props B':>12}"
    )
    for mode, _ in MODES:
        payload, topic = total(mode, "payload"), total(mode, "topic")
        print(
            f"  {mode:<12} {total(mode, 'messages'):>11.1f} "
            f"{total(mode, 'messages', ('ack',)):>7.1f} {payload:>10,.0f} "
            f"{total(mode, 'payload', ('ack',)):>7,.0f} {payload + topic:>9,.0f} "
            f"{payload + topic + total(mode, 'properties'):>12,.0f}"
        )
    for mode, _ in MODES:
        kinds = ", ".join(
            f"{kind} {tally.messages / answers:.1f} x {tally.payload / tally.messages:,.0f} B"
            for kind, tally in results[mode].items()
            if tally.messages
        )
        print(f"  {mode}: per answer {kinds}")
    base_messages = total("events", "messages")
    base_bytes = total("events", "payload") + total("events", "topic")
    ratios = {
        mode: (
            total(mode, "messages") / base_messages,
            (total(mode, "payload") + total(mode, "topic")) / base_bytes,
        )
        for mode, _ in MODES[1:]
    }
    print(
        "  ratio to events (messages, bytes with topic): "
        + "; ".join(f"{mode} {m:.3f}, {b:.3f}" for mode, (m, b) in ratios.items())
    )
    return ratios["text+answer"][0]


@dataclasses.dataclass(frozen=True)
class CostRun:
    answers: int
    seconds: float
    cpu: dict[str, float]


def part_two(
    broker: LocalMosquitto, args: argparse.Namespace, reply: str
) -> dict[str, list[CostRun]]:
    """Each mode's runs: ``args.streams`` ids asking ``args.rounds`` times, simulator at full
    speed, the modes alternating ``args.repeat`` times."""
    runs: dict[str, list[CostRun]] = {mode: [] for mode, _ in COST_MODES}
    assert broker.process is not None
    with (
        simulator_serving(reply, None) as (base_url, simulator_pid),
        daemon(broker, base_url) as bridge_pid,
    ):
        for attempt in range(args.repeat):
            for mode, output in COST_MODES:
                ids = [f"cost{attempt}-{mode.replace('+', '-')}-{n}" for n in range(args.streams)]
                devices = Devices(broker, ids, args.rounds, output, reply, count_properties=False)
                meter = CpuMeter(
                    {
                        "bridge": bridge_pid,
                        "simulator": simulator_pid,
                        "broker": broker.process.pid,
                        "devices": os.getpid(),
                    }
                )
                meter.start()
                seconds = devices.run(timeout=120)
                runs[mode].append(CostRun(devices.answers, seconds, meter.stop()))
    return runs


def report_two(runs: dict[str, list[CostRun]], events_per_answer: float, deltas: int) -> None:
    for attempt in range(len(runs["events"])):
        for mode, _ in COST_MODES:
            run = runs[mode][attempt]
            events = run.answers * events_per_answer
            shares = ", ".join(f"{role} {100 * s / run.seconds:.0f}" for role, s in run.cpu.items())
            print(
                f"  {mode:<18} {events / run.seconds:7,.0f} upstream events/s "
                f"({run.answers} answers, {run.answers * deltas:,} deltas, in {run.seconds:.1f}s); "
                f"bridge {us_per_event(run, events_per_answer):4.1f} us CPU/event; "
                f"CPU, % of one core: {shares}",
                flush=True,
            )
    base = runs["events"]
    base_us = statistics.median(us_per_event(run, events_per_answer) for run in base)
    for mode, _ in COST_MODES[1:]:
        rates = [b.seconds / r.seconds for r, b in zip(runs[mode], base, strict=True)]
        cpus = [r.cpu["bridge"] / b.cpu["bridge"] for r, b in zip(runs[mode], base, strict=True)]
        mode_us = statistics.median(us_per_event(run, events_per_answer) for run in runs[mode])
        print(
            f"  {mode} against events, same run: bridge CPU per upstream event "
            f"{mode_us:.1f} vs {base_us:.1f} us, ratio {statistics.median(cpus):.2f} "
            f"({', '.join(f'{c:.2f}' for c in cpus)}); rate ratio {statistics.median(rates):.2f} "
            f"({', '.join(f'{r:.2f}' for r in rates)})"
        )


def us_per_event(run: CostRun, events_per_answer: float) -> float:
    """The bridge's CPU time per server event it took from the upstream."""
    return 1e6 * run.cpu["bridge"] / (run.answers * events_per_answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=20, help="devices in part 1")
    parser.add_argument("--asks", type=int, default=200, help="asks in part 1, over all ids")
    parser.add_argument("--words", type=int, default=120, help="words per answer (at least)")
    parser.add_argument(
        "--tokens-per-second", type=float, default=150.0, help="the model's pace in part 1"
    )
    parser.add_argument("--streams", type=int, default=50, help="ids at once in part 2")
    parser.add_argument("--rounds", type=int, default=4, help="asks per id in part 2")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each mode in part 2")
    args = parser.parse_args()
    if args.asks % args.ids:
        parser.error("--asks must be a multiple of --ids")
    reply = reply_text(args.words)
    deltas = len(tokenize(reply))
    with LocalMosquitto(Path(tempfile.mkdtemp(prefix="device-output-"))) as broker:
        print(
            f"device output: what a subscriber of ai/<id>/# receives per answer\n"
            f"  {args.asks} asks over {args.ids} ids, one after another on each id; the answer: "
            f"{len(reply.split())} words, {len(reply.encode())} bytes, {deltas} deltas at "
            f"{args.tokens_per_second:g} tokens/s; QoS 1, text_max_bytes 200, text_flush_ms 100",
            flush=True,
        )
        results = part_one(broker, args, reply)
        ratio = report_one(results, args.asks)
        events_per_answer = results["events"]["event"].messages / args.asks
        print(
            f"\nwhat it costs the bridge: {args.streams} ids at once, {args.rounds} asks each, "
            f"simulator at full speed, {events_per_answer:g} upstream events per answer\n"
            f"  (the rate is the whole machine's: broker, simulator and the devices share its "
            f"{os.cpu_count()} cores; the bridge's own cost is its CPU time per event)",
            flush=True,
        )
        runs = part_two(broker, args, reply)
        report_two(runs, events_per_answer, deltas)
    print(
        goal(
            f"text+answer uses under {GOAL_MESSAGE_RATIO} of the messages per answer of events "
            f"(ratio {ratio:.3f})",
            ratio < GOAL_MESSAGE_RATIO,
        )
    )


if __name__ == "__main__":
    main()
