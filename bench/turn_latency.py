"""Turn latency: an `ask` over WebSocket mode against the same over HTTP, through the daemon.

    .venv/bin/python -m bench.turn_latency [--rounds 10] [--turns 5] [--words 40]
        [--think-ms 0] [--store-latency-ms 0]

Issue 26, "Honest limits": HTTP has no 60-minute socket and no connection-local
cache. One daemon, one private Mosquitto and one simulator (its WebSocket and
its HTTP endpoint) serve every case; a client publishes `ask` commands and a
subscriber on ``ai/+/events`` times, for each turn, the command's publish to
the first ``response.output_text.delta`` and to ``response.completed``. The
first turn of an id opens it (WebSocket: the upgrade; HTTP: a logical session,
checked with ``GET /models``); the follow-ups continue it:

- ``ws``: WebSocket, ``store: false``: ``previous_response_id`` from the
  connection-local cache, on the open socket.
- ``http server``: HTTP, ``memory: server``, ``store: true``: one POST per turn
  with ``previous_response_id``, which the server looks up in its store.
- ``http replay``: HTTP, ``memory: replay`` (a server that keeps nothing): one
  POST per turn carrying the whole conversation again.

Then the WebSocket ``generate: false`` warm-up (``send`` only; ``ask`` sends
none): on an open connection, a ``response.create`` as is, against a warm-up
(instructions, no input; waited for) and the same request continuing it.

The cases alternate round by round (a fresh id each), so a noisy, shared
machine disturbs them alike; there are no fixed thresholds, only p50/p95 and
the HTTP/WebSocket ratios of the same run. The simulator answers at once
unless ``--think-ms`` (its ``first_token_delay``, every request) says
otherwise; ``--store-latency-ms`` is its ``store_latency``, the time it takes to
load a stored response that is not in a connection's cache (every HTTP
``previous_response_id``). It models no time saved by a cache or a warm-up,
only the cached-token accounting of WebSocket continuations (the usage shown).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiomqtt

from bench.relay_throughput import bridge_running, http_base_url, simulator_serving, subscribed
from bridge_tools.local_broker import LocalMosquitto

INSTRUCTIONS = "Answer in a few words."
CASES = ("ws", "http server", "http replay")
PROFILES = {"ws": "ws", "http server": "http_server", "http replay": "http_replay"}


@dataclasses.dataclass
class Turn:
    """One request's timings (ms from the command's publish) and its usage."""

    first_delta: float | None = None
    completed: float | None = None
    response_id: str = ""
    input_tokens: int = 0
    cached_tokens: int = 0


class Timer:
    """The subscriber's side: stamps the first delta and the end of the turn under way per id."""

    def __init__(self, pause: float) -> None:
        self.pause = pause  # seconds before each timed command (see :func:`timed`)
        self._lock = threading.Lock()
        self._open: dict[str, tuple[float, Turn, threading.Event]] = {}
        self.acks: dict[str, threading.Event] = {}
        self.errors: list[str] = []

    @contextlib.contextmanager
    def turn(self, connection_id: str) -> Iterator[tuple[Turn, threading.Event]]:
        """Time one turn of ``connection_id`` from the block's start (just before the publish)."""
        turn, done = Turn(), threading.Event()
        with self._lock:
            self._open[connection_id] = (time.perf_counter(), turn, done)
        try:
            yield turn, done
        finally:
            with self._lock:
                self._open.pop(connection_id, None)

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.perf_counter()
        payload: bytes = message.payload
        connection_id = message.topic.split("/")[1]
        with self._lock:
            running = self._open.get(connection_id)
            ack = self.acks.get(connection_id)
        if ack is not None and b'"action":"connect"' in payload:
            ack.set()
        if running is None:
            return
        start, turn, done = running
        if payload.startswith(b'{"type":"response.output_text.delta"'):
            if turn.first_delta is None:
                turn.first_delta = 1e3 * (now - start)
        elif payload.startswith(b'{"type":"response.completed"'):
            turn.completed = 1e3 * (now - start)
            response = json.loads(payload)["response"]
            turn.response_id = response["id"]
            usage = response.get("usage") or {}
            turn.input_tokens = usage.get("input_tokens", 0)
            turn.cached_tokens = (usage.get("input_tokens_details") or {}).get("cached_tokens", 0)
            done.set()
        elif payload.startswith(b'{"type":"error"') or b'"object":"error"' in payload[:40]:
            self.errors.append(payload.decode(errors="replace"))
            done.set()


