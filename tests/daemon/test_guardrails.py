"""Spend guardrails on a real Mosquitto and the simulator: models, caps, budgets, restarts."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.daemon.service import Service
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, RunningBridge, bridge_settings
from tests.helpers import SECOND
from tests.ops_helpers import daemon_config, finish, spawn_daemon

pytestmark = pytest.mark.integration

CREATE = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Describe tulips."}
BERLIN = ZoneInfo("Europe/Berlin")


def requests(simulator: Simulator) -> list[dict[str, Any]]:
    return [received.json() for received in simulator.received]


async def ask(client: Client, connection_id: str, text: str = "Describe tulips.") -> dict[str, Any]:
    """Ask; the answer's response.completed, or the error that refused it."""
    await client.command(connection_id, {"action": "ask", "input": text})
    seen = await client.until(
        lambda m: m.get("type") == "response.completed" or ("error" in m and "object" in m)
    )
    return seen[-1]


async def test_a_disallowed_model_never_reaches_the_upstream(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_bridge(broker, simulator, limits={"allowed_models": ["gpt-5.4-nano"]})
    await client.command("g1", {"action": "connect"})
    await client.until(lambda m: m.get("action") == "connect")
    event = {**CREATE, "model": "gpt-5.4"}
    await client.command("g1", {"action": "send", "event": event, "request_id": "big"})
    (error,) = await client.until(lambda m: "error" in m)
    assert error["error"]["code"] == "model_not_allowed"
    assert "gpt-5.4" in error["error"]["message"]
    assert error["request_id"] == "big"
    await client.command("g1", {"action": "send", "event": CREATE})
    await client.until(lambda m: m.get("type") == "response.completed")
    assert [request["model"] for request in requests(simulator)] == ["gpt-5.4-nano"]


async def test_the_cap_lowers_a_request_and_the_ack_says_so(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_bridge(broker, simulator, limits={"max_output_tokens": 100})
    await client.command("g2", {"action": "connect"})
    await client.until(lambda m: m.get("action") == "connect")
    await client.command("g2", {"action": "send", "event": {**CREATE, "max_output_tokens": 5000}})
    ack = (await client.until(lambda m: m.get("action") == "send"))[-1]
    assert ack["max_output_tokens"] == 100
    await client.until(lambda m: m.get("type") == "response.completed")
    await client.command("g2", {"action": "send", "event": CREATE})
    ack = (await client.until(lambda m: m.get("action") == "send"))[-1]
    assert "max_output_tokens" not in ack  # filled in, not lowered: the seed's ack
    await client.until(lambda m: m.get("type") == "response.completed")
    assert [r["max_output_tokens"] for r in requests(simulator)] == [100, 100]


async def test_a_per_id_budget_runs_out_and_other_ids_go_on(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    budgets = {"tokens_per_day": 1, "timezone": "Europe/Berlin"}
    await start_bridge(broker, simulator, limits={"budgets": budgets})
    first = await ask(client, "b1")
    assert first["type"] == "response.completed"  # a response already running is not cut
    refused = await ask(client, "b1")
    assert refused["error"]["code"] == "budget_exceeded"
    resets_at = datetime.fromisoformat(refused["error"]["resets_at"])
    assert (resets_at.hour, resets_at.minute) == (0, 0)
    assert resets_at.utcoffset() == datetime.now(BERLIN).utcoffset()
    assert (await ask(client, "b2"))["type"] == "response.completed"


async def test_the_global_budget_refuses_every_id(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_bridge(broker, simulator, limits={"budgets": {"global_tokens_per_day": 1}})
    assert (await ask(client, "b3"))["type"] == "response.completed"
    for connection_id in ("b3", "b4", "b5"):
        assert (await ask(client, connection_id))["error"]["code"] == "budget_exceeded"


async def test_the_day_rolling_over_restores_the_budget(
    broker: Broker, simulator: Simulator, tmp_path: Path, client: Client
) -> None:
    """The wall clock is the test's: 23:59 one day, 00:00 the next; no sleeping."""
    clock = [datetime(2026, 6, 1, 23, 59, tzinfo=BERLIN).timestamp()]
    limits = {"budgets": {"tokens_per_day": 1, "timezone": "Europe/Berlin"}}
    settings = bridge_settings(broker, simulator, tmp_path, limits=limits)
    bridge = RunningBridge(Service(settings, wall_clock=lambda: clock[0]))
    try:
        await bridge.ready()
        assert (await ask(client, "d1"))["type"] == "response.completed"
        refused = await ask(client, "d1")
        assert refused["error"]["resets_at"] == "2026-06-02T00:00:00+02:00"
        clock[0] = datetime(2026, 6, 2, 0, 0, tzinfo=BERLIN).timestamp()
        assert (await ask(client, "d1"))["type"] == "response.completed"
    finally:
        await bridge.stop()


async def test_a_corrupt_usage_file_is_set_aside_with_one_log_line(
    broker: Broker,
    simulator: Simulator,
    tmp_path: Path,
    start_bridge: Any,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "usage.json").write_text('{"version": 1, "day": "2026-06-01", "bridge": ')
    with caplog.at_level(logging.WARNING):
        await start_bridge(broker, simulator)
        assert (await ask(client, "c1"))["type"] == "response.completed"
    lines = [r for r in caplog.records if "usage" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "moved to" in lines[0].getMessage()
    assert [p.name.startswith("usage.json.corrupt-") for p in state.iterdir()].count(True) == 1


async def _started(broker: Broker, config: Path) -> subprocess.Popen[bytes]:
    """The daemon as a process, once it says ``online`` (live, not a retained leftover)."""
    async with Client(broker) as watcher:
        await watcher.subscribe("ai/bridge/state")
        process = spawn_daemon(config)
        while True:
            message = await watcher.next(20)
            if message.payload == b"online" and not message.retain:
                return process


async def _wait_for_saved_usage(state: Path, at_least: int) -> None:
    """Until the usage file shows ``at_least`` tokens (it is saved every few seconds)."""
    for _ in range(int(20 / 0.1)):
        try:
            saved = json.loads((state / "usage.json").read_text())
            if saved["bridge"]["total"] >= at_least:
                return
        except (FileNotFoundError, ValueError):
            pass
        await asyncio.sleep(0.1 * SECOND)
    raise AssertionError("usage was not saved")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_a_restarted_daemon_still_refuses(
    broker: Broker, simulator: Simulator, tmp_path: Path, client: Client, stop: signal.Signals
) -> None:
    """The budget ran out; the daemon stops (cleanly, or killed once its usage was saved)
    and starts again: still refused."""
    config = daemon_config(
        tmp_path,
        {"host": broker.host, "port": broker.port},
        openai={"base_url": simulator.base_url},
        limits={"budgets": {"tokens_per_day": 1}},
    )
    state = tmp_path / "state"
    process = await _started(broker, config)
    try:
        assert (await ask(client, "r1"))["type"] == "response.completed"
        if stop is signal.SIGKILL:
            await _wait_for_saved_usage(state, 1)
        process.send_signal(stop)
        await asyncio.to_thread(process.wait, 30 * SECOND)
    finally:
        finish(process)
    again = await _started(broker, config)
    try:
        refused = await ask(client, "r1")
        assert refused["error"]["code"] == "budget_exceeded"
    finally:
        again.send_signal(signal.SIGTERM)
        finish(again)
