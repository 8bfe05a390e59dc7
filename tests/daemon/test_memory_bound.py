"""The memory budget, held against floods: the daemon as a process, its RSS measured.

The README states the worst case with the default config (Security: memory);
these tests send what used to pin hundreds of megabytes and check that the
daemon stays within its budget and gives the memory back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, body
from tests.helpers import SECOND, settle
from tests.hostile_upstream import HostileUpstream, event
from tests.ops_helpers import daemon_config, finish, spawn_daemon

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def rss_given_back(pid: int, baseline: float) -> float:
    """The process's RSS (MiB) once it is back within 10 MiB of ``baseline``; as it is
    after 5 seconds if it never gets there (the test asserts on it)."""
    return await settle(lambda: rss_mib(pid), lambda rss: rss - baseline < 10, 5)


@contextlib.asynccontextmanager
async def tarpit() -> AsyncIterator[str]:
    """An HTTP server that accepts connections and never answers: handshakes hang."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def running_daemon(
    tmp_path: Path, broker: Broker, base_url: str, **sections: dict[str, Any]
) -> Any:
    mqtt = {"host": broker.host, "port": broker.port, "client_id": f"mem-{uuid.uuid4().hex[:6]}"}
    config = daemon_config(
        tmp_path,
        {**mqtt, **sections.pop("mqtt", {})},
        openai={
            "base_url": base_url,
            "open_timeout": 8 * SECOND,
            "connect_attempts": 1,
            **sections.pop("openai", {}),
        },
        limits={"commands_per_second": 10_000, "command_burst": 10_000, "dedupe_seconds": 0},
        **sections,
    )
    process = spawn_daemon(config)
    async with Client(broker) as watcher:  # serving: its roll call is over (its presence)
        await watcher.subscribe("ai/bridge/instances/+")
        while body(await watcher.next(15)).get("state") != "online":
            pass
    return process


async def test_queued_sends_behind_hanging_handshakes_stay_within_the_budget(
    tmp_path: Path, broker: Broker
) -> None:
    """8 ids x 40 sends of 1 MiB behind hanging handshakes: most refused, memory bounded."""
    async with tarpit() as base_url:
        process = await running_daemon(tmp_path, broker, base_url)
        try:
            baseline = rss_mib(process.pid)
            big = json.dumps(
                {"action": "send", "event": {"type": "response.create", "input": "x" * (MIB - 200)}}
            ).encode()
            peak = baseline
            codes: dict[str, int] = {}
            async with Client(broker) as client:
                await client.subscribe("ai/+/events")
                ids = [f"flood{n}" for n in range(8)]
                for connection_id in ids:
                    await client.command(connection_id, {"action": "connect"})
                for _ in range(40):
                    for connection_id in ids:
                        await client.command(connection_id, big)
                    peak = max(peak, rss_mib(process.pid))
                answered = 0
                while answered < 8 * 41:  # every command answered: limit_reached or failures
                    answer = body(await client.next(30))
                    code = answer.get("error", {}).get("code", "ok")
                    codes[code] = codes.get(code, 0) + 1
                    answered += 1
                    peak = max(peak, rss_mib(process.pid))
            after = await rss_given_back(process.pid, baseline)
        finally:
            code, stderr = finish(process)
    figures = f"RSS MiB: baseline {baseline:.1f}, peak {peak:.1f}, after {after:.1f}; {codes}"
    # 16 MiB may wait; the refused ones are parsed one at a time.
    assert codes.get("limit_reached", 0) >= 8 * 40 - 16, figures
    assert peak - baseline < 60, figures  # 16 MiB may wait, plus one command in hand
    assert after - baseline < 10, figures
    assert "Traceback" not in stderr


