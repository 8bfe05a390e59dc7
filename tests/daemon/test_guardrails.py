"""Spend guardrails on a real Mosquitto and the simulator: models, caps, budgets, restarts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.daemon.service import Service
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, RunningBridge, bridge_settings
from tests.helpers import SECOND, eventually
from tests.ops_helpers import OpsBridge, daemon_config, finish, spawn_daemon

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

    def saved() -> bool:
        try:
            return bool(
                json.loads((state / "usage.json").read_text())["bridge"]["total"] >= at_least
            )
        except (FileNotFoundError, ValueError):
            return False

    await eventually(saved, 20, "usage was saved")


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


# usage.json and the clock (issue 22, items 12-14) ------------------------------------------


async def test_a_fifo_as_usage_file_is_set_aside_and_the_daemon_starts(
    broker: Broker, simulator: Simulator, tmp_path: Path, client: Client
) -> None:
    """Opening a FIFO waits for a writer for ever: it is never opened that way."""
    config = daemon_config(
        tmp_path,
        {"host": broker.host, "port": broker.port},
        openai={"base_url": simulator.base_url},
    )
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / "usage.json")
    process = await _started(broker, config)  # `online` within 20 s, or it failed
    try:
        assert (await ask(client, "f1"))["type"] == "response.completed"
        await _wait_for_saved_usage(state, 1)  # a regular file in its place
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30 * SECOND)
        _, log = finish(process)
    assert log.count("not a regular file (a FIFO)") == 1, log
    (aside,) = [path for path in state.iterdir() if path.name.startswith("usage.json.corrupt-")]
    assert stat.S_ISFIFO(aside.lstat().st_mode)


async def test_a_clock_that_jumps_gives_no_fresh_budget_on_the_real_day(
    broker: Broker, simulator: Simulator, tmp_path: Path, client: Client
) -> None:
    """A day back, a year ahead (a restart there), then today: the real day's budget is
    spent after its first answer, and stays spent (a year ahead is a new day while it lasts:
    nothing tells it from a real one)."""
    today = datetime(2026, 6, 1, 12, 0, tzinfo=BERLIN)
    clock = [today.timestamp()]
    limits = {"budgets": {"tokens_per_day": 1, "timezone": "Europe/Berlin"}}
    settings = bridge_settings(broker, simulator, tmp_path, limits=limits)
    bridge = RunningBridge(Service(settings, wall_clock=lambda: clock[0]))
    try:
        await bridge.ready()
        first = await ask(client, "j1")
        assert first["type"] == "response.completed"
        clock[0] = (today - timedelta(days=1)).timestamp()
        refused = await ask(client, "j1")
        assert refused["error"]["resets_at"] == "2026-06-02T00:00:00+02:00"  # still today's
        clock[0] = (today + timedelta(days=365)).timestamp()
        later = await ask(client, "j1")
        assert later["type"] == "response.completed"
    finally:
        await bridge.stop()
    clock[0] = today.timestamp()
    again = RunningBridge(Service(settings, wall_clock=lambda: clock[0]))
    try:
        await again.ready()
        refused = await ask(client, "j1")
        assert refused["error"]["code"] == "budget_exceeded"
        assert refused["error"]["resets_at"] == "2026-06-02T00:00:00+02:00"
        spent = sum(answer["response"]["usage"]["total_tokens"] for answer in (first, later))
        async with Client(broker) as reader:  # both answers count today, once each
            await reader.subscribe("ai/bridge/usage")
            while (summary := await reader.next_json(15))["tokens"]["total"] != spent:
                assert summary["tokens"]["total"] < spent, summary
        assert summary["day"] == "2026-06-01"
    finally:
        await again.stop()


async def test_an_unwritable_state_dir_warns_once_and_shows_in_info(
    broker: Broker, simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a WARNING every 5 s for ever: one per outage, one INFO when it is over, and
    P/bridge/info's usage_file says what is wrong meanwhile."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state directory's parent should be")
    settings = bridge_settings(broker, simulator, tmp_path, state_dir=str(blocker / "state"))
    with caplog.at_level(logging.INFO, logger="bridge.daemon.usage_store"):
        async with OpsBridge(settings) as running, Client(broker) as client:
            await client.subscribe("ai/+/events", "ai/bridge/info")
            assert (await ask(client, "u1"))["type"] == "response.completed"
            store = running.service.usage_store
            await eventually(lambda: store.failed_saves >= 2, 20)  # it tried again, backing off
            info = await _info_where(client, lambda d: d["usage_file"] != "ok")
            assert info["usage_file"].startswith("not writable: "), info
            blocker.unlink()  # the disk is back
            await eventually(lambda: store.problem is None, 30)
            await _info_where(client, lambda d: d["usage_file"] == "ok")
    lines = [
        (r.levelname, r.getMessage()) for r in caplog.records if "token usage" in r.getMessage()
    ]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert json.loads((blocker / "state" / "usage.json").read_text())["bridge"]["total"] > 0


async def _info_where(client: Client, predicate: Callable[[dict[str, Any]], bool]) -> Any:
    while True:
        message = await client.next(15)
        if str(message.topic) == "ai/bridge/info":
            document = json.loads(message.payload)
            if predicate(document):
                return document