async def timed(
    client: aiomqtt.Client, timer: Timer, connection_id: str, command: dict[str, Any]
) -> Turn:
    """Publish ``command`` on the id's command topic and wait for its response to complete.

    It waits ``timer.pause`` seconds first, as a person or a device would: a command that
    follows the bridge's last publish within the delayed-ACK time (about 40 ms)
    waits for that ACK in a stock Mosquitto (Nagle's algorithm; see
    ``set_tcp_nodelay``), which would add up to 40 ms to both transports alike."""
    await asyncio.sleep(timer.pause)
    with timer.turn(connection_id) as (turn, done):
        await client.publish(f"ai/{connection_id}/cmd", json.dumps(command).encode(), qos=1)
        if not await asyncio.to_thread(done.wait, 30) or turn.completed is None:
            raise RuntimeError(f"{connection_id}: no response.completed; errors: {timer.errors}")
    return turn


async def connected(client: aiomqtt.Client, timer: Timer, connection_id: str) -> None:
    """``connect`` ``connection_id`` (the WebSocket profile) and wait for its ack."""
    ack = timer.acks[connection_id] = threading.Event()
    await client.publish(f"ai/{connection_id}/cmd", b'{"action":"connect","profile":"ws"}', qos=1)
    if not await asyncio.to_thread(ack.wait, 30):
        raise RuntimeError(f"{connection_id}: no connect ack")


@dataclasses.dataclass
class Samples:
    """Every case's turns: ``first`` (the turn that opened the id) and ``follow`` (the rest)."""

    first: dict[str, list[Turn]] = dataclasses.field(default_factory=dict)
    follow: dict[str, list[Turn]] = dataclasses.field(default_factory=dict)

    def add(self, case: str, turns: list[Turn]) -> None:
        self.first.setdefault(case, []).append(turns[0])
        self.follow.setdefault(case, []).extend(turns[1:])


async def one_round(
    client: aiomqtt.Client, timer: Timer, round_number: int, turns: int, samples: Samples
) -> None:
    for case in CASES:
        connection_id = f"{PROFILES[case]}-{round_number}"
        done = []
        for number in range(turns):
            ask = {"action": "ask", "profile": PROFILES[case], "input": f"Question {number}?"}
            done.append(await timed(client, timer, connection_id, ask))
        samples.add(case, done)
        await client.publish(f"ai/{connection_id}/cmd", b'{"action":"close"}', qos=1)
    # The warm-up: the same question, as is and after a generate: false response.
    request = {"type": "response.create", "model": "m", "instructions": INSTRUCTIONS}
    question = [{"role": "user", "content": "Question 0?"}]
    for case in ("ws send", "ws warm-up"):
        connection_id = f"{case.replace(' ', '-')}-{round_number}"
        await connected(client, timer, connection_id)
        previous: dict[str, Any] = {}
        if case == "ws warm-up":
            warm = {**request, "generate": False, "input": []}
            warmed = await timed(client, timer, connection_id, {"action": "send", "event": warm})
            samples.first.setdefault("warm-up itself", []).append(warmed)
            previous = {"previous_response_id": warmed.response_id}
        send = {"action": "send", "event": {**request, **previous, "input": question}}
        samples.first.setdefault(case, []).append(await timed(client, timer, connection_id, send))
        await client.publish(f"ai/{connection_id}/cmd", b'{"action":"close"}', qos=1)


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p95 (nearest rank)."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def figures(turns: list[Turn]) -> dict[str, tuple[float, float]]:
    deltas = [t.first_delta for t in turns if t.first_delta is not None]
    completed = [t.completed for t in turns if t.completed is not None]
    out = {"completed": percentiles(completed)}
    if deltas:
        out["first delta"] = percentiles(deltas)
    return out