async def test_distinct_correlation_data_is_not_kept(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """5,000 closes with distinct 64 KiB correlation data: memory back near its baseline."""
    process = await running_daemon(tmp_path, broker, simulator.base_url)
    try:
        baseline = rss_mib(process.pid)
        async with Client(broker) as client:
            await client.subscribe("ai/+/events")
            for number in range(5000):
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.ResponseTopic = "replies/x"
                properties.CorrelationData = uuid.uuid4().bytes * 4000  # 64,000 bytes
                await client.command(f"c{number % 50}", {"action": "close"}, properties=properties)
            for _ in range(5000):
                assert body(await client.next(30))["error"]["code"] == "not_open"
        after = await rss_given_back(process.pid, baseline)
    finally:
        _, stderr = finish(process)
    # It was 600 MB more.
    assert after - baseline < 10, (
        f"RSS MiB: baseline {baseline:.1f}, after {after:.1f} {stderr[-3000:]}"
    )
    assert "Traceback" not in stderr


@contextlib.asynccontextmanager
async def peak_rss(pid: int) -> AsyncIterator[list[float]]:
    """The process's largest RSS while the block runs (sampled every few milliseconds)."""
    peak = [rss_mib(pid)]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib(pid))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampler.cancel()
        peak[0] = max(peak[0], rss_mib(pid))


def huge_events(size: int) -> list[str]:
    """One event of ``size`` bytes (not an end: relayed unread), then the end."""
    text = "x" * (size - 60)
    return [
        event("response.output_text.done", item_id="msg_1", text=text),
        event("response.completed", response={"id": "r", "output": [], "usage": None}),
    ]


async def relay_huge_events(
    tmp_path: Path, broker: Broker, size: int, count: int, **sections: dict[str, Any]
) -> tuple[float, float, list[str], str]:
    """``count`` ids each get one ``size``-byte event at once: the daemon's baseline and
    peak RSS (MiB), how each stream ended, and the daemon's stderr."""
    async with HostileUpstream(lambda request, number: huge_events(size)) as upstream:
        process = await running_daemon(tmp_path, broker, upstream.base_url, **sections)
        endings: list[str] = []
        try:
            baseline = rss_mib(process.pid)
            async with Client(broker) as client, peak_rss(process.pid) as peak:
                await client.subscribe("ai/+/events")
                for number in range(count):
                    await client.command(f"big{number}", {"action": "connect"})
                for _ in range(count):
                    await client.until(lambda m: m.get("action") == "connect", 20)
                send = {"action": "send", "event": {"type": "response.create"}}
                for number in range(count):
                    await client.command(f"big{number}", send)
                while len(endings) < count:
                    message = await client.next(60)
                    assert isinstance(message.payload, bytes)
                    if message.payload.startswith(b'{"type":"response.completed"'):
                        endings.append("completed")
                    elif b'"disconnected"' in message.payload[:200]:
                        endings.append(f"disconnected {body(message)['code']}")
        finally:
            _, stderr = finish(process)
    return baseline, peak[0], endings, stderr


async def test_huge_server_events_are_refused_by_default(tmp_path: Path, broker: Broker) -> None:
    """Three 50 MB events at once, default config: over openai.max_message_bytes (16 MiB),
    each connection ends with 1009 and the memory hardly moves (it was 244 MB)."""
    baseline, peak, endings, stderr = await relay_huge_events(tmp_path, broker, 50_000_000, 3)
    assert endings == ["disconnected 1009"] * 3, endings
    assert peak - baseline < 30, f"RSS MiB: baseline {baseline:.1f}, peak {peak:.1f}"
    assert "Traceback" not in stderr


async def test_large_server_events_in_flight_stay_within_the_read_budget(
    tmp_path: Path, broker: Broker
) -> None:
    """Six 30 MB events at once, allowed (max_message_bytes 64 MiB), with an 8 MiB event
    buffer: read one at a time (max_bytes_in_flight 32 MiB), never six at once."""
    event_mib = 30_000_000 / MIB
    baseline, peak, endings, stderr = await relay_huge_events(
        tmp_path,
        broker,
        30_000_000,
        6,
        openai={"max_message_bytes": 64 * MIB, "max_bytes_in_flight": 32 * MIB},
        mqtt={"buffer_max_bytes": 8 * MIB},
    )
    assert endings == ["completed"] * 6, endings
    # The README's worst case for this config: the event buffer (one event past its
    # 8 MiB) and paho's copy of it being written, 32 MiB in flight, one frame's copy
    # while the WebSocket library reads it, 256 KiB per connection past the budget.
    bound = 2 * event_mib + 32 + event_mib + 6 * 0.25
    figures = f"RSS MiB: baseline {baseline:.1f}, peak {peak:.1f}, bound {bound:.0f}"
    assert peak - baseline < bound + 5, figures
    assert "Traceback" not in stderr
