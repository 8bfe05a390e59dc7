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
from tests.helpers import SECOND
from tests.ops_helpers import daemon_config, finish, spawn_daemon

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


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
    config = daemon_config(
        tmp_path,
        {"host": broker.host, "port": broker.port, "client_id": f"mem-{uuid.uuid4().hex[:6]}"},
        openai={"base_url": base_url, "open_timeout": 8 * SECOND, "connect_attempts": 1},
        limits={"commands_per_second": 10_000, "command_burst": 10_000, "dedupe_seconds": 0},
        **sections,
    )
    process = spawn_daemon(config)
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/state")
        while (await watcher.next(15)).payload != b"online":
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
            await asyncio.sleep(1 * SECOND)
            after = rss_mib(process.pid)
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
        await asyncio.sleep(1 * SECOND)
        after = rss_mib(process.pid)
    finally:
        _, stderr = finish(process)
    # It was 600 MB more.
    assert after - baseline < 10, f"RSS MiB: baseline {baseline:.1f}, after {after:.1f}"
    assert "Traceback" not in stderr