def report(samples: Samples) -> list[str]:
    lines = [
        "per turn, ms from the command's publish (p50 / p95), and the usage the server reported:"
    ]
    table: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for kind, by_case in (("first turn", samples.first), ("follow-up", samples.follow)):
        for case, turns in by_case.items():
            if not turns:
                continue
            table[kind, case] = shown = figures(turns)
            timings = ", ".join(
                f"{what} {p50:6.2f} / {p95:6.2f}" for what, (p50, p95) in shown.items()
            )
            tokens = statistics.median(t.input_tokens for t in turns)
            cached = statistics.median(t.cached_tokens for t in turns)
            lines.append(
                f"  {kind:>10}  {case:<15} n={len(turns):<3} {timings}"
                f"  (input tokens {tokens:g}, cached {cached:g})"
            )
    lines.append("ratios of p50, HTTP / WebSocket:")
    for kind in ("first turn", "follow-up"):
        ws = table.get((kind, "ws"))
        for case in ("http server", "http replay"):
            http = table.get((kind, case))
            if ws is None or http is None:
                continue
            ratios = ", ".join(
                f"{what} {http[what][0] / ws[what][0]:.2f}" for what in ws if what in http
            )
            lines.append(f"  {kind:>10}  {case:<15} {ratios}")
    send, warm = table.get(("first turn", "ws send")), table.get(("first turn", "ws warm-up"))
    if send and warm:
        ratio = warm["first delta"][0] / send["first delta"][0]
        lines.append(
            f"warm-up: first delta after a generate: false response / without: {ratio:.2f} (p50)"
        )
    return lines


async def run(args: argparse.Namespace, host: str, port: int, base_url: str) -> Samples:
    http = {"base_url": http_base_url(base_url), "transport": "http"}
    document = {
        "state_dir": tempfile.mkdtemp(prefix="turn-latency-"),
        "mqtt": {"host": host, "port": port, "client_id": "turn-latency-bridge"},
        "openai": {"base_url": base_url},
        "endpoints": {
            "http_server": {**http, "memory": "server"},
            "http_replay": {**http, "memory": "replay"},
        },
        "profiles": {
            "ws": {"request": {"model": "m", "instructions": INSTRUCTIONS, "store": False}},
            "http_server": {
                "endpoint": "http_server",
                "request": {"model": "m", "instructions": INSTRUCTIONS, "store": True},
            },
            "http_replay": {
                "endpoint": "http_replay",
                "request": {"model": "m", "instructions": INSTRUCTIONS, "store": False},
            },
        },
        "logging": {"level": "WARNING"},
    }
    samples = Samples()
    timer = Timer(args.pause_ms / 1e3)
    async with bridge_running(document, in_process=args.in_process):
        with subscribed(host, port, "ai/+/events", 1, timer.on_message, "sub"):
            async with aiomqtt.Client(host, port) as client:
                await asyncio.sleep(0.3)
                for warm_round in range(-1, args.rounds):  # round -1: every path once, not kept
                    round_samples = samples if warm_round >= 0 else Samples()
                    await one_round(client, timer, warm_round + 1, args.turns, round_samples)
    return samples


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
            model,
        )
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="fresh ids per case")
    parser.add_argument("--turns", type=int, default=5, help="ask turns per id (the first opens)")
    parser.add_argument("--words", type=int, default=40, help="words in every answer")
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="the simulator's first_token_delay"
    )
    parser.add_argument(
        "--store-latency-ms", type=float, default=0.0, help="the simulator's store_latency"
    )
    parser.add_argument(
        "--pause-ms", type=float, default=200.0, help="pause before each timed command"
    )
    parser.add_argument("--in-process", action="store_true", help="the bridge in this process")
    args = parser.parse_args(argv)
    reply = " ".join(["word"] * args.words)
    options = {
        "first_token_delay": args.think_ms / 1e3,
        "store_latency": args.store_latency_ms / 1e3,
    }
    with LocalMosquitto() as broker, simulator_serving(reply, None, **options) as (base_url, _):
        samples = asyncio.run(run(args, broker.host, broker.port, base_url))
    print(
        f"{time.strftime('%Y-%m-%d')}, {machine()}; {args.rounds} rounds of {args.turns} turns, "
        f"{args.words}-word answers at full speed, think {args.think_ms:g} ms, "
        f"store latency {args.store_latency_ms:g} ms"
    )
    print("\n".join(report(samples)))


if __name__ == "__main__":
    main()
